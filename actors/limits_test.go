package actors_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	storagev1 "github.com/taskhub/taskhub/gen/taskhub/storage/v1"
	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"

	"github.com/taskhub/taskhub"
	"github.com/taskhub/taskhub/actors"
	"github.com/taskhub/taskhub/eventlog"
	"github.com/taskhub/taskhub/internal/fdtest"
)

func TestHub_ActiveTaskLimit(t *testing.T) {
	t.Parallel()
	b := setup(t, options{lease: 10 * time.Second, active: 3})
	h, ctx := b.hub, t.Context()
	first, err := h.CreateTask(ctx, "alice", taskhub.TaskSpec{Prompt: "1", Mode: "paint", IdempotencyKey: "k1"})
	require.NoError(t, err)
	create(t, h, "alice", "2", "paint")
	create(t, h, "alice", "3", "paint")

	_, err = h.CreateTask(ctx, "alice", taskhub.TaskSpec{Prompt: "4", Mode: "paint"})
	require.Equal(t, taskhub.ResourceExhausted, codeOf(err), err)
	require.Contains(t, err.Error(), "--max-active-tasks-per-user")
	_, err = h.CreateTask(ctx, "alice", taskhub.TaskSpec{Prompt: "4", Mode: "paint", IdempotencyKey: "new"})
	require.Equal(t, taskhub.ResourceExhausted, codeOf(err), "a new key is a new task: refused")

	// A retry of a create that succeeded is answered with its task, at the limit or not.
	again, err := h.CreateTask(ctx, "alice", taskhub.TaskSpec{Prompt: "1", Mode: "paint", IdempotencyKey: "k1"})
	require.NoError(t, err)
	require.Equal(t, first.Id, again.Id)

	// Other users have their own limit; a finished task frees a place.
	create(t, h, "bob", "b", "paint")
	c := claim(t, h, "paint")
	_, err = h.CompleteTask(ctx, taskhub.Lease{TaskID: c.Task.Id, Token: c.LeaseToken}, "done")
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		_, err := h.CreateTask(ctx, "alice", taskhub.TaskSpec{Prompt: "4", Mode: "paint", IdempotencyKey: "after"})
		return err == nil
	}, 5*time.Second, 10*time.Millisecond)
}

// TestHub_ActiveTaskLimitHoldsUnderConcurrentCreates sends many creates at once: the creates
// under way count against the limit too, so no more than the limit succeed.
func TestHub_ActiveTaskLimitHoldsUnderConcurrentCreates(t *testing.T) {
	t.Parallel()
	const limit = 10
	b := setup(t, options{lease: 10 * time.Second, active: limit})
	var ok, refused atomic.Int32
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Go(func() {
			_, err := b.hub.CreateTask(t.Context(), "alice", taskhub.TaskSpec{Prompt: fmt.Sprint(i), Mode: "paint"})
			switch taskhub.ErrorCode(err) {
			case taskhub.ResourceExhausted:
				refused.Add(1)
			default:
				require.NoError(t, err)
				ok.Add(1)
			}
		})
	}
	wg.Wait()
	require.Equal(t, int32(limit), ok.Load())
	ids, err := b.log.TaskIDs(t.Context(), "alice")
	require.NoError(t, err)
	require.Len(t, ids, limit)
}

func TestHub_ModeLimit(t *testing.T) {
	t.Parallel()
	b := setup(t, options{lease: 10 * time.Second, maxModes: 2})
	h, ctx := b.hub, t.Context()
	create(t, h, "alice", "a", "one")
	create(t, h, "alice", "b", "two")
	create(t, h, "bob", "c", "two")
	_, err := h.CreateTask(ctx, "alice", taskhub.TaskSpec{Prompt: "c", Mode: "three"})
	require.Equal(t, taskhub.ResourceExhausted, codeOf(err), err)
	require.Contains(t, err.Error(), "--max-modes")

	// Once mode one has no unfinished task, another mode may take its place.
	c := claim(t, h, "one")
	_, err = h.CompleteTask(ctx, taskhub.Lease{TaskID: c.Task.Id, Token: c.LeaseToken}, "done")
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		_, err := h.CreateTask(ctx, "alice", taskhub.TaskSpec{Prompt: "c", Mode: "three"})
		return err == nil
	}, 5*time.Second, 10*time.Millisecond)
}

