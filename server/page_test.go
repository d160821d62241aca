package server_test

import (
	"net/http"
	"net/url"
	"strings"
	"testing"

	"connectrpc.com/connect"
	"github.com/PuerkitoBio/goquery"
	"github.com/stretchr/testify/require"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"

	"github.com/taskhub/taskhub/server"
)

// page is the task page as a browser without JavaScript gets it.
type page struct {
	status int
	doc    *goquery.Document
}

// getPage renders GET /.
func getPage(t *testing.T, b *bundle) page {
	t.Helper()
	res, err := b.http.Get(b.srv.URL() + "/")
	require.NoError(t, err)
	return readPage(t, res)
}

func readPage(t *testing.T, res *http.Response) page {
	t.Helper()
	defer res.Body.Close()
	require.Equal(t, "text/html; charset=utf-8", res.Header.Get("Content-Type"))
	doc, err := goquery.NewDocumentFromReader(res.Body)
	require.NoError(t, err)
	return page{status: res.StatusCode, doc: doc}
}

// postForm posts form values to path the way a browser submits a form, without following the
// redirect. origin, when set, is sent as the Origin header; header adds more.
func postForm(t *testing.T, b *bundle, path string, values url.Values, origin string, header http.Header) *http.Response {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, b.srv.URL()+path, strings.NewReader(values.Encode()))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if origin != "" {
		req.Header.Set("Origin", origin)
	}
	for k, vs := range header {
		req.Header[k] = vs
	}
	noFollow := &http.Client{
		Transport:     b.http.Transport,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	res, err := noFollow.Do(req)
	require.NoError(t, err)
	return res
}

func requireRedirectHome(t *testing.T, res *http.Response) {
	t.Helper()
	res.Body.Close()
	require.Equal(t, http.StatusSeeOther, res.StatusCode)
	require.Equal(t, "/", res.Header.Get("Location"))
}

// cards returns the task cards in page order.
func (p page) cards() *goquery.Selection { return p.doc.Find(`[data-testid="task-card"]`) }

func (p page) card(t *testing.T, id string) *goquery.Selection {
	t.Helper()
	c := p.doc.Find(`[data-testid="task-card"][data-task-id="` + id + `"]`)
	require.Equal(t, 1, c.Length(), "the card of task %s", id)
	return c
}

func cardIDs(s *goquery.Selection) []string {
	var ids []string
	s.Each(func(_ int, c *goquery.Selection) { ids = append(ids, c.AttrOr("data-task-id", "")) })
	return ids
}

func TestPage_Index(t *testing.T) {
	t.Parallel()
	b := setup(t, server.Config{})

	p := getPage(t, b)
	require.Equal(t, http.StatusOK, p.status)
	form := p.doc.Find(`form[data-testid="create-form"]`)
	require.Equal(t, 1, form.Length())
	require.Equal(t, "post", strings.ToLower(form.AttrOr("method", "")))
	require.Equal(t, "/tasks", form.AttrOr("action", ""))
	require.Equal(t, 1, form.Find(`textarea[name="prompt"]`).Length())
	modes := form.Find(`select[name="mode"] option`)
	require.Equal(t, []string{"demo"}, modes.Map(func(_ int, o *goquery.Selection) string { return o.AttrOr("value", "") }))
	require.Zero(t, p.cards().Length())

	t1 := createTask(t, b.tasks, "first", "render")
	t2 := createTask(t, b.tasks, "second", "render")
	t3 := createTask(t, b.tasks, "third", "render")
	c := claimTask(t, b.work, "w1", "render")
	require.Equal(t, t1.Id, c.Task.Id)
	_, err := b.work.ReportProgress(t.Context(), connect.NewRequest(&taskhubv1.ReportProgressRequest{TaskId: t1.Id, LeaseToken: c.LeaseToken, Progress: 40, Message: "denoising 4/10"}))
	require.NoError(t, err)

	p = getPage(t, b)
	require.Equal(t, []string{t3.Id, t2.Id, t1.Id}, cardIDs(p.cards()), "newest first")
	want := map[string]struct {
		prompt, state, progress string
	}{
		t1.Id: {"first", "TASK_STATE_RUNNING", "40"},
		t2.Id: {"second", "TASK_STATE_QUEUED", "0"},
		t3.Id: {"third", "TASK_STATE_QUEUED", "0"},
	}
	for id, w := range want {
		card := p.card(t, id)
		require.Equal(t, w.state, card.AttrOr("data-state", ""))
		require.Equal(t, w.prompt, strings.TrimSpace(card.Find("h2").Text()))
		bar := card.Find(`[role="progressbar"]`)
		require.Equal(t, 1, bar.Length())
		require.Equal(t, w.progress, bar.AttrOr("aria-valuenow", ""))
		require.Equal(t, "0", bar.AttrOr("aria-valuemin", ""))
		require.Equal(t, "100", bar.AttrOr("aria-valuemax", ""))
		require.Equal(t, 1, card.Find(`[data-testid="task-cancel"]`).Length(), "an active task can be cancelled")
		require.Zero(t, card.Find(`[data-testid="task-result"]`).Length())
	}
	require.Contains(t, p.card(t, t1.Id).Find(`[data-testid="task-message"]`).Text(), "denoising 4/10")
}

