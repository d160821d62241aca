package server_test

import (
	"cmp"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/taskhub/taskhub/internal/natstest"

	"connectrpc.com/connect"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"
	"github.com/taskhub/taskhub/gen/taskhub/v1/taskhubv1connect"

	"github.com/taskhub/taskhub/server"
)

func TestMain(m *testing.M) {
	// protoactor's dead-letter log throttle is a one-second timer goroutine that ends on its own.
	goleak.VerifyTestMain(m, natstest.LeakOptions()...)
}

// bundle is a real server on 127.0.0.1 and generated clients talking to it.
type bundle struct {
	t      testing.TB
	cfg    server.Config
	srv    *server.Server
	tasks  taskhubv1connect.TaskServiceClient
	work   taskhubv1connect.WorkerServiceClient
	http   *http.Client
	h2c    *http.Client
	closed bool
}

// setup starts a server with its data in a temp dir. Demo workers are off unless cfg asks.
func setup(t testing.TB, cfg server.Config) *bundle {
	t.Helper()
	cfg.Addr = "127.0.0.1:0"
	if cfg.DataDir == "" {
		cfg.DataDir = t.TempDir()
	}
	if cfg.DemoWorkers == 0 {
		cfg.DemoWorkers = -1
	}
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	b := &bundle{t: t, cfg: cfg}
	b.start()
	t.Cleanup(func() {
		b.stop()
		b.http.CloseIdleConnections()
		b.h2c.CloseIdleConnections()
	})
	return b
}

func (b *bundle) start() {
	b.t.Helper()
	srv, err := server.Open(b.t.Context(), b.cfg)
	require.NoError(b.t, err)
	b.srv, b.closed = srv, false
	b.http = &http.Client{Transport: &http.Transport{}}
	b.h2c = &http.Client{Transport: &http.Transport{Protocols: h2cOnly()}}
	b.tasks = taskhubv1connect.NewTaskServiceClient(b.http, srv.URL())
	b.work = taskhubv1connect.NewWorkerServiceClient(b.http, srv.URL())
}

func (b *bundle) stop() {
	if !b.closed {
		b.closed = true
		require.NoError(b.t, b.srv.Close())
	}
}

// restart stops the server and starts it again on the same data dir (and a new port).
func (b *bundle) restart() {
	b.stop()
	b.http.CloseIdleConnections()
	b.h2c.CloseIdleConnections()
	b.start()
}

func h2cOnly() *http.Protocols {
	p := new(http.Protocols)
	p.SetUnencryptedHTTP2(true)
	return p
}

// grpcTasks is a TaskService client speaking gRPC over unencrypted HTTP/2.
func (b *bundle) grpcTasks() taskhubv1connect.TaskServiceClient {
	return taskhubv1connect.NewTaskServiceClient(b.h2c, b.srv.URL(), connect.WithGRPC())
}

func bearer[T any](req *connect.Request[T], token string) *connect.Request[T] {
	req.Header().Set("Authorization", "Bearer "+token)
	return req
}

// stream reads a WatchTasks stream on a goroutine and keeps what it got. watch returns it once
// its snapshot came.
type stream struct {
	t      *testing.T
	mu     sync.Mutex
	snap   *taskhubv1.Snapshot
	events []*taskhubv1.TaskEvent
	beats  []uint64
	err    error
	done   chan struct{}
	cancel context.CancelFunc
}

