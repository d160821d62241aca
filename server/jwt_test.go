package server_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/golang-jwt/jwt/v5"
	"github.com/stretchr/testify/require"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"
	"github.com/taskhub/taskhub/server"
)

// jwtSecret is the HS256 secret of the tests' app.
var jwtSecret = []byte("an-app-secret-of-at-least-32-bytes!!")

func writeJWTSecret(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "jwt.secret")
	require.NoError(t, os.WriteFile(path, append(jwtSecret, '\n'), 0o600))
	return path
}

// mint makes a token as an app's backend would, with the JWT library.
func mint(t *testing.T, method jwt.SigningMethod, key any, kid string, claims jwt.MapClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(method, claims)
	if kid != "" {
		tok.Header["kid"] = kid
	}
	s, err := tok.SignedString(key)
	require.NoError(t, err)
	return s
}

func hs256(t *testing.T, claims jwt.MapClaims) string {
	return mint(t, jwt.SigningMethodHS256, jwtSecret, "", claims)
}

func claimsFor(user string, ttl time.Duration) jwt.MapClaims {
	return jwt.MapClaims{"sub": user, "exp": time.Now().Add(ttl).Unix()}
}

// TestJWT_UserKnownOnlyFromSub: a user the auth file does not name, with a token the app
// minted, creates, watches and cancels their tasks, and sees no one else's.
func TestJWT_UserKnownOnlyFromSub(t *testing.T) {
	t.Parallel()
	b := setup(t, server.Config{AuthFile: writeAuthFile(t), JWTSecretFile: writeJWTSecret(t)})
	ctx := t.Context()
	carol, dave := hs256(t, claimsFor("carol", time.Hour)), hs256(t, claimsFor("dave", time.Hour))

	s := watch(t, b.tasks, &taskhubv1.WatchTasksRequest{}, carol)
	s.wait(0)
	res, err := b.tasks.CreateTask(ctx, as(&taskhubv1.CreateTaskRequest{Prompt: "carol's", Mode: "render"}, carol))
	require.NoError(t, err)
	task := res.Msg.Task
	require.Equal(t, "carol", task.Owner)
	_, err = b.tasks.CreateTask(ctx, as(&taskhubv1.CreateTaskRequest{Prompt: "alice's", Mode: "render"}, aliceToken))
	require.NoError(t, err, "the auth file's users still work")

	s.wait(1)
	_, err = b.tasks.CancelTask(ctx, as(&taskhubv1.CancelTaskRequest{Id: task.Id}, carol))
	require.NoError(t, err)
	got := s.waitFor(func(es []*taskhubv1.TaskEvent) bool {
		return len(es) > 0 && es[len(es)-1].Task.State == taskhubv1.TaskState_TASK_STATE_CANCELLED
	})
	for _, e := range got {
		require.Equal(t, task.Id, e.Task.Id, "carol's stream shows carol's task only")
	}

	list, err := b.tasks.ListTasks(ctx, as(&taskhubv1.ListTasksRequest{}, dave))
	require.NoError(t, err)
	require.Empty(t, list.Msg.Tasks, "dave sees none of carol's or alice's tasks")
	_, err = b.tasks.GetTask(ctx, as(&taskhubv1.GetTaskRequest{Id: task.Id}, dave))
	require.Equal(t, connect.CodeNotFound, connect.CodeOf(err))

	_, err = b.work.ClaimTask(ctx, as(&taskhubv1.ClaimTaskRequest{WorkerId: "w", Modes: []string{"render"}}, carol))
	require.Equal(t, connect.CodePermissionDenied, connect.CodeOf(err), "a minted token is no worker's")
}

