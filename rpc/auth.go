package rpc

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	"connectrpc.com/connect"

	"github.com/taskhub/taskhub"
	"github.com/taskhub/taskhub/gen/taskhub/v1/taskhubv1connect"
)

// LocalUser owns every task when auth is off.
const LocalUser = "local"

// Auth maps bearer tokens to users and workers, and browser sessions to users. The zero value
// (nil *Auth) is auth off: every caller is LocalUser, and any caller may act as a worker.
type Auth struct {
	users    map[[32]byte]string
	workers  map[[32]byte]string
	sessions map[[32]byte]string // SHA-256 of a session cookie's value -> user
}

// SessionCookie is the name of a browser's session cookie. Its value is derived from the user's
// token (an HMAC of it), so it stands for the user as long as the token is in the auth file, and
// it is no bearer token itself. It is accepted only from same-origin requests.
const SessionCookie = "taskhub_session"

// SessionMaxAge is how long a browser keeps a session cookie.
const SessionMaxAge = 30 * 24 * time.Hour

func sessionValue(token string) string {
	mac := hmac.New(sha256.New, []byte(token))
	mac.Write([]byte("taskhub browser session v1"))
	return base64.RawURLEncoding.EncodeToString(mac.Sum(nil))
}

// AuthFile is the JSON form of an auth file.
type AuthFile struct {
	Users   []Principal `json:"users"`
	Workers []Principal `json:"workers"`
}

// Principal is a name and the bearer token that proves it.
type Principal struct {
	Name  string `json:"name"`
	Token string `json:"token"`
}

// LoadAuth reads an auth file:
//
//	{"users":   [{"name": "alice", "token": "..."}],
//	 "workers": [{"name": "gpu-1", "token": "..."}]}
func LoadAuth(path string) (*Auth, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("auth file: %w", err)
	}
	var f AuthFile
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("auth file %s: %w", path, err)
	}
	a, err := NewAuth(f)
	if err != nil {
		return nil, fmt.Errorf("auth file %s: %w", path, err)
	}
	return a, nil
}

// NewAuth builds an Auth. Names must be valid (they become part of log subjects) and tokens at
// least 16 characters and unique.
func NewAuth(f AuthFile) (*Auth, error) {
	a := &Auth{users: map[[32]byte]string{}, workers: map[[32]byte]string{}, sessions: map[[32]byte]string{}}
	add := func(kind string, ps []Principal, into map[[32]byte]string) error {
		for _, p := range ps {
			if err := taskhub.ValidateName(p.Name); err != nil {
				return fmt.Errorf("%s: %w", kind, err)
			}
			if len(p.Token) < 16 {
				return fmt.Errorf("%s %s: the token must have at least 16 characters", kind, p.Name)
			}
			h := sha256.Sum256([]byte(p.Token))
			if _, dup := a.users[h]; dup {
				return fmt.Errorf("%s %s: the token is used twice", kind, p.Name)
			}
			if _, dup := a.workers[h]; dup {
				return fmt.Errorf("%s %s: the token is used twice", kind, p.Name)
			}
			into[h] = p.Name
		}
		return nil
	}
	if err := add("user", f.Users, a.users); err != nil {
		return nil, err
	}
	for _, p := range f.Users {
		a.sessions[sha256.Sum256([]byte(sessionValue(p.Token)))] = p.Name
	}
	if err := add("worker", f.Workers, a.workers); err != nil {
		return nil, err
	}
	if len(a.users) == 0 && len(a.workers) == 0 {
		return nil, fmt.Errorf("no users or workers")
	}
	return a, nil
}

// Enabled reports whether callers must authenticate.
func (a *Auth) Enabled() bool { return a != nil }

// User returns the user a request's bearer token names, or else its session cookie.
func (a *Auth) User(h http.Header) (string, error) {
	if a == nil {
		return LocalUser, nil
	}
	if h.Get("Authorization") == "" {
		if c, err := (&http.Request{Header: h}).Cookie(SessionCookie); err == nil {
			return a.session(h, c.Value)
		}
	}
	return a.lookup(h, a.users, "a user")
}

