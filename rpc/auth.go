package rpc

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	storagev1 "github.com/taskhub/taskhub/gen/taskhub/storage/v1"
	"github.com/taskhub/taskhub/gen/taskhub/v1/taskhubv1connect"

	"github.com/taskhub/taskhub"
	"github.com/taskhub/taskhub/eventlog"
)

// LocalUser owns every task when auth is off.
const LocalUser = "local"

// Sessions keeps browser sessions, by cookie; *eventlog.Log implements it (in JetStream, so a
// session outlives a restart and is known to every node). Session returns eventlog.ErrNotFound
// for a cookie with no session.
type Sessions interface {
	PutSession(ctx context.Context, cookie string, s *storagev1.Session) error
	Session(ctx context.Context, cookie string) (*storagev1.Session, error)
	DeleteSession(ctx context.Context, cookie string) error
}

// Auth maps bearer tokens to users and workers, and browser sessions to users. The zero value
// (nil *Auth) is auth off: every caller is LocalUser, and any caller may act as a worker.
type Auth struct {
	users    map[[32]byte]string
	workers  map[[32]byte]string
	services map[[32]byte]string
	sessions Sessions
	origin   *http.CrossOriginProtection
	jwt      *jwtVerifier // nil unless AcceptJWT
}

// SessionCookie is the name of a browser's session cookie. Its value is a random session id:
// the session it names lives on the server, which ends it at sign-out, when it expires, or when
// the token it was made from leaves the auth file. It is accepted only from same-origin requests.
const SessionCookie = "taskhub_session"

// SessionMaxAge is how long a session lives.
const SessionMaxAge = 30 * 24 * time.Hour

// AuthFile is the JSON form of an auth file.
type AuthFile struct {
	Users   []Principal `json:"users"`
	Workers []Principal `json:"workers"`
	// Services are an app's backends: a service's token calls TaskService for the user named in
	// the Taskhub-On-Behalf-Of header (OnBehalfOf), or without it as a user of its own name.
	Services []Principal `json:"services,omitempty"`
}

// OnBehalfOf is the header in which a service names the user it acts for.
const OnBehalfOf = "Taskhub-On-Behalf-Of"

// Principal is a name and the bearer token that proves it.
type Principal struct {
	Name  string `json:"name"`
	Token string `json:"token"`
}

// ReadAuthFile reads and checks an auth file:
//
//	{"users":   [{"name": "alice", "token": "..."}],
//	 "workers": [{"name": "gpu-1", "token": "..."}]}
func ReadAuthFile(path string) (AuthFile, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return AuthFile{}, fmt.Errorf("auth file: %w", err)
	}
	var f AuthFile
	if err := json.Unmarshal(data, &f); err != nil {
		return AuthFile{}, fmt.Errorf("auth file %s: %w", path, err)
	}
	if _, err := NewAuth(f, nil); err != nil {
		return AuthFile{}, fmt.Errorf("auth file %s: %w", path, err)
	}
	if len(f.Users) == 0 && len(f.Workers) == 0 && len(f.Services) == 0 {
		return AuthFile{}, fmt.Errorf("auth file %s: no users, workers or services", path)
	}
	return f, nil
}

// NewAuth builds an Auth that keeps browser sessions in sessions. Names must be valid (they
// become part of log subjects) and tokens at least 16 characters and unique.
func NewAuth(f AuthFile, sessions Sessions) (*Auth, error) {
	a := &Auth{users: map[[32]byte]string{}, workers: map[[32]byte]string{}, services: map[[32]byte]string{}, sessions: sessions,
		origin: http.NewCrossOriginProtection()}
	add := func(kind string, ps []Principal, into map[[32]byte]string) error {
		for _, p := range ps {
			if err := taskhub.ValidateName(p.Name); err != nil {
				return fmt.Errorf("%s: %w", kind, err)
			}
			if len(p.Token) < 16 {
				return fmt.Errorf("%s %s: the token must have at least 16 characters", kind, p.Name)
			}
			h := sha256.Sum256([]byte(p.Token))
			for _, m := range []map[[32]byte]string{a.users, a.workers, a.services} {
				if _, dup := m[h]; dup {
					return fmt.Errorf("%s %s: the token is used twice", kind, p.Name)
				}
			}
			into[h] = p.Name
		}
		return nil
	}
	if err := add("user", f.Users, a.users); err != nil {
		return nil, err
	}
	if err := add("worker", f.Workers, a.workers); err != nil {
		return nil, err
	}
	if err := add("service", f.Services, a.services); err != nil {
		return nil, err
	}
	for _, s := range f.Services {
		for _, u := range f.Users {
			if s.Name == u.Name {
				return nil, fmt.Errorf("service %s: a user has that name too; a service acting as itself would share their tasks", s.Name)
			}
		}
	}
	return a, nil
}