// TestJWT_Refused: tokens that do not hold answer unauthenticated, saying why, and change
// nothing.
func TestJWT_Refused(t *testing.T) {
	t.Parallel()
	b := setup(t, server.Config{JWTSecretFile: writeJWTSecret(t), JWTAudience: "taskhub"})
	ok := jwt.MapClaims{"sub": "carol", "aud": "taskhub", "exp": time.Now().Add(time.Hour).Unix()}
	with := func(k string, v any) jwt.MapClaims {
		c := jwt.MapClaims{}
		for key, val := range ok {
			c[key] = val
		}
		if v == nil {
			delete(c, k)
		} else {
			c[k] = v
		}
		return c
	}
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)
	none, err := jwt.NewWithClaims(jwt.SigningMethodNone, ok).SignedString(jwt.UnsafeAllowNoneSignatureType)
	require.NoError(t, err)

	for name, tc := range map[string]struct{ token, want string }{
		"expired":        {hs256(t, with("exp", time.Now().Add(-time.Hour).Unix())), "has expired"},
		"no exp":         {hs256(t, with("exp", nil)), "has no exp"},
		"not yet valid":  {hs256(t, with("nbf", time.Now().Add(time.Hour).Unix())), "not valid yet"},
		"wrong audience": {hs256(t, with("aud", "someone-else")), "another audience"},
		"no audience":    {hs256(t, with("aud", nil)), "names no audience"},
		"wrong key":      {mint(t, jwt.SigningMethodHS256, []byte("another-secret-of-at-least-32-bytes!"), "", ok), "wrong signature"},
		"alg none":       {none, "alg: none"},
		"rs256 here":     {mint(t, jwt.SigningMethodRS256, rsaKey, "k1", ok), "alg: RS256"},
		"malformed":      {"eyJhbGciOi.not-a.token", "malformed"},
		"bad sub":        {hs256(t, with("sub", "carol smith")), "not a user name"},
		"no sub":         {hs256(t, with("sub", nil)), "not a user name"},
		"unknown scope":  {hs256(t, with("taskhub_scope", "admin")), "unknown"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := b.tasks.CreateTask(t.Context(), as(&taskhubv1.CreateTaskRequest{Prompt: "p", Mode: "render"}, tc.token))
			require.Equal(t, connect.CodeUnauthenticated, connect.CodeOf(err), "%v", err)
			require.ErrorContains(t, err, tc.want)
		})
	}
	list, err := b.tasks.ListTasks(t.Context(), as(&taskhubv1.ListTasksRequest{}, hs256(t, ok)))
	require.NoError(t, err, "a good token passes")
	require.Empty(t, list.Msg.Tasks, "no refused create made a task")
}

// TestJWT_WatchOnly: a token with taskhub_scope "watch" may read and watch, not create or
// cancel.
func TestJWT_WatchOnly(t *testing.T) {
	t.Parallel()
	b := setup(t, server.Config{JWTSecretFile: writeJWTSecret(t)})
	ctx := t.Context()
	full := hs256(t, claimsFor("carol", time.Hour))
	watchOnly := hs256(t, jwt.MapClaims{"sub": "carol", "exp": time.Now().Add(time.Hour).Unix(), "taskhub_scope": "watch"})

	res, err := b.tasks.CreateTask(ctx, as(&taskhubv1.CreateTaskRequest{Prompt: "p", Mode: "render"}, full))
	require.NoError(t, err)
	s := watch(t, b.tasks, &taskhubv1.WatchTasksRequest{}, watchOnly)
	snap, _ := s.wait(0)
	require.Len(t, snap.Tasks, 1)
	_, err = b.tasks.GetTask(ctx, as(&taskhubv1.GetTaskRequest{Id: res.Msg.Task.Id}, watchOnly))
	require.NoError(t, err)

	_, err = b.tasks.CreateTask(ctx, as(&taskhubv1.CreateTaskRequest{Prompt: "p", Mode: "render"}, watchOnly))
	require.Equal(t, connect.CodePermissionDenied, connect.CodeOf(err))
	require.ErrorContains(t, err, "may only watch")
	_, err = b.tasks.CancelTask(ctx, as(&taskhubv1.CancelTaskRequest{Id: res.Msg.Task.Id}, watchOnly))
	require.Equal(t, connect.CodePermissionDenied, connect.CodeOf(err))
	got, err := b.tasks.GetTask(ctx, as(&taskhubv1.GetTaskRequest{Id: res.Msg.Task.Id}, full))
	require.NoError(t, err)
	require.Equal(t, taskhubv1.TaskState_TASK_STATE_QUEUED, got.Msg.Task.State, "the refused cancel changed nothing")
}

