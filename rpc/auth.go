package rpc

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strings"

	"connectrpc.com/connect"

	"github.com/taskhub/taskhub"
	"github.com/taskhub/taskhub/gen/taskhub/v1/taskhubv1connect"
)

// LocalUser owns every task when auth is off.
const LocalUser = "local"

// Auth maps bearer tokens to users and workers. The zero value (nil *Auth) is auth off:
// every caller is LocalUser, and any caller may act as a worker.
type Auth struct {
	users   map[[32]byte]string
	workers map[[32]byte]string
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
	a := &Auth{users: map[[32]byte]string{}, workers: map[[32]byte]string{}}
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

// User returns the user a request's bearer token names.
func (a *Auth) User(h http.Header) (string, error) {
	if a == nil {
		return LocalUser, nil
	}
	return a.lookup(h, a.users, "a user")
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
