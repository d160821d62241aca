package actors_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protojson"

	storagev1 "github.com/taskhub/taskhub/gen/taskhub/storage/v1"
	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"
	"github.com/taskhub/taskhub/webhook"

	"github.com/taskhub/taskhub"
	"github.com/taskhub/taskhub/actors"
	"github.com/taskhub/taskhub/eventlog"
)

func TestHub_StallMarksAndClears(t *testing.T) {
	t.Parallel()
	b := setup(t, options{lease: 10 * time.Second, stall: 300 * time.Millisecond})
	h, ctx := b.hub, t.Context()
	w := watch(t, h, "alice", "", 0)
	task := create(t, h, "alice", "x", "paint")
	c := claim(t, h, "paint")

	// No progress for the stall timeout: marked stalled, and watchers hear it.
	_, events := w.wait(3)
	require.Equal(t, taskhubv1.EventKind_EVENT_KIND_STALLED, events[2].Kind)
	require.True(t, events[2].Task.Stalled)
	require.Equal(t, taskhubv1.TaskState_TASK_STATE_RUNNING, events[2].Task.State)

	// Progress clears it.
	_, err := h.ReportProgress(ctx, taskhub.Report{Lease: taskhub.Lease{TaskID: task.Id, Token: c.LeaseToken}, Progress: 30, Message: "unstuck"})
	require.NoError(t, err)
	_, events = w.wait(4)
	require.Equal(t, taskhubv1.EventKind_EVENT_KIND_PROGRESS, events[3].Kind)
	require.False(t, events[3].Task.Stalled)
	require.True(t, events[3].Task.ProgressedAt.AsTime().After(events[1].Task.ProgressedAt.AsTime()))

	// A lease renewal is not progress: the task stalls again.
	_, err = h.RenewLease(ctx, taskhub.Lease{TaskID: task.Id, Token: c.LeaseToken})
	require.NoError(t, err)
	_, events = w.wait(5)
	require.Equal(t, taskhubv1.EventKind_EVENT_KIND_STALLED, events[4].Kind)
	require.Len(t, events, 5, "exactly one stall event per stall")
}

func TestHub_RenewLeaseWithoutEvents(t *testing.T) {
	t.Parallel()
	b := setup(t, options{lease: 400 * time.Millisecond})
	h, ctx := b.hub, t.Context()
	w := watch(t, h, "alice", "", 0)
	task := create(t, h, "alice", "x", "paint")
	c := claim(t, h, "paint")

	// Renewing every 150 ms keeps a 400 ms lease alive for three times its length.
	for range 8 {
		time.Sleep(150 * time.Millisecond)
		st, err := h.RenewLease(ctx, taskhub.Lease{TaskID: task.Id, Token: c.LeaseToken})
		cancelled, expires := st.CancelRequested, st.Expires
		require.NoError(t, err)
		require.False(t, cancelled)
		require.WithinDuration(t, time.Now().Add(400*time.Millisecond), expires, 200*time.Millisecond)
	}
	got, err := h.GetTask(ctx, "alice", task.Id)
	require.NoError(t, err)
	require.Equal(t, taskhubv1.TaskState_TASK_STATE_RUNNING, got.State)
	_, events := w.wait(2)
	require.Len(t, events, 2, "renewals write no events: %v", kinds(events))

	_, err = h.RenewLease(ctx, taskhub.Lease{TaskID: task.Id, Token: "not-the-token"})
	require.Equal(t, taskhub.PermissionDenied, codeOf(err), err)

	_, err = h.CancelTask(ctx, "alice", task.Id)
	require.NoError(t, err)
	st, err := h.RenewLease(ctx, taskhub.Lease{TaskID: task.Id, Token: c.LeaseToken})
	cancelled := st.CancelRequested
	require.NoError(t, err)
	require.True(t, cancelled, "a renewal learns of the cancel")
}

