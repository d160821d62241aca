package rpc_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/stretchr/testify/require"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"
	"github.com/taskhub/taskhub/gen/taskhub/v1/taskhubv1connect"

	"github.com/taskhub/taskhub"
	"github.com/taskhub/taskhub/rpc"
)

// fakeHub records what the handlers ask of the hub and answers what a test tells it to.
type fakeHub struct {
	mu    sync.Mutex
	calls []any // the params of each call, in order
	err   error // every call fails with it when set
	task  *taskhubv1.Task
	watch *fakeWatch
}

func (f *fakeHub) record(p any) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, p)
	return f.err
}

func (f *fakeHub) last() any {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[len(f.calls)-1]
}

type createCall struct {
	owner string
	spec  taskhub.TaskSpec
}

type getCall struct{ owner, id string }

func (f *fakeHub) CreateTask(_ context.Context, owner string, spec taskhub.TaskSpec) (*taskhubv1.Task, error) {
	return f.task, f.record(createCall{owner, spec})
}

func (f *fakeHub) GetTask(_ context.Context, owner, id string) (*taskhubv1.Task, error) {
	return f.task, f.record(getCall{owner, id})
}

func (f *fakeHub) ListTasks(_ context.Context, q taskhub.ListQuery) (taskhub.TaskPage, error) {
	return taskhub.TaskPage{Tasks: []*taskhubv1.Task{f.task}, NextPageToken: "next"}, f.record(q)
}

func (f *fakeHub) CancelTask(_ context.Context, owner, id string) (*taskhubv1.Task, error) {
	return f.task, f.record(getCall{owner, id})
}

func (f *fakeHub) Watch(_ context.Context, q taskhub.WatchQuery) (taskhub.Watch, error) {
	if err := f.record(q); err != nil {
		return nil, err
	}
	return f.watch, nil
}

func (f *fakeHub) Position(context.Context) (string, uint64, error) { return "E", 1, nil }

func (f *fakeHub) ClaimTask(_ context.Context, p taskhub.ClaimParams) (*taskhub.Claim, error) {
	return &taskhub.Claim{Task: f.task, LeaseToken: "lease", LeaseExpires: time.Unix(100, 0)}, f.record(p)
}

func (f *fakeHub) ReportProgress(_ context.Context, r taskhub.Report) (taskhub.LeaseStatus, error) {
	return taskhub.LeaseStatus{CancelRequested: true}, f.record(r)
}

// BatchReportProgress answers the first report recorded, the second cancelled, and the rest
// not found.
func (f *fakeHub) BatchReportProgress(_ context.Context, rs []taskhub.Report) ([]taskhub.ReportResult, error) {
	out := make([]taskhub.ReportResult, len(rs))
	for i := range out {
		switch i {
		case 0:
			out[i].Expires = time.Unix(300, 0)
		case 1:
			out[i].CancelRequested = true
		default:
			out[i].Err = taskhub.Errorf(taskhub.NotFound, "task %s not found", rs[i].TaskID)
		}
	}
	return out, f.record(rs)
}

func (f *fakeHub) RenewLease(_ context.Context, l taskhub.Lease) (taskhub.LeaseStatus, error) {
	return taskhub.LeaseStatus{Expires: time.Unix(200, 0)}, f.record(l)
}

type completeCall struct {
	lease  taskhub.Lease
	result string
}

type failCall struct {
	lease   taskhub.Lease
	failure taskhub.Failure
}

func (f *fakeHub) CompleteTask(_ context.Context, l taskhub.Lease, result string) (*taskhubv1.Task, error) {
	return f.task, f.record(completeCall{l, result})
}

func (f *fakeHub) FailTask(_ context.Context, l taskhub.Lease, fl taskhub.Failure) (*taskhubv1.Task, error) {
	return f.task, f.record(failCall{l, fl})
}

// fakeWatch yields its messages, one call of Next each, then fails with end.
type fakeWatch struct {
	msgs   []*taskhub.Message
	end    error
	closed chan struct{}
}

func (w *fakeWatch) Next(ctx context.Context) ([]*taskhub.Message, error) {
	if len(w.msgs) == 0 {
		return nil, w.end
	}
	m := w.msgs[0]
	w.msgs = w.msgs[1:]
	return []*taskhub.Message{m}, nil
}

func (w *fakeWatch) Deliver(ctx context.Context, to taskhub.Sink) {
	go func() {
		for {
			msgs, err := w.Next(ctx)
			if err == nil {
				for len(msgs) > 0 && err == nil {
					var n int
					var pending bool
					if n, pending, err = to.Send(msgs); err == nil && pending {
						err = to.Flush()
					}
					msgs = msgs[n:]
				}
			}
			if err != nil {
				w.Close()
				to.Done(err)
				return
			}
		}
	}()
}