// TestHub_ModeLimitHoldsUnderConcurrentCreates: creates under way count their modes, so
// concurrent creates in new modes cannot pass the limit together.
func TestHub_ModeLimitHoldsUnderConcurrentCreates(t *testing.T) {
	t.Parallel()
	b := setup(t, options{lease: 10 * time.Second, maxModes: 3})
	var ok atomic.Int32
	var wg sync.WaitGroup
	for i := range 30 {
		wg.Go(func() {
			_, err := b.hub.CreateTask(t.Context(), "alice", taskhub.TaskSpec{Prompt: "x", Mode: fmt.Sprintf("mode-%d", i)})
			if err == nil {
				ok.Add(1)
			} else {
				require.Equal(t, taskhub.ResourceExhausted, codeOf(err), err)
			}
		})
	}
	wg.Wait()
	require.Equal(t, int32(3), ok.Load())
	modes, err := b.log.QueueModes(t.Context())
	require.NoError(t, err)
	require.Len(t, modes, 3)
}

// TestHub_ClaimsOfUnknownModesCostNothing: claims naming modes that no task has create no queue
// consumer and do not keep a claim of a real mode from its task; a task of a mode a claim is
// already waiting for reaches it.
func TestHub_ClaimsOfUnknownModesCostNothing(t *testing.T) {
	t.Parallel()
	b := setup(t, options{lease: 10 * time.Second})
	h, ctx := b.hub, t.Context()
	madeUp := func(i int) []string {
		var modes []string
		for j := range taskhub.MaxClaimModes {
			modes = append(modes, fmt.Sprintf("made-up-%d-%d", i, j))
		}
		return modes
	}
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Go(func() {
			wait := time.Duration(0)
			if i%2 == 0 {
				wait = 300 * time.Millisecond
			}
			c, err := h.ClaimTask(ctx, taskhub.ClaimParams{WorkerID: "w", Modes: madeUp(i), Wait: wait})
			require.NoError(t, err)
			require.Nil(t, c)
		})
	}
	// Meanwhile a claim that also names a real mode gets its task.
	real := create(t, h, "alice", "x", "real")
	c, err := h.ClaimTask(ctx, taskhub.ClaimParams{WorkerID: "w", Modes: append(madeUp(99)[:15], "real"), Wait: 5 * time.Second})
	require.NoError(t, err)
	require.NotNil(t, c)
	require.Equal(t, real.Id, c.Task.Id)
	wg.Wait()
	modes, err := b.log.QueueModes(ctx)
	require.NoError(t, err)
	require.Equal(t, []string{"real"}, modes, "no consumer for a mode only claims named")

	// A claim waiting for a mode nobody has used gets the first task of it.
	got := make(chan *taskhub.Claim, 1)
	go func() {
		c, err := h.ClaimTask(ctx, taskhub.ClaimParams{WorkerID: "w", Modes: []string{"brand-new"}, Wait: 10 * time.Second})
		require.NoError(t, err)
		got <- c
	}()
	time.Sleep(100 * time.Millisecond) // the claim is waiting
	task := create(t, h, "alice", "y", "brand-new")
	select {
	case c := <-got:
		require.NotNil(t, c)
		require.Equal(t, task.Id, c.Task.Id)
	case <-time.After(10 * time.Second):
		t.Fatal("the waiting claim did not get the task of its new mode")
	}
}

// TestHub_ClaimAfterIdleConsumerRemoved: JetStream removes a mode's consumer that nobody used for
// the idle time; its queued task is still claimed.
func TestHub_ClaimAfterIdleConsumerRemoved(t *testing.T) {
	t.Parallel()
	b := setup(t, options{lease: 10 * time.Second, logConfig: func(c *eventlog.Config) { c.QueueIdle = 300 * time.Millisecond }})
	task := create(t, b.hub, "alice", "x", "slow-mode")
	require.Eventually(t, func() bool {
		modes, err := b.log.QueueModes(t.Context())
		require.NoError(t, err)
		return len(modes) == 0
	}, 10*time.Second, 20*time.Millisecond)
	c := claim(t, b.hub, "slow-mode")
	require.Equal(t, task.Id, c.Task.Id)
}

// TestHub_ReconcileQueuesWhatTheQueueLost: a task stored as queued whose queue message is gone (as
// after a crash between the two writes, or a store failure) is queued again when the hub opens.
func TestHub_ReconcileQueuesWhatTheQueueLost(t *testing.T) {
	t.Parallel()
	b := setup(t, options{lease: 10 * time.Second})
	ctx := t.Context()
	lost := create(t, b.hub, "alice", "x", "paint")
	done := create(t, b.hub, "alice", "y", "gone")
	_, err := b.hub.CancelTask(ctx, "alice", done.Id)
	require.NoError(t, err)
	require.NoError(t, b.log.Dequeue(ctx, "paint", lost.Id))
	b.close()

	b.open(t, options{lease: 10 * time.Second})
	c := claim(t, b.hub, "paint")
	require.Equal(t, lost.Id, c.Task.Id)
}

// slowLog makes appends of one event kind wait until their context ends, then report that the
// log did not confirm them, and can make enqueues hang.
type slowLog struct {
	actors.Log
	kind        taskhubv1.EventKind
	enqueueHang atomic.Bool
	enqueued    atomic.Int32
}

func (s *slowLog) Append(ctx context.Context, rec *storagev1.Record, expectLast uint64) (uint64, error) {
	if rec.GetEvent().GetKind() == s.kind {
		<-ctx.Done()
		return 0, fmt.Errorf("%w: %w", eventlog.ErrUncertain, ctx.Err())
	}
	return s.Log.Append(ctx, rec, expectLast)
}

func (s *slowLog) Enqueue(ctx context.Context, mode, owner, id string) (bool, error) {
	if s.enqueueHang.Load() {
		<-ctx.Done()
		return false, eventlog.ErrUnavailable
	}
	s.enqueued.Add(1)
	return s.Log.Enqueue(ctx, mode, owner, id)
}

// TestHub_AnswersWhatHappened: every call answers what became of its change. A create stored
// while the queue hangs answers "created" (the queueing follows); a write the log does not
// confirm by the caller's deadline answers DeadlineExceeded ("may have been made", naming the
// task); a call whose deadline passed before it could start answers Unavailable and changes
// nothing.
func TestHub_AnswersWhatHappened(t *testing.T) {
	t.Parallel()
	s := &slowLog{kind: taskhubv1.EventKind_EVENT_KIND_PROGRESS}
	b := setup(t, options{lease: 10 * time.Second, wrap: func(l actors.Log) actors.Log { s.Log = l; return s }})
	h := b.hub

	s.enqueueHang.Store(true)
	start := time.Now()
	task := create(t, h, "alice", "x", "paint")
	require.Less(t, time.Since(start), 5*time.Second, "the create waited for the queue")
	s.enqueueHang.Store(false)
	c := claim(t, h, "paint") // queued by the retry
	require.Equal(t, task.Id, c.Task.Id)

	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	_, err := h.ReportProgress(ctx, taskhub.Report{Lease: taskhub.Lease{TaskID: task.Id, Token: c.LeaseToken}, Progress: 50})
	require.Equal(t, taskhub.DeadlineExceeded, codeOf(err), err)
	require.Contains(t, err.Error(), task.Id)

	gone, cancel := context.WithCancel(t.Context())
	cancel()
	_, err = h.CreateTask(gone, "alice", taskhub.TaskSpec{Prompt: "never", Mode: "paint"})
	require.Equal(t, taskhub.Unavailable, codeOf(err), err)
	ids, err := b.log.TaskIDs(t.Context(), "alice")
	require.NoError(t, err)
	require.Len(t, ids, 1, "a call that could not start changed nothing")
}