func TestHub_ModeAttempts(t *testing.T) {
	t.Parallel()
	b := setup(t, options{lease: 10 * time.Second, attempts: 3, modeTries: map[string]int{"once": 1}})
	h, ctx := b.hub, t.Context()

	once := create(t, h, "alice", "x", "once")
	c := claim(t, h, "once")
	got, err := h.FailTask(ctx, taskhub.Lease{TaskID: once.Id, Token: c.LeaseToken}, taskhub.Failure{Error: "GPU out of memory", Retryable: true})
	require.NoError(t, err)
	require.Equal(t, taskhubv1.TaskState_TASK_STATE_FAILED, got.State, "mode once allows one attempt")
	require.Equal(t, "GPU out of memory (gave up after 1 attempts)", got.Error)

	twice := create(t, h, "alice", "x", "paint")
	c = claim(t, h, "paint")
	got, err = h.FailTask(ctx, taskhub.Lease{TaskID: twice.Id, Token: c.LeaseToken}, taskhub.Failure{Error: "GPU out of memory", Retryable: true})
	require.NoError(t, err)
	require.Equal(t, taskhubv1.TaskState_TASK_STATE_QUEUED, got.State, "other modes get the default 3")
	require.Equal(t, uint32(2), got.Attempt)
	require.Contains(t, got.Message, "GPU out of memory")
}

// alwaysPanics panics on every append of a progress event of one task.
type alwaysPanics struct {
	actors.Log
	id     atomic.Value
	panics atomic.Int32
}

func (p *alwaysPanics) Append(ctx context.Context, rec *storagev1.Record, expectLast uint64) (uint64, error) {
	if rec.GetEvent().GetKind() == taskhubv1.EventKind_EVENT_KIND_PROGRESS && p.id.Load() == rec.GetEvent().GetTask().GetId() {
		p.panics.Add(1)
		panic("injected: this task's progress always panics")
	}
	return p.Log.Append(ctx, rec, expectLast)
}

func TestHub_SupervisorFailsTaskThatKeepsPanicking(t *testing.T) {
	t.Parallel()
	p := &alwaysPanics{}
	b := setup(t, options{lease: 10 * time.Second, wrap: func(l actors.Log) actors.Log { p.Log = l; return p }})
	h, ctx := b.hub, t.Context()
	task := create(t, h, "alice", "poison", "paint")
	c := claim(t, h, "paint")
	p.id.Store(task.Id)

	// Every report panics; after the supervisor's bounded restarts it fails the task.
	var got *taskhubv1.Task
	for i := range 30 {
		// Each is answered: the panic's answer, or the task's end. A report that reaches the
		// actor's mailbox while the supervisor's strategy stops it is lost with the mailbox and
		// waits for its deadline (the hub's doc says so); that happens at most once, to the
		// report after the last restart.
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := h.ReportProgress(rctx, taskhub.Report{Lease: taskhub.Lease{TaskID: task.Id, Token: c.LeaseToken}, Progress: 10, Message: "boom"})
		cancel()
		require.Error(t, err, "report %d", i)
		codes := []taskhub.Code{taskhub.Internal, taskhub.Unavailable, taskhub.FailedPrecondition}
		if i == 11 { // after the 11th panic (10 restarts) stopped the actor
			codes = append(codes, taskhub.DeadlineExceeded)
		}
		require.Contains(t, codes, codeOf(err), "report %d: %v", i, err)
		var gerr error
		got, gerr = h.GetTask(ctx, "alice", task.Id)
		require.NoError(t, gerr)
		if got.State != taskhubv1.TaskState_TASK_STATE_RUNNING {
			break
		}
	}
	require.Eventually(t, func() bool {
		got, _ = h.GetTask(ctx, "alice", task.Id)
		return got.State == taskhubv1.TaskState_TASK_STATE_FAILED
	}, 5*time.Second, 10*time.Millisecond)
	require.Contains(t, got.Error, "internal error")
	require.Equal(t, int32(11), p.panics.Load(), "10 restarts, then the 11th failure stops the actor")

	// The hub is fine: other tasks still run, and the failed one refuses more work.
	other := create(t, h, "alice", "fine", "paint")
	c2 := claim(t, h, "paint")
	require.Equal(t, other.Id, c2.Task.Id)
	_, err := h.CompleteTask(ctx, taskhub.Lease{TaskID: other.Id, Token: c2.LeaseToken}, "ok")
	require.NoError(t, err)
	_, err = h.ReportProgress(ctx, taskhub.Report{Lease: taskhub.Lease{TaskID: task.Id, Token: c.LeaseToken}, Progress: 10, Message: "again"})
	require.Equal(t, taskhub.FailedPrecondition, codeOf(err), err)
}