// AcceptJWT makes the tokens an app mints for its users (JWTConfig) user tokens too. Close
// stops the refreshing of the JWKS.
func (a *Auth) AcceptJWT(cfg JWTConfig) error {
	v, err := newJWTVerifier(cfg)
	if err != nil {
		return err
	}
	a.jwt = v
	return nil
}

// Close stops what the Auth runs in the background.
func (a *Auth) Close() {
	if a != nil && a.jwt != nil {
		a.jwt.stop()
	}
}

// Enabled reports whether callers must authenticate.
func (a *Auth) Enabled() bool { return a != nil }

// User returns the user a request acts for: by its bearer token, or else by its session cookie,
// which is taken only from this server's own pages (a browser's Sec-Fetch-Site, or else its
// Origin, must say same-origin).
func (a *Auth) User(r *http.Request) (string, error) {
	if a == nil {
		return LocalUser, nil
	}
	if err := a.checkCookieOrigin(r); err != nil {
		return "", err
	}
	return a.user(r.Context(), r.Header)
}

// checkCookieOrigin refuses a session cookie from anywhere but this server's own pages.
func (a *Auth) checkCookieOrigin(r *http.Request) error {
	if _, ok := sessionCookieOf(r.Header); ok {
		if err := a.origin.Check(r); err != nil {
			return taskhub.Errorf(taskhub.Unauthenticated, "the session cookie is only accepted from this server's own pages")
		}
	}
	return nil
}

// user finds the user of a bearer token or, without one, of a session cookie.
func (a *Auth) user(ctx context.Context, h http.Header) (string, error) {
	id, err := a.userOf(ctx, h)
	return id.user, err
}

// userOf is who a request acts as for TaskService: the user of its session cookie, of its
// bearer token from the auth file, or of its minted token (JWTConfig), with what that allows.
func (a *Auth) userOf(ctx context.Context, h http.Header) (identity, error) {
	id, err := a.userOrService(ctx, h)
	if err != nil {
		return identity{}, err
	}
	onBehalf := h.Get(OnBehalfOf)
	switch {
	case onBehalf == "":
	case id.actedBy == "":
		return identity{}, taskhub.Errorf(taskhub.PermissionDenied, "only a service's token may act on a user's behalf (%s)", OnBehalfOf)
	default:
		if err := taskhub.ValidateName(onBehalf); err != nil {
			return identity{}, taskhub.Errorf(taskhub.Invalid, "%s: %v", OnBehalfOf, err)
		}
		id.user = onBehalf
	}
	return id, nil
}

// userOrService is who the credentials name: a user, or a service acting as itself.
func (a *Auth) userOrService(ctx context.Context, h http.Header) (identity, error) {
	if cookie, ok := sessionCookieOf(h); ok {
		u, err := a.session(ctx, cookie)
		return identity{user: u}, err
	}
	if token, ok := strings.CutPrefix(h.Get("Authorization"), "Bearer "); ok {
		hash := sha256.Sum256([]byte(token))
		if s, ok := a.services[hash]; ok {
			return identity{user: s, actedBy: s}, nil
		}
		if _, known := a.users[hash]; !known && a.jwt != nil && looksLikeJWT(token) {
			u, err := a.jwt.verify(ctx, token)
			return identity{user: u.name, scope: u.scope, expires: u.expires}, err
		}
	}
	u, err := a.lookup(h, a.users, "a user")
	return identity{user: u}, err
}