func watch(t *testing.T, c taskhubv1connect.TaskServiceClient, req *taskhubv1.WatchTasksRequest, token string) *stream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := connect.NewRequest(req)
	if token != "" {
		bearer(r, token)
	}
	s := &stream{t: t, done: make(chan struct{}), cancel: cancel}
	ss, err := c.WatchTasks(ctx, r)
	require.NoError(t, err)
	go func() {
		defer close(s.done)
		defer ss.Close()
		for ss.Receive() {
			m := ss.Msg()
			s.mu.Lock()
			switch {
			case m.GetSnapshot() != nil:
				if s.snap != nil {
					s.err = errors.New("a second snapshot")
				}
				s.snap = m.GetSnapshot()
			case m.GetEvent() != nil:
				if s.snap == nil {
					s.err = errors.New("an event before the snapshot")
				}
				s.events = append(s.events, m.GetEvent())
			case m.GetHeartbeat() != nil:
				s.beats = append(s.beats, m.GetHeartbeat().Seq)
			}
			s.mu.Unlock()
		}
		s.mu.Lock()
		if s.err == nil {
			s.err = cmpErr(ss.Err())
		}
		s.mu.Unlock()
	}()
	t.Cleanup(func() { cancel(); <-s.done })
	// Return once the watch has its snapshot (or has ended): a change made before would be in
	// the snapshot rather than an event, and a test that makes one next waits for its event.
	deadline := time.Now().Add(10 * time.Second)
	for {
		s.mu.Lock()
		started := s.snap != nil || s.err != nil
		s.mu.Unlock()
		if started || time.Now().After(deadline) {
			return s
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func cmpErr(err error) error {
	if err == nil {
		return io.EOF
	}
	return err
}

// wait waits for the snapshot and at least n events.
func (s *stream) wait(n int) (*taskhubv1.Snapshot, []*taskhubv1.TaskEvent) {
	s.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		s.mu.Lock()
		snap, events, err := s.snap, slices.Clone(s.events), s.err
		s.mu.Unlock()
		if snap != nil && len(events) >= n {
			return snap, events
		}
		if err != nil || time.Now().After(deadline) {
			s.t.Fatalf("waiting for %d events, got %d: %v", n, len(events), err)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// waitFor waits until done is true of the events received, and returns them.
func (s *stream) waitFor(done func([]*taskhubv1.TaskEvent) bool) []*taskhubv1.TaskEvent {
	s.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		s.mu.Lock()
		events, err := slices.Clone(s.events), s.err
		s.mu.Unlock()
		if done(events) {
			return events
		}
		if err != nil || time.Now().After(deadline) {
			s.t.Fatalf("waiting: got %d events: %v", len(events), err)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// end waits for the stream to end and returns its error.
func (s *stream) end() error {
	s.t.Helper()
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		s.t.Fatal("the stream did not end")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

type eventKey struct {
	seq  uint64
	kind taskhubv1.EventKind
	id   string
	prog float64
}

func keys(events []*taskhubv1.TaskEvent) []eventKey {
	var out []eventKey
	for _, e := range events {
		out = append(out, eventKey{e.Seq, e.Kind, e.Task.Id, e.Task.Progress})
	}
	return out
}

func createTask(t *testing.T, c taskhubv1connect.TaskServiceClient, prompt, mode string) *taskhubv1.Task {
	t.Helper()
	res, err := c.CreateTask(t.Context(), connect.NewRequest(&taskhubv1.CreateTaskRequest{Prompt: prompt, Mode: mode}))
	require.NoError(t, err)
	return res.Msg.Task
}

func claimTask(t *testing.T, c taskhubv1connect.WorkerServiceClient, worker, mode string) *taskhubv1.ClaimTaskResponse {
	t.Helper()
	res, err := c.ClaimTask(t.Context(), connect.NewRequest(&taskhubv1.ClaimTaskRequest{WorkerId: worker, Modes: []string{mode}, WaitSeconds: 5}))
	require.NoError(t, err)
	require.NotNil(t, res.Msg.Task, "nothing to claim")
	return res.Msg
}

func TestServer_EndToEndThreeProtocols(t *testing.T) {
	t.Parallel()
	b := setup(t, server.Config{})
	ctx := t.Context()

	// One watcher speaks Connect over HTTP/1.1, one gRPC over HTTP/2, one gRPC-Web.
	w1 := watch(t, b.tasks, &taskhubv1.WatchTasksRequest{}, "")
	w2 := watch(t, b.grpcTasks(), &taskhubv1.WatchTasksRequest{}, "")
	w3 := watch(t, taskhubv1connect.NewTaskServiceClient(b.http, b.srv.URL(), connect.WithGRPCWeb()), &taskhubv1.WatchTasksRequest{}, "")
	w1.wait(0)
	w2.wait(0)
	w3.wait(0)

	task := createTask(t, b.tasks, "a lighthouse at dawn", "render")
	claim := claimTask(t, b.work, "gpu-1", "render")
	require.Equal(t, task.Id, claim.Task.Id)
	require.NotEmpty(t, claim.LeaseToken)
	for i := 1; i <= 20; i++ {
		res, err := b.work.ReportProgress(ctx, connect.NewRequest(&taskhubv1.ReportProgressRequest{
			TaskId: task.Id, LeaseToken: claim.LeaseToken, Progress: float64(i * 5), Message: "step",
		}))
		require.NoError(t, err)
		require.False(t, res.Msg.CancelRequested)
		// Both watchers keep up, so each gets every progress event.
		w1.wait(2 + i)
		w2.wait(2 + i)
		w3.wait(2 + i)
	}
	done, err := b.work.CompleteTask(ctx, connect.NewRequest(&taskhubv1.CompleteTaskRequest{
		TaskId: task.Id, LeaseToken: claim.LeaseToken, Result: "https://example.invalid/lighthouse.png",
	}))
	require.NoError(t, err)
	require.Equal(t, taskhubv1.TaskState_TASK_STATE_COMPLETED, done.Msg.Task.State)

	s1, e1 := w1.wait(23)
	s2, e2 := w2.wait(23)
	_, e3 := w3.wait(23)
	require.Equal(t, s1.Seq, s2.Seq)
	require.Equal(t, keys(e1), keys(e2), "every watcher sees the same events in the same order")
	require.Equal(t, keys(e1), keys(e3))
	require.Len(t, e1, 23)
	require.Equal(t, taskhubv1.EventKind_EVENT_KIND_CREATED, e1[0].Kind)
	require.Equal(t, taskhubv1.EventKind_EVENT_KIND_STARTED, e1[1].Kind)
	require.Equal(t, taskhubv1.EventKind_EVENT_KIND_COMPLETED, e1[22].Kind)
	for i, e := range e1 {
		require.Equal(t, s1.Seq+uint64(i)+1, e.Seq, "seq increases by one: this test is the only writer")
	}
	require.Equal(t, "gpu-1", e1[22].Task.WorkerId)
}

func TestServer_ResumeAcrossRestart(t *testing.T) {
	t.Parallel()
	b := setup(t, server.Config{})
	ctx := t.Context()

	w := watch(t, b.tasks, &taskhubv1.WatchTasksRequest{}, "")
	first := createTask(t, b.tasks, "first", "render")
	snap, seen := w.wait(1)
	epoch, last := snap.Epoch, seen[0].Seq

	// The client goes away; the server keeps changing things, then restarts.
	w.cancel()
	createTask(t, b.tasks, "second", "render")
	c := claimTask(t, b.work, "w", "render")
	require.Equal(t, first.Id, c.Task.Id)
	_, err := b.work.ReportProgress(ctx, connect.NewRequest(&taskhubv1.ReportProgressRequest{TaskId: first.Id, LeaseToken: c.LeaseToken, Progress: 40}))
	require.NoError(t, err)
	b.restart()

	// The lease survives the restart: the worker finishes its task on the new process.
	_, err = b.work.CompleteTask(ctx, connect.NewRequest(&taskhubv1.CompleteTaskRequest{TaskId: first.Id, LeaseToken: c.LeaseToken, Result: "done"}))
	require.NoError(t, err)

	resumed := watch(t, b.tasks, &taskhubv1.WatchTasksRequest{Epoch: epoch, AfterSeq: last}, "")
	rsnap, missed := resumed.wait(4)
	require.True(t, rsnap.Recovered)
	require.Equal(t, epoch, rsnap.Epoch)
	require.Equal(t, last, rsnap.Seq)
	require.Empty(t, rsnap.Tasks)
	require.Equal(t, []taskhubv1.EventKind{
		taskhubv1.EventKind_EVENT_KIND_CREATED, taskhubv1.EventKind_EVENT_KIND_STARTED,
		taskhubv1.EventKind_EVENT_KIND_PROGRESS, taskhubv1.EventKind_EVENT_KIND_COMPLETED,
	}, kindsOf(missed))
	for i, e := range missed {
		require.Equal(t, last+uint64(i)+1, e.Seq, "nothing missing, nothing repeated")
	}

	// Live events follow the replay on the same stream.
	createTask(t, b.tasks, "third", "render")
	_, all := resumed.wait(5)
	require.Equal(t, taskhubv1.EventKind_EVENT_KIND_CREATED, all[4].Kind)
	require.Equal(t, missed[3].Seq+1, all[4].Seq)

	// A stale epoch gets a fresh snapshot instead: the active tasks as of its seq.
	fresh := watch(t, b.tasks, &taskhubv1.WatchTasksRequest{Epoch: "TASKS.1", AfterSeq: last}, "")
	fsnap, _ := fresh.wait(0)
	require.False(t, fsnap.Recovered)
	require.Len(t, fsnap.Tasks, 2, "second and third are queued")
}

func kindsOf(events []*taskhubv1.TaskEvent) []taskhubv1.EventKind {
	var out []taskhubv1.EventKind
	for _, e := range events {
		out = append(out, e.Kind)
	}
	return out
}

func TestServer_GracefulShutdownEndsStreams(t *testing.T) {
	t.Parallel()
	b := setup(t, server.Config{})
	w := watch(t, b.tasks, &taskhubv1.WatchTasksRequest{}, "")
	g := watch(t, b.grpcTasks(), &taskhubv1.WatchTasksRequest{}, "")
	w.wait(0)
	g.wait(0)
	claimDone := make(chan error, 1)
	go func() {
		// A worker long-polling for a task that never comes.
		_, err := b.work.ClaimTask(context.Background(), connect.NewRequest(&taskhubv1.ClaimTaskRequest{WorkerId: "w", Modes: []string{"none"}, WaitSeconds: 60}))
		claimDone <- err
	}()
	time.Sleep(100 * time.Millisecond)

	start := time.Now()
	b.stop()
	t.Logf("Close took %v with two open streams and a long poll", time.Since(start))
	require.Equal(t, connect.CodeUnavailable, connect.CodeOf(w.end()), "the stream ends with unavailable, so the client resumes")
	require.Equal(t, connect.CodeUnavailable, connect.CodeOf(g.end()))
	select {
	case err := <-claimDone:
		require.NoError(t, err, "the long poll ends with no task")
	case <-time.After(10 * time.Second):
		t.Fatal("the long poll did not end")
	}
}

func TestServer_RefusesNonLoopbackWithoutAuth(t *testing.T) {
	t.Parallel()
	_, err := server.Open(t.Context(), server.Config{Addr: "0.0.0.0:0", DataDir: t.TempDir(), DemoWorkers: -1})
	require.ErrorContains(t, err, "refusing to listen")
}

func TestServer_RejectsForeignHostWithoutAuth(t *testing.T) {
	t.Parallel()
	b := setup(t, server.Config{})
	req, err := http.NewRequest(http.MethodGet, b.srv.URL()+"/healthz", nil)
	require.NoError(t, err)
	req.Host = "attacker.example"
	res, err := b.http.Do(req)
	require.NoError(t, err)
	res.Body.Close()
	require.Equal(t, http.StatusMisdirectedRequest, res.StatusCode)

	res, err = b.http.Get(b.srv.URL() + "/healthz")
	require.NoError(t, err)
	res.Body.Close()
	require.Equal(t, http.StatusOK, res.StatusCode)
}

// TestServer_CloseTwice: a second Close (a deferred one after an explicit one, say) returns at
// once instead of waiting forever for a server that already stopped.
func TestServer_CloseTwice(t *testing.T) {
	t.Parallel()
	srv, err := server.Open(t.Context(), server.Config{Addr: "127.0.0.1:0", DataDir: t.TempDir(), DemoWorkers: -1})
	require.NoError(t, err)
	require.NoError(t, srv.Close())
	done := make(chan error, 1)
	go func() { done <- srv.Close() }()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("the second Close did not return")
	}
}

// openAll opens a server for each of cfgs at once, as the nodes of a cluster must be (each waits
// for the others before it serves), logging nowhere, and closes them when the test ends.
func openAll(t *testing.T, cfgs []server.Config) []*server.Server {
	t.Helper()
	srvs := make([]*server.Server, len(cfgs))
	errs := make([]error, len(cfgs))
	var wg sync.WaitGroup
	for i, cfg := range cfgs {
		cfg.Logger = cmp.Or(cfg.Logger, slog.New(slog.NewTextHandler(io.Discard, nil)))
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			srvs[i], errs[i] = server.Open(ctx, cfg)
		})
	}
	wg.Wait()
	t.Cleanup(func() {
		for _, s := range srvs {
			if s != nil {
				_ = s.Close()
			}
		}
	})
	require.NoError(t, errors.Join(errs...))
	return srvs
}