func (w *fakeWatch) Close() { close(w.closed) }

type bundle struct {
	hub   *fakeHub
	tasks taskhubv1connect.TaskServiceClient
	work  taskhubv1connect.WorkerServiceClient
	grpc  taskhubv1connect.WorkerServiceClient
}

// setup serves the handlers over a fake hub on 127.0.0.1, with auth when f is not nil.
func setup(t *testing.T, f *rpc.AuthFile) *bundle {
	return setupLogged(t, f, slog.New(slog.NewTextHandler(io.Discard, nil)))
}

// setupLogged is setup with the handlers logging to logger.
func setupLogged(t *testing.T, f *rpc.AuthFile, logger *slog.Logger) *bundle {
	t.Helper()
	var auth *rpc.Auth
	if f != nil {
		var err error
		auth, err = rpc.NewAuth(*f, nil)
		require.NoError(t, err)
	}
	hub := &fakeHub{task: &taskhubv1.Task{Id: "T", Owner: "o"}}
	mux := http.NewServeMux()
	rpc.Mount(mux, hub, rpc.Options{Auth: auth, Logger: logger})
	srv := httptest.NewUnstartedServer(mux)
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return &bundle{hub: hub,
		tasks: taskhubv1connect.NewTaskServiceClient(srv.Client(), srv.URL),
		work:  taskhubv1connect.NewWorkerServiceClient(srv.Client(), srv.URL),
		grpc:  taskhubv1connect.NewWorkerServiceClient(srv.Client(), srv.URL, connect.WithGRPC())}
}

// TestHandlers_MapRequestsToTheHub: each call reaches the hub with the caller's identity and
// the request's fields, and its answer reaches the client.
func TestHandlers_MapRequestsToTheHub(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()

	res, err := b.tasks.CreateTask(ctx, connect.NewRequest(&taskhubv1.CreateTaskRequest{Prompt: "p", Mode: "m",
		Params: map[string]string{"k": "v"}, IdempotencyKey: "key"}))
	require.NoError(t, err)
	require.Equal(t, "T", res.Msg.Task.Id)
	require.Equal(t, createCall{rpc.LocalUser, taskhub.TaskSpec{Prompt: "p", Mode: "m", Params: map[string]string{"k": "v"}, IdempotencyKey: "key"}}, b.hub.last())

	_, err = b.tasks.GetTask(ctx, connect.NewRequest(&taskhubv1.GetTaskRequest{Id: "T"}))
	require.NoError(t, err)
	require.Equal(t, getCall{rpc.LocalUser, "T"}, b.hub.last())

	list, err := b.tasks.ListTasks(ctx, connect.NewRequest(&taskhubv1.ListTasksRequest{
		States: []taskhubv1.TaskState{taskhubv1.TaskState_TASK_STATE_QUEUED}, PageSize: 7, PageToken: "tok"}))
	require.NoError(t, err)
	require.Equal(t, "next", list.Msg.NextPageToken)
	require.Equal(t, taskhub.ListQuery{Owner: rpc.LocalUser, States: []taskhubv1.TaskState{taskhubv1.TaskState_TASK_STATE_QUEUED}, PageSize: 7, PageToken: "tok"}, b.hub.last())

	claim, err := b.work.ClaimTask(ctx, connect.NewRequest(&taskhubv1.ClaimTaskRequest{WorkerId: "w1", Modes: []string{"m"}, WaitSeconds: 3}))
	require.NoError(t, err)
	require.Equal(t, "lease", claim.Msg.LeaseToken)
	require.Equal(t, int64(100), claim.Msg.LeaseExpiresAt.Seconds)
	require.Equal(t, taskhub.ClaimParams{WorkerID: "w1", Modes: []string{"m"}, Wait: 3 * time.Second}, b.hub.last())

	lease := taskhub.Lease{TaskID: "T", Token: "lt"}
	rep, err := b.work.ReportProgress(ctx, connect.NewRequest(&taskhubv1.ReportProgressRequest{TaskId: "T", LeaseToken: "lt", Progress: 40, Message: "m"}))
	require.NoError(t, err)
	require.True(t, rep.Msg.CancelRequested)
	require.Nil(t, rep.Msg.LeaseExpiresAt, "a cancelled task has no lease to renew")
	require.Equal(t, taskhub.Report{Lease: lease, Progress: 40, Message: "m"}, b.hub.last())

	batch, err := b.work.BatchReportProgress(ctx, connect.NewRequest(&taskhubv1.BatchReportProgressRequest{Reports: []*taskhubv1.ReportProgressRequest{
		{TaskId: "T", LeaseToken: "lt", Progress: 1, Message: "a"}, {TaskId: "U", LeaseToken: "lu", Progress: 2}, {TaskId: "V", LeaseToken: "lv", Progress: 3},
	}}))
	require.NoError(t, err)
	require.Equal(t, []taskhub.Report{{Lease: lease, Progress: 1, Message: "a"}, {Lease: taskhub.Lease{TaskID: "U", Token: "lu"}, Progress: 2},
		{Lease: taskhub.Lease{TaskID: "V", Token: "lv"}, Progress: 3}}, b.hub.last())
	require.Len(t, batch.Msg.Results, 3)
	require.Equal(t, int64(300), batch.Msg.Results[0].LeaseExpiresAt.GetSeconds())
	require.Nil(t, batch.Msg.Results[0].Error)
	require.True(t, batch.Msg.Results[1].CancelRequested)
	require.Nil(t, batch.Msg.Results[1].Error)
	require.Equal(t, "not_found", batch.Msg.Results[2].Error.GetCode())
	require.Equal(t, "task V not found", batch.Msg.Results[2].Error.GetMessage())
	require.Nil(t, batch.Msg.Results[2].LeaseExpiresAt)

	renew, err := b.grpc.RenewLease(ctx, connect.NewRequest(&taskhubv1.RenewLeaseRequest{TaskId: "T", LeaseToken: "lt"}))
	require.NoError(t, err)
	require.Equal(t, int64(200), renew.Msg.LeaseExpiresAt.Seconds)
	require.Equal(t, lease, b.hub.last())

	_, err = b.work.CompleteTask(ctx, connect.NewRequest(&taskhubv1.CompleteTaskRequest{TaskId: "T", LeaseToken: "lt", Result: "r"}))
	require.NoError(t, err)
	require.Equal(t, completeCall{lease, "r"}, b.hub.last())

	_, err = b.work.FailTask(ctx, connect.NewRequest(&taskhubv1.FailTaskRequest{TaskId: "T", LeaseToken: "lt", Error: "e", Retryable: true}))
	require.NoError(t, err)
	require.Equal(t, failCall{lease, taskhub.Failure{Error: "e", Retryable: true}}, b.hub.last())
}

