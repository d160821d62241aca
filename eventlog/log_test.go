package eventlog_test

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/taskhub/taskhub/internal/natstest"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"

	storagev1 "github.com/taskhub/taskhub/gen/taskhub/storage/v1"
	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"

	"github.com/taskhub/taskhub/eventlog"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, natstest.LeakOptions()...) }

func open(t *testing.T, dir string) *eventlog.Log {
	t.Helper()
	// No periodic write probes: they would take sequence numbers these tests count on.
	l, err := eventlog.Open(t.Context(), eventlog.Config{DataDir: dir, AckWait: time.Second, ProbeInterval: time.Hour})
	require.NoError(t, err)
	return l
}

func setup(t *testing.T) *eventlog.Log {
	t.Helper()
	l := open(t, t.TempDir())
	t.Cleanup(func() { l.Close() })
	return l
}

func record(id string, kind taskhubv1.EventKind, state taskhubv1.TaskState) *storagev1.Record {
	return &storagev1.Record{Event: &taskhubv1.TaskEvent{
		Kind: kind,
		Task: &taskhubv1.Task{Id: id, Owner: "alice", Prompt: "p", Mode: "demo", State: state},
	}}
}

func TestLog_AppendFences(t *testing.T) {
	t.Parallel()
	l := setup(t)
	ctx := t.Context()

	first, err := l.Append(ctx, record("T1", taskhubv1.EventKind_EVENT_KIND_CREATED, taskhubv1.TaskState_TASK_STATE_QUEUED), 0)
	require.NoError(t, err)

	// A second create of the same task: the fence refuses it.
	_, err = l.Append(ctx, record("T1", taskhubv1.EventKind_EVENT_KIND_CREATED, taskhubv1.TaskState_TASK_STATE_QUEUED), 0)
	require.ErrorIs(t, err, eventlog.ErrConflict)
	waiting, _ := eventlog.OwnHeld(l)
	require.Zero(t, waiting, "a refused append's record is let go")

	seq, err := l.Append(ctx, record("T1", taskhubv1.EventKind_EVENT_KIND_STARTED, taskhubv1.TaskState_TASK_STATE_RUNNING), first)
	require.NoError(t, err)
	require.Greater(t, seq, first)

	_, err = l.Append(ctx, &storagev1.Record{Event: &taskhubv1.TaskEvent{Kind: taskhubv1.EventKind_EVENT_KIND_PROGRESS}}, seq)
	require.Error(t, err, "a record names its task")

	e, err := l.Last(ctx, "*", "T1")
	require.NoError(t, err)
	require.Equal(t, seq, e.Seq)
	require.Equal(t, seq, e.Record.Event.Seq)
	require.Equal(t, taskhubv1.TaskState_TASK_STATE_RUNNING, e.Record.Event.Task.State)

	e, err = l.Next(ctx, eventlog.OwnerFilter("alice"), first+1)
	require.NoError(t, err)
	require.Equal(t, seq, e.Seq)
	_, err = l.Next(ctx, eventlog.OwnerFilter("alice"), seq+1)
	require.ErrorIs(t, err, eventlog.ErrNotFound)
	_, err = l.Next(ctx, eventlog.OwnerFilter("bob"), 1)
	require.ErrorIs(t, err, eventlog.ErrNotFound)

	ids, err := l.TaskIDs(ctx, "alice")
	require.NoError(t, err)
	require.Equal(t, []string{"T1"}, ids)
}

func TestLog_EpochSurvivesRestart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	l := open(t, dir)
	_, err := l.Append(t.Context(), record("T1", taskhubv1.EventKind_EVENT_KIND_CREATED, taskhubv1.TaskState_TASK_STATE_QUEUED), 0)
	require.NoError(t, err)
	epoch := l.Epoch()
	require.NoError(t, l.Close())

	l = open(t, dir)
	defer l.Close()
	require.Equal(t, epoch, l.Epoch())
	first, last, err := l.Bounds(t.Context())
	require.NoError(t, err)
	require.Equal(t, uint64(1), first)
	require.Equal(t, uint64(1), last)

	other := setup(t)
	require.NotEqual(t, epoch, other.Epoch(), "a new log must have a new epoch")
}