func TestHub_TaskEndedClosesOnCancel(t *testing.T) {
	t.Parallel()
	b := setup(t, options{lease: 10 * time.Second})
	h, ctx := b.hub, t.Context()
	task := create(t, h, "alice", "x", "paint")
	claim(t, h, "paint")
	ended, release := h.TaskEnded(task.Id)
	defer release()
	select {
	case <-ended:
		t.Fatal("closed before the task ended")
	case <-time.After(50 * time.Millisecond):
	}
	_, err := h.CancelTask(ctx, "alice", task.Id)
	require.NoError(t, err)
	select {
	case <-ended:
	case <-time.After(5 * time.Second):
		t.Fatal("not closed after the cancel")
	}
}

func TestHub_RestartGivesWorkersAFullLease(t *testing.T) {
	t.Parallel()
	opts := options{lease: time.Second}
	b := setup(t, opts)
	create(t, b.hub, "alice", "x", "paint")
	c := claim(t, b.hub, "paint")

	// The hub is down for most of the lease; the worker cannot report meanwhile.
	b.close()
	time.Sleep(800 * time.Millisecond)
	b.open(t, opts)
	time.Sleep(400 * time.Millisecond) // now past the lease granted before the restart

	st, err := b.hub.ReportProgress(t.Context(), taskhub.Report{Lease: taskhub.Lease{TaskID: c.Task.Id, Token: c.LeaseToken}, Progress: 50, Message: "still here"})
	expires := st.Expires
	require.NoError(t, err, "the restarted hub gave the worker a full lease to come back")
	require.True(t, expires.After(c.LeaseExpires))
}

func TestHub_RetentionCompactsAndResumesHonestly(t *testing.T) {
	t.Parallel()
	opts := options{lease: 10 * time.Second, retention: 300 * time.Millisecond}
	b := setup(t, opts)
	h, ctx := b.hub, t.Context()
	w := watch(t, h, "alice", "", 0)

	task := create(t, h, "alice", "x", "paint")
	c := claim(t, h, "paint")
	for p := 10.0; p <= 50; p += 10 {
		_, err := h.ReportProgress(ctx, taskhub.Report{Lease: taskhub.Lease{TaskID: task.Id, Token: c.LeaseToken}, Progress: p})
		require.NoError(t, err)
	}
	_, err := h.CompleteTask(ctx, taskhub.Lease{TaskID: task.Id, Token: c.LeaseToken}, "done")
	require.NoError(t, err)
	snap, events := w.wait(2)
	started := events[1].Seq // a watcher that left right after STARTED
	// Wait for the end (the watcher may coalesce progress when the machine is busy).
	events = w.waitFor(func(events []*taskhubv1.TaskEvent) bool {
		return countKind(events, taskhubv1.EventKind_EVENT_KIND_COMPLETED) == 1
	})
	final := events[len(events)-1].Seq

	// After the retention, only the final event of the task is left.
	require.Eventually(t, func() bool {
		e, err := b.log.Next(ctx, "tasks.alice.>", 1)
		return err == nil && e.Seq == final
	}, 5*time.Second, 20*time.Millisecond, "the finished task's events were not compacted")
	got, err := h.GetTask(ctx, "alice", task.Id)
	require.NoError(t, err)
	require.Equal(t, "done", got.Result)

	// A watcher that left before the removed history gets a fresh snapshot, not a gap.
	old := watch(t, h, "alice", snap.Epoch, started)
	osnap, _ := old.wait(0)
	require.False(t, osnap.Recovered)
	require.Empty(t, osnap.Tasks, "nothing is active")
	// One that saw the final event resumes as usual.
	recent := watch(t, h, "alice", snap.Epoch, final)
	rsnap, _ := recent.wait(0)
	require.True(t, rsnap.Recovered)

	// The watermark survives a restart.
	b.close()
	b.open(t, opts)
	again := watch(t, b.hub, "alice", snap.Epoch, started)
	asnap, _ := again.wait(0)
	require.False(t, asnap.Recovered)
}

