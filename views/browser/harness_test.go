// Package browser_test drives the task page in a real browser (Debian's chromium, through
// chromedp) against a real server on 127.0.0.1 with its data in a temp dir. Without chromium
// the tests skip, except under CI, where .ci/run installs it and they must run.
package browser_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/taskhub/taskhub/internal/natstest"

	"connectrpc.com/connect"
	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/cdproto/fetch"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"
	"github.com/taskhub/taskhub/gen/taskhub/v1/taskhubv1connect"

	"github.com/taskhub/taskhub/server"
)

func TestMain(m *testing.M) {
	if cfg := os.Getenv(nodeEnv); cfg != "" {
		os.Exit(runNode(cfg)) // a cluster node of TestBrowser_ClusterBehindALoadBalancer
	}
	// protoactor's dead-letter log throttle is a one-second timer goroutine that ends on its own.
	goleak.VerifyTestMain(m, natstest.LeakOptions()...)
}

var chromiumPath = sync.OnceValue(func() string {
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	return ""
})

// wait bounds every wait for the page to get somewhere.
const wait = 20 * time.Second

// env is a real server and a real browser.
type env struct {
	t       *testing.T
	cfg     server.Config
	srv     *server.Server
	up      bool
	base    string          // the URL pages and clients use: the server's, or a load balancer's
	browser context.Context // the running browser; tabs are its children
	http    *http.Client
	tasks   taskhubv1connect.TaskServiceClient
	work    taskhubv1connect.WorkerServiceClient
	token   string // sent as a bearer token by the Go clients, when set
}

// setup starts a server (demo workers off unless cfg asks) and a browser with a fresh profile.
func setup(t *testing.T, cfg server.Config, browserOpts ...chromedp.ExecAllocatorOption) *env {
	t.Helper()
	path := needChromium(t)
	e := &env{t: t, cfg: testConfig(t, cfg)}
	e.start()
	t.Cleanup(e.stop)
	e.browser = startBrowser(t, path, browserOpts...)
	return e
}

// needChromium returns chromium's path, or skips the test without it (fails it under CI).
func needChromium(t *testing.T) string {
	t.Helper()
	path := chromiumPath()
	if path == "" {
		if os.Getenv("CI") != "" {
			t.Fatal("chromium is not installed: .ci/run must install it (apt-get install -y chromium)")
		}
		t.Skip("chromium is not installed: apt-get install -y chromium to run the browser tests")
	}
	return path
}

// testConfig is cfg on a free loopback port, with a temp data dir, demo workers off unless cfg
// asks, and logs discarded.
func testConfig(t *testing.T, cfg server.Config) server.Config {
	cfg.Addr = "127.0.0.1:0"
	if cfg.DataDir == "" {
		cfg.DataDir = t.TempDir()
	}
	if cfg.DemoWorkers == 0 {
		cfg.DemoWorkers = -1
	}
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	return cfg
}

// startBrowser starts chromium with a fresh profile, for the length of the test.
func startBrowser(t *testing.T, path string, browserOpts ...chromedp.ExecAllocatorOption) context.Context {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-sync", true),
		chromedp.NoFirstRun,
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 900),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), append(opts, browserOpts...)...)
	bctx, cancelBrowser := chromedp.NewContext(actx)
	t.Cleanup(func() {
		cancelBrowser()
		cancelAlloc()
	})
	// Start the browser on a context without a deadline: it lives as long as that context.
	require.NoError(t, chromedp.Do(bctx), "start chromium")
	return bctx
}

func (e *env) start() {
	e.t.Helper()
	srv, err := server.Open(context.Background(), e.cfg)
	require.NoError(e.t, err)
	e.srv, e.up = srv, true
	e.cfg.Addr = strings.TrimPrefix(strings.TrimPrefix(srv.URL(), "http://"), "https://") // restarts keep the port
	e.connect(srv.URL())
}

// connect points the env's pages and Go clients at base.
func (e *env) connect(base string) {
	transport := &http.Transport{}
	if strings.HasPrefix(base, "https://") {
		transport.TLSClientConfig = insecureTLS()
	}
	e.base = base
	e.http = &http.Client{Transport: transport, Timeout: 30 * time.Second}
	auth := connect.WithInterceptors(bearerInterceptor{e})
	e.tasks = taskhubv1connect.NewTaskServiceClient(e.http, base, auth)
	e.work = taskhubv1connect.NewWorkerServiceClient(e.http, base, auth)
}

func (e *env) stop() {
	if e.up {
		e.up = false
		e.http.CloseIdleConnections()
		require.NoError(e.t, e.srv.Close())
	}
}

// restart stops the server and starts it again on the same port and data dir.
func (e *env) restart() {
	e.stop()
	e.start()
}

func (e *env) url(path string) string { return e.base + path }

// bearerInterceptor sends env.token, when set, as the bearer token of unary calls.
type bearerInterceptor struct{ e *env }

func (b bearerInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if b.e.token != "" {
			req.Header().Set("Authorization", "Bearer "+b.e.token)
		}
		return next(ctx, req)
	}
}

func (b bearerInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (b bearerInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

// postJSON calls a Connect procedure with plain HTTP and JSON, as curl would, and decodes the
// answer into out.
func (e *env) postJSON(procedure string, body any, out any) {
	e.t.Helper()
	b, err := json.Marshal(body)
	require.NoError(e.t, err)
	req, err := http.NewRequest(http.MethodPost, e.url(procedure), bytes.NewReader(b))
	require.NoError(e.t, err)
	req.Header.Set("Content-Type", "application/json")
	if e.token != "" {
		req.Header.Set("Authorization", "Bearer "+e.token)
	}
	res, err := e.http.Do(req)
	require.NoError(e.t, err)
	defer res.Body.Close()
	data, err := io.ReadAll(res.Body)
	require.NoError(e.t, err)
	require.Equal(e.t, http.StatusOK, res.StatusCode, "%s: %s", procedure, data)
	require.NoError(e.t, json.Unmarshal(data, out))
}

// createDemo creates a demo task of steps steps of stepMS each through the Go client.
func (e *env) createDemo(prompt string, steps, stepMS int) *taskhubv1.Task {
	e.t.Helper()
	res, err := e.tasks.CreateTask(e.t.Context(), connect.NewRequest(&taskhubv1.CreateTaskRequest{
		Prompt: prompt, Mode: "demo", Params: map[string]string{"steps": fmt.Sprint(steps), "step_ms": fmt.Sprint(stepMS)},
	}))
	require.NoError(e.t, err)
	return res.Msg.Task
}

// claim claims a task of mode as a worker.
func (e *env) claim(mode string) *taskhubv1.ClaimTaskResponse {
	e.t.Helper()
	res, err := e.work.ClaimTask(e.t.Context(), connect.NewRequest(&taskhubv1.ClaimTaskRequest{WorkerId: "test-worker", Modes: []string{mode}, WaitSeconds: 5}))
	require.NoError(e.t, err)
	require.NotNil(e.t, res.Msg.Task, "no %s task to claim", mode)
	return res.Msg
}

// renderAt30 creates a render task as curl would (JSON), claims it as the worker, reports 30%,
// and waits for page p to show it.
func (e *env) renderAt30(p *tab) (string, *taskhubv1.ClaimTaskResponse) {
	e.t.Helper()
	var created struct {
		Task struct{ ID string } `json:"task"`
	}
	e.postJSON("/taskhub.v1.TaskService/CreateTask", map[string]any{"prompt": "render the logo", "mode": "render"}, &created)
	id := created.Task.ID
	claim := e.claim("render")
	require.Equal(e.t, id, claim.Task.Id)
	e.progress(claim, 30, "frame 30 of 100")
	p.waitFor(fmt.Sprintf(`document.querySelector('[data-task-id="%s"] [role="progressbar"]')?.getAttribute('aria-valuenow') === "30"`, id), "30%")
	return id, claim
}

func (e *env) progress(c *taskhubv1.ClaimTaskResponse, p float64, msg string) {
	e.t.Helper()
	_, err := e.work.ReportProgress(e.t.Context(), connect.NewRequest(&taskhubv1.ReportProgressRequest{
		TaskId: c.Task.Id, LeaseToken: c.LeaseToken, Progress: p, Message: msg,
	}))
	require.NoError(e.t, err)
}

func (e *env) complete(c *taskhubv1.ClaimTaskResponse, result string) {
	e.t.Helper()
	_, err := e.work.CompleteTask(e.t.Context(), connect.NewRequest(&taskhubv1.CompleteTaskRequest{
		TaskId: c.Task.Id, LeaseToken: c.LeaseToken, Result: result,
	}))
	require.NoError(e.t, err)
}

func (e *env) getTask(id string) *taskhubv1.Task {
	e.t.Helper()
	res, err := e.tasks.GetTask(e.t.Context(), connect.NewRequest(&taskhubv1.GetTaskRequest{Id: id}))
	require.NoError(e.t, err)
	return res.Msg.Task
}

// tab is one browser tab.
type tab struct {
	t      *testing.T
	ctx    context.Context
	cancel context.CancelFunc
}

// tab opens a tab in the browser's default profile: tabs opened this way are one "device",
// and share the page's single stream.
func (e *env) tab() *tab { return e.newTab(e.browser) }

// device opens a tab in a new browser context (like a private window): another device, with
// its own storage, locks and stream.
func (e *env) device() *tab { return e.newTab(e.browser, chromedp.WithNewBrowserContext()) }

// newTab opens a tab. Any uncaught exception or console.error in it fails the test: the page's
// script reports its own bugs that way.
func (e *env) newTab(parent context.Context, opts ...chromedp.ContextOption) *tab {
	e.t.Helper()
	ctx, cancel := chromedp.NewContext(parent, opts...)
	require.NoError(e.t, chromedp.Do(ctx, chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		_, err := cdp.Call(ctx, t, page.AddScriptToEvaluateOnNewDocument, page.AddScriptToEvaluateOnNewDocumentParams{Source: recorder})
		return err
	})), "open a tab")
	var mu sync.Mutex
	var problems []string
	require.NoError(e.t, chromedp.Listen(ctx, func(ev any) {
		var problem string
		switch ev := ev.(type) {
		case *runtime.EventExceptionThrown:
			problem = ev.ExceptionDetails.Text
			if x := ev.ExceptionDetails.Exception; x != nil {
				problem += " " + x.Description
			}
		case *runtime.EventConsoleAPICalled:
			if ev.Type == runtime.ConsoleAPICalledTypeError {
				for _, a := range ev.Args {
					problem += " " + string(a.Value) + a.Description
				}
			}
		}
		if problem != "" {
			mu.Lock()
			problems = append(problems, problem)
			mu.Unlock()
		}
	}))
	e.t.Cleanup(func() {
		cancel()
		mu.Lock()
		defer mu.Unlock()
		for _, p := range problems {
			e.t.Errorf("the page reported an error: %s", p)
		}
	})
	return &tab{t: e.t, ctx: ctx, cancel: cancel}
}