func TestLog_FollowDeliversLastPerTaskThenLive(t *testing.T) {
	t.Parallel()
	l := setup(t)
	ctx := t.Context()
	var last = map[string]uint64{}
	for i, id := range []string{"A", "B", "A", "C", "A"} {
		seq, err := l.Append(ctx, record(id, taskhubv1.EventKind_EVENT_KIND_PROGRESS, taskhubv1.TaskState_TASK_STATE_RUNNING), last[id])
		require.NoError(t, err, i)
		last[id] = seq
	}

	var mu sync.Mutex
	var seqs, pendings []uint64
	var recs []*storagev1.Record
	stop, err := l.Follow(ctx, func(e *eventlog.Entry, pending uint64) {
		mu.Lock()
		defer mu.Unlock()
		seqs = append(seqs, e.Seq)
		recs = append(recs, e.Record)
		pendings = append(pendings, pending)
	})
	require.NoError(t, err)
	defer stop()
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		mu.Lock()
		defer mu.Unlock()
		require.Len(c, seqs, 3)
	}, 5*time.Second, 5*time.Millisecond)

	b := record("B", taskhubv1.EventKind_EVENT_KIND_PROGRESS, taskhubv1.TaskState_TASK_STATE_RUNNING)
	seq, err := l.Append(ctx, b, last["B"])
	require.NoError(t, err)
	require.Equal(t, seq, b.Event.Seq, "Append numbers the record it stored")
	require.Equal(t, seq, b.Event.Task.Seq)
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		mu.Lock()
		defer mu.Unlock()
		require.Len(c, seqs, 4)
	}, 5*time.Second, 5*time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	require.Equal(t, []uint64{2, 4, 5, 6}, seqs, "last of B, C, A in order, then the new B")
	require.Equal(t, []uint64{2, 1, 0, 0}, pendings)
	// Handed on as appended, or decoded from the log (when the follower got there first): the same.
	require.True(t, proto.Equal(b, recs[3]), "%v\n%v", b, recs[3])
}

// TestLog_FollowHandsOnItsOwnRecords: a follower hands on each record this process appended as
// the record itself, numbered, not decoded again from its message: also the appends whose
// message reaches the follower before their acknowledgement reaches the appender, which many
// appends at once make common.
func TestLog_FollowHandsOnItsOwnRecords(t *testing.T) {
	t.Parallel()
	l := setup(t)
	got := followAll(t, l)
	const tasks, each = 50, 20
	appended := appendAtOnce(t, l, tasks, each)
	var entries map[uint64]*eventlog.Entry
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		entries = got()
		require.Equal(c, tasks*each, len(entries))
	}, 10*time.Second, 10*time.Millisecond)
	decoded := 0
	for _, rs := range appended {
		for _, r := range rs {
			seq := r.Event.Seq
			require.Equal(t, seq, r.Event.Task.Seq)
			if entries[seq].Record != r {
				decoded++
				require.True(t, proto.Equal(r, entries[seq].Record), "%v\n%v", r, entries[seq].Record)
			}
		}
	}
	require.Zero(t, decoded, "of %d records appended, decoded again instead of handed on", tasks*each)
	waiting, bytes := eventlog.OwnHeld(l)
	require.Zero(t, waiting)
	require.Zero(t, bytes, "every record held was taken")
}

// appendAtOnce has tasks tasks T0, T1... append each progress events at once, each task's one
// after the other, and returns the records each appended, in order.
func appendAtOnce(t *testing.T, l *eventlog.Log, tasks, each int) [][]*storagev1.Record {
	t.Helper()
	appended := make([][]*storagev1.Record, tasks)
	var wg sync.WaitGroup
	for i := range tasks {
		wg.Go(func() {
			last := uint64(0)
			for range each {
				r := record(fmt.Sprintf("T%d", i), taskhubv1.EventKind_EVENT_KIND_PROGRESS, taskhubv1.TaskState_TASK_STATE_RUNNING)
				seq, err := l.Append(t.Context(), r, last)
				if !assert.NoError(t, err) || !assert.Equal(t, seq, r.Event.Seq) {
					return
				}
				appended[i], last = append(appended[i], r), seq
			}
		})
	}
	wg.Wait()
	return appended
}