// TestJWT_StreamEndsAtExpiry: a stream opened with a minted token ends with unauthenticated
// when the token expires; the client mints another and resumes where it was.
func TestJWT_StreamEndsAtExpiry(t *testing.T) {
	t.Parallel()
	b := setup(t, server.Config{JWTSecretFile: writeJWTSecret(t)})
	ctx := t.Context()
	short := hs256(t, jwt.MapClaims{"sub": "carol", "exp": time.Now().Add(2 * time.Second).Unix()})
	start := time.Now()
	s := watch(t, b.tasks, &taskhubv1.WatchTasksRequest{}, short)
	s.wait(0)
	_, err := b.tasks.CreateTask(ctx, as(&taskhubv1.CreateTaskRequest{Prompt: "p", Mode: "render"}, short))
	require.NoError(t, err)
	_, events := s.wait(1)

	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		t.Fatal("the stream outlived its token by 8 s")
	}
	require.Less(t, time.Since(start), 5*time.Second, "it ended at the token's expiry, within the second Next takes to see it")
	require.Equal(t, connect.CodeUnauthenticated, connect.CodeOf(s.err), "%v", s.err)
	require.ErrorContains(t, s.err, "the token expired")

	renewed := hs256(t, claimsFor("carol", time.Hour))
	resumed := watch(t, b.tasks, &taskhubv1.WatchTasksRequest{Epoch: s.snap.Epoch, AfterSeq: events[len(events)-1].Seq}, renewed)
	snap, _ := resumed.wait(0)
	require.True(t, snap.Recovered, "it resumed where it was, with nothing missed")
}

// TestJWT_JWKS: RS256 and ES256 tokens checked with the keys of a JWKS, fetched again when a
// token names a key it does not know (rotation).
func TestJWT_JWKS(t *testing.T) {
	t.Parallel()
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	var mu sync.Mutex
	keys := []map[string]string{rsaJWK("rsa-1", &rsaKey.PublicKey)}
	jwks := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		_ = json.NewEncoder(w).Encode(map[string]any{"keys": keys})
	}))
	defer jwks.Close()
	b := setup(t, server.Config{JWKSURL: jwks.URL})
	ctx := t.Context()
	claims := claimsFor("erin", time.Hour)

	res, err := b.tasks.CreateTask(ctx, as(&taskhubv1.CreateTaskRequest{Prompt: "p", Mode: "render"}, mint(t, jwt.SigningMethodRS256, rsaKey, "rsa-1", claims)))
	require.NoError(t, err)
	require.Equal(t, "erin", res.Msg.Task.Owner)

	// The app rotates to an EC key the server has not fetched yet.
	mu.Lock()
	keys = append(keys, ecJWK("ec-2", &ecKey.PublicKey))
	mu.Unlock()
	list, err := b.tasks.ListTasks(ctx, as(&taskhubv1.ListTasksRequest{}, mint(t, jwt.SigningMethodES256, ecKey, "ec-2", claims)))
	require.NoError(t, err)
	require.Len(t, list.Msg.Tasks, 1)

	// A key the JWKS does not have, and a token signed with the right kid but another key.
	otherKey, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)
	_, err = b.tasks.ListTasks(ctx, as(&taskhubv1.ListTasksRequest{}, mint(t, jwt.SigningMethodRS256, otherKey, "rsa-1", claims)))
	require.Equal(t, connect.CodeUnauthenticated, connect.CodeOf(err))
	require.ErrorContains(t, err, "wrong signature")
	_, err = b.tasks.ListTasks(ctx, as(&taskhubv1.ListTasksRequest{}, mint(t, jwt.SigningMethodHS256, jwtSecret, "", claims)))
	require.Equal(t, connect.CodeUnauthenticated, connect.CodeOf(err), "no HS256 secret was given")
}

func rsaJWK(kid string, k *rsa.PublicKey) map[string]string {
	return map[string]string{"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig",
		"n": b64(k.N.Bytes()), "e": b64(big.NewInt(int64(k.E)).Bytes())}
}

func ecJWK(kid string, k *ecdsa.PublicKey) map[string]string {
	raw, _ := k.Bytes() // 0x04 || X || Y
	return map[string]string{"kty": "EC", "kid": kid, "alg": "ES256", "use": "sig", "crv": "P-256",
		"x": b64(raw[1:33]), "y": b64(raw[33:])}
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }
