package eventlog_test

import (
	"context"
	"fmt"
	"maps"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	storagev1 "github.com/taskhub/taskhub/gen/taskhub/storage/v1"
	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"

	"github.com/taskhub/taskhub/eventlog"
)

// followAll follows l from its start and returns what the follower got, by sequence.
func followAll(t *testing.T, l *eventlog.Log) (got func() map[uint64]*eventlog.Entry) {
	t.Helper()
	var mu sync.Mutex
	entries := map[uint64]*eventlog.Entry{}
	stop, err := l.Follow(t.Context(), func(e *eventlog.Entry, _ uint64) {
		if e.Record != nil {
			mu.Lock()
			defer mu.Unlock()
			entries[e.Seq] = e
		}
	})
	require.NoError(t, err)
	t.Cleanup(stop)
	return func() map[uint64]*eventlog.Entry {
		mu.Lock()
		defer mu.Unlock()
		return maps.Clone(entries)
	}
}

// Appends made together go in one batch: each learns its own sequence, the one its event was
// stored as, and one whose fence fails is refused alone, in the middle of the batch or at its
// end, where the batch's acknowledgement names another message's sequence.
func TestLog_BatchedAppends(t *testing.T) {
	t.Parallel()
	l := setup(t)
	got := followAll(t, l)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	created := func(id string) *storagev1.Record {
		return record(id, taskhubv1.EventKind_EVENT_KIND_CREATED, taskhubv1.TaskState_TASK_STATE_QUEUED)
	}
	t0, err := l.Append(ctx, created("T0"), 0)
	require.NoError(t, err)
	_, batches0, _ := eventlog.Batches(l)

	release := eventlog.HoldBatches(l)
	type append struct {
		rec  *storagev1.Record
		last uint64
		seq  uint64
		err  error
	}
	appends := []*append{
		{rec: created("T1")}, {rec: created("T2")},
		{rec: created("T0"), last: t0 + 100}, // refused, in the middle
		{rec: created("T3")}, {rec: created("T4")},
		{rec: created("T0"), last: t0 + 200}, // refused, the batch's last
	}
	var wg sync.WaitGroup
	for i, a := range appends {
		wg.Go(func() { a.seq, a.err = l.Append(ctx, a.rec, a.last) })
		require.EventuallyWithT(t, func(c *assert.CollectT) {
			queued, _, _ := eventlog.Batches(l)
			require.Equal(c, i+1, queued)
		}, 5*time.Second, time.Millisecond, "append %d queued in turn", i)
	}
	release()
	wg.Wait()

	_, batches, _ := eventlog.Batches(l)
	require.Equal(t, batches0+1, batches, "the six appends went in one batch")
	seqs := map[uint64]bool{}
	for i, a := range appends {
		if a.last != 0 {
			require.ErrorIs(t, a.err, eventlog.ErrConflict, "append %d", i)
			continue
		}
		require.NoError(t, a.err, "append %d", i)
		require.Equal(t, a.seq, a.rec.Event.Seq, "append %d numbered its record", i)
		require.False(t, seqs[a.seq], "append %d's sequence %d is another's", i, a.seq)
		seqs[a.seq] = true
		last, err := l.Last(ctx, "alice", a.rec.Event.Task.Id)
		require.NoError(t, err)
		require.Equal(t, a.seq, last.Seq, "append %d's sequence is its event's in the log", i)
		require.EventuallyWithT(t, func(c *assert.CollectT) {
			e := got()[a.seq]
			require.NotNil(c, e)
			require.Equal(c, eventlog.Subject("alice", a.rec.Event.Task.Id), e.Subject)
		}, 5*time.Second, time.Millisecond)
	}
	last, err := l.Last(ctx, "alice", "T0")
	require.NoError(t, err)
	require.Equal(t, t0, last.Seq, "the refused appends changed nothing")
	waiting, bytes := eventlog.OwnHeld(l)
	require.Zero(t, waiting)
	require.Zero(t, bytes)
}