func requireEnqueued(t *testing.T, l *eventlog.Log, mode, id string) {
	t.Helper()
	added, err := l.Enqueue(t.Context(), mode, "alice", id)
	require.NoError(t, err)
	require.True(t, added)
}

func TestLog_Queue(t *testing.T) {
	t.Parallel()
	l := setup(t)
	ctx := t.Context()

	requireEnqueued(t, l, "demo", "T1")
	added, err := l.Enqueue(ctx, "demo", "alice", "T1")
	require.NoError(t, err, "enqueueing twice is not an error")
	require.False(t, added, "a task is in the queue once")
	requireEnqueued(t, l, "demo", "T2")

	// A batch returns as soon as it is full.
	ds, err := l.Fetch(ctx, "demo", 2, time.Second)
	require.NoError(t, err)
	require.Len(t, ds, 2)
	require.Equal(t, "T1", ds[0].TaskID)
	require.Equal(t, "alice", ds[0].Owner)
	require.Equal(t, uint64(1), ds[0].Delivered)

	// Release T1 at once; it comes back with a second delivery of the same message.
	require.NoError(t, l.Release(ds[0].AckSubject, 0))
	again, err := l.Fetch(ctx, "demo", 1, time.Second)
	require.NoError(t, err)
	require.Len(t, again, 1)
	require.Equal(t, "T1", again[0].TaskID)
	require.Equal(t, ds[0].QueueSeq, again[0].QueueSeq)
	require.Equal(t, uint64(2), again[0].Delivered)

	// Ack T1; dequeue T2 while delivered. Nothing comes back, even after the ack wait (1s).
	require.NoError(t, l.Ack(ctx, again[0].AckSubject))
	require.NoError(t, l.Dequeue(ctx, "demo", "T2"))
	none, err := l.Fetch(ctx, "demo", 1, 1500*time.Millisecond)
	require.NoError(t, err)
	require.Empty(t, none)

	// An unrenewed delivery comes back after the ack wait; a renewed one does not.
	requireEnqueued(t, l, "demo", "T3")
	requireEnqueued(t, l, "demo", "T4")
	ds, err = l.Fetch(ctx, "demo", 2, time.Second)
	require.NoError(t, err)
	require.Len(t, ds, 2)
	stopRenew := make(chan struct{})
	renewed := make(chan struct{})
	go func() {
		defer close(renewed)
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stopRenew:
				return
			case <-tick.C:
				_ = l.Renew(ds[1].AckSubject)
			}
		}
	}()
	back, err := l.Fetch(ctx, "demo", 1, 3*time.Second)
	require.NoError(t, err)
	require.Len(t, back, 1)
	require.Equal(t, "T3", back[0].TaskID)
	require.NoError(t, l.Ack(ctx, back[0].AckSubject))
	none, err = l.Fetch(ctx, "demo", 1, 1500*time.Millisecond)
	close(stopRenew)
	<-renewed
	require.NoError(t, err)
	require.Empty(t, none, "T4 is renewed, so it must not come back")

	// A mode no task was queued in has no consumer, and fetching does not make one.
	_, err = l.Fetch(ctx, "other", 1, 0)
	require.ErrorIs(t, err, eventlog.ErrNoQueue)
	_, err = l.Fetch(ctx, "other", 1, 100*time.Millisecond)
	require.ErrorIs(t, err, eventlog.ErrNoQueue)
	modes, err := l.QueueModes(ctx)
	require.NoError(t, err)
	require.Equal(t, []string{"demo"}, modes)
}

