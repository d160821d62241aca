package actors

import (
	"cmp"
	"context"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"

	"github.com/taskhub/taskhub"
	"github.com/taskhub/taskhub/eventlog"
)

// compactor removes the events of finished tasks once they are older than the retention, keeping
// each task's final event, and keeps the watermark below which history may be gone: a watch
// resuming from before it gets a fresh snapshot instead of a silent gap. Either way (with
// compaction off, at once) it settles each finished task in the log (Retire), so that a start
// reads the tasks that matter rather than every task ever.
//
// In a cluster every node keeps the queue of finished tasks from its feed, but only the node
// that leads (see Log.Lead) settles them, and gathers the log's leaders (GatherLeaders); the
// others drop theirs as they come due. A node that takes the lead over reads the live index
// for what the last leader left unsettled. The watermark is recorded in the log before the
// events go, never lowered: a node reads it there before it relies on history (see floor).
//
// Why the watermark is enough: a task's events are removed only when its final event (seq F) is
// older than the retention. A watcher that has not seen F has not heard from the hub since
// before F, so a watcher resuming after N >= F lost nothing, and one resuming after N < F is
// told to start afresh.
type compactor struct {
	log interface {
		Watermark
		Leading
	}
	logger    *slog.Logger
	retention time.Duration
	now       func() time.Time
	shared    bool   // other nodes share the log: only the one that leads settles tasks
	hooks     *hooks // nil with webhooks off; else a task with one waits for its deliveries
	active    func() []*taskhubv1.Task

	mu      sync.Mutex
	queue   []finished // finished tasks not yet compacted, in seq order
	leading bool       // shared: this node led at its last round

	watermark atomic.Uint64 // events at or below it may have been removed
}

type finished struct {
	seq       uint64
	owner, id string
	at        time.Time
	hook      bool // it has a webhook: settled once its deliveries are done
}

// add records a task that finished with event seq at time at. Called in seq order. A task at or
// below the watermark may be compacted already, but still in the live index (its node died in
// between): compacting it again changes nothing and settles it.
func (c *compactor) add(seq uint64, owner, id string, at time.Time, hook bool) {
	c.mu.Lock()
	c.queue = append(c.queue, finished{seq: seq, owner: owner, id: id, at: at, hook: hook})
	c.mu.Unlock()
}

// leadEvery is how often a node sharing the log renews or seeks the lead: well within the
// lead timeout (10 s), so that a leader that stays up stays the leader. A renewal may take up
// to leadCall: a busy cluster answers slowly, and a leader that gave up sooner would lose the
// lead to one just as slow.
const (
	leadEvery = 2 * time.Second
	leadCall  = 5 * time.Second
)

// run compacts until ctx ends, looking a few times per retention period (at most every minute;
// every second with compaction off; at least every leadEvery when the log is shared).
func (c *compactor) run(ctx context.Context) {
	every := time.Second
	if c.retention > 0 {
		every = min(max(c.retention/4, 50*time.Millisecond), time.Minute)
	}
	if c.shared {
		every = min(every, leadEvery)
		c.leading = true // the feed has queued what the live index held at the start
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
// retires every finished task at once. A node sharing the log that does not lead drops them.
func (c *compactor) round(ctx context.Context) {
	if c.shared && !c.lead(ctx) {
		return
	}
	c.mu.Lock()
	due := c.dueLocked()
	batch := make([]finished, 0, due)
	for _, f := range c.queue[:due] {
		// A task whose webhook deliveries are not done keeps its history and stays unsettled.
		if !f.hook || c.hooks == nil || c.hooks.settleable(f.owner, f.id) {
			batch = append(batch, f)
		}
	}
	c.mu.Unlock()
	if len(batch) == 0 {
		return
	}
	n := len(batch)
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
	settled := map[string]bool{}
	for _, f := range batch {
		if err := settle(ctx, f.owner, f.id); err != nil {
			c.logger.Warn("cannot settle a finished task's history; will retry", "task", f.id, "err", err)
			break
		}
		settled[f.id] = true
		if f.hook && c.hooks != nil {
			c.hooks.settled(f.id)
		}
	}
	// Drop the settled from the queue's head (the due tasks, which feed.add, appending, left
	// where they were), keeping the others in order: O(due), not O(queue).
	c.mu.Lock()
	kept := due
	for i := due - 1; i >= 0; i-- {
		if !settled[c.queue[i].id] {
			kept--
			c.queue[kept] = c.queue[i]
		}
	}
	c.queue = c.queue[kept:]
	c.mu.Unlock()
}

// lead renews or seeks this node's lead and reports whether it leads. A node that does not lead
// drops the tasks that are due: the leader settles them. One that takes the lead over queues
// what the live index still holds of finished tasks: those its last leader did not settle.
func (c *compactor) lead(ctx context.Context) bool {
	call, cancel := context.WithTimeout(ctx, leadCall)
	defer cancel()
	leads, err := c.log.Lead(call)
	if err != nil {
		c.logger.Debug("cannot renew or take the lead", "err", err)
	}
	if leads && !c.leading {
		read, cancel := context.WithTimeout(ctx, time.Minute) // O(live tasks)
		defer cancel()
		entries, err := c.log.Unsettled(read)
		if err != nil {
			c.logger.Warn("cannot read the live index after taking the lead; will retry", "err", err)
			return false
		}
		c.requeue(entries)
		c.logger.Info("this node now settles finished tasks")
	}
	if c.hooks != nil {
		c.hooks.setLeading(leads, c.hooked())
	}
	c.leading = leads
	if leads {
		// The leader also keeps the log's other leaders on the event log leader's node.
		gather, cancel := context.WithTimeout(ctx, leadCall)
		defer cancel()
		if err := c.log.GatherLeaders(gather); err != nil {
			c.logger.Debug("cannot gather the streams' leaders", "err", err)
		}
	}
	if !leads {
		c.mu.Lock()
		c.queue = c.queue[c.dueLocked():]
		c.mu.Unlock()
	}
	return leads
}

// hooked returns the tasks that may have webhook deliveries left: the active ones with a webhook
// and the finished ones with a webhook not yet settled.
func (c *compactor) hooked() [][2]string {
	var out [][2]string
	for _, t := range c.active() {
		if t.Webhook != nil {
			out = append(out, [2]string{t.Owner, t.Id})
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, f := range c.queue {
		if f.hook {
			out = append(out, [2]string{f.owner, f.id})
		}
	}
	return out
}

// dueLocked is how many tasks at the head of the queue are due: finished more than the
// retention ago. The caller holds c.mu.
func (c *compactor) dueLocked() int {
	cutoff := c.now().Add(-max(c.retention, 0))
	n := 0
	for n < len(c.queue) && !c.queue[n].at.After(cutoff) {
		n++
	}
	return n
}

// requeue adds the finished tasks of entries that the queue lacks, keeping it in seq order.
func (c *compactor) requeue(entries []*eventlog.Entry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	queued := make(map[string]bool, len(c.queue))
	for _, f := range c.queue {
		queued[f.id] = true
	}
	for _, e := range entries {
		ev := e.Record.Event
		if taskhub.Terminal(ev.Task.State) && !queued[ev.Task.Id] {
			c.queue = append(c.queue, finished{seq: e.Seq, owner: ev.Task.Owner, id: ev.Task.Id, at: ev.Time.AsTime(), hook: ev.Task.Webhook != nil})
		}
	}
	slices.SortFunc(c.queue, func(a, b finished) int { return cmp.Compare(a.seq, b.seq) })
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
