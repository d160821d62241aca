package eventlog

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	storagev1 "github.com/taskhub/taskhub/gen/taskhub/storage/v1"
	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"
)

// follow runs Follow until its follower has seen every task, and returns the tasks it was
// given by then (id -> state) and the position it reached.
func follow(t *testing.T, l *Log) (map[string]taskhubv1.TaskState, uint64) {
	t.Helper()
	var mu sync.Mutex
	got := map[string]taskhubv1.TaskState{}
	var pos uint64
	ready := make(chan struct{})
	var once sync.Once
	stop, err := l.Follow(t.Context(), func(e *Entry, pending uint64) {
		mu.Lock()
		defer mu.Unlock()
		select {
		case <-ready:
			return
		default:
		}
		if e.Record != nil {
			got[e.Record.Event.Task.Id] = e.Record.Event.Task.State
		}
		pos = e.Seq
		if pending == 0 {
			once.Do(func() { close(ready) })
		}
	})
	require.NoError(t, err)
	defer stop()
	select {
	case <-ready:
	case <-time.After(10 * time.Second):
		t.Fatal("the follower never saw every task")
	}
	mu.Lock()
	defer mu.Unlock()
	return got, pos
}

func liveIDs(t *testing.T, l *Log) []string {
	t.Helper()
	ms, err := l.liveTasks(t.Context())
	require.NoError(t, err)
	var ids []string
	for _, m := range ms {
		ids = append(ids, m.id)
	}
	slices.Sort(ids)
	return ids
}

// tasks writes four tasks: A queued, B running, C finished and settled (retired), D finished
// and not yet settled.
func fourTasks(t *testing.T, l *Log) {
	t.Helper()
	ctx := t.Context()
	rec := func(id string, kind taskhubv1.EventKind, state taskhubv1.TaskState) *storagev1.Record {
		return &storagev1.Record{Event: &taskhubv1.TaskEvent{Kind: kind,
			Task: &taskhubv1.Task{Id: id, Owner: "alice", Mode: "demo", State: state}}}
	}
	last := map[string]uint64{}
	for _, id := range []string{"A", "B", "C", "D"} {
		seq, err := l.Append(ctx, rec(id, taskhubv1.EventKind_EVENT_KIND_CREATED, taskhubv1.TaskState_TASK_STATE_QUEUED), 0)
		require.NoError(t, err)
		last[id] = seq
	}
	for _, id := range []string{"B", "C", "D"} {
		seq, err := l.Append(ctx, rec(id, taskhubv1.EventKind_EVENT_KIND_STARTED, taskhubv1.TaskState_TASK_STATE_RUNNING), last[id])
		require.NoError(t, err)
		last[id] = seq
	}
	for _, id := range []string{"C", "D"} {
		_, err := l.Append(ctx, rec(id, taskhubv1.EventKind_EVENT_KIND_COMPLETED, taskhubv1.TaskState_TASK_STATE_COMPLETED), last[id])
		require.NoError(t, err)
	}
	require.NoError(t, l.Retire(ctx, "alice", "C"))
}

// TestLive_FollowStartsFromTheIndex: a start is given the tasks that are active or not yet
// settled, and none that is settled, and its position is the stream's end.
func TestLive_FollowStartsFromTheIndex(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	l, err := Open(t.Context(), Config{DataDir: dir, ProbeInterval: time.Hour})
	require.NoError(t, err)
	defer l.Close()
	fourTasks(t, l)
	require.Equal(t, []string{"A", "B", "D"}, liveIDs(t, l), "every task is indexed from its create until it is retired")

	got, pos := follow(t, l)
	require.Equal(t, map[string]taskhubv1.TaskState{
		"A": taskhubv1.TaskState_TASK_STATE_QUEUED,
		"B": taskhubv1.TaskState_TASK_STATE_RUNNING,
		"D": taskhubv1.TaskState_TASK_STATE_COMPLETED,
	}, got)
	_, last, err := l.Bounds(t.Context())
	require.NoError(t, err)
	require.Equal(t, last, pos)

	// Compacting settles a task too.
	require.NoError(t, l.Compact(t.Context(), "alice", "D"))
	require.Equal(t, []string{"A", "B"}, liveIDs(t, l))
	got, _ = follow(t, l)
	require.Len(t, got, 2)
}

// TestLive_AnOldLogIsReadWholeOnceToFillTheIndex: a log written before the index existed (no
// markers, no record that the index is complete) is read whole by the first Follow, which fills
// the index with the tasks that are active or finished after the compaction watermark.
func TestLive_AnOldLogIsReadWholeOnceToFillTheIndex(t *testing.T) {
	t.Parallel()
	l, err := Open(t.Context(), Config{DataDir: t.TempDir(), ProbeInterval: time.Hour})
	require.NoError(t, err)
	defer l.Close()
	fourTasks(t, l)
	ctx := t.Context()
	// As an older taskhub left it.
	require.NoError(t, l.meta.Purge(ctx, jetstream.WithPurgeSubject(livePrefix+">")))
	require.NoError(t, l.meta.Purge(ctx, jetstream.WithPurgeSubject(liveFilled)))
	require.Empty(t, liveIDs(t, l))

	got, _ := follow(t, l)
	require.Len(t, got, 4, "every task, read whole")
	require.Equal(t, []string{"A", "B", "C", "D"}, liveIDs(t, l), "C finished after the watermark (0): not settled for sure")
	indexed, err := l.hasLiveIndex(ctx)
	require.NoError(t, err)
	require.True(t, indexed)

	// The next start reads the index only.
	require.NoError(t, l.Retire(ctx, "alice", "C"))
	got, _ = follow(t, l)
	require.Len(t, got, 3)
}

// TestLive_AMarkerWithoutATask: a create that died between its marker and its event leaves a
// marker that Follow skips, and removes once it is old enough.
func TestLive_AMarkerWithoutATask(t *testing.T) {
	t.Parallel()
	l, err := Open(t.Context(), Config{DataDir: t.TempDir(), ProbeInterval: time.Hour})
	require.NoError(t, err)
	defer l.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	require.NoError(t, l.markLive(ctx, "alice", "ghost"))
	got, _ := follow(t, l)
	require.Empty(t, got)
	require.Equal(t, []string{"ghost"}, liveIDs(t, l), "young: a create may be under way")
}