func TestLog_CompactKeepsTheFinalState(t *testing.T) {
	t.Parallel()
	l := setup(t)
	ctx := t.Context()
	w, err := l.Compacted(ctx)
	require.NoError(t, err)
	require.Zero(t, w)

	var last uint64
	for _, kind := range []taskhubv1.EventKind{taskhubv1.EventKind_EVENT_KIND_CREATED, taskhubv1.EventKind_EVENT_KIND_STARTED, taskhubv1.EventKind_EVENT_KIND_COMPLETED} {
		seq, err := l.Append(ctx, record("T1", kind, taskhubv1.TaskState_TASK_STATE_RUNNING), last)
		require.NoError(t, err)
		last = seq
	}
	other, err := l.Append(ctx, record("T2", taskhubv1.EventKind_EVENT_KIND_CREATED, taskhubv1.TaskState_TASK_STATE_QUEUED), 0)
	require.NoError(t, err)

	require.NoError(t, l.Compact(ctx, "alice", "T1"))
	e, err := l.Next(ctx, eventlog.OwnerFilter("alice"), 1)
	require.NoError(t, err)
	require.Equal(t, last, e.Seq, "only T1's final event is left of it")
	e, err = l.Last(ctx, "alice", "T1")
	require.NoError(t, err)
	require.Equal(t, taskhubv1.EventKind_EVENT_KIND_COMPLETED, e.Record.Event.Kind)
	e, err = l.Next(ctx, eventlog.OwnerFilter("alice"), last+1)
	require.NoError(t, err)
	require.Equal(t, other, e.Seq, "other tasks are untouched")

	require.NoError(t, l.SetCompacted(ctx, 2))
	require.NoError(t, l.SetCompacted(ctx, last))
	w, err = l.Compacted(ctx)
	require.NoError(t, err)
	require.Equal(t, last, w)
	ids, err := l.TaskIDs(ctx, "alice")
	require.NoError(t, err)
	require.ElementsMatch(t, []string{"T1", "T2"}, ids, "the watermark is not a task")
}

// TestLog_FollowerReplacesAStalledConsumer: a follower whose consumer stops delivering while
// the log holds events this process appended makes a new consumer, and goes on from the event
// after the last it delivered: every event once, in order. So does the follower of a log
// written before the live index existed, which reads it whole first.
func TestLog_FollowerReplacesAStalledConsumer(t *testing.T) {
	t.Parallel()
	for _, old := range []bool{false, true} {
		t.Run(fmt.Sprintf("read-whole=%v", old), func(t *testing.T) {
			t.Parallel()
			followerReplacesAStalledConsumer(t, old)
		})
	}
}

func followerReplacesAStalledConsumer(t *testing.T, old bool) {
	l := setup(t)
	ctx := t.Context()
	var last, want []uint64
	if old {
		seq, err := l.Append(ctx, record("Z", taskhubv1.EventKind_EVENT_KIND_CREATED, taskhubv1.TaskState_TASK_STATE_QUEUED), 0)
		require.NoError(t, err)
		want = append(want, seq)
		eventlog.ForgetLiveIndex(t, l)
	}
	var mu sync.Mutex
	var seqs []uint64
	stop, err := l.Follow(ctx, func(e *eventlog.Entry, _ uint64) {
		if e.Record == nil {
			return // a probe
		}
		mu.Lock()
		defer mu.Unlock()
		seqs = append(seqs, e.Seq)
	})
	require.NoError(t, err)
	defer stop()

	appendN := func(n int) {
		for range n {
			var prev uint64
			if len(last) > 0 {
				prev = last[len(last)-1]
			}
			seq, err := l.Append(ctx, record("A", taskhubv1.EventKind_EVENT_KIND_PROGRESS, taskhubv1.TaskState_TASK_STATE_RUNNING), prev)
			require.NoError(t, err)
			last = append(last, seq)
			want = append(want, seq)
		}
	}
	delivered := func() {
		t.Helper()
		require.EventuallyWithT(t, func(c *assert.CollectT) {
			mu.Lock()
			defer mu.Unlock()
			require.Equal(c, want, seqs)
		}, 5*time.Second, 5*time.Millisecond)
	}
	appendN(5)
	delivered()
	time.Sleep(250 * time.Millisecond) // quiet for longer than a stall, then busy again
	appendN(5)
	delivered()

	restarts := l.FollowerRestarts()
	eventlog.StallFollowers(l)
	appendN(20)
	delivered()
	require.Greater(t, l.FollowerRestarts(), restarts, "the stalled consumer was replaced")
}