// Many tasks appending at once: their appends go in batches of several, and each learns the
// sequence the follower sees its event at; with no follower, each append is a request.
func TestLog_BatchedAppendsUnderLoad(t *testing.T) {
	t.Parallel()
	l := setup(t)
	ctx := t.Context()
	// No follower: nothing would number a batch's appends.
	_, err := l.Append(ctx, record("alone", taskhubv1.EventKind_EVENT_KIND_CREATED, taskhubv1.TaskState_TASK_STATE_QUEUED), 0)
	require.NoError(t, err)
	_, batches, _ := eventlog.Batches(l)
	require.Zero(t, batches)

	got := followAll(t, l)
	const tasks, each = 200, 10
	appended := appendAtOnce(t, l, tasks, each)
	_, batches, sent := eventlog.Batches(l)
	require.Equal(t, uint64(tasks*each), sent, "every append went in a batch")
	require.Less(t, batches, sent/2, "appends made together went together")
	var entries map[uint64]*eventlog.Entry
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		entries = got()
		require.Len(c, entries, tasks*each+1)
	}, 10*time.Second, 10*time.Millisecond)
	for i, rs := range appended {
		for _, r := range rs {
			e := entries[r.Event.Seq]
			require.NotNil(t, e, "T%d's event %d", i, r.Event.Seq)
			require.Equal(t, eventlog.Subject("alice", fmt.Sprintf("T%d", i)), e.Subject)
			require.Same(t, r, e.Record, "the follower handed on the record appended as %d", r.Event.Seq)
		}
	}
}

// A batch the server refuses as a batch (here: its stream no longer allows them) is sent again
// message by message, and stored.
func TestLog_BatchRefusedWholeIsSentAlone(t *testing.T) {
	t.Parallel()
	l := setup(t)
	got := followAll(t, l)
	eventlog.DisallowBatches(t, l)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	release := eventlog.HoldBatches(l)
	recs := make([]*storagev1.Record, 3)
	seqs := make([]uint64, len(recs))
	errs := make([]error, len(recs))
	var wg sync.WaitGroup
	for i := range recs {
		recs[i] = record(fmt.Sprintf("T%d", i), taskhubv1.EventKind_EVENT_KIND_CREATED, taskhubv1.TaskState_TASK_STATE_QUEUED)
		wg.Go(func() { seqs[i], errs[i] = l.Append(ctx, recs[i], 0) })
	}
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		queued, _, _ := eventlog.Batches(l)
		require.Equal(c, len(recs), queued)
	}, 5*time.Second, time.Millisecond)
	release()
	wg.Wait()
	_, batches, _ := eventlog.Batches(l)
	require.Equal(t, uint64(1), batches)
	for i := range recs {
		require.NoError(t, errs[i])
		last, err := l.Last(ctx, "alice", recs[i].Event.Task.Id)
		require.NoError(t, err)
		require.Equal(t, seqs[i], last.Seq)
	}
	require.EventuallyWithT(t, func(c *assert.CollectT) { require.Len(c, got(), len(recs)) }, 5*time.Second, time.Millisecond)
}

// An append whose caller gives up while it waits for its batch is taken back: never sent, it
// fails as unavailable, and leaves the log ready.
func TestLog_BatchedAppendGivenUpIsNotSent(t *testing.T) {
	t.Parallel()
	l := setup(t)
	followAll(t, l)
	release := eventlog.HoldBatches(l)
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	_, err := l.Append(ctx, record("T1", taskhubv1.EventKind_EVENT_KIND_CREATED, taskhubv1.TaskState_TASK_STATE_QUEUED), 0)
	require.ErrorIs(t, err, eventlog.ErrUnavailable)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	queued, _, sent := eventlog.Batches(l)
	require.Zero(t, queued)
	release()
	require.NoError(t, l.Ready(), "a caller's deadline is no failure of the log's")
	_, err = l.Last(t.Context(), "alice", "T1")
	require.ErrorIs(t, err, eventlog.ErrNotFound)
	_, _, after := eventlog.Batches(l)
	require.Equal(t, sent, after, "nothing was sent")

	// The next append goes as usual.
	seq, err := l.Append(t.Context(), record("T1", taskhubv1.EventKind_EVENT_KIND_CREATED, taskhubv1.TaskState_TASK_STATE_QUEUED), 0)
	require.NoError(t, err)
	last, err := l.Last(t.Context(), "alice", "T1")
	require.NoError(t, err)
	require.Equal(t, seq, last.Seq)
}
