package actors

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// compactor removes the events of finished tasks once they are older than the retention, keeping
// each task's final event, and keeps the watermark below which history may be gone: a watch
// resuming from before it gets a fresh snapshot instead of a silent gap.
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

	mu    sync.Mutex
	queue []finished // finished tasks not yet compacted, in seq order

	watermark atomic.Uint64 // events at or below it may have been removed
}

type finished struct {
	seq       uint64
	owner, id string
	at        time.Time
}

// add records a task that finished with event seq at time at. Called in seq order.
func (c *compactor) add(seq uint64, owner, id string, at time.Time) {
	if c.retention <= 0 || seq <= c.watermark.Load() {
		return
	}
	c.mu.Lock()
	c.queue = append(c.queue, finished{seq: seq, owner: owner, id: id, at: at})
	c.mu.Unlock()
}

// run compacts until ctx ends, looking a few times per retention period (at most every minute).
func (c *compactor) run(ctx context.Context) {
	if c.retention <= 0 {
		return
	}
	tick := time.NewTicker(min(max(c.retention/4, 50*time.Millisecond), time.Minute))
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

// round compacts every task that finished more than the retention ago.
func (c *compactor) round(ctx context.Context) {
	cutoff := c.now().Add(-c.retention)
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
	// Raise the watermark first: a watch that resumes from here on does not rely on events
	// this round may remove.
	c.watermark.Store(max(c.watermark.Load(), batch[n-1].seq))
	done := 0
	for _, f := range batch {
		if err := c.log.Compact(ctx, f.owner, f.id); err != nil {
			c.logger.Warn("cannot compact a finished task's events; will retry", "task", f.id, "err", err)
			break
		}
		done++
	}
	if done == 0 {
		return
	}
	if err := c.log.SetCompacted(ctx, batch[done-1].seq); err != nil {
		c.logger.Warn("cannot record the compaction watermark; will retry", "err", err)
		return
	}
	c.mu.Lock()
	c.queue = c.queue[done:]
	c.mu.Unlock()
}