// TestHub_StoreFailureRecovers runs the process out of file descriptors while tasks are created,
// claimed and completed: the event log's stores fail, then recover once descriptors are back.
// Every create that was answered "created" is in the log and gets claimed and completed
// afterwards (nothing stored is left unqueued); every create refused is nowhere; the hub is not
// ready while writes fail and is ready again after. Not parallel: it takes every descriptor of
// the test process.
func TestHub_StoreFailureRecovers(t *testing.T) {
	o := options{lease: 10 * time.Second, logConfig: func(c *eventlog.Config) {
		c.SyncInterval, c.RestartAfter, c.Timeout = 50*time.Millisecond, time.Second, 2*time.Second
	}}
	b := setup(t, o)
	// Stopping the log writes each stream's state file, which the periodic sync opens: once it
	// exists, a sync without descriptors fails and sets the store's write error.
	b.close()
	b.open(t, o)
	h, ctx := b.hub, t.Context()
	var created []string
	refused := 0
	createOne := func(i int) {
		task, err := h.CreateTask(ctx, "alice", taskhub.TaskSpec{Prompt: fmt.Sprint(i), Mode: "paint"})
		switch taskhub.ErrorCode(err) {
		case taskhub.Unavailable:
			refused++
		case taskhub.DeadlineExceeded: // may or may not be there: not counted either way
		default:
			require.NoError(t, err)
			created = append(created, task.Id)
		}
	}
	for i := range 5 {
		createOne(i)
	}
	require.NoError(t, h.Ready())

	release := fdtest.Exhaust(t)
	released := false
	defer func() {
		if !released {
			release()
		}
	}()
	i := 5
	deadline := time.Now().Add(20 * time.Second)
	for h.Ready() == nil {
		require.True(t, time.Now().Before(deadline), "writes never failed without file descriptors")
		createOne(i)
		i++
		time.Sleep(20 * time.Millisecond)
	}
	for range 10 {
		createOne(i)
		i++
	}
	require.Error(t, h.Ready())
	release()
	released = true
	require.Eventually(t, func() bool { return h.Ready() == nil }, time.Minute, 50*time.Millisecond)
	for range 5 {
		createOne(i)
		i++
	}

	// Every created task is claimed and completed; the queue holds nothing else.
	want := map[string]bool{}
	for _, id := range created {
		want[id] = true
	}
	for len(want) > 0 {
		c, err := h.ClaimTask(ctx, taskhub.ClaimParams{WorkerID: "w", Modes: []string{"paint"}, Wait: 15 * time.Second})
		require.NoError(t, err)
		require.NotNil(t, c, "created but never queued: %v", want)
		require.True(t, want[c.Task.Id], "claimed a task that was not answered created: %s", c.Task.Id)
		delete(want, c.Task.Id)
		_, err = h.CompleteTask(ctx, taskhub.Lease{TaskID: c.Task.Id, Token: c.LeaseToken}, "done")
		require.NoError(t, err)
	}
	ids, err := b.log.TaskIDs(ctx, "alice")
	require.NoError(t, err)
	require.Len(t, ids, len(created), "refused creates left tasks behind")
	t.Logf("%d created, %d refused while the store failed", len(created), refused)
}

