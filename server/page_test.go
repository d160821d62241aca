package server_test

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/PuerkitoBio/goquery"
	"github.com/stretchr/testify/require"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"

	"github.com/taskhub/taskhub/rpc"
	"github.com/taskhub/taskhub/server"
	"github.com/taskhub/taskhub/views"
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
		require.Equal(t, w.prompt, strings.TrimSpace(card.Find(`[data-testid="task-prompt"]`).Text()))
		bar := card.Find(`[role="progressbar"]`)
		require.Equal(t, 1, bar.Length())
		require.Equal(t, w.progress, bar.AttrOr("aria-valuenow", ""))
		require.Equal(t, "0", bar.AttrOr("aria-valuemin", ""))
		require.Equal(t, "100", bar.AttrOr("aria-valuemax", ""))
		require.Equal(t, 1, card.Find(`[data-testid="task-cancel"]`).Length(), "an active task can be cancelled")
		require.Zero(t, card.Find(`[data-testid="task-result"]`).Length())
	}
	require.Contains(t, p.card(t, t1.Id).Find(`[data-testid="task-message"]`).Text(), "denoising 4/10")

	// User text is isolated from what is around it: a right-to-left override in a prompt
	// (U+202E) cannot reorder the rest of the card.
	rtl := createTask(t, b.tasks, "abc\u202edef", "render")
	card := getPage(t, b).card(t, rtl.Id)
	for _, sel := range []string{`[data-testid="task-prompt"]`, `[data-testid="task-message"]`, `.mode`} {
		require.Equal(t, "auto", card.Find(sel).AttrOr("dir", ""), "%s is not isolated", sel)
	}
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

func TestPage_CompressedWithHashedAssets(t *testing.T) {
	t.Parallel()
	b := setup(t, server.Config{})
	createTask(t, b.tasks, "a lighthouse", "render")

	// An explicit Accept-Encoding turns off the transport's transparent decompression, so the
	// response is seen as sent.
	fetch := func(path string) (*http.Response, []byte) {
		req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, b.srv.URL()+path, nil)
		require.NoError(t, err)
		req.Header.Set("Accept-Encoding", "gzip")
		res, err := b.http.Do(req)
		require.NoError(t, err)
		defer res.Body.Close()
		zr, err := gzip.NewReader(res.Body)
		require.NoError(t, err, "%s is gzipped", path)
		body, err := io.ReadAll(zr)
		require.NoError(t, err)
		require.Equal(t, "gzip", res.Header.Get("Content-Encoding"))
		return res, body
	}
	res, html := fetch("/")
	require.Equal(t, "no-store", res.Header.Get("Cache-Control"))
	require.Contains(t, res.Header.Get("Content-Security-Policy"), "default-src 'self'")
	doc, err := goquery.NewDocumentFromReader(bytes.NewReader(html))
	require.NoError(t, err)
	script := doc.Find(`script[type="module"]`).AttrOr("src", "")
	style := doc.Find(`link[rel="stylesheet"]`).AttrOr("href", "")
	require.Regexp(t, `^/assets/app\.[0-9a-f]{12}\.js$`, script)
	require.Regexp(t, `^/assets/style\.[0-9a-f]{12}\.css$`, style)
	for _, path := range []string{script, style} {
		res, body := fetch(path)
		require.Equal(t, "public, max-age=31536000, immutable", res.Header.Get("Cache-Control"))
		require.NotEmpty(t, body)
	}

	// The page carries what its script needs to resume, and the templates it clones are
	// inert: no parser takes them for cards.
	list := doc.Find(`[data-testid="task-list"]`)
	require.NotEmpty(t, list.AttrOr("data-epoch", ""))
	require.NotEqual(t, "0", list.AttrOr("data-seq", "0"))
	require.Equal(t, "15000", list.AttrOr("data-heartbeat-ms", ""))
	require.Equal(t, 1, doc.Find(`[data-testid="task-card"]`).Length())
	require.Equal(t, 4, doc.Find(`script[type="text/html"]`).Length())
	require.Equal(t, 1, doc.Find(`[data-testid="connection"]`).Length())
}

func TestPage_Paging(t *testing.T) {
	t.Parallel()
	b := setup(t, server.Config{})
	var ids []string
	for i := range views.PageSize + 3 {
		ids = append(ids, createTask(t, b.tasks, fmt.Sprint("task ", i), "render").Id)
	}
	slices.Reverse(ids) // newest first

	p := getPage(t, b)
	require.Equal(t, ids[:views.PageSize], cardIDs(p.cards()))
	more := p.doc.Find(`[data-testid="load-more"]`)
	require.Equal(t, 1, more.Length(), "a link to older tasks")
	require.Equal(t, "true", p.doc.Find(`[data-testid="task-list"]`).AttrOr("data-first-page", ""))

	res, err := b.http.Get(b.srv.URL() + more.AttrOr("href", ""))
	require.NoError(t, err)
	p = readPage(t, res)
	require.Equal(t, ids[views.PageSize:], cardIDs(p.cards()), "the next page, without JavaScript")
	require.Zero(t, p.doc.Find(`[data-testid="load-more"]`).Length(), "the last page")
	require.Equal(t, "false", p.doc.Find(`[data-testid="task-list"]`).AttrOr("data-first-page", ""))

	res, err = b.http.Get(b.srv.URL() + "/?page=garbage")
	require.NoError(t, err)
	res.Body.Close()
	require.Equal(t, http.StatusBadRequest, res.StatusCode)
}

