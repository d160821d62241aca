package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"
	"github.com/taskhub/taskhub/gen/taskhub/v1/taskhubv1connect"

	"github.com/taskhub/taskhub/client"
	"github.com/taskhub/taskhub/internal/freeport"
	"github.com/taskhub/taskhub/rpc"
	"github.com/taskhub/taskhub/server"
)

func TestMain(m *testing.M) {
	// protoactor's dead-letter log throttle is a one-second timer goroutine that ends on its own.
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("github.com/asynkron/protoactor-go/actor.NewDeadLetter.NewThrottle.func4.1"))
}

// bundle is a real server on 127.0.0.1 and what a test needs to reach it.
type bundle struct {
	t   *testing.T
	cfg server.Config
	srv *server.Server
	url string
	// calls counts the requests of each procedure made through httpClient.
	calls      *calls
	httpClient *http.Client
}

// setup starts a server with its data in a temp dir, without the demo executor unless cfg
// asks for it.
func setup(t *testing.T, cfg server.Config) *bundle {
	t.Helper()
	cfg.Addr = cmpOr(cfg.Addr, "127.0.0.1:0")
	if cfg.DataDir == "" {
		cfg.DataDir = t.TempDir()
	}
	if cfg.DemoWorkers == 0 {
		cfg.DemoWorkers = -1
	}
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	b := &bundle{t: t, cfg: cfg, calls: &calls{n: map[string]int{}}}
	transport := &http.Transport{}
	b.httpClient = &http.Client{Transport: b.calls.wrap(transport)}
	b.start()
	t.Cleanup(func() {
		b.stop()
		transport.CloseIdleConnections()
	})
	return b
}

func (b *bundle) start() {
	b.t.Helper()
	srv, err := server.Open(b.t.Context(), b.cfg)
	require.NoError(b.t, err)
	b.srv, b.url = srv, srv.URL()
}

func (b *bundle) stop() {
	if b.srv != nil {
		require.NoError(b.t, b.srv.Close())
		b.srv = nil
	}
}