// close closes the tab.
func (b *tab) close() {
	b.t.Helper()
	b.cancel()
}

// do runs actions with the wait bound.
func (b *tab) do(actions ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, wait)
	defer cancel()
	require.NoError(b.t, chromedp.Do(ctx, actions...))
}

// disableScripts turns JavaScript off in the tab, as for a person who browses without it.
func (b *tab) disableScripts() {
	b.t.Helper()
	b.do(chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		_, err := cdp.Call(ctx, t, emulation.SetScriptExecutionDisabled, emulation.SetScriptExecutionDisabledParams{Value: true})
		return err
	}))
}

// open navigates to url and waits for the page to be live.
func (b *tab) open(url string) {
	b.t.Helper()
	b.do(chromedp.Navigate(url))
	b.waitLive()
}

// recorder runs in every page from its first byte on and keeps, per task, the distinct progress
// values its card has shown, in order: the value the server rendered first. It also keeps the
// text of every toast shown, which a toast's few seconds on screen would not leave to a poll.
const recorder = `(() => {
	window.seen = {};
	window.toastsSeen = [];
	const record = () => {
		for (const t of document.querySelectorAll('[data-testid="toast"]')) {
			if (t.textContent && !window.toastsSeen.includes(t.textContent)) window.toastsSeen.push(t.textContent);
		}
		for (const c of document.querySelectorAll('[data-testid="task-card"]')) {
			const bar = c.querySelector('[role="progressbar"]');
			if (!bar) continue;
			const v = Number(bar.getAttribute('aria-valuenow'));
			const a = (window.seen[c.dataset.taskId] ||= []);
			if (a[a.length - 1] !== v) a.push(v);
		}
	};
	new MutationObserver(record).observe(document, {subtree: true, childList: true, attributes: true, characterData: true});
})()`