// TestHandlers_IdentityFromAuth: with auth, the hub gets the user or worker the token names.
func TestHandlers_IdentityFromAuth(t *testing.T) {
	t.Parallel()
	b := setup(t, &rpc.AuthFile{
		Users:   []rpc.Principal{{Name: "alice", Token: "alice-token-0123456789"}},
		Workers: []rpc.Principal{{Name: "gpu-1", Token: "worker-token-0123456789"}},
	})
	req := connect.NewRequest(&taskhubv1.GetTaskRequest{Id: "T"})
	req.Header().Set("Authorization", "Bearer alice-token-0123456789")
	_, err := b.tasks.GetTask(t.Context(), req)
	require.NoError(t, err)
	require.Equal(t, getCall{"alice", "T"}, b.hub.last())

	claim := connect.NewRequest(&taskhubv1.ClaimTaskRequest{Modes: []string{"m"}})
	claim.Header().Set("Authorization", "Bearer worker-token-0123456789")
	_, err = b.work.ClaimTask(t.Context(), claim)
	require.NoError(t, err)
	require.Equal(t, taskhub.ClaimParams{Worker: "gpu-1", WorkerID: "gpu-1", Modes: []string{"m"}}, b.hub.last(),
		"a worker that names no worker id runs as its token's name")

	calls := len(b.hub.calls)
	_, err = b.tasks.GetTask(t.Context(), connect.NewRequest(&taskhubv1.GetTaskRequest{Id: "T"}))
	require.Equal(t, connect.CodeUnauthenticated, connect.CodeOf(err))
	require.Len(t, b.hub.calls, calls, "a refused call never reaches the hub")
}

