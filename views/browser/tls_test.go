package browser_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/require"

	"github.com/taskhub/taskhub/rpc"
	"github.com/taskhub/taskhub/server"
)

func insecureTLS() *tls.Config { return &tls.Config{InsecureSkipVerify: true} } // the test's own self-signed certificate

// selfSigned writes a certificate for 127.0.0.1 and its key into dir.
func selfSigned(t *testing.T, dir string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "taskhub test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	keyDER, err := x509.MarshalECPrivateKey(key)
	require.NoError(t, err)
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	require.NoError(t, os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600))
	require.NoError(t, os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600))
	return certFile, keyFile
}

// writeAuth writes an auth file with one user and one worker.
func writeAuth(t *testing.T, dir string) (path, userToken, workerToken string) {
	t.Helper()
	userToken, workerToken = "alice-token-0123456789", "worker-token-0123456789"
	data, err := json.Marshal(rpc.AuthFile{
		Users:   []rpc.Principal{{Name: "alice", Token: userToken}},
		Workers: []rpc.Principal{{Name: "gpu-1", Token: workerToken}},
	})
	require.NoError(t, err)
	path = filepath.Join(dir, "auth.json")
	require.NoError(t, os.WriteFile(path, data, 0o600))
	return path, userToken, workerToken
}

// Over TLS the page is served with HTTP/2, a person signs in with a token and gets a Secure,
// HttpOnly, SameSite=Strict session cookie, and the page's Connect calls and stream use it.
func TestBrowser_SignInOverHTTP2(t *testing.T) {
	dir := t.TempDir()
	cert, key := selfSigned(t, dir)
	authFile, userToken, _ := writeAuth(t, dir)
	e := setup(t, server.Config{TLSCert: cert, TLSKey: key, AuthFile: authFile, DemoWorkers: 1}, chromedp.IgnoreCertErrors)
	require.Equal(t, "https://", e.url("/")[:8])

	p := e.tab()
	p.do(chromedp.Navigate(e.url("/")))
	p.waitFor(`location.pathname === "/signin"`, "the sign-in page")
	p.do(
		chromedp.SetValue(chromedp.CSS(`[name="token"]`), "not-a-token-at-all"),
		chromedp.Submit(chromedp.CSS(`[data-testid="signin-form"]`)),
	)
	p.waitFor(`document.querySelector('[role="alert"]')?.textContent.includes("unknown token")`, "the refusal")
	p.do(
		chromedp.SetValue(chromedp.CSS(`[name="token"]`), userToken),
		chromedp.Submit(chromedp.CSS(`[data-testid="signin-form"]`)),
	)
	p.waitFor(`location.pathname === "/"`, "the task page")
	p.waitLive()
	require.Equal(t, "h2", eval[string](p, `performance.getEntriesByType("navigation")[0].nextHopProtocol`))
	require.Equal(t, "alice", eval[string](p, `document.querySelector('.user').textContent`))

	ctx, cancel := context.WithTimeout(p.ctx, wait)
	defer cancel()
	cookies, err := chromedp.Run(ctx, func(ctx context.Context, t *chromedp.Target) ([]*network.Cookie, error) {
		res, err := cdp.Call(ctx, t, network.GetCookies, network.GetCookiesParams{})
		return res.Cookies, err
	})
	require.NoError(t, err)
	require.Len(t, cookies, 1)
	c := cookies[0]
	require.Equal(t, rpc.SessionCookie, c.Name)
	require.True(t, c.HTTPOnly, "scripts cannot read the session")
	require.True(t, c.Secure, "over TLS the cookie is Secure")
	require.Equal(t, network.CookieSameSiteStrict, c.SameSite)
	require.NotContains(t, c.Value, userToken)
	require.Empty(t, eval[string](p, `document.cookie`))

	// The page's own calls authenticate with the cookie: create through the form, watch it run.
	p.do(
		chromedp.SetValue(chromedp.CSS(`[name="prompt"]`), "signed in"),
		chromedp.SetValue(chromedp.CSS(`[name="params"]`), "steps=5, step_ms=200"),
		chromedp.Click(chromedp.CSS(`[data-testid="create-submit"]`)),
	)
	p.waitFor(`document.querySelectorAll('[data-testid="task-card"]').length === 1`, "the new card")
	id := p.cards()[0].ID
	p.waitCard(id, completed)

	// Bearer tokens still work, and what they create shows up on the page.
	e.token = userToken
	task := e.createDemo("by bearer", 5, 200)
	p.waitCard(task.Id, completed)
	require.Equal(t, "alice", task.Owner)

	p.do(chromedp.Click(chromedp.CSS(`.signout button`)))
	p.waitFor(`location.pathname === "/signin"`, "the sign-in page after signing out")
}
