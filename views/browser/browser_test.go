package browser_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/require"

	"github.com/taskhub/taskhub/actors"
	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"
	"github.com/taskhub/taskhub/server"
)

const (
	queued    = "TASK_STATE_QUEUED"
	running   = "TASK_STATE_RUNNING"
	completed = "TASK_STATE_COMPLETED"
	failed    = "TASK_STATE_FAILED"
	cancelled = "TASK_STATE_CANCELLED"
)

// requireLiveProgress checks that a page showed a task's progress as it happened: values the
// worker reported (want), in order, several of them before the end.
func requireLiveProgress(t *testing.T, seen, want []float64) {
	t.Helper()
	require.True(t, slices.IsSorted(seen), "progress only grows: %v", seen)
	require.Equal(t, 100.0, seen[len(seen)-1], "ends at 100: %v", seen)
	var between int
	for _, v := range seen {
		require.True(t, v == 0 || slices.Contains(want, v), "%v is a value the worker reported (%v)", v, want)
		if v > 0 && v < 100 {
			between++
		}
	}
	require.GreaterOrEqual(t, between, 3, "the page showed progress while it happened, not only the end: %v", seen)
}

func TestBrowser_TwoDevicesSeeTheSameTaskLive(t *testing.T) {
	e := setup(t, server.Config{DemoWorkers: 2})
	a, b := e.device(), e.device()
	a.open(e.url("/"))
	b.open(e.url("/"))

	// Create on device A through its form: with JavaScript, without a reload.
	a.do(
		chromedp.SetValue(chromedp.CSS(`[data-testid="create-form"] [name="prompt"]`), "a lighthouse at dawn"),
		chromedp.SetValue(chromedp.CSS(`[data-testid="create-form"] [name="params"]`), "steps=10, step_ms=300"),
		chromedp.Click(chromedp.CSS(`[data-testid="create-submit"]`)),
	)
	a.waitFor(`document.querySelectorAll('[data-testid="task-card"]').length === 1`, "the new card on A")
	id := a.cards()[0].ID
	// The stream may show the card before CreateTask's answer reaches the form, which clears then.
	a.waitFor(`document.querySelector('[data-testid="create-form"] [name="prompt"]').value === ""`, "the form is cleared")
	require.Equal(t, "live", a.status(), "no reload happened: the page is still live")

	// Device B, which did nothing, shows it too, and both follow it to the end.
	ca := a.waitCard(id, completed)
	cb := b.waitCard(id, completed)
	require.Equal(t, ca, cb, "both devices show the same final card")
	require.Equal(t, "100", ca.Progress)
	require.True(t, ca.Image, "the demo's result is an image")
	require.True(t, strings.HasPrefix(*ca.Result, "data:image/svg+xml;base64,"), "result %.40s", *ca.Result)
	require.False(t, ca.Cancel, "a finished task has no cancel button")

	steps := []float64{10, 20, 30, 40, 50, 60, 70, 80, 90, 100}
	requireLiveProgress(t, a.seen(id), steps)
	requireLiveProgress(t, b.seen(id), steps)
	task := e.getTask(id)
	require.Equal(t, fmt.Sprint(task.Seq), ca.Seq, "the card shows the task's latest version")
}

func TestBrowser_TaskCreatedWithCurlAppears(t *testing.T) {
	e := setup(t, server.Config{})
	p := e.tab()
	p.open(e.url("/"))

	var created struct {
		Task struct{ ID string } `json:"task"`
	}
	e.postJSON("/taskhub.v1.TaskService/CreateTask", map[string]any{"prompt": "import users.csv", "mode": "import"}, &created)
	id := created.Task.ID
	c := p.waitCard(id, queued)
	require.True(t, c.Cancel)
	require.Equal(t, "0", c.Progress)

	// A worker speaking plain JSON too.
	var claim struct {
		Task       struct{ ID string } `json:"task"`
		LeaseToken string              `json:"leaseToken"`
	}
	e.postJSON("/taskhub.v1.WorkerService/ClaimTask", map[string]any{"workerId": "me", "modes": []string{"import"}, "waitSeconds": 5}, &claim)
	require.Equal(t, id, claim.Task.ID)
	p.waitCard(id, running)
	var ignored map[string]any
	e.postJSON("/taskhub.v1.WorkerService/ReportProgress", map[string]any{"taskId": id, "leaseToken": claim.LeaseToken, "progress": 40, "message": "row 400 of 1000"}, &ignored)
	p.waitFor(fmt.Sprintf(`document.querySelector('[data-task-id="%s"] [role="progressbar"]').getAttribute('aria-valuenow') === "40"`, id), "40%")
	c, _ = p.card(id)
	require.Equal(t, "row 400 of 1000", c.Message)
	require.Equal(t, "live", p.status())

	e.postJSON("/taskhub.v1.WorkerService/CompleteTask", map[string]any{"taskId": id, "leaseToken": claim.LeaseToken, "result": "1000 users imported"}, &ignored)
	c = p.waitCard(id, completed)
	require.False(t, c.Image, "a text result is shown as text")
	require.Equal(t, "1000 users imported", *c.Result)
	require.Equal(t, []float64{0, 40, 100}, p.seen(id))
}

