package browser_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/require"

	"github.com/taskhub/taskhub/internal/testcert"
	"github.com/taskhub/taskhub/rpc"
	"github.com/taskhub/taskhub/server"
)

func insecureTLS() *tls.Config { return &tls.Config{InsecureSkipVerify: true} } // the test's own self-signed certificate

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
	certs := testcert.Write(t)
	cert, key := certs.Cert, certs.Key
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