func TestHub_WatchLimits(t *testing.T) {
	t.Parallel()
	b := setup(t, options{lease: 10 * time.Second, watches: [2]int{3, 2}})
	h, ctx := b.hub, t.Context()
	open := func(owner string) (taskhub.Watch, error) {
		w, err := h.Watch(ctx, taskhub.WatchQuery{Owner: owner, Epoch: "", AfterSeq: 0})
		if err == nil {
			t.Cleanup(w.Close)
		}
		return w, err
	}
	a1, err := open("alice")
	require.NoError(t, err)
	_, err = open("alice")
	require.NoError(t, err)
	_, err = open("alice")
	require.Equal(t, taskhub.ResourceExhausted, codeOf(err), err)
	require.Contains(t, err.Error(), "2 open watches")

	_, err = open("bob")
	require.NoError(t, err, "another user has their own allowance")
	_, err = open("carol")
	require.Equal(t, taskhub.ResourceExhausted, codeOf(err), "the server's limit of 3")

	a1.Close()
	a1.Close() // closing twice frees one place, not two
	_, err = open("alice")
	require.NoError(t, err, "a closed watch frees its place")
	_, err = open("alice")
	require.Equal(t, taskhub.ResourceExhausted, codeOf(err), err)
}

// flakyLog fails the first append of one event kind, as a log that is briefly down would.
type flakyLog struct {
	actors.Log
	kind   taskhubv1.EventKind
	failed atomic.Int32
}

func (f *flakyLog) Append(ctx context.Context, rec *storagev1.Record, expectLast uint64) (uint64, error) {
	if rec.GetEvent().GetKind() == f.kind && f.failed.CompareAndSwap(0, 1) {
		return 0, eventlog.ErrUnavailable
	}
	return f.Log.Append(ctx, rec, expectLast)
}

func TestHub_LeaseExpiryOutlivesABriefLogOutage(t *testing.T) {
	t.Parallel()
	f := &flakyLog{kind: taskhubv1.EventKind_EVENT_KIND_REQUEUED}
	b := setup(t, options{lease: 300 * time.Millisecond, wrap: func(l actors.Log) actors.Log { f.Log = l; return f }})
	h := b.hub
	w := watch(t, h, "alice", "", 0)
	create(t, h, "alice", "x", "paint")
	claim(t, h, "paint")

	// The expiry's append fails once; the actor tries again rather than forget the lease.
	_, events := w.wait(3)
	require.Equal(t, int32(1), f.failed.Load())
	require.Equal(t, taskhubv1.EventKind_EVENT_KIND_REQUEUED, events[2].Kind)
	require.Equal(t, uint32(2), events[2].Task.Attempt)
}