// waitToast waits until the page has shown a toast that contains text, now or earlier.
func (b *tab) waitToast(text, what string) {
	b.t.Helper()
	b.waitFor(fmt.Sprintf(`window.toastsSeen.some(t => t.includes(%q))`, text), what)
}

// waitLive waits for the connection indicator to say live.
func (b *tab) waitLive() {
	b.t.Helper()
	b.waitFor(`document.querySelector('[data-testid="connection"]')?.dataset.status === "live"`, "the page to be live")
}

func (b *tab) status() string {
	return eval[string](b, `document.querySelector('[data-testid="connection"]').dataset.status`)
}

// waitFor waits for a JavaScript expression to be truthy. It evaluates it every 50 ms, so it
// survives navigations (a form post and its redirect) under way.
func (b *tab) waitFor(expr, what string) {
	b.t.Helper()
	b.waitForWithin(wait, expr, what)
}

// waitForWithin is waitFor for at most d.
func (b *tab) waitForWithin(d time.Duration, expr, what string) {
	b.t.Helper()
	deadline := time.Now().Add(d)
	var err error
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(b.ctx, time.Second)
		var ok bool
		ok, err = chromedp.Run(ctx, chromedp.Evaluate[bool]("!!("+expr+")"))
		cancel()
		if ok && err == nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	b.t.Fatalf("waiting for %s: %v\nconnection: %s\ntoasts: %s\ncards: %+v", what, err,
		b.tryEval(`(c => c && c.dataset.status + " " + c.title)(document.querySelector('[data-testid="connection"]'))`),
		b.tryEval(`JSON.stringify(window.toastsSeen)`), b.cards())
}

func (b *tab) tryEval(expr string) string {
	ctx, cancel := context.WithTimeout(b.ctx, time.Second)
	defer cancel()
	v, _ := chromedp.Run(ctx, chromedp.Evaluate[string](expr))
	return v
}

func eval[T any](b *tab, expr string) T {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, wait)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	require.NoError(b.t, err, "evaluate %s", expr)
	return v
}

// card is what a task card shows.
type card struct {
	ID       string  `json:"id"`
	State    string  `json:"state"`
	Seq      string  `json:"seq"`
	Progress string  `json:"progress"`
	Message  string  `json:"message"`
	Result   *string `json:"result"` // the image's src or the text; nil without a result
	Image    bool    `json:"image"`
	Error    *string `json:"error"`
	Cancel   bool    `json:"cancel"`
}

const cardsJS = `[...document.querySelectorAll('[data-testid="task-card"]')].map(c => {
	const r = c.querySelector('[data-testid="task-result"]');
	const img = r && r.querySelector('img');
	const err = c.querySelector('[data-testid="task-error"]');
	return {
		id: c.dataset.taskId, state: c.dataset.state, seq: c.dataset.seq,
		progress: c.querySelector('[role="progressbar"]').getAttribute('aria-valuenow'),
		message: c.querySelector('[data-testid="task-message"]').textContent,
		result: img ? img.getAttribute('src') : (r ? r.textContent.trim() : null), image: !!img,
		error: err ? err.textContent : null,
		cancel: !!c.querySelector('[data-testid="task-cancel"]'),
	};
})`

// cards returns the cards in page order.
func (b *tab) cards() []card {
	ctx, cancel := context.WithTimeout(b.ctx, wait)
	defer cancel()
	cs, err := chromedp.Run(ctx, chromedp.Evaluate[[]card](cardsJS))
	if err != nil {
		return nil
	}
	return cs
}

// card returns the card of task id; ok is false when there is none.
func (b *tab) card(id string) (card, bool) {
	for _, c := range b.cards() {
		if c.ID == id {
			return c, true
		}
	}
	return card{}, false
}

// waitCard waits for the card of task id to be in state (a TASK_STATE_* name) and returns it.
func (b *tab) waitCard(id, state string) card {
	b.t.Helper()
	b.waitFor(fmt.Sprintf(`document.querySelector('[data-testid="task-card"][data-task-id="%s"]')?.dataset.state === %q`, id, state),
		fmt.Sprintf("task %s to be %s", id, state))
	c, _ := b.card(id)
	return c
}