// allows reports whether id may call procedure: a watch-only token may only read.
func (id identity) allows(procedure string) error {
	if id.scope != ScopeWatch {
		return nil
	}
	switch procedure {
	case taskhubv1connect.TaskServiceGetTaskProcedure, taskhubv1connect.TaskServiceListTasksProcedure, taskhubv1connect.TaskServiceWatchTasksProcedure:
		return nil
	}
	return taskhub.Errorf(taskhub.PermissionDenied, "this token may only watch (taskhub_scope %q): it cannot call %s", ScopeWatch, procedure)
}

// sessionCookieOf returns the session cookie of a request that has no Authorization header
// (a bearer token wins over a cookie).
func sessionCookieOf(h http.Header) (string, bool) {
	if h.Get("Authorization") != "" {
		return "", false
	}
	// Request.Cookie skips what does not parse: other cookies of the site may be anything.
	if c, err := (&http.Request{Header: h}).Cookie(SessionCookie); err == nil {
		return c.Value, true
	}
	return "", false
}

// session returns the user of a session cookie: its session exists, has not expired, and the
// token it was made from is still that user's.
func (a *Auth) session(ctx context.Context, cookie string) (string, error) {
	if cookie == "" || len(cookie) > 64 {
		return "", errSessionEnded
	}
	s, err := a.sessions.Session(ctx, cookie)
	switch {
	case errors.Is(err, eventlog.ErrNotFound):
		return "", errSessionEnded
	case err != nil:
		return "", taskhub.Errorf(taskhub.Unavailable, "cannot read the session: %v", err)
	case !time.Now().Before(s.ExpiresAt.AsTime()):
		return "", errSessionEnded
	case len(s.TokenSha256) != sha256.Size || a.users[[32]byte(s.TokenSha256)] != s.User:
		return "", errSessionEnded // the token it came from was removed or given to someone else
	}
	return s.User, nil
}

var errSessionEnded = taskhub.Errorf(taskhub.Unauthenticated, "the session has ended: sign in again")

// SignIn starts a session for a user's token and returns its cookie: HttpOnly, SameSite=Strict,
// and Secure when the page is served over TLS.
func (a *Auth) SignIn(ctx context.Context, token string, secure bool) (*http.Cookie, error) {
	if a == nil {
		return nil, taskhub.Errorf(taskhub.FailedPrecondition, "auth is off: there is nothing to sign in to")
	}
	hash := sha256.Sum256([]byte(token))
	user, ok := a.users[hash]
	if !ok {
		if _, worker := a.workers[hash]; worker {
			return nil, taskhub.Errorf(taskhub.PermissionDenied, "this is a worker's token; sign in with a user's token")
		}
		return nil, taskhub.Errorf(taskhub.Unauthenticated, "unknown token")
	}
	cookie := rand.Text()
	now := time.Now()
	err := a.sessions.PutSession(ctx, cookie, &storagev1.Session{User: user, TokenSha256: hash[:],
		CreatedAt: timestamppb.New(now), ExpiresAt: timestamppb.New(now.Add(SessionMaxAge))})
	if err != nil {
		return nil, taskhub.Errorf(taskhub.Unavailable, "cannot start a session: %v", err)
	}
	return sessionCookie(cookie, int(SessionMaxAge/time.Second), secure), nil
}

// SignOut ends the session of the request's cookie, if it has one, and returns the cookie that
// removes it from the browser.
func (a *Auth) SignOut(r *http.Request, secure bool) (*http.Cookie, error) {
	if c, err := r.Cookie(SessionCookie); err == nil && a != nil && c.Value != "" && len(c.Value) <= 64 {
		if err := a.sessions.DeleteSession(r.Context(), c.Value); err != nil {
			return nil, taskhub.Errorf(taskhub.Unavailable, "cannot end the session: %v", err)
		}
	}
	return sessionCookie("", -1, secure), nil
}

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
	hash := sha256.Sum256([]byte(token))
	if name, ok := names[hash]; ok {
		return name, nil
	}
	if _, other := a.users[hash]; other {
		return "", taskhub.Errorf(taskhub.PermissionDenied, "this is a user's token; this service needs %s token", what)
	}
	if _, other := a.workers[hash]; other {
		return "", taskhub.Errorf(taskhub.PermissionDenied, "this is a worker's token; this service needs %s token", what)
	}
	if _, other := a.services[hash]; other {
		return "", taskhub.Errorf(taskhub.PermissionDenied, "this is a service's token; this service needs %s token", what)
	}
	if a.jwt != nil && looksLikeJWT(token) {
		return "", taskhub.Errorf(taskhub.PermissionDenied, "minted tokens are users' tokens; this service needs %s token from the auth file", what)
	}
	return "", taskhub.Errorf(taskhub.Unauthenticated, "unknown token")
}

