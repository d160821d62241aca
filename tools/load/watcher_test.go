package main

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"
)

func snapshotPart(seq uint64, more bool) *taskhubv1.WatchTasksResponse {
	return &taskhubv1.WatchTasksResponse{Message: &taskhubv1.WatchTasksResponse_Snapshot{
		Snapshot: &taskhubv1.Snapshot{Epoch: "e", Seq: seq, More: more},
	}}
}

func isClosed(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// TestWatcher_SnapshotInParts: a watcher is connected once the last part of its snapshot came;
// parts at different seqs, an event or a heartbeat between parts, and a second snapshot are
// problems.
func TestWatcher_SnapshotInParts(t *testing.T) {
	t.Parallel()
	now := time.Now()
	w := newWatcher(0, nil, &watchSpec{users: 1}, watchUser{}, false)
	w.receive(snapshotPart(7, true), now)
	w.receive(snapshotPart(7, true), now)
	require.False(t, isClosed(w.ready), "connected before the last part")
	w.receive(snapshotPart(7, false), now)
	require.True(t, isClosed(w.ready))
	require.Zero(t, w.problems.n, w.problems.list)

	for _, tc := range []struct {
		name string
		msgs []*taskhubv1.WatchTasksResponse
		want string
	}{
		{"parts at two seqs", []*taskhubv1.WatchTasksResponse{snapshotPart(7, true), snapshotPart(8, false)}, "watcher 0: a part of the snapshot at e/7, another at e/8"},
		{"a heartbeat between parts", []*taskhubv1.WatchTasksResponse{snapshotPart(7, true), {Message: &taskhubv1.WatchTasksResponse_Heartbeat{
			Heartbeat: &taskhubv1.Heartbeat{Seq: 7},
		}}}, "watcher 0: a heartbeat between the parts of the snapshot"},
		{"an event between parts", []*taskhubv1.WatchTasksResponse{snapshotPart(7, true), {Message: &taskhubv1.WatchTasksResponse_Event{
			Event: &taskhubv1.TaskEvent{Seq: 8, Task: &taskhubv1.Task{Id: "x"}},
		}}}, "watcher 0: event seq 8 before the snapshot"},
		{"a second snapshot", []*taskhubv1.WatchTasksResponse{snapshotPart(7, false), snapshotPart(7, false)}, "watcher 0: a second snapshot (seq 7) after seq 7"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWatcher(0, nil, &watchSpec{users: 1}, watchUser{}, false)
			for _, m := range tc.msgs {
				w.receive(m, now)
			}
			require.Equal(t, []string{tc.want}, w.problems.list)
		})
	}
}
