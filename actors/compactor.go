package actors

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/taskhub/taskhub"
)

// compactor removes the events of finished tasks once they are older than the retention, keeping
// each task's final event, and keeps the watermark below which history may be gone: a watch
// resuming from before it gets a fresh snapshot instead of a silent gap. Either way (with
// compaction off, at once) it settles each finished task in the log (Retire), so that a start
// reads the tasks that matter rather than every task ever.
//
// In a cluster every node compacts (a purge done twice is done once), and the watermark is
// recorded in the log before the events go, never lowered: a node whose own rounds lag behind
// another's reads it there before it relies on history (see floor).
//
// Why the watermark is enough: a task's events are removed only when its final event (seq F) is
// older than the retention. A watcher that has not seen F has not heard from the hub since
// before F, so a watcher resuming after N >= F lost nothing, and one resuming after N < F is
// told to start afresh.
type compactor struct {
	log       Watermark
	logger    *slog.Logger
	retention time.Duration
	now       func() time.Time
	shared    bool // other nodes compact the log too: the recorded watermark may be ahead

	mu    sync.Mutex
	queue []finished // finished tasks not yet compacted, in seq order

	watermark atomic.Uint64 // events at or below it may have been removed
}

type finished struct {
	seq       uint64
	owner, id string
	at        time.Time
}

// add records a task that finished with event seq at time at. Called in seq order. A task at or
// below the watermark may be compacted already, but still in the live index (its node died in
// between): compacting it again changes nothing and settles it.
func (c *compactor) add(seq uint64, owner, id string, at time.Time) {
	c.mu.Lock()
	c.queue = append(c.queue, finished{seq: seq, owner: owner, id: id, at: at})
	c.mu.Unlock()
}

// run compacts until ctx ends, looking a few times per retention period (at most every minute;
// every second with compaction off).
func (c *compactor) run(ctx context.Context) {
	every := time.Second
	if c.retention > 0 {
		every = min(max(c.retention/4, 50*time.Millisecond), time.Minute)
	}
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			c.round(ctx)
		}
	}
}

// round compacts every task that finished more than the retention ago; with compaction off, it
// retires every finished task at once.
func (c *compactor) round(ctx context.Context) {
	cutoff := c.now().Add(-max(c.retention, 0))
	c.mu.Lock()
	n := 0
	for n < len(c.queue) && !c.queue[n].at.After(cutoff) {
		n++
	}
	batch := c.queue[:n:n]
	c.mu.Unlock()
	if n == 0 {
		return
	}
	settle := c.log.Retire // compaction off: the history stays whole
	if c.retention > 0 {
		// Raise the watermark first, here and in the log: a watch that resumes from here on,
		// on any node, does not rely on events this round may remove.
		c.watermark.Store(max(c.watermark.Load(), batch[n-1].seq))
		if err := c.log.SetCompacted(ctx, batch[n-1].seq); err != nil {
			c.logger.Warn("cannot record the compaction watermark; will retry", "err", err)
			return
		}
		settle = c.log.Compact
	}
	done := 0
	for _, f := range batch {
		if err := settle(ctx, f.owner, f.id); err != nil {
			c.logger.Warn("cannot settle a finished task's history; will retry", "task", f.id, "err", err)
			break
		}
		done++
	}
	c.mu.Lock()
	c.queue = c.queue[done:]
	c.mu.Unlock()
}

// floor returns the watermark a watch must respect: this node's, or in a cluster the one
// recorded in the log if another node's rounds got further.
func (c *compactor) floor(ctx context.Context) (uint64, error) {
	w := c.watermark.Load()
	if !c.shared {
		return w, nil
	}
	stored, err := c.log.Compacted(ctx)
	if err != nil {
		return 0, taskhub.Errorf(taskhub.Unavailable, "read the compaction watermark: %v", err)
	}
	return max(w, stored), nil
}
