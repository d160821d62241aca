package actors_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/taskhub/taskhub/actors"
	"github.com/taskhub/taskhub/eventlog"
	"github.com/taskhub/taskhub/internal/freeport"
)

// retireCount counts the tasks a hub retires (a failed Retire is tried again: it does not
// count), and fails them while failing is set.
type retireCount struct {
	actors.Log
	n       atomic.Int64
	failing atomic.Bool
}

func (r *retireCount) Retire(ctx context.Context, owner, id string) error {
	if r.failing.Load() {
		return eventlog.ErrUnavailable
	}
	err := r.Log.Retire(ctx, owner, id)
	if err == nil {
		r.n.Add(1)
	}
	return err
}

// openShared opens three hubs on the nodes of an embedded 3-node cluster, as the nodes of a
// taskhub cluster are, with a short lead timeout.
func openShared(t *testing.T) ([]*actors.Hub, []*eventlog.Log, []*retireCount) {
	t.Helper()
	peers := []string{freeport.Addr(t), freeport.Addr(t), freeport.Addr(t)}
	logs := make([]*eventlog.Log, 3)
	errs := make([]error, 3)
	var wg sync.WaitGroup
	for i := range logs {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			logs[i], errs[i] = eventlog.Open(ctx, eventlog.Config{DataDir: t.TempDir(), Logger: quiet(),
				LeadTimeout: time.Second, Cluster: eventlog.Cluster{Addr: peers[i], Peers: peers}})
		})
	}
	wg.Wait()
	t.Cleanup(func() {
		for _, l := range logs {
			if l != nil {
				l.Close()
			}
		}
	})
	require.NoError(t, errors.Join(errs...))
	hubs := make([]*actors.Hub, 3)
	counts := make([]*retireCount, 3)
	for i, l := range logs {
		counts[i] = &retireCount{Log: l}
		h, err := actors.Open(t.Context(), actors.Config{Log: counts[i], Shared: true, Logger: quiet(), Options: actors.Options{
			LeaseTimeout: 10 * time.Second, Retention: -1, // compaction off: a finished task is retired at once
		}})
		require.NoError(t, err)
		t.Cleanup(func() { h.Close() }) // before the logs close: cleanups run last first
		hubs[i] = h
	}
	return hubs, logs, counts
}

// TestHub_OneNodeSettlesFinishedTasks: of the hubs sharing a log, only the one that leads
// settles (retires) each finished task, once; when it goes away with a task it failed to
// settle, the hub that takes the lead over finds that task in the live index and settles it.
func TestHub_OneNodeSettlesFinishedTasks(t *testing.T) {
	t.Parallel()
	hubs, logs, counts := openShared(t)
	live := func(l *eventlog.Log) []string {
		ids, err := l.Live(t.Context())
		if err != nil {
			return []string{err.Error()} // a busy cluster may not answer at once: ask again
		}
		return ids
	}
	total := func() int64 {
		n := int64(0)
		for _, c := range counts {
			n += c.n.Load()
		}
		return n
	}

	for i := range 6 {
		create(t, hubs[i%3], "alice", "a cat", "paint")
		c := claim(t, hubs[(i+1)%3], "paint")
		complete(t, hubs[(i+2)%3], c)
	}
	require.Eventually(t, func() bool { return len(live(logs[0])) == 0 }, time.Minute, 50*time.Millisecond, "every finished task is settled: %v left, retired %d %d %d", live(logs[0]), counts[0].n.Load(), counts[1].n.Load(), counts[2].n.Load())
	time.Sleep(3 * time.Second) // the other hubs' rounds
	require.EqualValues(t, 6, total(), "each task retired once, not once per node")
	leader := slices.IndexFunc(counts, func(c *retireCount) bool { return c.n.Load() > 0 })
	require.EqualValues(t, 6, counts[leader].n.Load(), "by the leader alone")

	// The leader cannot settle the next task, and goes away.
	counts[leader].failing.Store(true)
	create(t, hubs[(leader+1)%3], "alice", "a dog", "paint")
	c := claim(t, hubs[(leader+1)%3], "paint")
	complete(t, hubs[(leader+1)%3], c)
	time.Sleep(3 * time.Second) // due on every hub: the others drop it, the leader fails it
	// On a machine busy enough that the leader missed renewing its lead for 10 s, another hub
	// has taken the lead over already and settled the task from the live index: the same
	// takeover, sooner.
	require.Eventually(t, func() bool {
		ids := live(logs[(leader+1)%3])
		return slices.Equal([]string{c.Task.Id}, ids) || (len(ids) == 0 && total() == 7)
	}, 10*time.Second, 100*time.Millisecond)
	if total() == 7 {
		t.Logf("the lead moved before the leader went away; the new leader settled the task")
	}
	hubs[leader].Close()
	logs[leader].Close()

	other := logs[(leader+1)%3]
	require.Eventually(t, func() bool {
		ids, err := other.Live(t.Context())
		return err == nil && len(ids) == 0
	}, 60*time.Second, 100*time.Millisecond, "the new leader settles what the last one left")
	require.EqualValues(t, 7, total())
	_, err := hubs[(leader+2)%3].GetTask(t.Context(), "alice", c.Task.Id)
	require.NoError(t, err, "the task is still there, settled")
}