func TestPage_CreateByForm(t *testing.T) {
	t.Parallel()
	b := setup(t, server.Config{})

	requireRedirectHome(t, postForm(t, b, "/tasks", url.Values{"prompt": {"same origin"}, "mode": {"demo"}}, b.srv.URL(), nil))
	requireRedirectHome(t, postForm(t, b, "/tasks", url.Values{"prompt": {"no origin"}, "mode": {"render"}}, "", nil))
	requireRedirectHome(t, postForm(t, b, "/tasks", url.Values{"prompt": {"same site"}}, "", http.Header{"Sec-Fetch-Site": {"same-origin"}}))

	tasks := listTasks(t, b.tasks, "")
	require.Len(t, tasks, 3)
	require.Equal(t, "same site", tasks[0].Prompt)
	require.Equal(t, "demo", tasks[0].Mode, "the default mode")
	require.Equal(t, "no origin", tasks[1].Prompt)
	require.Equal(t, "render", tasks[1].Mode)
	require.Equal(t, "same origin", tasks[2].Prompt)

	p := getPage(t, b)
	require.Equal(t, []string{tasks[0].Id, tasks[1].Id, tasks[2].Id}, cardIDs(p.cards()))
}

func TestPage_CreateRejected(t *testing.T) {
	t.Parallel()
	b := setup(t, server.Config{})
	createTask(t, b.tasks, "already here", "render")

	cases := []struct {
		name   string
		values url.Values
		msg    string
	}{
		{"empty prompt", url.Values{"prompt": {""}, "mode": {"demo"}}, "prompt"},
		{"malformed mode", url.Values{"prompt": {"keep me"}, "mode": {"Bad Mode"}}, "mode"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := listTasks(t, b.tasks, "")
			p := readPage(t, postForm(t, b, "/tasks", tc.values, b.srv.URL(), nil))
			require.Equal(t, http.StatusUnprocessableEntity, p.status)
			form := p.doc.Find(`form[data-testid="create-form"]`)
			require.Equal(t, 1, form.Length(), "the page is rendered again")
			alert := form.Find(`[role="alert"]`)
			require.Equal(t, 1, alert.Length())
			require.Contains(t, alert.Text(), tc.msg)
			require.Equal(t, tc.values.Get("prompt"), form.Find(`textarea[name="prompt"]`).Text(), "the prompt is kept")
			require.Equal(t, len(before), p.cards().Length())
			requireSameTasks(t, before, listTasks(t, b.tasks, ""))
		})
	}
}

