package actors

import (
	"cmp"
	"fmt"
	"time"

	"github.com/taskhub/taskhub"
	"github.com/taskhub/taskhub/webhook"
)

// Defaults of Options: the one place each is written (the command line's flags use them).
const (
	DefaultLeaseTimeout          = 30 * time.Second
	DefaultMaxAttempts           = 3
	DefaultStallTimeout          = 2 * time.Minute
	DefaultRetention             = 24 * time.Hour
	DefaultHeartbeat             = 15 * time.Second
	DefaultWatchBuffer           = 1024
	DefaultMaxWatches            = 100000
	DefaultMaxWatchesPerUser     = 10000
	DefaultMaxActiveTasksPerUser = 1000
	DefaultMaxModes              = 100
	DefaultIdleTimeout           = time.Minute
	DefaultCallTimeout           = 10 * time.Second
	DefaultWriteAhead            = 1000
	DefaultWatchInterval         = 20 * time.Millisecond
)

// Options are the hub's behaviour a deployment may tune. Zero values take the Default…
// constants; for StallTimeout and Retention, a negative value turns the feature off.
type Options struct {
	// LeaseTimeout is how long a claimed task stays leased without a report.
	LeaseTimeout time.Duration
	// MaxAttempts is how many times a task may be claimed before a lease expiry or a
	// retryable failure fails it for good; ModeAttempts overrides it for some modes.
	MaxAttempts  int
	ModeAttempts map[string]int
	// StallTimeout marks a running task stalled when it makes no progress for this long.
	StallTimeout time.Duration
	// Retention is how long the events of a finished task are kept before all but the final
	// one are removed. A watch resuming from before the removed history gets a fresh snapshot.
	Retention time.Duration
	// Modes, when not empty, are the only modes tasks may be created in.
	Modes []string
	// Heartbeat is how often an idle watch gets a heartbeat.
	Heartbeat time.Duration
	// WatchInterval is how often at most a busy watch is sent to: an event that comes sooner
	// after the last send waits for the rest of it and leaves in the next send, with whatever
	// else came meanwhile (a watch whose queue is half full is sent at once, so nothing is
	// coalesced while it waits). A watch that gets an event less often gets each at once.
	// Negative: every event is sent at once.
	WatchInterval time.Duration
	// WatchBuffer bounds each watch's queue (its outbox), in events: past it, a watch that
	// reads slowly stops queueing and is refilled from the event log once it catches up.
	WatchBuffer int
	// MaxWatches bounds the open watches in all; MaxWatchesPerUser those of one user. Past a
	// limit, Watch fails with ResourceExhausted.
	MaxWatches, MaxWatchesPerUser int
	// MaxActiveTasksPerUser bounds a user's queued and running tasks. Past it, CreateTask
	// fails with ResourceExhausted (a retry of a create that succeeded still returns its task).
	MaxActiveTasksPerUser int
	// MaxModes bounds the modes that have queued or running tasks at once: each has a queue
	// consumer. A task in another mode fails with ResourceExhausted. With Modes set, only
	// those modes are allowed, and this does not apply.
	MaxModes int
	// IdleTimeout is how long a running task's actor with nothing to do stays in memory.
	IdleTimeout time.Duration
	// CallTimeout bounds each call into the actors and the log.
	CallTimeout time.Duration
	// WriteAhead is how many events this node's writes may run ahead of its feed, which hands
	// them to the watchers. A node offered more writes than it can deliver would otherwise
	// accept them all, and its watchers would see each event later and later: past it, a
	// write waits for the feed, and the writers slow to what the node delivers.
	WriteAhead int
	// Webhooks, when set, lets tasks ask for their events to be POSTed (see webhook); nil
	// refuses a task with a webhook.
	Webhooks *webhook.Sender
}

// WithDefaults returns o with its zero values replaced by the defaults.
func (o Options) WithDefaults() Options {
	o.LeaseTimeout = cmp.Or(o.LeaseTimeout, DefaultLeaseTimeout)
	o.MaxAttempts = cmp.Or(o.MaxAttempts, DefaultMaxAttempts)
	o.StallTimeout = cmp.Or(o.StallTimeout, DefaultStallTimeout)
	o.Retention = cmp.Or(o.Retention, DefaultRetention)
	o.Heartbeat = cmp.Or(o.Heartbeat, DefaultHeartbeat)
	o.WatchBuffer = cmp.Or(o.WatchBuffer, DefaultWatchBuffer)
	o.MaxWatches = cmp.Or(o.MaxWatches, DefaultMaxWatches)
	o.MaxWatchesPerUser = cmp.Or(o.MaxWatchesPerUser, DefaultMaxWatchesPerUser)
	o.MaxActiveTasksPerUser = cmp.Or(o.MaxActiveTasksPerUser, DefaultMaxActiveTasksPerUser)
	o.MaxModes = cmp.Or(o.MaxModes, DefaultMaxModes)
	o.IdleTimeout = cmp.Or(o.IdleTimeout, DefaultIdleTimeout)
	o.CallTimeout = cmp.Or(o.CallTimeout, DefaultCallTimeout)
	o.WriteAhead = cmp.Or(o.WriteAhead, DefaultWriteAhead)
	o.WatchInterval = cmp.Or(o.WatchInterval, DefaultWatchInterval)
	return o
}

func (o Options) check() error {
	if o.WriteAhead < 0 {
		return fmt.Errorf("actors: the write-ahead must be at least 1, got %d", o.WriteAhead)
	}
	for _, m := range o.Modes {
		if err := taskhub.ValidateMode(m); err != nil {
			return err
		}
	}
	for m, n := range o.ModeAttempts {
		if err := taskhub.ValidateMode(m); err != nil {
			return err
		}
		if n < 1 {
			return fmt.Errorf("actors: mode %s: max attempts must be at least 1, got %d", m, n)
		}
	}
	return nil
}