// TestHub_StartReadsTheTasksThatMatter: a finished task leaves the log's live index once the
// compactor is done with it (at once with compaction off, after the retention with it on), so a
// start reads the active tasks, not every task ever; the finished ones are still there to get.
func TestHub_StartReadsTheTasksThatMatter(t *testing.T) {
	t.Parallel()
	for _, retention := range []time.Duration{-1, 300 * time.Millisecond} {
		t.Run(fmt.Sprintf("retention %v", retention), func(t *testing.T) {
			t.Parallel()
			opts := options{lease: 10 * time.Second, retention: retention}
			b := setup(t, opts)
			h, ctx := b.hub, t.Context()
			active := create(t, h, "alice", "active", "paint")
			done := create(t, h, "alice", "done", "paint")
			_, err := h.CancelTask(ctx, "alice", done.Id)
			require.NoError(t, err)
			ran := create(t, h, "alice", "ran", "ink")
			complete(t, h, claim(t, h, "ink"))
			require.Eventually(t, func() bool {
				live, err := b.log.Live(ctx)
				require.NoError(t, err)
				return len(live) == 1 && live[0] == active.Id
			}, 10*time.Second, 20*time.Millisecond, "the finished tasks leave the live index")

			b.close()
			b.open(t, opts)
			w := watch(t, b.hub, "alice", "", 0)
			snap, _ := w.wait(0)
			require.Len(t, snap.Tasks, 1)
			require.Equal(t, active.Id, snap.Tasks[0].Id)
			for _, id := range []string{done.Id, ran.Id} {
				got, err := b.hub.GetTask(ctx, "alice", id)
				require.NoError(t, err)
				require.True(t, got.State == taskhubv1.TaskState_TASK_STATE_CANCELLED || got.State == taskhubv1.TaskState_TASK_STATE_COMPLETED)
			}
		})
	}
}

// hookReceiver is a webhook receiver, which keeps each event it is sent as name(ev) (answering
// 503 while up says it is not), and a sender that may post to it.
type hookReceiver struct {
	url    string
	sender *webhook.Sender
	mu     sync.Mutex
	got    []string
}

func newHookReceiver(t *testing.T, name func(*taskhubv1.TaskEvent) string, up func() bool) *hookReceiver {
	t.Helper()
	h := &hookReceiver{}
	rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !up() {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		body, _ := io.ReadAll(r.Body)
		ev := &taskhubv1.TaskEvent{}
		require.NoError(t, protojson.Unmarshal(body, ev))
		h.mu.Lock()
		h.got = append(h.got, name(ev))
		h.mu.Unlock()
	}))
	t.Cleanup(rcv.Close)
	u, _ := url.Parse(rcv.URL)
	sender, err := webhook.New(webhook.Config{Allow: []string{u.Host}, Secret: "whsec_" + "C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
		RetryMin: 50 * time.Millisecond, RetryMax: 100 * time.Millisecond})
	require.NoError(t, err)
	h.url, h.sender = rcv.URL, sender
	return h
}

// events is what it was sent, in order.
func (h *hookReceiver) events() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.got)
}

// TestHub_WebhookHoldsCompaction: a finished task whose webhook deliveries are not done keeps
// its whole history past the retention, so that the events still to send are there to send;
// once they are delivered, it is compacted as any other.
func TestHub_WebhookHoldsCompaction(t *testing.T) {
	t.Parallel()
	var up atomic.Bool
	rcv := newHookReceiver(t, func(ev *taskhubv1.TaskEvent) string { return ev.Kind.String() }, up.Load)
	b := setup(t, options{lease: 10 * time.Second, retention: 100 * time.Millisecond, webhooks: rcv.sender})
	h, ctx := b.hub, t.Context()

	task, err := h.CreateTask(ctx, "alice", taskhub.TaskSpec{Prompt: "x", Mode: "paint", Webhook: &taskhubv1.Webhook{Url: rcv.url,
		Events: []taskhubv1.EventKind{taskhubv1.EventKind_EVENT_KIND_STARTED, taskhubv1.EventKind_EVENT_KIND_COMPLETED}}})
	require.NoError(t, err)
	c := claim(t, h, "paint")
	for p := 10.0; p <= 30; p += 10 {
		_, err := h.ReportProgress(ctx, taskhub.Report{Lease: taskhub.Lease{TaskID: task.Id, Token: c.LeaseToken}, Progress: p})
		require.NoError(t, err)
	}
	done, err := h.CompleteTask(ctx, taskhub.Lease{TaskID: task.Id, Token: c.LeaseToken}, "done")
	require.NoError(t, err)

	time.Sleep(time.Second) // ten retentions, while every delivery fails
	first, err := b.log.Next(ctx, "tasks.alice.>", 1)
	require.NoError(t, err)
	require.Equal(t, task.Seq, first.Seq, "the history is whole while deliveries are pending")

	up.Store(true)
	require.Eventually(t, func() bool {
		e, err := b.log.Next(ctx, "tasks.alice.>", 1)
		return err == nil && e.Seq == done.Seq
	}, 10*time.Second, 20*time.Millisecond, "compacted once delivered")
	require.Equal(t, []string{"EVENT_KIND_STARTED", "EVENT_KIND_COMPLETED"}, rcv.events())
}