// TestHub_RestartWithManyQueuedTasksIsQuiet: a hub opened on a log with many queued tasks serves
// at once, keeps the queue's order and logs nothing: the tasks are in the queue already, and the
// reconciliation finds nothing to do.
func TestHub_RestartWithManyQueuedTasksIsQuiet(t *testing.T) {
	t.Parallel()
	b := setup(t, options{lease: 10 * time.Second, active: 5000})
	for i := range 1000 {
		create(t, b.hub, "alice", fmt.Sprint(i), "paint")
	}
	b.close()

	var logged bytes.Buffer
	var mu sync.Mutex
	logger := slog.New(slog.NewTextHandler(lockedWriter{&mu, &logged}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	var err error
	b.log, err = eventlog.Open(t.Context(), eventlog.Config{DataDir: b.dir, AckWait: 11 * time.Second, Logger: logger})
	require.NoError(t, err)
	b.hub, err = actors.Open(t.Context(), actors.Config{Log: b.log, Logger: logger, Options: actors.Options{LeaseTimeout: 10 * time.Second, MaxActiveTasksPerUser: 5000}})
	require.NoError(t, err)
	task := create(t, b.hub, "bob", "right after the restart", "other")
	c := claim(t, b.hub, "other")
	require.Equal(t, task.Id, c.Task.Id)
	c = claim(t, b.hub, "paint")
	require.Equal(t, "0", c.Task.Prompt, "the queue kept its order")
	time.Sleep(200 * time.Millisecond) // the reconciliation has run
	mu.Lock()
	defer mu.Unlock()
	require.Empty(t, logged.String(), "a restart with queued tasks logged")
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// TestHub_UnreadWatchesHoldNoPrompts: watches that never read their stream hold references to
// their owner's active tasks, not copies of their prompts and params, however many they are.
func TestHub_UnreadWatchesHoldNoPrompts(t *testing.T) {
	b := setup(t, options{lease: 10 * time.Second})
	prompt := strings.Repeat("p", taskhub.MaxPromptBytes-3)
	for i := range 200 {
		_, err := b.hub.CreateTask(t.Context(), "alice", taskhub.TaskSpec{Prompt: fmt.Sprintf("%s%03d", prompt, i), Mode: "paint"})
		require.NoError(t, err)
	}
	before := heap()
	var ws []taskhub.Watch
	for range 20 {
		w, err := b.hub.Watch(t.Context(), taskhub.WatchQuery{Owner: "alice", Epoch: "", AfterSeq: 0})
		require.NoError(t, err)
		ws = append(ws, w)
	}
	time.Sleep(200 * time.Millisecond) // every subscriber has queued its snapshot
	grew := heap() - before
	// Copies would be 20 × 200 × 16 KiB = 64 MiB.
	require.Less(t, grew, int64(8<<20), "20 unread watches of 200 large tasks grew the heap by %d bytes", grew)
	for _, w := range ws {
		w.Close()
	}
	// And a watch that reads gets the prompts, in parts.
	w, err := b.hub.Watch(t.Context(), taskhub.WatchQuery{Owner: "alice", Epoch: "", AfterSeq: 0})
	require.NoError(t, err)
	defer w.Close()
	var tasks []*taskhubv1.Task
	for more := true; more; {
		msgs, err := w.Next(t.Context())
		require.NoError(t, err)
		for _, m := range msgs {
			tasks = append(tasks, m.GetSnapshot().GetTasks()...)
			more = m.GetSnapshot().GetMore()
		}
	}
	require.Len(t, tasks, 200)
	require.Equal(t, prompt+"199", tasks[0].Prompt, "newest first")
}

func heap() int64 {
	var m runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}

// storedUnconfirmed stores the first append of one event kind but answers, as a log whose answer
// was lost would, that it is not known whether it was stored.
type storedUnconfirmed struct {
	actors.Log
	kind taskhubv1.EventKind
	done atomic.Bool
}

func (s *storedUnconfirmed) Append(ctx context.Context, rec *storagev1.Record, expectLast uint64) (uint64, error) {
	seq, err := s.Log.Append(ctx, rec, expectLast)
	if err == nil && rec.GetEvent().GetKind() == s.kind && s.done.CompareAndSwap(false, true) {
		return 0, eventlog.ErrUncertain
	}
	return seq, err
}

// TestHub_UnconfirmedWritesAreFollowedUp: a create the log stored without confirming it is
// answered DeadlineExceeded; the task is queued all the same (by the actor's recheck, and by a
// retry with the same key, which returns it). A claim the log stored without confirming leaves
// a running task whose lease the actor times after reading it again: it is requeued.
func TestHub_UnconfirmedWritesAreFollowedUp(t *testing.T) {
	t.Parallel()
	t.Run("create", func(t *testing.T) {
		t.Parallel()
		s := &storedUnconfirmed{kind: taskhubv1.EventKind_EVENT_KIND_CREATED}
		b := setup(t, options{lease: 10 * time.Second, wrap: func(l actors.Log) actors.Log { s.Log = l; return s }})
		spec := taskhub.TaskSpec{Prompt: "x", Mode: "paint", IdempotencyKey: "k"}
		_, err := b.hub.CreateTask(t.Context(), "alice", spec)
		require.Equal(t, taskhub.DeadlineExceeded, codeOf(err), err)
		again, err := b.hub.CreateTask(t.Context(), "alice", spec)
		require.NoError(t, err, "the retry the answer advises")
		c := claim(t, b.hub, "paint")
		require.Equal(t, again.Id, c.Task.Id)
	})
	t.Run("create without a retry", func(t *testing.T) {
		t.Parallel()
		s := &storedUnconfirmed{kind: taskhubv1.EventKind_EVENT_KIND_CREATED}
		b := setup(t, options{lease: 10 * time.Second, wrap: func(l actors.Log) actors.Log { s.Log = l; return s }})
		_, err := b.hub.CreateTask(t.Context(), "alice", taskhub.TaskSpec{Prompt: "x", Mode: "paint"})
		require.Equal(t, taskhub.DeadlineExceeded, codeOf(err), err)
		c := claim(t, b.hub, "paint") // queued by the actor's recheck
		require.Equal(t, "x", c.Task.Prompt)
	})
	t.Run("claim", func(t *testing.T) {
		t.Parallel()
		s := &storedUnconfirmed{kind: taskhubv1.EventKind_EVENT_KIND_STARTED}
		b := setup(t, options{lease: 300 * time.Millisecond, wrap: func(l actors.Log) actors.Log { s.Log = l; return s }})
		w := watch(t, b.hub, "alice", "", 0)
		task := create(t, b.hub, "alice", "x", "paint")
		_, err := b.hub.ClaimTask(t.Context(), taskhub.ClaimParams{WorkerID: "w1", Modes: []string{"paint"}, Wait: 5 * time.Second})
		require.Equal(t, taskhub.DeadlineExceeded, codeOf(err), err)
		_, events := w.wait(3)
		require.Equal(t, []taskhubv1.EventKind{taskhubv1.EventKind_EVENT_KIND_CREATED, taskhubv1.EventKind_EVENT_KIND_STARTED,
			taskhubv1.EventKind_EVENT_KIND_REQUEUED}, kinds(events[:3]), "the lease of the unconfirmed claim expired")
		c := claim(t, b.hub, "paint")
		require.Equal(t, task.Id, c.Task.Id)
	})
}