// client is a Client of the server that counts its requests in b.calls.
func (b *bundle) client(opts ...client.Option) *client.Client {
	return client.New(b.url, append([]client.Option{client.WithHTTPClient(b.httpClient)}, opts...)...)
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// calls counts requests by path, and keeps the last request's headers.
type calls struct {
	mu   sync.Mutex
	n    map[string]int
	last http.Header
}

type roundTripper func(*http.Request) (*http.Response, error)

func (f roundTripper) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func (c *calls) wrap(next http.RoundTripper) http.RoundTripper {
	return roundTripper(func(r *http.Request) (*http.Response, error) {
		c.mu.Lock()
		c.n[r.URL.Path]++
		c.last = r.Header.Clone()
		c.mu.Unlock()
		return next.RoundTrip(r)
	})
}

func (c *calls) of(procedure string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[procedure]
}

func (c *calls) lastHeader() http.Header {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.last
}

// requireCode checks that err is a *connect.Error with code.
func requireCode(t *testing.T, err error, code connect.Code) {
	t.Helper()
	require.Error(t, err)
	var ce *connect.Error
	require.True(t, errors.As(err, &ce), "not a *connect.Error: %T %v", err, err)
	require.Equal(t, code, connect.CodeOf(err), "error: %v", err)
}

// writeAuthFile writes an auth file of users, workers and services (name: token) and returns
// its path.
func writeAuthFile(t *testing.T, f rpc.AuthFile) string {
	t.Helper()
	b, err := json.Marshal(f)
	require.NoError(t, err)
	path := filepath.Join(t.TempDir(), "auth.json")
	require.NoError(t, os.WriteFile(path, b, 0o600))
	return path
}

func TestClient_Calls(t *testing.T) {
	t.Parallel()
	b := setup(t, server.Config{})
	c := b.client()
	ctx := t.Context()

	created, err := c.Create(ctx, &taskhubv1.CreateTaskRequest{Prompt: "a red fox", Mode: "import", Params: map[string]string{"rows": "10"}})
	require.NoError(t, err)
	require.NotEmpty(t, created.Id)
	require.Equal(t, taskhubv1.TaskState_TASK_STATE_QUEUED, created.State)
	require.Equal(t, "import", created.Mode)

	got, err := c.Get(ctx, created.Id)
	require.NoError(t, err)
	require.Equal(t, created.Id, got.Id)
	require.Equal(t, "a red fox", got.Prompt)
	require.Equal(t, map[string]string{"rows": "10"}, got.Params)

	cancelled, err := c.Cancel(ctx, created.Id)
	require.NoError(t, err)
	require.Equal(t, taskhubv1.TaskState_TASK_STATE_CANCELLED, cancelled.State)

	t.Run("errors carry Connect codes", func(t *testing.T) {
		_, err := c.Get(ctx, "01JZ0000000000000000000000")
		requireCode(t, err, connect.CodeNotFound)
		_, err = c.Get(ctx, "not-an-id")
		requireCode(t, err, connect.CodeInvalidArgument)
		_, err = c.Create(ctx, &taskhubv1.CreateTaskRequest{Prompt: ""})
		requireCode(t, err, connect.CodeInvalidArgument)
		_, err = c.Cancel(ctx, created.Id) // already ended
		requireCode(t, err, connect.CodeFailedPrecondition)
		_, err = client.New("http://"+freeport.Addr(t)).Get(ctx, created.Id) // nothing listens
		requireCode(t, err, connect.CodeUnavailable)
	})

	t.Run("idempotency key", func(t *testing.T) {
		req := &taskhubv1.CreateTaskRequest{Prompt: "once", Mode: "import", IdempotencyKey: "k-1"}
		first, err := c.Create(ctx, req)
		require.NoError(t, err)
		again, err := c.Create(ctx, req)
		require.NoError(t, err)
		require.Equal(t, first.Id, again.Id)
	})

	t.Run("JSON", func(t *testing.T) {
		j := b.client(client.WithConnectOptions(connect.WithProtoJSON()))
		got, err := j.Get(ctx, created.Id)
		require.NoError(t, err)
		require.Equal(t, created.Id, got.Id)
		require.Equal(t, "application/json", b.calls.lastHeader().Get("Content-Type"))
	})

	t.Run("gRPC over h2c", func(t *testing.T) {
		// A proxy in front of the server notes the HTTP version of each call.
		target, err := url.Parse(b.url)
		require.NoError(t, err)
		proxy := httputil.NewSingleHostReverseProxy(target)
		var major atomic.Int32
		front := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			major.Store(int32(r.ProtoMajor))
			proxy.ServeHTTP(w, r)
		}))
		front.Config.Protocols = new(http.Protocols)
		front.Config.Protocols.SetHTTP1(true)
		front.Config.Protocols.SetUnencryptedHTTP2(true)
		front.Start()
		defer front.Close()

		g := client.New(front.URL, client.WithH2C(), client.WithConnectOptions(connect.WithGRPC()))
		got, err := g.Get(ctx, created.Id)
		require.NoError(t, err)
		require.Equal(t, created.Id, got.Id)
		require.EqualValues(t, 2, major.Load())
		_, err = g.Get(ctx, "01JZ0000000000000000000000")
		requireCode(t, err, connect.CodeNotFound)

		_, err = client.New(front.URL, client.WithConnectOptions(connect.WithGRPC())).Get(ctx, created.Id)
		require.NoError(t, err)
		require.EqualValues(t, 1, major.Load(), "without WithH2C: HTTP/1.1")
	})
}

