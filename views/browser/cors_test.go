package browser_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/chromedp/chromedp"
	"github.com/golang-jwt/jwt/v5"
	"github.com/stretchr/testify/require"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"
	"github.com/taskhub/taskhub/server"
)

// appPage is a page of another app, on another origin: with a watch-only token its backend
// minted, it watches taskhub's WatchTasks stream with fetch (Connect's JSON protocol) and lists
// the events it gets.
const appPage = `<!doctype html><meta charset="utf-8"><title>an app</title>
<p id="status">starting</p><ul id="events"></ul><p id="error"></p>
<script>
const base = %q, token = %q;
(async () => {
  try {
    const res = await fetch(base + "/taskhub.v1.TaskService/WatchTasks", {method: "POST",
      headers: {"Content-Type": "application/connect+json", "Connect-Protocol-Version": "1", "Authorization": "Bearer " + token},
      body: new Uint8Array([0, 0, 0, 0, 2, 123, 125])});
    if (!res.ok) throw new Error("HTTP " + res.status);
    const reader = res.body.getReader();
    let buf = new Uint8Array(0);
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      const b = new Uint8Array(buf.length + value.length);
      b.set(buf);
      b.set(value, buf.length);
      buf = b;
      while (buf.length >= 5) {
        const n = new DataView(buf.buffer, buf.byteOffset).getUint32(1);
        if (buf.length < 5 + n) break;
        const flags = buf[0], msg = JSON.parse(new TextDecoder().decode(buf.subarray(5, 5 + n)));
        buf = buf.subarray(5 + n);
        if (flags & 2) { document.getElementById("error").textContent = "ended: " + JSON.stringify(msg); continue; }
        if (msg.snapshot) document.getElementById("status").textContent = "watching";
        if (msg.event) {
          const li = document.createElement("li");
          li.textContent = msg.event.task.prompt + " " + msg.event.task.state;
          document.getElementById("events").append(li);
        }
      }
    }
  } catch (e) {
    document.getElementById("error").textContent = "blocked: " + e.message;
  }
})();
</script>`

// TestBrowser_AnotherOriginWatches: a page of an allowed origin (another loopback port)
// watches a user's tasks live with a minted watch-only token; a page of an origin not allowed
// cannot.
func TestBrowser_AnotherOriginWatches(t *testing.T) {
	secret := []byte("the-app's-secret-of-at-least-32-bytes")
	secretFile := filepath.Join(t.TempDir(), "jwt.secret")
	require.NoError(t, os.WriteFile(secretFile, secret, 0o600))
	mint := func(claims jwt.MapClaims) string {
		s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(secret)
		require.NoError(t, err)
		return s
	}
	exp := time.Now().Add(time.Hour).Unix()
	watchOnly := mint(jwt.MapClaims{"sub": "carol", "exp": exp, "taskhub_scope": "watch"})

	var base string // taskhub's, once it runs
	page := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprintf(w, appPage, base, watchOnly)
	})
	allowed, other := httptest.NewServer(page), httptest.NewServer(page)
	defer allowed.Close()
	defer other.Close()

	e := setup(t, server.Config{JWTSecretFile: secretFile, AllowedOrigins: []string{allowed.URL}})
	base = e.base
	e.token = mint(jwt.MapClaims{"sub": "carol", "exp": exp})

	app := e.tab()
	app.do(chromedp.Navigate(allowed.URL))
	app.waitFor(`document.getElementById("status").textContent === "watching"`, "the allowed origin's page to get its snapshot")
	res, err := e.tasks.CreateTask(t.Context(), connect.NewRequest(&taskhubv1.CreateTaskRequest{Prompt: "a red fox", Mode: "render"}))
	require.NoError(t, err)
	app.waitFor(`[...document.querySelectorAll("#events li")].some(li => li.textContent === "a red fox TASK_STATE_QUEUED")`, "the page to show the new task")
	_, err = e.tasks.CancelTask(t.Context(), connect.NewRequest(&taskhubv1.CancelTaskRequest{Id: res.Msg.Task.Id}))
	require.NoError(t, err)
	app.waitFor(`[...document.querySelectorAll("#events li")].some(li => li.textContent === "a red fox TASK_STATE_CANCELLED")`, "the page to show it cancelled")
	require.Empty(t, eval[string](app, `document.getElementById("error").textContent`))
	app.screenshot("cors-allowed-origin")

	refused := e.tab()
	refused.do(chromedp.Navigate(other.URL))
	refused.waitFor(`document.getElementById("error").textContent.startsWith("blocked:")`, "the other origin's page to be refused")
	require.Equal(t, "starting", eval[string](refused, `document.getElementById("status").textContent`))
}