func TestBrowser_CancelFromThePage(t *testing.T) {
	e := setup(t, server.Config{DemoWorkers: 1})
	p := e.tab()
	p.open(e.url("/"))
	task := e.createDemo("a very long render", 200, 100)
	p.waitFor(fmt.Sprintf(`Number(document.querySelector('[data-task-id="%s"] [role="progressbar"]')?.getAttribute('aria-valuenow')) > 0`, task.Id), "progress")

	p.do(chromedp.Click(chromedp.CSS(fmt.Sprintf(`[data-task-id="%s"] [data-testid="task-cancel"]`, task.Id))))
	c := p.waitCard(task.Id, cancelled)
	require.False(t, c.Cancel, "the cancel button is gone")
	require.Nil(t, c.Result)
	require.Equal(t, "live", p.status(), "cancelled without a reload: %s", p.tryEval(`document.querySelector('[data-testid="connection"]').title`))
	require.Equal(t, cancelled, e.getTask(task.Id).State.String())
}

func TestBrowser_ServerRestartMidTask(t *testing.T) {
	e := setup(t, server.Config{})
	p := e.tab()
	p.open(e.url("/"))
	url := e.url("/")

	// This test is the worker, so it decides when the task moves.
	id, claim := e.renderAt30(p)

	// The server goes away: the page says so, and keeps trying.
	e.stop()
	p.waitFor(`document.querySelector('[data-testid="connection"]').dataset.status !== "live"`, "the page to notice")
	require.Contains(t, []string{"reconnecting", "offline"}, p.status())
	// A drop that lasts gets one toast (a blip gets none); a failed attempt or two meanwhile.
	p.waitFor(`[...document.querySelectorAll('[data-testid="toast"]')].some(t => t.textContent.includes("Connection lost"))`, "the toast about the drop")
	time.Sleep(300 * time.Millisecond) // the toast's entrance
	p.screenshot("reconnecting")

	// It comes back on the same port and data dir; the worker finishes at once, before the page
	// is likely to have reconnected, so the page learns the end from the replay.
	e.restart()
	require.Equal(t, url, e.url("/"), "same port")
	e.progress(claim, 60, "frame 60 of 100")
	logo := e.url("/logo.png") // an image URL that keeps the browser's traffic on this machine
	e.complete(claim, logo)

	c := p.waitCard(id, completed)
	p.waitLive()
	require.Equal(t, "100", c.Progress)
	require.True(t, c.Image)
	require.Equal(t, logo, *c.Result)
	require.Equal(t, []float64{0, 30, 60, 100}, p.seen(id), "nothing missed, nothing out of order")
	p.waitToast("nothing was missed", "the recovery toast")
	require.LessOrEqual(t, eval[int](p, `document.querySelectorAll('[data-testid="toast"]').length`), 1, "one toast about it, not a storm")
}

func TestBrowser_EightTabsStayLive(t *testing.T) {
	e := setup(t, server.Config{DemoWorkers: 2})
	var tabs []*tab
	for range 8 {
		p := e.tab()
		p.open(e.url("/"))
		tabs = append(tabs, p)
	}
	leaders := func() []int {
		var is []int
		for i, p := range tabs {
			if p != nil && eval[bool](p, `document.querySelector('[data-testid="connection"]').dataset.leader === "true"`) {
				is = append(is, i)
			}
		}
		return is
	}
	ls := leaders()
	require.Len(t, ls, 1, "one tab runs the stream for all")

	steps := []float64{10, 20, 30, 40, 50, 60, 70, 80, 90, 100}
	task := e.createDemo("eight tabs", 10, 300)
	for i, p := range tabs {
		c := p.waitCard(task.Id, completed)
		require.True(t, c.Image, "tab %d", i)
		requireLiveProgress(t, p.seen(task.Id), steps)
		require.Equal(t, "live", p.status(), "tab %d", i)
	}

	// The leading tab closes: another takes over, and the other seven stay live.
	tabs[ls[0]].close()
	tabs[ls[0]] = nil
	deadline := time.Now().Add(wait)
	for len(leaders()) != 1 {
		require.True(t, time.Now().Before(deadline), "no tab took the lead")
		time.Sleep(50 * time.Millisecond)
	}
	task = e.createDemo("after the leader left", 10, 300)
	for _, p := range tabs {
		if p != nil {
			p.waitCard(task.Id, completed)
			requireLiveProgress(t, p.seen(task.Id), steps)
		}
	}
}