func TestPage_FormParamsAndModes(t *testing.T) {
	t.Parallel()
	b := setup(t, server.Config{})
	createTask(t, b.tasks, "an import", "import")

	requireRedirectHome(t, postForm(t, b, "/tasks", url.Values{"prompt": {"with params"}, "mode": {"demo"}, "params": {"steps=3, step_ms = 0"}}, "", nil))
	tasks := listTasks(t, b.tasks, "")
	require.Equal(t, map[string]string{"steps": "3", "step_ms": "0"}, tasks[0].Params)

	p := readPage(t, postForm(t, b, "/tasks", url.Values{"prompt": {"keep me"}, "mode": {"import"}, "params": {"steps"}}, "", nil))
	require.Equal(t, http.StatusUnprocessableEntity, p.status)
	form := p.doc.Find(`form[data-testid="create-form"]`)
	require.Contains(t, form.Find(`[role="alert"]`).Text(), "key=value")
	require.Equal(t, "steps", form.Find(`[name="params"]`).AttrOr("value", ""), "the params are kept")
	require.Equal(t, "import", form.Find(`[name="mode"] option[selected]`).AttrOr("value", ""), "the mode is kept")
	modes := form.Find(`[name="mode"] option`).Map(func(_ int, o *goquery.Selection) string { return o.AttrOr("value", "") })
	require.Equal(t, []string{"demo", "import"}, modes, "the default mode first, then the modes in use")
	require.Len(t, listTasks(t, b.tasks, ""), 2, "nothing created")
}