func (a *Auth) session(h http.Header, value string) (string, error) {
	// The cookie is SameSite=Strict; refusing it on requests another site started (a browser
	// says so in Sec-Fetch-Site) also covers sibling subdomains, which count as the same site.
	switch h.Get("Sec-Fetch-Site") {
	case "", "same-origin", "none":
	default:
		return "", taskhub.Errorf(taskhub.Unauthenticated, "the session cookie is only accepted from this server's own pages")
	}
	if name, ok := a.sessions[sha256.Sum256([]byte(value))]; ok {
		return name, nil
	}
	return "", taskhub.Errorf(taskhub.Unauthenticated, "the session has ended: sign in again")
}

// SignIn returns the session cookie for a user's token: HttpOnly, SameSite=Strict, and Secure
// when the page is served over TLS.
func (a *Auth) SignIn(token string, secure bool) (*http.Cookie, error) {
	if a == nil {
		return nil, taskhub.Errorf(taskhub.FailedPrecondition, "auth is off: there is nothing to sign in to")
	}
	if _, ok := a.users[sha256.Sum256([]byte(token))]; !ok {
		if _, worker := a.workers[sha256.Sum256([]byte(token))]; worker {
			return nil, taskhub.Errorf(taskhub.PermissionDenied, "this is a worker's token; sign in with a user's token")
		}
		return nil, taskhub.Errorf(taskhub.Unauthenticated, "unknown token")
	}
	return sessionCookie(sessionValue(token), int(SessionMaxAge/time.Second), secure), nil
}

// SignOut returns the cookie that ends a browser's session.
func (a *Auth) SignOut(secure bool) *http.Cookie { return sessionCookie("", -1, secure) }

func sessionCookie(value string, maxAge int, secure bool) *http.Cookie {
	return &http.Cookie{Name: SessionCookie, Value: value, Path: "/", MaxAge: maxAge,
		HttpOnly: true, Secure: secure, SameSite: http.SameSiteStrictMode}
}

// Worker returns the worker a request's bearer token names ("" when auth is off).
func (a *Auth) Worker(h http.Header) (string, error) {
	if a == nil {
		return "", nil
	}
	return a.lookup(h, a.workers, "a worker")
}

func (a *Auth) lookup(h http.Header, names map[[32]byte]string, what string) (string, error) {
	token, ok := strings.CutPrefix(h.Get("Authorization"), "Bearer ")
	if !ok || token == "" {
		return "", taskhub.Errorf(taskhub.Unauthenticated, "send the token of %s as Authorization: Bearer <token>", what)
	}
	if name, ok := names[sha256.Sum256([]byte(token))]; ok {
		return name, nil
	}
	if _, other := a.users[sha256.Sum256([]byte(token))]; other {
		return "", taskhub.Errorf(taskhub.PermissionDenied, "this is a user's token; this service needs %s token", what)
	}
	if _, other := a.workers[sha256.Sum256([]byte(token))]; other {
		return "", taskhub.Errorf(taskhub.PermissionDenied, "this is a worker's token; this service needs %s token", what)
	}
	return "", taskhub.Errorf(taskhub.Unauthenticated, "unknown token")
}

type identityKey struct{}

// identity is who a call acts as: a user for TaskService, a worker for WorkerService.
type identity struct{ user, worker string }

func identityFrom(ctx context.Context) identity {
	id, _ := ctx.Value(identityKey{}).(identity)
	return id
}

// Interceptor authenticates every call before its handler runs.
func (a *Auth) Interceptor() connect.Interceptor { return authInterceptor{a} }

type authInterceptor struct{ a *Auth }

func (i authInterceptor) authenticate(ctx context.Context, procedure string, h http.Header) (context.Context, error) {
	var id identity
	var err error
	if strings.HasPrefix(procedure, "/"+taskhubv1connect.WorkerServiceName+"/") {
		id.worker, err = i.a.Worker(h)
	} else {
		id.user, err = i.a.User(h)
	}
	if err != nil {
		return nil, connectError(err)
	}
	return context.WithValue(ctx, identityKey{}, id), nil
}

func (i authInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		ctx, err := i.authenticate(ctx, req.Spec().Procedure, req.Header())
		if err != nil {
			return nil, err
		}
		return next(ctx, req)
	}
}

func (i authInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (i authInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		ctx, err := i.authenticate(ctx, conn.Spec().Procedure, conn.RequestHeader())
		if err != nil {
			return err
		}
		return next(ctx, conn)
	}
}
