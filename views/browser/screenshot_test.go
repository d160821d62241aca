package browser_test

import (
	"context"
	"fmt"
	"testing"

	"connectrpc.com/connect"
	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/require"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"

	"github.com/taskhub/taskhub/server"
)

// TestBrowser_Screenshots saves pictures of the page with tasks in every state, at desktop and
// phone widths and in the dark scheme, into artifacts/browser/ for people to look at.
func TestBrowser_Screenshots(t *testing.T) {
	e := setup(t, server.Config{DemoWorkers: 2})

	// History, oldest first: an image result, a failure, a text result, a cancelled task.
	done := e.createDemo("A lighthouse at dawn, in watercolour", 4, 50)
	bad := e.createDemo("An impossible staircase (fail, please)", 5, 50)
	var imp struct {
		Task struct{ ID string } `json:"task"`
	}
	e.postJSON("/taskhub.v1.TaskService/CreateTask", map[string]any{"prompt": "Import users.csv into the CRM", "mode": "import"}, &imp)
	c := e.claim("import")
	e.progress(c, 100, "row 1000 of 1000")
	e.complete(c, "1000 users imported, 3 skipped (duplicate e-mail addresses)")
	var off struct {
		Task struct{ ID string } `json:"task"`
	}
	e.postJSON("/taskhub.v1.TaskService/CreateTask", map[string]any{"prompt": "Render the 4K trailer", "mode": "render"}, &off)
	_, err := e.tasks.CancelTask(t.Context(), connect.NewRequest(&taskhubv1.CancelTaskRequest{Id: off.Task.ID}))
	require.NoError(t, err)
	// Now: one waiting for a worker, one running for a while.
	var waiting struct {
		Task struct{ ID string } `json:"task"`
	}
	e.postJSON("/taskhub.v1.TaskService/CreateTask", map[string]any{"prompt": "Transcribe the all-hands meeting recording", "mode": "transcribe"}, &waiting)
	run := e.createDemo("A cat astronaut floating above Saturn, oil painting, dramatic light", 200, 200)

	shoot := func(name string, setup ...chromedp.Action[chromedp.Void]) string {
		p := e.tab()
		if len(setup) > 0 {
			p.do(setup...)
		}
		p.open(e.url("/"))
		p.waitCard(done.Id, completed)
		p.waitCard(bad.Id, failed)
		p.waitFor(fmt.Sprintf(`document.querySelector('[data-task-id="%s"] .timing')?.textContent.includes("left")`, run.Id), "an estimate")
		return p.screenshot(name)
	}
	shoot("desktop")
	shoot("phone", chromedp.EmulateViewport(390, 844, chromedp.EmulateScale(2), chromedp.EmulateMobile, chromedp.EmulateTouch))
	shoot("desktop-dark", chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		_, err := cdp.Call(ctx, t, emulation.SetEmulatedMedia, emulation.SetEmulatedMediaParams{
			Features: []*emulation.MediaFeature{{Name: "prefers-color-scheme", Value: "dark"}},
		})
		return err
	}))
}
