package actors

import (
	"context"
	"time"

	storagev1 "github.com/taskhub/taskhub/gen/taskhub/storage/v1"

	"github.com/taskhub/taskhub/eventlog"
)

// Log is what the hub keeps in the event log, by role; *eventlog.Log implements it. Each part
// of the hub takes the roles it uses: the feed Events, the claims Queue, the compactor
// Watermark.
type Log interface {
	Events
	Queue
	Watermark
	Leading
	Health
	// ClaimKey binds owner's idempotency key to the task id id, unless it is bound already
	// (within the key window, 24 h), and returns the id it is bound to.
	ClaimKey(ctx context.Context, owner, key, id string) (string, error)
	Cursors
}

// Cursors keep where each task's webhook deliveries are.
type Cursors interface {
	// WebhookCursor returns a task's cursor; ErrNotFound if none was written.
	WebhookCursor(ctx context.Context, id string) (*storagev1.WebhookCursor, error)
	// PutWebhookCursor records a task's cursor.
	PutWebhookCursor(ctx context.Context, id string, c *storagev1.WebhookCursor) error
}

// Events is the event stream: one subject per task, whose messages are the task's events, each
// a storagev1.Record with the whole task after the change. A message's stream sequence is the
// event's seq: sequences only grow, with gaps (other tasks, write probes, compaction).
//
// Errors: eventlog.ErrNotFound (no such message), eventlog.ErrUnavailable (nothing written, or
// a read not answered), eventlog.ErrUncertain (a write sent but not confirmed: it may be
// stored), eventlog.ErrConflict (Append's fence).
type Events interface {
	// Epoch is the stream's identity: a stream created again gets a new one, so sequences of
	// the old one never match.
	Epoch() string
	// Append writes rec as the next event of its task (rec.Event.Task) if the task's last
	// sequence is still expectLast (0: none: a create), and returns its sequence once it is
	// stored, having set rec.Event.Seq and rec.Event.Task.Seq to it. Another writer's append in
	// between fails it with ErrConflict: a task has one writer. A stored rec may be shared with
	// the follower (which then hands on rec itself): nobody changes it after.
	Append(ctx context.Context, rec *storagev1.Record, expectLast uint64) (seq uint64, err error)
	// Last returns the task's last event: its current state. owner may be "*".
	Last(ctx context.Context, owner, id string) (*eventlog.Entry, error)
	// Get returns the event with sequence seq.
	Get(ctx context.Context, seq uint64) (*eventlog.Entry, error)
	// Next returns the first event at or after sequence from whose subject matches filter.
	Next(ctx context.Context, filter string, from uint64) (*eventlog.Entry, error)
	// Bounds returns the first and last sequence the stream holds ((0, last) when empty).
	Bounds(ctx context.Context) (first, last uint64, err error)
	// TaskIDs returns the ids of every task of owner, in no particular order.
	TaskIDs(ctx context.Context, owner string) ([]string, error)
	// Follow calls fn on one goroutine with the last event of every task that is active or
	// not yet settled (not Retired), in sequence order, then with every new event as it is
	// stored (and write probes, as entries without a Record), until stop is called or the log
	// closes. pending is how many messages are yet to come at that time: 0 means fn has seen
	// every task.
	Follow(ctx context.Context, fn func(e *eventlog.Entry, pending uint64)) (stop func(), err error)
	// Appended is the highest sequence this process appended (0: none yet).
	Appended() uint64
}

// Queue is the task queue: at most one message per queued task, on a subject of its mode,
// handed out by a consumer of the mode. A delivery is a lease on the message: renewed, released
// (redelivered after a delay) or acked (gone). Queue messages are claim tickets, not the truth:
// the task's state in the event log is.
type Queue interface {
	// Enqueue puts the task in its mode's queue (making the mode's consumer if needed) and
	// reports whether it added it: a task already in the queue, delivered or not, stays.
	Enqueue(ctx context.Context, mode, owner, id string) (added bool, err error)
	// Dequeue removes the task's message, delivered or not.
	Dequeue(ctx context.Context, mode, id string) error
	// Queued returns the ids of every task in the queue.
	Queued(ctx context.Context) (map[string]bool, error)
	// EnsureQueue makes the mode's consumer unless it exists.
	EnsureQueue(ctx context.Context, mode string) error
	// Fetch takes up to max messages of mode, waiting up to wait for the first. A mode without
	// a consumer fails with eventlog.ErrNoQueue: fetching never makes one.
	Fetch(ctx context.Context, mode string, max int, wait time.Duration) ([]eventlog.Delivery, error)
	// Renew extends a delivery's lease, Release hands it back (to come again after delay), Ack
	// ends it. They do not wait for an answer.
	Renew(ackSubject string) error
	// AckWait is how long a delivery stays leased without a renewal before it is delivered
	// again.
	AckWait() time.Duration
	Release(ackSubject string, delay time.Duration) error
	Ack(ctx context.Context, ackSubject string) error
}

// Watermark is compaction: finished tasks' events removed, but for their last, and the
// sequence below which that may have happened.
type Watermark interface {
	// Compact removes every event of the task but its last, then Retires it.
	Compact(ctx context.Context, owner, id string) error
	// Retire settles a finished task: Follow no longer starts with it.
	Retire(ctx context.Context, owner, id string) error
	// Compacted returns the watermark: events at or below it may have been removed.
	Compacted(ctx context.Context) (uint64, error)
	// SetCompacted records the watermark.
	SetCompacted(ctx context.Context, w uint64) error
}

// Leading picks, among the processes sharing a log, the one that does what must be done once.
type Leading interface {
	// Lead reports whether this process leads, renewing its lead. Call it more often than the
	// lead timeout (10 s).
	Lead(ctx context.Context) (bool, error)
	// Unsettled returns the last event of every task in the live index, in seq order.
	Unsettled(ctx context.Context) ([]*eventlog.Entry, error)
	// GatherLeaders moves the leaders of the log's streams and queue consumers to the event
	// stream leader's node: losing another node then pauses nothing.
	GatherLeaders(ctx context.Context) error
}

// Health says whether the log takes writes.
type Health interface {
	// Ready returns nil while writes work, and why they fail otherwise.
	Ready() error
	// Recovered receives a value after writes work again following a failure.
	Recovered() <-chan struct{}
}