func TestClient_List(t *testing.T) {
	t.Parallel()
	b := setup(t, server.Config{})
	c := b.client()
	ctx := t.Context()
	var ids []string
	for i := range 7 {
		task, err := c.Create(ctx, &taskhubv1.CreateTaskRequest{Prompt: "task " + string(rune('a'+i)), Mode: "import"})
		require.NoError(t, err)
		ids = append(ids, task.Id)
	}
	slices.Reverse(ids) // newest first
	const list = taskhubv1connect.TaskServiceListTasksProcedure

	t.Run("every page", func(t *testing.T) {
		before := b.calls.of(list)
		var got []string
		for task, err := range c.List(ctx, &taskhubv1.ListTasksRequest{PageSize: 3}) {
			require.NoError(t, err)
			got = append(got, task.Id)
		}
		require.Equal(t, ids, got)
		require.Equal(t, 3, b.calls.of(list)-before, "7 tasks in pages of 3")
	})

	t.Run("a break fetches no more pages", func(t *testing.T) {
		before := b.calls.of(list)
		var got []string
		for task, err := range c.List(ctx, &taskhubv1.ListTasksRequest{PageSize: 3}) {
			require.NoError(t, err)
			got = append(got, task.Id)
			if len(got) == 4 {
				break
			}
		}
		require.Equal(t, ids[:4], got)
		require.Equal(t, 2, b.calls.of(list)-before)
	})

	t.Run("states", func(t *testing.T) {
		for _, id := range []string{ids[1], ids[4]} {
			_, err := c.Cancel(ctx, id)
			require.NoError(t, err)
		}
		var got []string
		for task, err := range c.List(ctx, &taskhubv1.ListTasksRequest{States: []taskhubv1.TaskState{taskhubv1.TaskState_TASK_STATE_CANCELLED}}) {
			require.NoError(t, err)
			got = append(got, task.Id)
		}
		require.Equal(t, []string{ids[1], ids[4]}, got)
		n := 0
		for _, err := range c.List(ctx, nil) {
			require.NoError(t, err)
			n++
		}
		require.Equal(t, 7, n, "nil lists every task")
	})

	t.Run("an error ends it", func(t *testing.T) {
		n := 0
		for task, err := range c.List(ctx, &taskhubv1.ListTasksRequest{PageSize: 501}) {
			n++
			require.Nil(t, task)
			requireCode(t, err, connect.CodeInvalidArgument)
		}
		require.Equal(t, 1, n)
	})
}

func TestClient_OnBehalfOf(t *testing.T) {
	t.Parallel()
	const (
		aliceToken   = "alice-token-0123456789"
		bobToken     = "bob-token-0123456789ab"
		serviceToken = "webapp-token-0123456789"
	)
	b := setup(t, server.Config{AuthFile: writeAuthFile(t, rpc.AuthFile{
		Users:    []rpc.Principal{{Name: "alice", Token: aliceToken}, {Name: "bob", Token: bobToken}},
		Services: []rpc.Principal{{Name: "webapp", Token: serviceToken}},
	})})
	ctx := t.Context()
	service := b.client(client.WithToken(serviceToken))
	alice := b.client(client.WithToken(aliceToken))
	bob := b.client(client.WithToken(bobToken))

	// Alice watches her tasks; the service creates one for her.
	events := make(chan *taskhubv1.TaskEvent, 10)
	watchCtx, stopWatch := context.WithCancel(ctx)
	watched := make(chan error, 1)
	snapshot := make(chan struct{})
	go func() {
		watched <- alice.Watch(watchCtx, nil, func(m *taskhubv1.WatchTasksResponse) error {
			if m.GetSnapshot() != nil {
				close(snapshot)
			}
			if e := m.GetEvent(); e != nil {
				events <- e
			}
			return nil
		})
	}()
	<-snapshot
	task, err := service.OnBehalfOf("alice").Create(ctx, &taskhubv1.CreateTaskRequest{Prompt: "alice's report", Mode: "import"})
	require.NoError(t, err)
	select {
	case e := <-events:
		require.Equal(t, task.Id, e.Task.Id)
		require.Equal(t, taskhubv1.EventKind_EVENT_KIND_CREATED, e.Kind)
		require.Equal(t, "webapp", e.ActedBy)
	case <-time.After(10 * time.Second):
		t.Fatal("alice's watch did not see the task the service created for her")
	}
	stopWatch()
	require.ErrorIs(t, <-watched, context.Canceled)

	got, err := alice.Get(ctx, task.Id)
	require.NoError(t, err)
	require.Equal(t, "alice's report", got.Prompt)
	_, err = bob.Get(ctx, task.Id)
	requireCode(t, err, connect.CodeNotFound)
	_, err = service.Get(ctx, task.Id) // as itself, the service is a user of its own
	requireCode(t, err, connect.CodeNotFound)
	got, err = client.New(b.url, client.WithToken(serviceToken), client.WithOnBehalfOf("alice")).Get(ctx, task.Id)
	require.NoError(t, err)
	require.Equal(t, task.Id, got.Id)

	// Only a service's token may act for someone else.
	_, err = bob.OnBehalfOf("alice").Get(ctx, task.Id)
	requireCode(t, err, connect.CodePermissionDenied)
	_, err = b.client().Get(ctx, task.Id)
	requireCode(t, err, connect.CodeUnauthenticated)
}

