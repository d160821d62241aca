package server_test

import (
	"crypto/tls"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"testing"

	"connectrpc.com/connect"
	"github.com/stretchr/testify/require"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"
	"github.com/taskhub/taskhub/gen/taskhub/v1/taskhubv1connect"

	"github.com/taskhub/taskhub/internal/testcert"
	"github.com/taskhub/taskhub/server"
)

// With a certificate the server speaks HTTPS, HTTP/2 included, and session cookies are Secure.
func TestServer_TLS(t *testing.T) {
	t.Parallel()
	certs := testcert.Write(t)
	certFile, keyFile, pool := certs.Cert, certs.Key, certs.Pool
	srv, err := server.Open(t.Context(), server.Config{
		Addr: "127.0.0.1:0", DataDir: t.TempDir(), DemoWorkers: -1, AuthFile: writeAuthFile(t),
		TLSCert: certFile, TLSKey: keyFile, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, srv.Close()) })
	require.True(t, strings.HasPrefix(srv.URL(), "https://127.0.0.1:"), srv.URL())

	h2 := &http.Client{
		Transport:     &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	t.Cleanup(h2.CloseIdleConnections)
	res, err := h2.PostForm(srv.URL()+"/signin", url.Values{"token": {aliceToken}})
	require.NoError(t, err)
	res.Body.Close()
	require.Equal(t, "HTTP/2.0", res.Proto)
	require.Equal(t, http.StatusSeeOther, res.StatusCode, "signed in: off to the page")
	sessions := res.Cookies()
	require.Len(t, sessions, 1)
	require.True(t, sessions[0].Secure, "over TLS the session cookie is Secure")

	tasks := taskhubv1connect.NewTaskServiceClient(h2, srv.URL(), connect.WithGRPC())
	req := connect.NewRequest(&taskhubv1.CreateTaskRequest{Prompt: "over h2", Mode: "render"})
	req.Header().Set("Authorization", "Bearer "+aliceToken)
	created, err := tasks.CreateTask(t.Context(), req)
	require.NoError(t, err, "gRPC needs HTTP/2: it works over TLS")
	require.Equal(t, "alice", created.Msg.Task.Owner)

	_, err = server.Open(t.Context(), server.Config{Addr: "127.0.0.1:0", DataDir: t.TempDir(), TLSCert: certFile, TLSKey: filepath.Join(t.TempDir(), "missing.pem")})
	require.ErrorContains(t, err, "tls")
}