// renewals records when the task actors renew queue deliveries.
type renewals struct {
	actors.Log
	mu    sync.Mutex
	start time.Time
	at    []time.Duration
}

func (r *renewals) Renew(ackSubject string) error {
	r.mu.Lock()
	r.at = append(r.at, time.Since(r.start))
	r.mu.Unlock()
	return r.Log.Renew(ackSubject)
}

// TestHub_QueueKeepsARunningTaskWhileItsLeaseHolds: a running task's queue delivery is renewed
// often enough that JetStream never delivers the task again while its lease holds, though
// reports renew it at most so often. The ack wait here exceeds the lease by half a second (as
// the server's 5 s over 30 s, scaled down): a report 0.7 s after the claim must renew the
// delivery, or it runs out 0.2 s before the lease does and a waiting claim is handed it (which
// the claim then follows, renewing it: that renewal is what this test sees).
func TestHub_QueueKeepsARunningTaskWhileItsLeaseHolds(t *testing.T) {
	t.Parallel()
	const lease = 3 * time.Second
	r := &renewals{}
	b := setup(t, options{lease: lease,
		logConfig: func(c *eventlog.Config) { c.AckWait = lease + 500*time.Millisecond },
		wrap:      func(l actors.Log) actors.Log { r.Log = l; return r }})
	h := b.hub
	create(t, h, "alice", "render me", "render")
	r.mu.Lock()
	r.start = time.Now()
	r.mu.Unlock()
	c := claim(t, h, "render")
	time.Sleep(700 * time.Millisecond)
	st, err := h.ReportProgress(t.Context(), taskhub.Report{Lease: taskhub.Lease{TaskID: c.Task.Id, Token: c.LeaseToken}, Progress: 10})
	require.NoError(t, err)
	r.mu.Lock()
	reported := time.Since(r.start) // the report's renewal, if any, came before its answer
	r.mu.Unlock()
	leaseEnds := time.Until(st.Expires)

	// The worker goes silent; another waits for work until just before the lease ends.
	other, err := h.ClaimTask(t.Context(), taskhub.ClaimParams{WorkerID: "w2", Modes: []string{"render"}, Wait: leaseEnds - 50*time.Millisecond})
	require.NoError(t, err)
	require.Nil(t, other, "nothing to claim while the lease holds")
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, at := range r.at {
		require.Less(t, at, reported, "a renewal while the worker was silent is the queue delivering the task again: %v (the report answered at %v)", r.at, reported)
	}
}

// readsLog records the owners the hub reads tasks' last events by.
type readsLog struct {
	actors.Log
	mu     sync.Mutex
	owners []string
}

func (r *readsLog) Last(ctx context.Context, owner, id string) (*eventlog.Entry, error) {
	r.mu.Lock()
	r.owners = append(r.owners, owner)
	r.mu.Unlock()
	return r.Log.Last(ctx, owner, id)
}