func TestClient_Watch(t *testing.T) {
	t.Parallel()

	t.Run("a snapshot, then events, until fn fails", func(t *testing.T) {
		t.Parallel()
		b := setup(t, server.Config{})
		c := b.client()
		queued, err := c.Create(t.Context(), &taskhubv1.CreateTaskRequest{Prompt: "before", Mode: "import"})
		require.NoError(t, err)
		var later *taskhubv1.Task
		errEnough := errors.New("enough")
		err = c.Watch(t.Context(), nil, func(m *taskhubv1.WatchTasksResponse) error {
			if s := m.GetSnapshot(); s != nil {
				require.False(t, s.Recovered)
				require.Len(t, s.Tasks, 1)
				require.Equal(t, queued.Id, s.Tasks[0].Id)
				later, err = c.Create(t.Context(), &taskhubv1.CreateTaskRequest{Prompt: "after", Mode: "import"})
				require.NoError(t, err)
				return nil
			}
			e := m.GetEvent()
			require.NotNil(t, e, "after the snapshot an event: %v", m)
			require.Equal(t, later.Id, e.Task.Id)
			return errEnough
		})
		require.ErrorIs(t, err, errEnough)
	})

	t.Run("a refused watch is not retried", func(t *testing.T) {
		t.Parallel()
		b := setup(t, server.Config{AuthFile: writeAuthFile(t, rpc.AuthFile{Users: []rpc.Principal{{Name: "alice", Token: "alice-token-0123456789"}}})})
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		err := b.client(client.WithToken("not-a-token-0123456789")).Watch(ctx, nil, func(*taskhubv1.WatchTasksResponse) error {
			return errors.New("no message was expected")
		})
		requireCode(t, err, connect.CodeUnauthenticated)
		require.NoError(t, ctx.Err(), "Watch should give up at once")
	})

	t.Run("resumes across a restart", func(t *testing.T) {
		t.Parallel()
		b := setup(t, server.Config{Addr: freeport.Addr(t)})
		c := b.client()
		ctx := t.Context()
		first, err := c.Create(ctx, &taskhubv1.CreateTaskRequest{Prompt: "first", Mode: "import"})
		require.NoError(t, err)

		type message struct {
			snapshot *taskhubv1.Snapshot
			event    *taskhubv1.TaskEvent
		}
		messages := make(chan message, 100)
		watchCtx, stopWatch := context.WithCancel(ctx)
		watched := make(chan error, 1)
		go func() {
			watched <- c.Watch(watchCtx, nil, func(m *taskhubv1.WatchTasksResponse) error {
				if m.GetHeartbeat() == nil {
					messages <- message{m.GetSnapshot(), m.GetEvent()}
				}
				return nil
			})
		}()
		m := <-messages
		require.NotNil(t, m.snapshot)
		require.Equal(t, []string{first.Id}, taskIDs(m.snapshot.Tasks))

		b.stop()
		b.start() // the same address and data
		// Made before the watch is back: it must come as a replayed event.
		_, err = c.Cancel(ctx, first.Id)
		require.NoError(t, err)
		second, err := c.Create(ctx, &taskhubv1.CreateTaskRequest{Prompt: "second", Mode: "import"})
		require.NoError(t, err)

		var got []string
		timeout := time.After(20 * time.Second)
		for len(got) < 3 {
			select {
			case m := <-messages:
				if m.snapshot != nil {
					require.True(t, m.snapshot.Recovered, "the watch resumed: %v", m.snapshot)
					got = append(got, "recovered")
					continue
				}
				got = append(got, m.event.Kind.String()+" "+m.event.Task.Id)
			case <-timeout:
				t.Fatalf("the watch did not resume; got %v", got)
			}
		}
		require.Equal(t, []string{
			"recovered",
			"EVENT_KIND_CANCELLED " + first.Id,
			"EVENT_KIND_CREATED " + second.Id,
		}, got)
		stopWatch()
		require.ErrorIs(t, <-watched, context.Canceled)
	})
}

