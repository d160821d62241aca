package actors_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/taskhub/taskhub/internal/natstest"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"
	"github.com/taskhub/taskhub/webhook"

	"github.com/taskhub/taskhub"
	"github.com/taskhub/taskhub/actors"
	"github.com/taskhub/taskhub/eventlog"
)

func TestMain(m *testing.M) {
	// protoactor's dead-letter log throttle is a one-second timer goroutine that ends on its own.
	goleak.VerifyTestMain(m, natstest.LeakOptions()...)
}

type bundle struct {
	hub *actors.Hub
	log *eventlog.Log
	dir string
}

type options struct {
	lease     time.Duration
	idle      time.Duration // a task actor's idle timeout
	attempts  int
	outbox    int
	heartbeat time.Duration
	stall     time.Duration
	retention time.Duration
	modeTries map[string]int
	watches   [2]int // max in all, max per user
	active    int    // max active tasks per user
	maxModes  int
	modes     []string

	webhooks  *webhook.Sender
	logConfig func(*eventlog.Config) // changes to the event log's config
	wrap      func(actors.Log) actors.Log
}

// setup opens a real embedded JetStream log in a temp dir and a hub on it.
func setup(t *testing.T, o options) *bundle {
	t.Helper()
	b := &bundle{dir: t.TempDir()}
	b.open(t, o)
	t.Cleanup(b.close)
	return b
}

func (b *bundle) open(t *testing.T, o options) {
	t.Helper()
	var err error
	lc := eventlog.Config{DataDir: b.dir, AckWait: o.lease + time.Second, Logger: quiet()}
	if o.logConfig != nil {
		o.logConfig(&lc)
	}
	b.log, err = eventlog.Open(t.Context(), lc)
	require.NoError(t, err)
	var log actors.Log = b.log
	if o.wrap != nil {
		log = o.wrap(log)
	}
	b.hub, err = actors.Open(t.Context(), actors.Config{Log: log, Logger: quiet(), Options: actors.Options{
		LeaseTimeout:          o.lease,
		IdleTimeout:           o.idle,
		MaxAttempts:           o.attempts,
		WatchBuffer:           o.outbox,
		Heartbeat:             o.heartbeat,
		StallTimeout:          o.stall,
		Retention:             o.retention,
		MaxWatches:            o.watches[0],
		MaxWatchesPerUser:     o.watches[1],
		ModeAttempts:          o.modeTries,
		MaxActiveTasksPerUser: o.active,
		MaxModes:              o.maxModes,
		Modes:                 o.modes,
		Webhooks:              o.webhooks,
	}})
	require.NoError(t, err)
}