// TestHub_ReadsATaskByItsOwner: through a task's life (created, claimed, reported by a worker
// to an actor started afresh, its lease run out, claimed again, completed, completed again by
// its worker, and another one cancelled by someone else, then by its owner) the hub reads it by owner and id, never by id
// alone, which JetStream answers by matching every owner's subjects (BenchmarkLog_Last).
func TestHub_ReadsATaskByItsOwner(t *testing.T) {
	t.Parallel()
	r := &readsLog{}
	b := setup(t, options{lease: time.Second, idle: 100 * time.Millisecond, wrap: func(l actors.Log) actors.Log { r.Log = l; return r }})
	h, ctx := b.hub, t.Context()
	w := watch(t, h, "alice", "", 0)
	create(t, h, "alice", "x", "paint")
	c := claim(t, h, "paint")
	time.Sleep(300 * time.Millisecond) // its actor, idle, is let go: the report starts another
	report(t, h, c, 50)
	// Its lease runs out: the hub's timer requeues it, and it is claimed again.
	c = claim(t, h, "paint")
	require.Equal(t, uint32(2), c.Task.Attempt)
	complete(t, h, c)
	// Its worker, retrying, completes it again: a new actor, which the feed tells the owner.
	time.Sleep(300 * time.Millisecond)
	_, err := h.CompleteTask(ctx, taskhub.Lease{TaskID: c.Task.Id, Token: c.LeaseToken}, "again")
	require.Equal(t, taskhub.FailedPrecondition, codeOf(err), err)

	queued := create(t, h, "alice", "y", "draw")
	_, err = h.CancelTask(ctx, "bob", queued.Id)
	require.Equal(t, taskhub.NotFound, codeOf(err), err)
	cancelled, err := h.CancelTask(ctx, "alice", queued.Id)
	require.NoError(t, err, "bob's cancel left its actor believing there is no such task")
	require.Equal(t, taskhubv1.TaskState_TASK_STATE_CANCELLED, cancelled.State)
	w.wait(8) // created, started, progress, requeued, started, completed; created, cancelled

	r.mu.Lock()
	defer r.mu.Unlock()
	require.NotEmpty(t, r.owners)
	require.NotContains(t, r.owners, "*", "a read by id alone")
}

// TestHub_ASettledTaskIsReadUnderItsCaller: a task settled before a restart, which the feed
// knows no owner of, is read for a cancel under the caller's name: not found for bob (and not
// remembered so), already completed for alice. Its worker's late complete is refused too.
func TestHub_ASettledTaskIsReadUnderItsCaller(t *testing.T) {
	t.Parallel()
	r := &readsLog{}
	opts := options{lease: 10 * time.Second, retention: 100 * time.Millisecond, wrap: func(l actors.Log) actors.Log { r.Log = l; return r }}
	b := setup(t, opts)
	task := create(t, b.hub, "alice", "x", "paint")
	c := claim(t, b.hub, "paint")
	complete(t, b.hub, c)
	require.Eventually(t, func() bool {
		live, err := b.log.Live(t.Context())
		return err == nil && !slices.Contains(live, task.Id)
	}, 5*time.Second, 20*time.Millisecond, "the task was not settled")
	b.close()
	b.open(t, opts)
	h, ctx := b.hub, t.Context()

	r.mu.Lock()
	r.owners = nil
	r.mu.Unlock()
	_, err := h.CancelTask(ctx, "bob", task.Id)
	require.Equal(t, taskhub.NotFound, codeOf(err), err)
	_, err = h.CancelTask(ctx, "alice", task.Id)
	require.Equal(t, taskhub.FailedPrecondition, codeOf(err), err)
	_, err = h.CompleteTask(ctx, taskhub.Lease{TaskID: task.Id, Token: c.LeaseToken}, "again")
	require.Equal(t, taskhub.FailedPrecondition, codeOf(err), err)
	r.mu.Lock()
	defer r.mu.Unlock()
	require.Subset(t, []string{"bob", "alice", "*"}, r.owners)
	require.Equal(t, "bob", r.owners[0])
	require.Contains(t, r.owners, "alice")
}