// A browser signs in with a user token and gets a session cookie, which the pages and
// TaskService accept from the server's own pages only; bearer tokens keep working.
func TestPage_SignInSession(t *testing.T) {
	t.Parallel()
	b := setup(t, server.Config{AuthFile: writeAuthFile(t)})
	browser := func(method, path string, body url.Values, cookie *http.Cookie, header http.Header) *http.Response {
		var r io.Reader
		if body != nil {
			r = strings.NewReader(body.Encode())
		}
		req, err := http.NewRequestWithContext(t.Context(), method, b.srv.URL()+path, r)
		require.NoError(t, err)
		req.Header.Set("Accept", "text/html")
		if body != nil {
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		}
		if cookie != nil {
			req.AddCookie(cookie)
		}
		for k, v := range header {
			req.Header[k] = v
		}
		noFollow := &http.Client{Transport: b.http.Transport, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
		res, err := noFollow.Do(req)
		require.NoError(t, err)
		t.Cleanup(func() { res.Body.Close() })
		return res
	}

	res := browser(http.MethodGet, "/", nil, nil, nil)
	require.Equal(t, http.StatusSeeOther, res.StatusCode, "a browser without a session is sent to sign in")
	require.Equal(t, "/signin", res.Header.Get("Location"))
	p := readPage(t, browser(http.MethodGet, "/signin", nil, nil, nil))
	require.Equal(t, 1, p.doc.Find(`form[data-testid="signin-form"] input[name="token"][type="password"]`).Length())

	for _, c := range []struct {
		token, msg string
		status     int
	}{{"wrong-token-0123456789", "unknown token", http.StatusUnauthorized}, {workerToken, "worker", http.StatusForbidden}} {
		p = readPage(t, browser(http.MethodPost, "/signin", url.Values{"token": {c.token}}, nil, nil))
		require.Equal(t, c.status, p.status)
		require.Contains(t, p.doc.Find(`[role="alert"]`).Text(), c.msg)
	}

	res = browser(http.MethodPost, "/signin", url.Values{"token": {" " + aliceToken + "\n"}}, nil, nil)
	require.Equal(t, http.StatusSeeOther, res.StatusCode)
	require.Equal(t, "/", res.Header.Get("Location"))
	cookies := res.Cookies()
	require.Len(t, cookies, 1)
	session := cookies[0]
	require.Equal(t, rpc.SessionCookie, session.Name)
	require.True(t, session.HttpOnly)
	require.Equal(t, http.SameSiteStrictMode, session.SameSite)
	require.False(t, session.Secure, "plain HTTP: a Secure cookie would never come back")
	require.Equal(t, int(rpc.SessionMaxAge/time.Second), session.MaxAge)
	require.NotContains(t, session.Value, aliceToken, "the cookie is not the token")

	p = readPage(t, browser(http.MethodGet, "/", nil, &http.Cookie{Name: session.Name, Value: session.Value}, nil))
	require.Equal(t, http.StatusOK, p.status)
	require.Equal(t, "alice", strings.TrimSpace(p.doc.Find(".user").Text()))

	// TaskService takes the cookie like the page's script sends it.
	withCookie := func(header http.Header) (*taskhubv1.Task, error) {
		req := connect.NewRequest(&taskhubv1.CreateTaskRequest{Prompt: "by cookie", Mode: "render"})
		req.Header().Set("Cookie", session.Name+"="+session.Value)
		for k, v := range header {
			req.Header()[k] = v
		}
		res, err := b.tasks.CreateTask(t.Context(), req)
		if err != nil {
			return nil, err
		}
		return res.Msg.Task, nil
	}
	task, err := withCookie(http.Header{"Sec-Fetch-Site": {"same-origin"}})
	require.NoError(t, err)
	require.Equal(t, "alice", task.Owner)
	for _, site := range []string{"cross-site", "same-site"} {
		_, err = withCookie(http.Header{"Sec-Fetch-Site": {site}})
		requireCode(t, err, connect.CodeUnauthenticated, "own pages")
	}
	// An old browser sends no Sec-Fetch-Site: its Origin says where the call comes from.
	_, err = withCookie(http.Header{"Origin": {"https://evil.example"}})
	requireCode(t, err, connect.CodeUnauthenticated, "own pages")
	_, err = withCookie(http.Header{"Origin": {b.srv.URL()}})
	require.NoError(t, err)
	_, err = b.work.ClaimTask(t.Context(), func() *connect.Request[taskhubv1.ClaimTaskRequest] {
		req := connect.NewRequest(&taskhubv1.ClaimTaskRequest{WorkerId: "w", Modes: []string{"render"}})
		req.Header().Set("Cookie", session.Name+"="+session.Value)
		return req
	}())
	requireCode(t, err, connect.CodeUnauthenticated)
	require.Len(t, listTasks(t, b.tasks, aliceToken), 2, "bearer tokens still work")

	res = browser(http.MethodGet, "/", nil, &http.Cookie{Name: session.Name, Value: "forged"}, nil)
	require.Equal(t, http.StatusSeeOther, res.StatusCode)

	// The session is the server's: it outlives a restart.
	b.restart()
	kept := &http.Cookie{Name: session.Name, Value: session.Value}
	require.Equal(t, http.StatusOK, browser(http.MethodGet, "/", nil, kept, nil).StatusCode)

	res = browser(http.MethodPost, "/signout", url.Values{}, kept, nil)
	require.Equal(t, http.StatusSeeOther, res.StatusCode)
	require.Equal(t, "/signin", res.Header.Get("Location"))
	require.Len(t, res.Cookies(), 1)
	require.Equal(t, -1, res.Cookies()[0].MaxAge, "signing out removes the cookie")
	// A browser (or a thief) that kept the cookie gets nothing for it any more.
	res = browser(http.MethodGet, "/", nil, kept, nil)
	require.Equal(t, http.StatusSeeOther, res.StatusCode, "a signed-out session still works")
	_, err = b.tasks.ListTasks(t.Context(), func() *connect.Request[taskhubv1.ListTasksRequest] {
		req := connect.NewRequest(&taskhubv1.ListTasksRequest{})
		req.Header().Set("Cookie", kept.Name+"="+kept.Value)
		return req
	}())
	requireCode(t, err, connect.CodeUnauthenticated, "ended")
}

// TestPage_SessionEndsWithItsToken: a session stands for the token it was made from; when that
// token leaves the auth file, the session ends.
func TestPage_SessionEndsWithItsToken(t *testing.T) {
	t.Parallel()
	authFile := writeAuthFile(t)
	b := setup(t, server.Config{AuthFile: authFile})
	res, err := (&http.Client{Transport: b.http.Transport, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}).
		PostForm(b.srv.URL()+"/signin", url.Values{"token": {aliceToken}})
	require.NoError(t, err)
	res.Body.Close()
	require.Len(t, res.Cookies(), 1)
	cookie := res.Cookies()[0]
	list := func() error {
		req := connect.NewRequest(&taskhubv1.ListTasksRequest{})
		req.Header().Set("Cookie", cookie.Name+"="+cookie.Value)
		_, err := b.tasks.ListTasks(t.Context(), req)
		return err
	}
	require.NoError(t, list())

	// alice gets a new token: the session made from the old one ends.
	require.NoError(t, os.WriteFile(authFile, []byte(`{"users":[{"name":"alice","token":"alice-new-token-0123456789"}]}`), 0o600))
	b.restart()
	requireCode(t, list(), connect.CodeUnauthenticated, "ended")
}

func TestPage_SignInWithoutAuth(t *testing.T) {
	t.Parallel()
	b := setup(t, server.Config{})
	res := postForm(t, b, "/signin", url.Values{"token": {"x"}}, "", nil)
	requireRedirectHome(t, res)
}