// seen returns the progress values the card of task id has shown since the page opened.
func (b *tab) seen(id string) []float64 {
	b.t.Helper()
	return eval[[]float64](b, fmt.Sprintf(`window.seen[%q] || []`, id))
}

// screenshot saves a full-page PNG under artifacts/browser/ at the repository's root and returns
// its path.
func (b *tab) screenshot(name string) string {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, wait)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	require.NoError(b.t, err)
	dir, err := filepath.Abs(filepath.Join("..", "..", "artifacts", "browser"))
	require.NoError(b.t, err)
	require.NoError(b.t, os.MkdirAll(dir, 0o755))
	path := filepath.Join(dir, name+".png")
	require.NoError(b.t, os.WriteFile(path, png, 0o644))
	b.t.Logf("screenshot: %s", path)
	return path
}

// proxy forwards TCP connections to the server. blackhole makes the connections open so far
// swallow everything while staying open, like a network path that died without a word; new
// connections go through.
type proxy struct {
	t      *testing.T
	ln     net.Listener
	target string
	mu     sync.Mutex
	pipes  []*pipe
	wg     sync.WaitGroup
}

type pipe struct {
	a, b net.Conn
	dead atomic.Bool
}

func startProxy(t *testing.T, target string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &proxy{t: t, ln: ln, target: target}
	p.wg.Add(1)
	go p.serve()
	t.Cleanup(p.close)
	return p
}

func (p *proxy) url(path string) string { return "http://" + p.ln.Addr().String() + path }

func (p *proxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		pp := &pipe{a: c, b: s}
		p.mu.Lock()
		p.pipes = append(p.pipes, pp)
		p.mu.Unlock()
		p.wg.Add(2)
		go pp.copy(s, c, &p.wg)
		go pp.copy(c, s, &p.wg)
	}
}

func (pp *pipe) copy(dst, src net.Conn, wg *sync.WaitGroup) {
	defer wg.Done()
	defer dst.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if err != nil {
			return
		}
		if pp.dead.Load() {
			continue
		}
		if _, err := dst.Write(buf[:n]); err != nil {
			return
		}
	}
}

func (p *proxy) blackhole() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, pp := range p.pipes {
		pp.dead.Store(true)
	}
}

func (p *proxy) close() {
	p.ln.Close()
	p.mu.Lock()
	for _, pp := range p.pipes {
		pp.a.Close()
		pp.b.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// held is a page load whose script is held back.
type held struct {
	b      *tab
	paused chan fetch.RequestID
}

// holdScript makes the next load of the page's script in this tab wait until release: the page
// renders, but its script does not run.
func (b *tab) holdScript() *held {
	b.t.Helper()
	h := &held{b: b, paused: make(chan fetch.RequestID, 1)}
	require.NoError(b.t, chromedp.Listen(b.ctx, func(ev any) {
		if ev, ok := ev.(*fetch.EventRequestPaused); ok {
			h.paused <- ev.RequestID
		}
	}))
	b.do(chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		if _, err := cdp.Call(ctx, t, network.Enable, network.EnableParams{}); err != nil {
			return err
		}
		if _, err := cdp.Call(ctx, t, network.SetCacheDisabled, network.SetCacheDisabledParams{CacheDisabled: true}); err != nil {
			return err
		}
		_, err := cdp.Call(ctx, t, fetch.Enable, fetch.EnableParams{Patterns: []*fetch.RequestPattern{{URLPattern: "*/assets/app.*.js"}}})
		return err
	}))
	return h
}

// navigate starts loading url without waiting for the load to finish (it cannot, held).
func (h *held) navigate(url string) {
	h.b.t.Helper()
	h.b.do(chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		_, err := cdp.Call(ctx, t, page.Navigate, page.NavigateParams{URL: url})
		return err
	}))
}

// release lets the held script load.
func (h *held) release() {
	h.b.t.Helper()
	var id fetch.RequestID
	select {
	case id = <-h.paused:
	case <-time.After(wait):
		h.b.t.Fatal("the script was never requested")
	}
	h.b.do(chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		if _, err := cdp.Call(ctx, t, fetch.ContinueRequest, fetch.ContinueRequestParams{RequestID: id}); err != nil {
			return err
		}
		_, err := cdp.Call(ctx, t, fetch.Disable, cdp.Empty{})
		return err
	}))
}