// TestHub_MadeUpIDsCannotSpendTheNode: a worker naming hundreds of ids no task has gets
// not_found for as many as the hub reads by id alone (at most byIDReads a second, after a burst
// as large), and unavailable, at once and with nothing changed, for the rest; a report on a
// real task goes through meanwhile.
func TestHub_MadeUpIDsCannotSpendTheNode(t *testing.T) {
	t.Parallel()
	r := &readsLog{}
	b := setup(t, options{lease: 10 * time.Second, wrap: func(l actors.Log) actors.Log { r.Log = l; return r }})
	h := b.hub
	create(t, h, "alice", "x", "paint")
	c := claim(t, h, "paint")

	const made = 400
	codes := make([]taskhub.Code, made)
	start := time.Now()
	var wg sync.WaitGroup
	for i := range made {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
			defer cancel()
			_, err := h.ReportProgress(ctx, taskhub.Report{Lease: taskhub.Lease{TaskID: taskhub.NewTaskID(time.Now()), Token: "t"}, Progress: 1})
			codes[i] = codeOf(err)
		})
	}
	report(t, h, c, 10)
	wg.Wait()
	took := time.Since(start)

	count := map[taskhub.Code]int{}
	for _, code := range codes {
		count[code]++
	}
	require.Equal(t, made, count[taskhub.NotFound]+count[taskhub.Unavailable], "%v", count)
	r.mu.Lock()
	byID := 0
	for _, o := range r.owners {
		if o == "*" {
			byID++
		}
	}
	r.mu.Unlock()
	// Each not_found is a read by id; a read the call's deadline cut short answers unavailable.
	require.LessOrEqual(t, count[taskhub.NotFound], byID)
	require.LessOrEqual(t, byID, 100+int(100*took.Seconds())+1, "read by id alone %d times in %v", byID, took)
	require.Positive(t, count[taskhub.Unavailable], "%v", count)
}

// TestHub_WebhookReadsByIndex: a task with a webhook reports among other users' tasks. Its
// deliveries read each of its events by sequence from the feed's index, never asking the log to
// search the others' events for its next one, and every event it asks for arrives, in order.
// After a restart the index starts afresh: the loop, resuming at its cursor from before it,
// finds the task's next event by searching the log, as before.
func TestHub_WebhookReadsByIndex(t *testing.T) {
	t.Parallel()
	rcv := newHookReceiver(t, func(ev *taskhubv1.TaskEvent) string { return fmt.Sprintf("%s %v", ev.Kind, ev.Task.Progress) }, func() bool { return true })
	r := &readsOfReplays{}
	opts := options{lease: 10 * time.Second, webhooks: rcv.sender, wrap: func(l actors.Log) actors.Log { r.Log = l; return r }}
	b := setup(t, opts)
	h, ctx := b.hub, t.Context()
	delivered := func(want ...string) {
		t.Helper()
		require.Eventually(t, func() bool { return len(rcv.events()) >= len(want) }, 10*time.Second, 10*time.Millisecond, "%v", want)
		time.Sleep(50 * time.Millisecond) // a repeat would arrive by now
		require.Equal(t, want, rcv.events())
	}

	task, err := h.CreateTask(ctx, "alice", taskhub.TaskSpec{Prompt: "x", Mode: "paint", Webhook: &taskhubv1.Webhook{Url: rcv.url, ProgressIntervalSeconds: 1,
		Events: []taskhubv1.EventKind{taskhubv1.EventKind_EVENT_KIND_STARTED, taskhubv1.EventKind_EVENT_KIND_PROGRESS, taskhubv1.EventKind_EVENT_KIND_COMPLETED}}})
	require.NoError(t, err)
	c := claim(t, h, "paint")
	require.Equal(t, task.Id, c.Task.Id)
	for p := 10.0; p <= 30; p += 10 {
		create(t, h, "bob", fmt.Sprint("b", p), "draw")
		create(t, h, "carol", fmt.Sprint("c", p), "draw")
		report(t, h, c, p)
	}
	// 20 came too soon after 10, and 30 was stored after it: skipped. 30 goes a second after 10.
	delivered("EVENT_KIND_STARTED 0", "EVENT_KIND_PROGRESS 10", "EVENT_KIND_PROGRESS 30")
	require.Zero(t, r.next.Load(), "a delivery searched the log")
	require.NotZero(t, r.get.Load())

	create(t, h, "bob", "after", "draw") // so that the loop's cursor is before the restart's index
	b.close()
	b.open(t, opts)
	complete(t, b.hub, c)
	delivered("EVENT_KIND_STARTED 0", "EVENT_KIND_PROGRESS 10", "EVENT_KIND_PROGRESS 30", "EVENT_KIND_COMPLETED 100")
	require.NotZero(t, r.next.Load(), "the cursor from before the restart is not in the index")
}