// TestHandlers_EveryErrorCode: every domain error code has its Connect code, in both
// protocols, with the hub's message.
func TestHandlers_EveryErrorCode(t *testing.T) {
	t.Parallel()
	want := map[taskhub.Code]connect.Code{
		taskhub.Internal:           connect.CodeInternal,
		taskhub.Invalid:            connect.CodeInvalidArgument,
		taskhub.NotFound:           connect.CodeNotFound,
		taskhub.FailedPrecondition: connect.CodeFailedPrecondition,
		taskhub.PermissionDenied:   connect.CodePermissionDenied,
		taskhub.Unauthenticated:    connect.CodeUnauthenticated,
		taskhub.ResourceExhausted:  connect.CodeResourceExhausted,
		taskhub.Unavailable:        connect.CodeUnavailable,
		taskhub.DeadlineExceeded:   connect.CodeDeadlineExceeded,
	}
	for c := taskhub.Code(0); !strings.HasPrefix(c.String(), "code("); c++ {
		require.Contains(t, want, c, "a new taskhub.Code needs its Connect code, here and in errors.go")
	}
	b := setup(t, nil)
	for code, connectCode := range want {
		b.hub.err = taskhub.Errorf(code, "the hub says %s", code)
		_, err := b.work.CompleteTask(t.Context(), connect.NewRequest(&taskhubv1.CompleteTaskRequest{TaskId: "T", LeaseToken: "lt"}))
		require.Equal(t, connectCode, connect.CodeOf(err), "%s over Connect", code)
		_, err = b.grpc.CompleteTask(t.Context(), connect.NewRequest(&taskhubv1.CompleteTaskRequest{TaskId: "T", LeaseToken: "lt"}))
		require.Equal(t, connectCode, connect.CodeOf(err), "%s over gRPC", code)
		var ce *connect.Error
		require.True(t, errors.As(err, &ce))
		require.Equal(t, "the hub says "+code.String(), ce.Message())
	}
}

// TestHandlers_WatchStreamsWhatTheWatchYields: WatchTasks sends every message of the watch in
// order, ends with the watch's error and closes it.
func TestHandlers_WatchStreamsWhatTheWatchYields(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	b.hub.watch = &fakeWatch{closed: make(chan struct{}), end: taskhub.Errorf(taskhub.Unavailable, "the watch ended"),
		msgs: []*taskhub.Message{
			taskhub.NewMessage(&taskhubv1.WatchTasksResponse{Message: &taskhubv1.WatchTasksResponse_Snapshot{Snapshot: &taskhubv1.Snapshot{Epoch: "E", Seq: 1}}}),
			taskhub.NewMessage(&taskhubv1.WatchTasksResponse{Message: &taskhubv1.WatchTasksResponse_Event{Event: &taskhubv1.TaskEvent{Seq: 2}}}),
		}}
	stream, err := b.tasks.WatchTasks(t.Context(), connect.NewRequest(&taskhubv1.WatchTasksRequest{Epoch: "E", AfterSeq: 9}))
	require.NoError(t, err)
	require.True(t, stream.Receive())
	require.Equal(t, "E", stream.Msg().GetSnapshot().GetEpoch())
	require.True(t, stream.Receive())
	require.Equal(t, uint64(2), stream.Msg().GetEvent().GetSeq())
	require.False(t, stream.Receive())
	require.Equal(t, connect.CodeUnavailable, connect.CodeOf(stream.Err()))
	require.Equal(t, taskhub.WatchQuery{Owner: rpc.LocalUser, Epoch: "E", AfterSeq: 9}, b.hub.last())
	select {
	case <-b.hub.watch.closed:
	case <-time.After(5 * time.Second):
		t.Fatal("the watch was not closed")
	}
}

// TestHandlers_LogCalls: an internal answer is logged with its cause; at debug level every call
// is logged (the request log), and at info level none that went well.
func TestHandlers_LogCalls(t *testing.T) {
	t.Parallel()
	var logs syncBuffer
	b := setupLogged(t, nil, slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	_, err := b.tasks.GetTask(t.Context(), connect.NewRequest(&taskhubv1.GetTaskRequest{Id: "T"}))
	require.NoError(t, err)
	require.Contains(t, logs.String(), "msg=call procedure=/taskhub.v1.TaskService/GetTask")
	require.Contains(t, logs.String(), "code=ok")

	b.hub.err = taskhub.Errorf(taskhub.Internal, "the disk caught fire")
	_, err = b.tasks.GetTask(t.Context(), connect.NewRequest(&taskhubv1.GetTaskRequest{Id: "T"}))
	require.Equal(t, connect.CodeInternal, connect.CodeOf(err))
	require.Contains(t, logs.String(), `level=ERROR msg="internal error" procedure=/taskhub.v1.TaskService/GetTask`)
	require.Contains(t, logs.String(), "the disk caught fire")

	var quiet syncBuffer
	b = setupLogged(t, nil, slog.New(slog.NewTextHandler(&quiet, nil)))
	_, err = b.tasks.GetTask(t.Context(), connect.NewRequest(&taskhubv1.GetTaskRequest{Id: "T"}))
	require.NoError(t, err)
	require.Empty(t, quiet.String(), "no request log above debug level")
}

// syncBuffer is a bytes.Buffer safe for one writer and one reader at a time.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