func TestBrowser_WithoutJavaScript(t *testing.T) {
	e := setup(t, server.Config{})
	p := e.tab()
	p.disableScripts()
	p.do(chromedp.Navigate(e.url("/")))
	require.True(t, eval[bool](p, `true`), "evaluation still works: only the page's scripts are off")
	require.True(t, eval[bool](p, `document.querySelector('[data-testid="connection"]').hidden`), "no live indicator without the script")

	p.do(
		chromedp.SetValue(chromedp.CSS(`[name="prompt"]`), "no script here"),
		chromedp.SetValue(chromedp.CSS(`[name="params"]`), "size=large"),
		chromedp.Click(chromedp.CSS(`[data-testid="create-submit"]`)),
	)
	p.waitFor(`document.querySelectorAll('[data-testid="task-card"]').length === 1`, "the card after the redirect")
	c := p.cards()[0]
	require.Equal(t, queued, c.State)
	task := e.getTask(c.ID)
	require.Equal(t, "no script here", task.Prompt)
	require.Equal(t, map[string]string{"size": "large"}, task.Params)
	require.Equal(t, e.url("/"), eval[string](p, `location.href`), "redirected back to the page")

	p.do(chromedp.Click(chromedp.CSS(`[data-testid="task-cancel"]`)))
	p.waitCard(c.ID, cancelled)
}

// A connection that dies without a word is noticed by its missing heartbeats; and when the
// history the page missed was compacted away meanwhile, the page reloads its list in place and
// says so.
func TestBrowser_DeadConnectionAndLostHistory(t *testing.T) {
	e := setup(t, server.Config{Options: actors.Options{Heartbeat: time.Second, Retention: 300 * time.Millisecond}})
	px := startProxy(t, e.cfg.Addr)
	p := e.tab()
	p.open(px.url("/"))
	require.Equal(t, "1000", eval[string](p, `document.querySelector('[data-testid="task-list"]').dataset.heartbeatMs`))

	px.blackhole()
	var created struct {
		Task struct{ ID string } `json:"task"`
	}
	e.postJSON("/taskhub.v1.TaskService/CreateTask", map[string]any{"prompt": "finished while you were away", "mode": "render"}, &created)
	claim := e.claim("render")
	e.progress(claim, 50, "half way")
	e.complete(claim, "done while away")
	time.Sleep(time.Second) // past the retention: the task's events but its last are gone
	_, ok := p.card(created.Task.ID)
	require.False(t, ok, "the page cannot know yet: its connection is silent")

	// Two heartbeats and 5 s of silence later, the page gives up on the connection and makes
	// a new one; it cannot resume, so it reloads its list.
	p.waitFor(`document.querySelector('[data-testid="connection"]').dataset.status !== "live"`, "the page to notice the silence")
	// The browser may send its next tries down its other kept-alive connections, dead too: each
	// costs the page two heartbeats of silence and a growing backoff (1 s, 2 s, 4 s...) before it
	// reaches a new one, which on a busy machine takes longer than a usual wait.
	p.waitForWithin(45*time.Second, `document.querySelector('[data-testid="connection"]').dataset.status === "live"`, "the page to reconnect")
	c := p.waitCard(created.Task.ID, completed)
	require.Equal(t, "done while away", *c.Result)
	p.waitLive()
	p.waitToast("history was gone", "the reload toast")
}

// When the event log is recreated (a new epoch), nothing on the page can be trusted: it
// reloads itself and says why.
func TestBrowser_NewEventLogReloadsThePage(t *testing.T) {
	e := setup(t, server.Config{})
	p := e.tab()
	p.open(e.url("/"))
	var created struct {
		Task struct{ ID string } `json:"task"`
	}
	e.postJSON("/taskhub.v1.TaskService/CreateTask", map[string]any{"prompt": "in the old log", "mode": "render"}, &created)
	p.waitCard(created.Task.ID, queued)
	eval[bool](p, `window.marker = true`)

	e.stop()
	e.cfg.DataDir = t.TempDir()
	e.start()
	p.waitFor(`!window.marker && document.readyState === "complete"`, "the reload")
	p.waitLive()
	require.Empty(t, p.cards(), "the old log's task is gone with it")
	p.waitToast("history was reset", "the reload toast")
}

