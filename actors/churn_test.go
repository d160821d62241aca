package actors_test

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/taskhub/taskhub"
	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"
)

// TestHub_WatchersAgreeUnderChurn: many watchers of one owner, while workers run many tasks at
// once, all see the same events in the same order. Progress may be coalesced differently for
// each (it depends on how fast each reads), nothing else; and each ends with every task's
// final state.
func TestHub_WatchersAgreeUnderChurn(t *testing.T) {
	t.Parallel()
	b := setup(t, options{lease: 10 * time.Second})
	h, ctx := b.hub, t.Context()
	const watchers, workers, tasks, steps = 20, 4, 40, 10

	ws := make([]*watcher, watchers)
	for i := range ws {
		ws[i] = watch(t, h, "alice", "", 0)
		ws[i].wait(0)
	}
	var wg sync.WaitGroup
	for i := range tasks {
		wg.Go(func() { create(t, h, "alice", fmt.Sprint("task ", i), "churn") })
	}
	for range workers {
		wg.Go(func() {
			for range tasks / workers {
				c, err := h.ClaimTask(ctx, taskhub.ClaimParams{WorkerID: "w", Modes: []string{"churn"}, Wait: 5 * time.Second})
				if err != nil || c == nil {
					t.Error("claim:", err)
					return
				}
				for s := 1; s <= steps; s++ {
					if _, err := h.ReportProgress(ctx, taskhub.Report{Lease: taskhub.Lease{TaskID: c.Task.Id, Token: c.LeaseToken}, Progress: float64(s * 10)}); err != nil {
						t.Error(err)
						return
					}
				}
				if _, err := h.CompleteTask(ctx, taskhub.Lease{TaskID: c.Task.Id, Token: c.LeaseToken}, "done"); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()

	var reference []key
	for i, w := range ws {
		events := w.waitFor(func(events []*taskhubv1.TaskEvent) bool {
			return countKind(events, taskhubv1.EventKind_EVENT_KIND_COMPLETED) == tasks
		})
		for j := 1; j < len(events); j++ {
			require.Greater(t, events[j].Seq, events[j-1].Seq, "watcher %d", i)
		}
		final := map[string]float64{}
		for _, e := range events {
			final[e.Task.Id] = e.Task.Progress
		}
		require.Len(t, final, tasks)
		for id, p := range final {
			require.Equal(t, float64(100), p, "watcher %d, task %s", i, id)
		}
		got := keysOf(nonProgress(events))
		require.Len(t, got, tasks*3, "created, started, completed of every task")
		if reference == nil {
			reference = got
		}
		require.Equal(t, reference, got, "watcher %d disagrees with watcher 0", i)
	}
}

func (r *watcher) waitFor(done func([]*taskhubv1.TaskEvent) bool) []*taskhubv1.TaskEvent {
	r.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		r.mu.Lock()
		events, err := append([]*taskhubv1.TaskEvent(nil), r.events...), r.err
		r.mu.Unlock()
		if done(events) {
			return events
		}
		if err != nil || time.Now().After(deadline) {
			r.t.Fatalf("waiting: got %d events: %v", len(events), err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func countKind(events []*taskhubv1.TaskEvent, kind taskhubv1.EventKind) int {
	n := 0
	for _, e := range events {
		if e.Kind == kind {
			n++
		}
	}
	return n
}