type identityKey struct{}

// identity is who a call acts as: a user for TaskService, a worker for WorkerService. A
// minted token may narrow what its user may do (scope), and ends at expires.
type identity struct {
	user, worker string
	actedBy      string // the service acting as user (itself, or on the user's behalf)
	scope        string
	expires      time.Time // zero: never
}

func identityFrom(ctx context.Context) identity {
	id, _ := ctx.Value(identityKey{}).(identity)
	return id
}

func isWorkerProcedure(procedure string) bool {
	return strings.HasPrefix(procedure, "/"+taskhubv1connect.WorkerServiceName+"/")
}

// Gate refuses a request to the Connect API whose credentials do not hold, from its headers
// alone: before any of its body is read, so a caller without a token cannot hold a request
// open by sending its body slowly. A refused HTTP/1.1 connection is closed rather than drained.
// Who the caller is reaches the handlers through the interceptor, which looks again: carrying it
// from here would copy every request (about 300 bytes per open stream), where looking again is
// a hash of the token. observe, when set, is told of each refusal.
func (a *Auth) Gate(next http.Handler, errors *connect.ErrorWriter, observe func(procedure string, code connect.Code)) http.Handler {
	if a == nil {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var err error
		if isWorkerProcedure(r.URL.Path) {
			_, err = a.Worker(r.Header)
		} else if err = a.checkCookieOrigin(r); err == nil {
			var id identity
			if id, err = a.userOf(r.Context(), r.Header); err == nil {
				err = id.allows(r.URL.Path)
			}
		}
		if err != nil {
			refuse(w, r, errors, err)
			if observe != nil {
				observe(r.URL.Path, connect.CodeOf(connectError(err)))
			}
			return
		}
		next.ServeHTTP(w, r)
	})
}

// refuse answers a request whose credentials do not hold with err. A refused HTTP/1.1
// connection is closed rather than drained; not an HTTP/2 one, whose other streams it would end.
func refuse(w http.ResponseWriter, r *http.Request, errors *connect.ErrorWriter, err error) {
	if r.ProtoMajor == 1 {
		w.Header().Set("Connection", "close")
	}
	_ = errors.Write(w, r, connectError(err))
}

// GateAny refuses a request without credentials a caller of the API may hold: a user's (a
// session, a token of the auth file, a minted one), a worker's or a service's. It guards the
// standard services (MountStandard).
func (a *Auth) GateAny(next http.Handler, errors *connect.ErrorWriter) http.Handler {
	if a == nil {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		err := a.checkCookieOrigin(r)
		if err == nil {
			if _, err = a.userOf(r.Context(), r.Header); err != nil {
				if _, werr := a.Worker(r.Header); werr == nil {
					err = nil
				}
			}
		}
		if err != nil {
			refuse(w, r, errors, err)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// Interceptor puts who a call acts as in its context, for the handlers. Gate has already
// refused calls whose credentials do not hold.
func (a *Auth) Interceptor() connect.Interceptor { return authInterceptor{a} }

type authInterceptor struct{ a *Auth }

func (i authInterceptor) authenticate(ctx context.Context, procedure string, h http.Header) (context.Context, error) {
	var id identity
	var err error
	if isWorkerProcedure(procedure) {
		id.worker, err = i.a.Worker(h)
	} else if i.a == nil {
		id.user = LocalUser
	} else if id, err = i.a.userOf(ctx, h); err == nil {
		err = id.allows(procedure)
	}
	if err != nil {
		return nil, connectError(err)
	}
	if id.actedBy != "" && id.actedBy != id.user {
		ctx = taskhub.WithActor(ctx, id.actedBy)
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
