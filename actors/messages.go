package actors

import (
	"context"
	"time"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"

	"github.com/taskhub/taskhub/eventlog"
)

// toTask asks the supervisor to deliver cmd to the actor of task id, spawning it if needed.
// A caller's command carries its context and deadline: an actor that gets to it after either
// ended does not start it, and its writes give up at the deadline (see Hub.ask).
type toTask struct {
	id       string
	cmd      any
	ctx      context.Context // nil for the hub's own commands
	deadline time.Time       // zero for the hub's own commands
	reply    chan *taskReply // where the answer goes (capacity 1); nil: nobody waits for one
}

// answer sends r to the caller waiting for the command's answer, if one does. The caller reads
// the first: a panic's answer after it (see replyOnPanic) is dropped, or left unread.
func (m *toTask) answer(r *taskReply) {
	if m.reply != nil {
		select {
		case m.reply <- r:
		default:
		}
	}
}

// passivate tells the supervisor that a task actor is idle and may be stopped.
type passivate struct{ id string }

// Commands to a task actor. Each is answered with a *taskReply when its toTask carries a reply
// channel.
type (
	createCmd struct {
		task    *taskhubv1.Task
		actedBy string // the service creating it on the owner's behalf
	}
	cancelCmd struct{ owner, actedBy string }
	claimCmd  struct {
		worker   string // the authenticated worker: the lease is theirs
		workerID string // the name the task shows as its runner
		delivery eventlog.Delivery
	}
	reportCmd struct {
		worker, token string
		progress      float64
		message       string
	}
	renewCmd    struct{ worker, token string }
	completeCmd struct{ worker, token, result string }
	failCmd     struct {
		worker, token, text string
		retryable           bool
	}
	// abortCmd fails the task with reason, whatever its lease: the supervisor sends it when
	// the task's actor kept failing.
	abortCmd struct{ reason string }
	// wakeCmd reloads the task and queues it again if it is queued (enqueue): an actor let go
	// while it had a queueing to retry sends it to its successor.
	wakeCmd struct {
		enqueue bool
		owner   string // the task's, if the sender knew it
	}
	// leaseExpired requeues (or fails) the task if its lease is over, and stallCheck marks it
	// stalled if it made no progress for the stall timeout: the hub's timers send them (see
	// Hub.timers), and the actor checks the task as the log holds it.
	leaseExpired struct{ owner string }
	stallCheck   struct{ owner string }
)

// guess is the owner a caller's command names without the log's word for it: a cancel's caller,
// whose task it may not be. A task not found under it is read again by the next command that
// finds it missing (see taskActor.handle). m may be nil.
func (m *toTask) guess() string {
	if m != nil {
		if c, ok := m.cmd.(*cancelCmd); ok {
			return c.owner
		}
	}
	return ""
}

// byWorker reports whether m is a worker's call, which names its task by an id of the
// worker's choosing (see Hub.byID). m may be nil.
func (m *toTask) byWorker() bool {
	if m != nil {
		switch m.cmd.(type) {
		case *reportCmd, *renewCmd, *completeCmd, *failCmd:
			return true
		}
	}
	return false
}

// ownerOf is the owner of cmd's task when cmd knows it for certain (from the log, or because it
// creates the task), or "". A task actor reads its task by owner and id when it knows the owner:
// by id alone, JetStream matches the subjects of every owner (see taskActor.load).
func ownerOf(cmd any) string {
	switch c := cmd.(type) {
	case *createCmd:
		return c.task.Owner
	case *claimCmd:
		return c.delivery.Owner
	case *leaseExpired:
		return c.owner
	case *stallCheck:
		return c.owner
	case *wakeCmd:
		return c.owner
	}
	return ""
}

// recheck is a timer message a task actor sends itself: it reads the task again after a write
// was not confirmed, or retries queueing it.
type recheck struct{}

// taskReply answers a task command.
type taskReply struct {
	task            *taskhubv1.Task
	claimed         bool
	leaseToken      string
	leaseExpires    time.Time
	cancelRequested bool
	err             error
}
