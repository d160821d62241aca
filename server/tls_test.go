package server_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/stretchr/testify/require"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"
	"github.com/taskhub/taskhub/gen/taskhub/v1/taskhubv1connect"

	"github.com/taskhub/taskhub/server"
)

// writeCert writes a self-signed certificate for 127.0.0.1 and its key, and returns a pool that
// trusts it.
func writeCert(t *testing.T) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	keyDER, err := x509.MarshalECPrivateKey(key)
	require.NoError(t, err)
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	require.NoError(t, os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600))
	require.NoError(t, os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600))
	return certFile, keyFile, pool
}

// With a certificate the server speaks HTTPS, HTTP/2 included, and session cookies are Secure.
func TestServer_TLS(t *testing.T) {
	t.Parallel()
	certFile, keyFile, pool := writeCert(t)
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