func (b *bundle) close() {
	if b.hub != nil {
		b.hub.Close()
		b.log.Close()
		b.hub = nil
	}
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func codeOf(err error) taskhub.Code { return taskhub.ErrorCode(err) }

func create(t *testing.T, h *actors.Hub, owner, prompt, mode string) *taskhubv1.Task {
	t.Helper()
	task, err := h.CreateTask(t.Context(), owner, taskhub.TaskSpec{Prompt: prompt, Mode: mode})
	require.NoError(t, err)
	return task
}

func claim(t *testing.T, h *actors.Hub, mode string) *taskhub.Claim {
	t.Helper()
	c, err := h.ClaimTask(t.Context(), taskhub.ClaimParams{WorkerID: "w1", Modes: []string{mode}, Wait: 5 * time.Second})
	require.NoError(t, err)
	require.NotNil(t, c, "no task to claim")
	return c
}

// watcher reads a watch on a goroutine, as a stream's send loop would, keeping what it got.
type watcher struct {
	t      *testing.T
	w      taskhub.Watch
	mu     sync.Mutex
	snap   *taskhubv1.Snapshot
	events []*taskhubv1.TaskEvent
	beats  []uint64
	err    error
	done   chan struct{}
}

// watch opens a watch and waits for its snapshot.
func watch(t *testing.T, h *actors.Hub, owner, epoch string, after uint64) *watcher {
	t.Helper()
	w, err := h.Watch(t.Context(), taskhub.WatchQuery{Owner: owner, Epoch: epoch, AfterSeq: after})
	require.NoError(t, err)
	r := &watcher{t: t, w: w, done: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	// A test's watchers take turns at the two ways to read a watch, so that tests that compare
	// watchers compare the two.
	n, _ := watchesOf.LoadOrStore(t.Name(), new(atomic.Int32))
	if n.(*atomic.Int32).Add(1)%2 == 0 {
		// Each send takes one to three messages, as a connection takes a write of bounded size,
		// and every other one is kept, as a connection whose socket is full keeps it, and taken
		// by Flush.
		var sends int
		var kept []*taskhub.Message
		w.Deliver(ctx, taskhub.Sink{
			Send: func(msgs []*taskhub.Message) (int, bool, error) {
				sends++
				msgs = msgs[:min(len(msgs), 1+sends%3)]
				if sends%2 == 0 {
					kept = append(kept[:0], msgs...)
					return len(msgs), true, nil
				}
				r.mu.Lock()
				defer r.mu.Unlock()
				r.take(msgs)
				return len(msgs), false, nil
			},
			Flush: func() error {
				r.mu.Lock()
				defer r.mu.Unlock()
				r.take(kept)
				clear(kept)
				return nil
			},
			Done: func(err error) {
				r.mu.Lock()
				r.err = err
				r.mu.Unlock()
				close(r.done)
			},
		})
	} else {
		go func() {
			defer close(r.done)
			for {
				msgs, err := w.Next(ctx)
				r.mu.Lock()
				if err != nil {
					r.err = err
					r.mu.Unlock()
					return
				}
				r.take(msgs)
				r.mu.Unlock()
			}
		}()
	}
	t.Cleanup(func() { r.stop(); cancel(); <-r.done })
	// The watch starts on its subscriber actor: until its snapshot is here, a task created now
	// may be in the snapshot rather than among the events.
	r.wait(0)
	return r
}

// watchesOf counts each test's watchers (watch).
var watchesOf sync.Map

// take keeps what a watcher got. The caller holds r.mu.
func (r *watcher) take(msgs []*taskhub.Message) {
	for _, m := range msgs {
		switch {
		case m.GetSnapshot() != nil:
			if r.snap != nil {
				r.err = errors.New("a second snapshot")
			}
			r.snap = m.GetSnapshot()
		case m.GetEvent() != nil:
			if r.snap == nil {
				r.err = errors.New("an event before the snapshot")
			}
			r.events = append(r.events, m.GetEvent())
		case m.GetHeartbeat() != nil:
			r.beats = append(r.beats, m.GetHeartbeat().Seq)
		}
	}
}

func (r *watcher) stop() { r.w.Close() }

// wait waits until the watcher has a snapshot and at least n events, and returns them.
func (r *watcher) wait(n int) (*taskhubv1.Snapshot, []*taskhubv1.TaskEvent) {
	r.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		r.mu.Lock()
		snap, events, err := r.snap, slices.Clone(r.events), r.err
		r.mu.Unlock()
		if snap != nil && len(events) >= n {
			return snap, events
		}
		if err != nil || time.Now().After(deadline) {
			r.t.Fatalf("waiting for %d events, got %d: %v", n, len(events), err)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func kinds(events []*taskhubv1.TaskEvent) []taskhubv1.EventKind {
	var out []taskhubv1.EventKind
	for _, e := range events {
		out = append(out, e.Kind)
	}
	return out
}

func TestHub_Lifecycle(t *testing.T) {
	t.Parallel()
	b := setup(t, options{lease: 10 * time.Second})
	h, ctx := b.hub, t.Context()

	w := watch(t, h, "alice", "", 0)
	w.wait(0)

	task := create(t, h, "alice", "a red fox", "paint")
	require.Equal(t, taskhubv1.TaskState_TASK_STATE_QUEUED, task.State)
	require.Equal(t, uint32(1), task.Attempt)
	require.Equal(t, "alice", task.Owner)

	c := claim(t, h, "paint")
	require.Equal(t, task.Id, c.Task.Id)
	require.Equal(t, taskhubv1.TaskState_TASK_STATE_RUNNING, c.Task.State)
	require.Equal(t, "w1", c.Task.WorkerId)
	require.NotEmpty(t, c.LeaseToken)

	for i, p := range []float64{10, 50, 90} {
		w.wait(2 + i) // keep up, so nothing is coalesced
		st, err := h.ReportProgress(ctx, taskhub.Report{Lease: taskhub.Lease{TaskID: task.Id, Token: c.LeaseToken}, Progress: p, Message: "step"})
		cancelled, expires := st.CancelRequested, st.Expires
		require.NoError(t, err)
		require.False(t, cancelled)
		require.WithinDuration(t, time.Now().Add(10*time.Second), expires, 2*time.Second)
	}
	done, err := h.CompleteTask(ctx, taskhub.Lease{TaskID: task.Id, Token: c.LeaseToken}, "a picture")
	require.NoError(t, err)
	require.Equal(t, taskhubv1.TaskState_TASK_STATE_COMPLETED, done.State)
	require.Equal(t, "a picture", done.Result)
	require.Equal(t, float64(100), done.Progress)

	got, err := h.GetTask(ctx, "alice", task.Id)
	require.NoError(t, err)
	require.Equal(t, taskhubv1.TaskState_TASK_STATE_COMPLETED, got.State)

	snap, events := w.wait(6)
	require.False(t, snap.Recovered)
	require.Empty(t, snap.Tasks)
	require.Equal(t, h.Epoch(), snap.Epoch)
	// The watcher keeps up, so nothing is coalesced: every event arrives, in seq order.
	require.Equal(t, []taskhubv1.EventKind{
		taskhubv1.EventKind_EVENT_KIND_CREATED, taskhubv1.EventKind_EVENT_KIND_STARTED,
		taskhubv1.EventKind_EVENT_KIND_PROGRESS, taskhubv1.EventKind_EVENT_KIND_PROGRESS,
		taskhubv1.EventKind_EVENT_KIND_PROGRESS, taskhubv1.EventKind_EVENT_KIND_COMPLETED,
	}, kinds(events))
	for i, e := range events {
		require.Equal(t, snap.Seq+uint64(i)+1, e.Seq)
		require.Equal(t, e.Seq, e.Task.Seq, "a task's seq is the seq of the event that made it")
	}
	require.Equal(t, events[0].Seq, task.Seq, "CreateTask returns the task at its CREATED event")
	require.Equal(t, events[5].Seq, done.Seq)
	require.Equal(t, float64(50), events[3].Task.Progress)

	// Illegal transitions change nothing.
	_, err = h.ReportProgress(ctx, taskhub.Report{Lease: taskhub.Lease{TaskID: task.Id, Token: c.LeaseToken}, Progress: 95, Message: "late"})
	require.Equal(t, taskhub.FailedPrecondition, codeOf(err), err)
	_, err = h.CompleteTask(ctx, taskhub.Lease{TaskID: task.Id, Token: c.LeaseToken}, "again")
	require.Equal(t, taskhub.FailedPrecondition, codeOf(err), err)
	_, err = h.CancelTask(ctx, "alice", task.Id)
	require.Equal(t, taskhub.FailedPrecondition, codeOf(err), err)
	got, err = h.GetTask(ctx, "alice", task.Id)
	require.NoError(t, err)
	require.Equal(t, "a picture", got.Result)
	require.True(t, got.UpdatedAt.AsTime().Equal(done.UpdatedAt.AsTime()))
}

func TestHub_Errors(t *testing.T) {
	t.Parallel()
	b := setup(t, options{lease: 10 * time.Second})
	h, ctx := b.hub, t.Context()
	task := create(t, h, "alice", "x", "paint")
	c := claim(t, h, "paint")
	unknown := taskhub.NewTaskID(time.Now())

	for _, tc := range []struct {
		name string
		call func() error
		want taskhub.Code
	}{
		{"empty prompt", func() error { _, err := h.CreateTask(ctx, "alice", taskhub.TaskSpec{Mode: "paint"}); return err }, taskhub.Invalid},
		{"malformed mode", func() error {
			_, err := h.CreateTask(ctx, "alice", taskhub.TaskSpec{Prompt: "x", Mode: "Bad Mode"})
			return err
		}, taskhub.Invalid},
		{"oversized prompt", func() error {
			_, err := h.CreateTask(ctx, "alice", taskhub.TaskSpec{Prompt: string(make([]byte, taskhub.MaxPromptBytes+1)), Mode: "paint"})
			return err
		}, taskhub.Invalid},
		{"get unknown", func() error { _, err := h.GetTask(ctx, "alice", unknown); return err }, taskhub.NotFound},
		{"get malformed id", func() error { _, err := h.GetTask(ctx, "alice", "tasks.>"); return err }, taskhub.Invalid},
		{"get another owner's task", func() error { _, err := h.GetTask(ctx, "bob", task.Id); return err }, taskhub.NotFound},
		{"cancel another owner's task", func() error { _, err := h.CancelTask(ctx, "bob", task.Id); return err }, taskhub.NotFound},
		{"cancel unknown", func() error { _, err := h.CancelTask(ctx, "alice", unknown); return err }, taskhub.NotFound},
		{"progress over 100", func() error {
			_, err := h.ReportProgress(ctx, taskhub.Report{Lease: taskhub.Lease{TaskID: task.Id, Token: c.LeaseToken}, Progress: 100.5})
			return err
		}, taskhub.Invalid},
		{"progress below 0", func() error {
			_, err := h.ReportProgress(ctx, taskhub.Report{Lease: taskhub.Lease{TaskID: task.Id, Token: c.LeaseToken}, Progress: -1})
			return err
		}, taskhub.Invalid},
		{"wrong lease token", func() error {
			_, err := h.ReportProgress(ctx, taskhub.Report{Lease: taskhub.Lease{TaskID: task.Id, Token: "not-the-token"}, Progress: 10})
			return err
		}, taskhub.PermissionDenied},
		{"another worker's lease", func() error {
			_, err := h.ReportProgress(ctx, taskhub.Report{Lease: taskhub.Lease{Worker: "mallory", TaskID: task.Id, Token: c.LeaseToken}, Progress: 10})
			return err
		}, taskhub.PermissionDenied},
		{"report on unknown task", func() error {
			_, err := h.ReportProgress(ctx, taskhub.Report{Lease: taskhub.Lease{TaskID: unknown, Token: c.LeaseToken}, Progress: 10})
			return err
		}, taskhub.NotFound},
		{"missing lease token", func() error {
			_, err := h.CompleteTask(ctx, taskhub.Lease{TaskID: task.Id, Token: ""}, "r")
			return err
		}, taskhub.Invalid},
		{"empty failure text", func() error {
			_, err := h.FailTask(ctx, taskhub.Lease{TaskID: task.Id, Token: c.LeaseToken}, taskhub.Failure{Error: ""})
			return err
		}, taskhub.Invalid},
		{"claim without modes", func() error {
			_, err := h.ClaimTask(ctx, taskhub.ClaimParams{WorkerID: "w", Modes: nil, Wait: 0})
			return err
		}, taskhub.Invalid},
		{"claim waits too long", func() error {
			_, err := h.ClaimTask(ctx, taskhub.ClaimParams{WorkerID: "w", Modes: []string{"paint"}, Wait: time.Hour})
			return err
		}, taskhub.Invalid},
		{"list with a forged page token", func() error {
			_, err := h.ListTasks(ctx, taskhub.ListQuery{Owner: "alice", PageSize: 10, PageToken: "forged"})
			return err
		}, taskhub.Invalid},
		{"list with a bad page size", func() error {
			_, err := h.ListTasks(ctx, taskhub.ListQuery{Owner: "alice", PageSize: 501})
			return err
		}, taskhub.Invalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			require.Error(t, err)
			require.Equal(t, tc.want, codeOf(err), err.Error())
		})
	}

	// None of that changed the task.
	got, err := h.GetTask(ctx, "alice", task.Id)
	require.NoError(t, err)
	require.Equal(t, taskhubv1.TaskState_TASK_STATE_RUNNING, got.State)
	require.Zero(t, got.Progress)
}

func TestHub_CancelReachesWorker(t *testing.T) {
	t.Parallel()
	b := setup(t, options{lease: 10 * time.Second})
	h, ctx := b.hub, t.Context()

	queued := create(t, h, "alice", "queued", "paint")
	got, err := h.CancelTask(ctx, "alice", queued.Id)
	require.NoError(t, err)
	require.Equal(t, taskhubv1.TaskState_TASK_STATE_CANCELLED, got.State)
	none, err := h.ClaimTask(ctx, taskhub.ClaimParams{WorkerID: "w1", Modes: []string{"paint"}, Wait: 0})
	require.NoError(t, err)
	require.Nil(t, none, "a cancelled task must not be claimable")

	running := create(t, h, "alice", "running", "paint")
	c := claim(t, h, "paint")
	require.Equal(t, running.Id, c.Task.Id)
	_, err = h.CancelTask(ctx, "alice", running.Id)
	require.NoError(t, err)
	st, err := h.ReportProgress(ctx, taskhub.Report{Lease: taskhub.Lease{TaskID: running.Id, Token: c.LeaseToken}, Progress: 50, Message: "still going"})
	cancelled := st.CancelRequested
	require.NoError(t, err)
	require.True(t, cancelled)
	_, err = h.CompleteTask(ctx, taskhub.Lease{TaskID: running.Id, Token: c.LeaseToken}, "too late")
	require.Equal(t, taskhub.FailedPrecondition, codeOf(err), err)
	got, err = h.GetTask(ctx, "alice", running.Id)
	require.NoError(t, err)
	require.Equal(t, taskhubv1.TaskState_TASK_STATE_CANCELLED, got.State)
	require.Zero(t, got.Progress, "the report after the cancel must not be recorded")
}

func TestHub_LeaseExpiryRequeuesThenFails(t *testing.T) {
	t.Parallel()
	b := setup(t, options{lease: 300 * time.Millisecond, attempts: 2})
	h, ctx := b.hub, t.Context()
	w := watch(t, h, "alice", "", 0)
	task := create(t, h, "alice", "x", "paint")
	first := claim(t, h, "paint")

	// The worker goes silent: the lease expires and the task is requeued for attempt 2.
	_, events := w.wait(3)
	require.Equal(t, taskhubv1.EventKind_EVENT_KIND_REQUEUED, events[2].Kind)
	require.Equal(t, taskhubv1.TaskState_TASK_STATE_QUEUED, events[2].Task.State)
	require.Equal(t, uint32(2), events[2].Task.Attempt)

	// The old lease holder is refused, and changes nothing.
	_, err := h.ReportProgress(ctx, taskhub.Report{Lease: taskhub.Lease{TaskID: task.Id, Token: first.LeaseToken}, Progress: 50, Message: "late"})
	require.Equal(t, taskhub.FailedPrecondition, codeOf(err), err)

	// A second worker claims it (after the 1s backoff), then goes silent too: out of attempts.
	second, err := h.ClaimTask(ctx, taskhub.ClaimParams{WorkerID: "w2", Modes: []string{"paint"}, Wait: 5 * time.Second})
	require.NoError(t, err)
	require.NotNil(t, second)
	require.Equal(t, task.Id, second.Task.Id)
	require.Equal(t, "w2", second.Task.WorkerId)
	_, err = h.ReportProgress(ctx, taskhub.Report{Lease: taskhub.Lease{TaskID: task.Id, Token: first.LeaseToken}, Progress: 50, Message: "late"})
	require.Equal(t, taskhub.PermissionDenied, codeOf(err), err)

	_, events = w.wait(5)
	require.Equal(t, taskhubv1.EventKind_EVENT_KIND_STARTED, events[3].Kind)
	require.Equal(t, taskhubv1.EventKind_EVENT_KIND_FAILED, events[4].Kind)
	require.Contains(t, events[4].Task.Error, "gave up after 2 attempts")
}

func TestHub_IdempotentCreate(t *testing.T) {
	t.Parallel()
	b := setup(t, options{lease: 10 * time.Second})
	h, ctx := b.hub, t.Context()
	spec := taskhub.TaskSpec{Prompt: "once", Mode: "paint", IdempotencyKey: "click-1"}
	first, err := h.CreateTask(ctx, "alice", spec)
	require.NoError(t, err)
	again, err := h.CreateTask(ctx, "alice", spec)
	require.NoError(t, err)
	require.Equal(t, first.Id, again.Id)
	other, err := h.CreateTask(ctx, "bob", spec)
	require.NoError(t, err)
	require.NotEqual(t, first.Id, other.Id, "keys are per owner")

	res, err := h.ListTasks(ctx, taskhub.ListQuery{Owner: "alice", PageSize: 10})
	tasks := res.Tasks
	require.NoError(t, err)
	require.Len(t, tasks, 1)
}

func TestHub_ListPagesNewestFirst(t *testing.T) {
	t.Parallel()
	b := setup(t, options{lease: 10 * time.Second})
	h, ctx := b.hub, t.Context()
	var ids []string
	for range 5 {
		ids = append(ids, create(t, h, "alice", "x", "paint").Id)
	}
	create(t, h, "bob", "not alice's", "paint")
	_, err := h.CancelTask(ctx, "alice", ids[1])
	require.NoError(t, err)

	var seen []string
	token := ""
	for {
		res, err := h.ListTasks(ctx, taskhub.ListQuery{Owner: "alice", PageSize: 2, PageToken: token})
		page, next := res.Tasks, res.NextPageToken
		require.NoError(t, err)
		for _, task := range page {
			seen = append(seen, task.Id)
		}
		if next == "" {
			break
		}
		token = next
	}
	require.Equal(t, []string{ids[4], ids[3], ids[2], ids[1], ids[0]}, seen)

	res, err := h.ListTasks(ctx, taskhub.ListQuery{Owner: "alice", States: []taskhubv1.TaskState{taskhubv1.TaskState_TASK_STATE_CANCELLED}, PageSize: 10})
	cancelled := res.Tasks
	require.NoError(t, err)
	require.Len(t, cancelled, 1)
	require.Equal(t, ids[1], cancelled[0].Id)
}

// TestHub_ListPagesOfLargeTasks: a page holds fewer tasks than its size asks for when they
// would pass 1 MiB, at least one, and the next page goes on from there: every task once.
func TestHub_ListPagesOfLargeTasks(t *testing.T) {
	t.Parallel()
	b := setup(t, options{lease: 10 * time.Second})
	h, ctx := b.hub, t.Context()
	spec := taskhub.TaskSpec{Prompt: strings.Repeat("p", taskhub.MaxPromptBytes), Mode: "paint", Params: map[string]string{}}
	for i := range taskhub.MaxParams {
		spec.Params[fmt.Sprintf("param%02d", i)] = strings.Repeat("v", taskhub.MaxParamValueBytes)
	}
	var want []string
	for range 30 { // 49 KiB each, 1.5 MiB in all
		task, err := h.CreateTask(ctx, "alice", spec)
		require.NoError(t, err)
		want = append(want, task.Id)
	}
	slices.Reverse(want)
	var got []string
	pages := 0
	for token := ""; ; {
		pages++
		res, err := h.ListTasks(ctx, taskhub.ListQuery{Owner: "alice", PageSize: 500, PageToken: token})
		require.NoError(t, err)
		require.NotEmpty(t, res.Tasks)
		size := 0
		for _, task := range res.Tasks {
			size += proto.Size(task)
			got = append(got, task.Id)
		}
		require.LessOrEqual(t, size, 1<<20)
		if token = res.NextPageToken; token == "" {
			break
		}
	}
	require.Equal(t, want, got)
	require.Equal(t, 2, pages, "21 tasks of 49 KiB, then 9")
}