// Tabs that open while a task runs show it moving on from their render to its end, in order,
// like the tab that leads.
func TestBrowser_TabsOpenedMidTask(t *testing.T) {
	e := setup(t, server.Config{DemoWorkers: 1})
	leader := e.tab()
	leader.open(e.url("/"))
	task := e.createDemo("opened mid-task", 40, 100)
	leader.waitFor(fmt.Sprintf(`Number(document.querySelector('[data-task-id="%s"] [role="progressbar"]')?.getAttribute('aria-valuenow')) > 0`, task.Id), "progress")

	var late []*tab
	for range 3 {
		p := e.tab()
		p.open(e.url("/"))
		late = append(late, p)
		time.Sleep(300 * time.Millisecond)
	}
	leader.waitCard(task.Id, completed)
	all := leader.seen(task.Id)
	for i, p := range late {
		p.waitCard(task.Id, completed)
		// The DOM may skip a value when two updates land in one task (a replay): what matters
		// is that every value is one the leader showed, in the same order, up to the end.
		seen := p.seen(task.Id)
		require.Greater(t, seen[0], 0.0, "tab %d was rendered mid-task", i)
		rest := all
		for _, v := range seen {
			j := slices.Index(rest, v)
			require.GreaterOrEqual(t, j, 0, "tab %d showed %v out of order: %v, leader %v", i, v, seen, all)
			rest = rest[j+1:]
		}
		require.Empty(t, rest, "tab %d ends where the leader ends", i)
	}
}

// Whatever happens between the render of a page and its script's connection is not lost: here
// the task finishes while the script is held back, for a tab that then leads and for a tab that
// then follows another.
func TestBrowser_NothingLostBetweenRenderAndConnect(t *testing.T) {
	e := setup(t, server.Config{})
	for _, follows := range []bool{false, true} {
		t.Run(fmt.Sprintf("follows=%v", follows), func(t *testing.T) {
			var created struct {
				Task struct{ ID string } `json:"task"`
			}
			e.postJSON("/taskhub.v1.TaskService/CreateTask", map[string]any{"prompt": fmt.Sprint("held back, follows=", follows), "mode": "render"}, &created)
			claim := e.claim("render")
			e.progress(claim, 30, "a third")

			p := e.device()
			if follows {
				p.open(e.url("/")) // this tab leads; the held one will follow it
				p.waitCard(created.Task.ID, running)
				p = e.newTab(p.ctx)
			}
			release := p.holdScript()
			release.navigate(e.url("/"))
			p.waitFor(fmt.Sprintf(`document.querySelector('[data-task-id="%s"]')?.dataset.state === %q`, created.Task.ID, running), "the render")

			e.progress(claim, 60, "two thirds")
			e.complete(claim, "done while the script was held")
			release.release()

			c := p.waitCard(created.Task.ID, completed)
			p.waitLive()
			require.Equal(t, "done while the script was held", *c.Result)
			seen := p.seen(created.Task.ID)
			require.Equal(t, 30.0, seen[0], "rendered at 30%%")
			require.Equal(t, 100.0, seen[len(seen)-1])
		})
	}
}

// When the page has lost history and its user has more active tasks than fit in one stream
// message, the fresh snapshot comes in parts: the page takes them all, reloads its list once,
// and goes live.
func TestBrowser_LostHistoryWithALargeSnapshot(t *testing.T) {
	e := setup(t, server.Config{Options: actors.Options{Heartbeat: time.Second, Retention: 300 * time.Millisecond}})
	px := startProxy(t, e.cfg.Addr)
	gone := e.createDemo("cancelled while the page is away", 1, 10_000)
	p := e.tab()
	p.open(px.url("/"))
	p.waitCard(gone.Id, queued)

	// While the page is away, a task ends and its history is compacted (retention 300 ms):
	// the page can no longer resume after the seq it saw.
	px.blackhole()
	_, err := e.tasks.CancelTask(t.Context(), connect.NewRequest(&taskhubv1.CancelTaskRequest{Id: gone.Id}))
	require.NoError(t, err)
	prompt := strings.Repeat("a long prompt ", 1100) // 15 KiB: 150 tasks make three parts
	var newest struct {
		Task struct{ ID string } `json:"task"`
	}
	for range 150 {
		e.postJSON("/taskhub.v1.TaskService/CreateTask", map[string]any{"prompt": prompt, "mode": "render"}, &newest)
	}
	time.Sleep(time.Second) // past the retention

	p.waitFor(`document.querySelector('[data-testid="connection"]').dataset.status !== "live"`, "the page to notice the silence")
	p.waitCard(newest.Task.ID, queued)
	p.waitLive()
	p.waitToast("history was gone", "the reload toast")
	p.waitCard(gone.Id, cancelled)
	require.Equal(t, 151, eval[int](p, `document.querySelectorAll("[data-task-id]").length`), "a card for every task created while away, and the cancelled one")
}