func taskIDs(tasks []*taskhubv1.Task) []string {
	ids := make([]string, len(tasks))
	for i, t := range tasks {
		ids[i] = t.Id
	}
	return ids
}

// waitTask polls c.Get until done(task), for at most 10 s.
func waitTask(t *testing.T, c *client.Client, id string, done func(*taskhubv1.Task) bool) *taskhubv1.Task {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		task, err := c.Get(t.Context(), id)
		require.NoError(t, err)
		if done(task) {
			return task
		}
		if time.Now().After(deadline) {
			t.Fatalf("task %s did not get there; it is %v", id, task)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// cutAfter is a transport whose first WatchTasks response body fails once it has passed n
// bytes: a connection dropped in the middle of a stream.
type cutAfter struct {
	base http.RoundTripper
	n    int64
	cut  atomic.Bool
}

func (c *cutAfter) RoundTrip(req *http.Request) (*http.Response, error) {
	res, err := c.base.RoundTrip(req)
	if err == nil && strings.HasSuffix(req.URL.Path, "/WatchTasks") && c.cut.CompareAndSwap(false, true) {
		res.Body = &cutBody{ReadCloser: res.Body, left: c.n}
	}
	return res, err
}

type cutBody struct {
	io.ReadCloser
	left int64
}

func (b *cutBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		return 0, io.ErrUnexpectedEOF
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.ReadCloser.Read(p)
	b.left -= int64(n)
	return n, err
}

// TestClient_WatchCutMidSnapshot: a snapshot too big for one message, whose stream is cut after
// its first part, reaches fn whole, once, with every active task: the watch starts over rather
// than resume from half a snapshot.
func TestClient_WatchCutMidSnapshot(t *testing.T) {
	t.Parallel()
	b := setup(t, server.Config{})
	c := b.client()
	ctx := t.Context()
	want := map[string]bool{}
	prompt := strings.Repeat("a long prompt ", 1000) // 14 KB: 80 tasks make two snapshot parts
	for range 80 {
		task, err := c.Create(ctx, &taskhubv1.CreateTaskRequest{Prompt: prompt, Mode: "import"})
		require.NoError(t, err)
		want[task.Id] = true
	}
	cutter := &cutAfter{base: &http.Transport{}, n: 1 << 20}
	var snapshots []*taskhubv1.Snapshot
	errDone := errors.New("done")
	err := client.New(b.url, client.WithHTTPClient(&http.Client{Transport: cutter})).Watch(ctx, nil, func(m *taskhubv1.WatchTasksResponse) error {
		if s := m.GetSnapshot(); s != nil {
			snapshots = append(snapshots, s)
			return errDone
		}
		return nil
	})
	require.ErrorIs(t, err, errDone)
	require.True(t, cutter.cut.Load(), "the first stream was cut")
	require.Len(t, snapshots, 1)
	s := snapshots[0]
	require.False(t, s.More)
	require.False(t, s.Recovered)
	got := map[string]bool{}
	for _, task := range s.Tasks {
		require.False(t, got[task.Id], "a task once")
		got[task.Id] = true
	}
	require.Equal(t, want, got, "every active task")
}