func TestPage_Cancel(t *testing.T) {
	t.Parallel()
	b := setup(t, server.Config{})
	task := createTask(t, b.tasks, "cancel me", "render")

	requireRedirectHome(t, postForm(t, b, "/tasks/"+task.Id+"/cancel", nil, b.srv.URL(), nil))
	require.Equal(t, taskhubv1.TaskState_TASK_STATE_CANCELLED, getTask(t, b.tasks, task.Id, "").State)

	card := getPage(t, b).card(t, task.Id)
	require.Equal(t, "TASK_STATE_CANCELLED", card.AttrOr("data-state", ""))
	require.Zero(t, card.Find(`[data-testid="task-cancel"]`).Length(), "a finished task has no cancel button")

	// Cancelling again (the task finished meanwhile) just shows the page.
	requireRedirectHome(t, postForm(t, b, "/tasks/"+task.Id+"/cancel", nil, "", nil))

	res := postForm(t, b, "/tasks/01ARZ3NDEKTSV4RRFFQ69G5FAV/cancel", nil, "", nil)
	res.Body.Close()
	require.Equal(t, http.StatusNotFound, res.StatusCode)
	res = postForm(t, b, "/tasks/nope/cancel", nil, "", nil)
	res.Body.Close()
	require.Equal(t, http.StatusBadRequest, res.StatusCode)
}

func TestPage_CrossSiteRefused(t *testing.T) {
	t.Parallel()
	b := setup(t, server.Config{})
	task := createTask(t, b.tasks, "keep me", "render")
	before := listTasks(t, b.tasks, "")

	cases := []struct {
		name   string
		path   string
		origin string
		header http.Header
	}{
		{"create, Sec-Fetch-Site cross-site", "/tasks", "", http.Header{"Sec-Fetch-Site": {"cross-site"}}},
		{"create, Sec-Fetch-Site same-site", "/tasks", "", http.Header{"Sec-Fetch-Site": {"same-site"}}},
		{"create, foreign Origin", "/tasks", "https://attacker.example", nil},
		{"cancel, Sec-Fetch-Site cross-site", "/tasks/" + task.Id + "/cancel", "", http.Header{"Sec-Fetch-Site": {"cross-site"}}},
		{"cancel, foreign Origin", "/tasks/" + task.Id + "/cancel", "https://attacker.example", nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			res := postForm(t, b, tc.path, url.Values{"prompt": {"forged"}, "mode": {"demo"}}, tc.origin, tc.header)
			res.Body.Close()
			require.Equal(t, http.StatusForbidden, res.StatusCode)
			requireSameTasks(t, before, listTasks(t, b.tasks, ""))
		})
	}
}

func TestPage_DemoResults(t *testing.T) {
	t.Parallel()
	b := setup(t, server.Config{DemoWorkers: 2})
	create := func(prompt string) *taskhubv1.Task {
		res, err := b.tasks.CreateTask(t.Context(), connect.NewRequest(&taskhubv1.CreateTaskRequest{
			Prompt: prompt, Params: map[string]string{"steps": "2", "step_ms": "0"},
		}))
		require.NoError(t, err)
		return res.Msg.Task
	}
	ok, failing := create("a lighthouse <at> dawn"), create("fail, please")
	waitTask(t, b.tasks, ok.Id, "", finished)
	waitTask(t, b.tasks, failing.Id, "", finished)

	p := getPage(t, b)
	card := p.card(t, ok.Id)
	require.Equal(t, "TASK_STATE_COMPLETED", card.AttrOr("data-state", ""))
	require.Equal(t, "100", card.Find(`[role="progressbar"]`).AttrOr("aria-valuenow", ""))
	img := card.Find(`[data-testid="task-result"] img`)
	require.Equal(t, 1, img.Length())
	require.True(t, strings.HasPrefix(img.AttrOr("src", ""), "data:image/svg+xml;base64,"), "src: %.60s", img.AttrOr("src", ""))
	require.Equal(t, "Result of a lighthouse <at> dawn", img.AttrOr("alt", ""))
	require.Zero(t, card.Find(`[data-testid="task-cancel"]`).Length())

	card = p.card(t, failing.Id)
	require.Equal(t, "TASK_STATE_FAILED", card.AttrOr("data-state", ""))
	require.Zero(t, card.Find(`[data-testid="task-result"]`).Length())
	require.Contains(t, card.Find(`[data-testid="task-error"]`).Text(), "fail")
}
