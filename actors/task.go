package actors

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"google.golang.org/protobuf/types/known/timestamppb"

	storagev1 "github.com/taskhub/taskhub/gen/taskhub/storage/v1"
	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"

	"github.com/taskhub/taskhub"
	"github.com/taskhub/taskhub/eventlog"
)

// taskActor is the single writer of one task in this process. Its state is the task's last
// event in the log; it loads it on its first command (and again after a restart or a fence
// conflict). Other processes of a cluster may write the task too, so what it holds may be stale:
// every write is fenced on the last sequence it read, and an answer that no write of its own
// backs is given only on state read for the command (see handle).
//
// A task value, once stored in a.task, is never modified: every change builds a copy, so replies
// and the log's encoder can share it.
type taskActor struct {
	h    *Hub
	id   string
	self *actor.PID
	root *actor.RootContext

	loaded  bool
	owner   string          // the task's owner, once known (see ownerOf); "": not yet
	task    *taskhubv1.Task // nil: no such task
	lastSeq uint64          // the task's last sequence in the log: the fence for the next append
	// lease is the last lease granted, as stored: while the task runs, the live one.
	lease *storagev1.Lease
	// queueRenewed is when this actor last extended the lease's queue delivery (renewQueue).
	queueRenewed time.Time

	retryTimer *time.Timer // fires recheck

	wrote bool // the command being handled appended an event

	enqueuePending bool // the task is queued in the log but not yet in the queue
	// unsure: a write was sent but not confirmed, so what the log holds is unknown (the task
	// may be queued or running there without this actor knowing): it is read again soon.
	unsure      bool
	passivating bool // it asked the supervisor to stop it

	call      *toTask  // the caller's command being handled; nil for the actor's own
	followups []func() // work of the command that runs after its caller has been answered
}

// errCancelled marks a lease check on a task its owner cancelled.
var errCancelled = errors.New("task cancelled")

func (a *taskActor) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		a.self, a.root = ctx.Self(), ctx.ActorSystem().Root
		ctx.SetReceiveTimeout(a.h.cfg.IdleTimeout)
	case *actor.Stopping:
		stop(&a.retryTimer)
		if a.passivating && (a.enqueuePending || a.unsure) {
			// A command that came before the supervisor let it go left it with a queueing to
			// retry: hand it to a fresh actor, which reads the task again.
			ctx.Send(ctx.Parent(), &toTask{id: a.id, cmd: &wakeCmd{enqueue: true, owner: a.owner}})
		}
	case *actor.Restarting:
		stop(&a.retryTimer)
	case *actor.ReceiveTimeout:
		a.passivate(ctx, true)
	case *toTask:
		switch m.cmd.(type) {
		case *wakeCmd, *leaseExpired, *stallCheck:
			// Another actor of this task (here or on another node) may have changed it since
			// this one read it, and these act on what the log holds.
			a.loaded = false
		}
		if m.ctx != nil && (m.ctx.Err() != nil || !time.Now().Before(m.deadline)) {
			// Its caller gave up before this actor got to it: do not start it.
			m.answer(&taskReply{err: taskhub.Errorf(taskhub.Unavailable,
				"task %s: the hub was too busy to start the call before its deadline; nothing was changed: retry", a.id)})
			a.passivate(ctx, false)
			return
		}
		if a.owner == "" {
			a.owner = ownerOf(m.cmd)
		}
		a.call = m
		r := a.handle(m.cmd)
		a.call = nil
		m.answer(r)
		a.runFollowups()
		a.passivate(ctx, false)
	case *recheck:
		// Read the task again if a write was not confirmed, then queue it if it is queued
		// (again: queueing twice is harmless).
		stop(&a.retryTimer) // it fired
		if a.unsure {
			a.loaded = false
		}
		a.enqueuePending = false
		if r := a.handle(&wakeCmd{enqueue: true}); r.err != nil {
			a.after(&a.retryTimer, time.Second, m)
			return
		}
		a.unsure = false
		a.passivate(ctx, false)
	}
}

// passivate asks the supervisor to stop this actor when it has nothing to keep in memory: no
// queueing to retry, and no running task whose worker reports to it (unless idle: nothing came
// for IdleTimeout). A queued or finished task lives in the log alone, so the server's memory
// does not grow with the number of queued tasks; the next command for it loads it again. Lease
// expiry and stalls do not need an actor: the hub's timers send them to a fresh one (see
// Hub.timers).
func (a *taskActor) passivate(ctx actor.Context, idle bool) {
	if a.unsure && a.retryTimer == nil {
		a.after(&a.retryTimer, time.Second, &recheck{})
	}
	if a.passivating || (a.running() && !idle) || a.enqueuePending || a.unsure {
		return
	}
	a.passivating = true
	ctx.Request(ctx.Parent(), &passivate{id: a.id})
}

// then schedules work that follows a command once its caller has its answer: the answer says
// what was stored, and must not wait for (or be lost to) what comes after, such as queueing.
func (a *taskActor) then(fn func()) { a.followups = append(a.followups, fn) }

func (a *taskActor) runFollowups() {
	fns := a.followups
	a.followups = nil
	for _, fn := range fns {
		fn()
	}
}

// handle applies cmd to the current state. When another writer appended first, it reloads and
// applies cmd again to the new state. An answer that no write of cmd's backs (a refusal, a
// claim that found nothing to take, a timer with nothing to do) is given only on state read
// for cmd: another node may have changed the task since this actor read it, and a stale state
// must never refuse a legal call. A write needs no such care: the fence refuses a stale one.
func (a *taskActor) handle(cmd any) *taskReply {
	fresh := false // the state was read from the log for cmd
	for range 3 {
		if !a.loaded {
			if err := a.load(); err != nil {
				return &taskReply{err: err}
			}
			fresh = true
		}
		a.wrote = false
		mark := len(a.followups)
		r := a.apply(cmd)
		switch {
		case errors.Is(r.err, eventlog.ErrConflict):
		case !a.wrote && !fresh && !logFailure(r.err):
			a.followups = a.followups[:mark] // they followed from the stale state
		default:
			return r
		}
		a.loaded = false
	}
	return &taskReply{err: taskhub.Errorf(taskhub.Unavailable, "task %s is being changed elsewhere; retry", a.id)}
}

// logFailure reports whether err says the log failed, not what the task's state allows.
func logFailure(err error) bool {
	switch taskhub.ErrorCode(err) {
	case taskhub.Unavailable, taskhub.DeadlineExceeded:
		return true
	}
	return false
}

func (a *taskActor) apply(cmd any) *taskReply {
	switch c := cmd.(type) {
	case *createCmd:
		return a.create(c)
	case *cancelCmd:
		return a.cancel(c)
	case *claimCmd:
		return a.claim(c)
	case *reportCmd:
		return a.report(c)
	case *completeCmd:
		return a.complete(c)
	case *failCmd:
		return a.fail(c)
	case *renewCmd:
		return a.renew(c)
	case *leaseExpired:
		return a.expire()
	case *stallCheck:
		return a.stall()
	case *abortCmd:
		return a.abort(c)
	case *wakeCmd:
		return a.wake(c)
	}
	return &taskReply{err: taskhub.Errorf(taskhub.Internal, "unknown command %T", cmd)}
}

// ctx bounds a call to the log: by the deadline of the caller's command being handled, or else
// by the call timeout. It carries the caller's values (its trace span, for the log's) but not
// its cancellation: a write the caller left behind finishes.
func (a *taskActor) ctx() context.Context {
	if a.call != nil && !a.call.deadline.IsZero() {
		parent := context.Background()
		if a.call.ctx != nil {
			parent = context.WithoutCancel(a.call.ctx)
		}
		return a.h.deadlines.ctx(parent, a.call.deadline)
	}
	return a.h.deadlines.ctx(context.Background(), time.Now().Add(a.h.cfg.CallTimeout))
}

// load reads the task's last event by owner and id: the owner this actor knows, else the one
// the feed knows (of a task active, or finished a short while ago), else the one the command
// names. Only when none does is it read by id alone (owner "*"), which JetStream answers by
// matching the subjects of every owner: a read costs time in proportion to the owners the log
// holds (BenchmarkLog_Last: 9x at 5000 owners). A worker's call may name any id, so those reads
// are limited to byIDReads a second (Hub.byID): beyond that the call is refused at once.
func (a *taskActor) load() error {
	ctx := a.ctx()
	owner := a.owner
	if owner == "" {
		owner = cmp.Or(a.h.feed.owner(a.id), a.call.guess())
	}
	if owner == "" {
		if a.call.byWorker() && !a.h.byID.Allow() {
			a.h.counts.readsByIDRefused.Add(1)
			return taskhub.Errorf(taskhub.Unavailable, "task %s: too many calls name tasks this node does not know of (it reads at most %d a second); nothing was changed: retry", a.id, byIDReads)
		}
		a.h.counts.readsByID.Add(1)
		owner = "*"
	}
	e, err := a.h.log.Last(ctx, owner, a.id)
	switch {
	case errors.Is(err, eventlog.ErrNotFound):
		a.task, a.lastSeq, a.lease = nil, 0, nil
	case err != nil:
		return taskhub.Errorf(taskhub.Unavailable, "cannot load task %s: %v", a.id, err)
	default:
		a.task, a.lastSeq, a.lease = e.Record.Event.Task, e.Seq, e.Record.Lease
		a.owner = a.task.Owner
	}
	a.loaded = true
	return nil
}

// running reports whether the task runs under a lease.
func (a *taskActor) running() bool {
	return a.task.GetState() == taskhubv1.TaskState_TASK_STATE_RUNNING && a.lease != nil
}

// append writes the event that turns the task into t and makes t the current state.
func (a *taskActor) append(kind taskhubv1.EventKind, t *taskhubv1.Task, lease *storagev1.Lease) error {
	return a.appendBy(kind, t, lease, "")
}

// appendBy is append of a change a service made on the owner's behalf (actedBy; "" for none).
func (a *taskActor) appendBy(kind taskhubv1.EventKind, t *taskhubv1.Task, lease *storagev1.Lease, actedBy string) error {
	now := timestamppb.New(a.h.now())
	t.UpdatedAt = now
	rec := &storagev1.Record{Event: &taskhubv1.TaskEvent{Kind: kind, Task: t, Time: now, ActedBy: actedBy}, Lease: lease}
	ctx := a.ctx()
	began := time.Now()
	seq, err := a.h.log.Append(ctx, rec, a.lastSeq)
	a.h.counts.appendTime.observe(time.Since(began))
	switch {
	case errors.Is(err, eventlog.ErrConflict):
		return err
	case errors.Is(err, eventlog.ErrUncertain):
		a.loaded, a.unsure = false, true // what the log holds is unknown: read it again (recheck)
		return taskhub.Errorf(taskhub.DeadlineExceeded,
			"task %s: the event log did not confirm the change in time; it may or may not have been made: get the task to see", t.Id)
	case err != nil:
		return taskhub.Errorf(taskhub.Unavailable, "task %s: %v", t.Id, err)
	}
	a.h.counts.appended[kind&15].Add(1)
	// t is numbered, and shared with the follower since the append began: read-only.
	a.task, a.lastSeq, a.lease, a.wrote = t, seq, lease, true
	return nil
}

func (a *taskActor) create(c *createCmd) *taskReply {
	if a.task != nil {
		// Created already: by the first attempt of a retried create, which may have been cut
		// off before it queued the task.
		if a.task.State == taskhubv1.TaskState_TASK_STATE_QUEUED {
			a.enqueueWithin(enqueueBudget)
		}
		return &taskReply{task: a.task}
	}
	if err := a.appendBy(taskhubv1.EventKind_EVENT_KIND_CREATED, c.task, nil, c.actedBy); err != nil {
		if taskhub.ErrorCode(err) == taskhub.DeadlineExceeded {
			err = taskhub.Errorf(taskhub.DeadlineExceeded,
				"the event log did not confirm in time whether task %s was created: get it to see, or retry with the same idempotency_key", c.task.Id)
		}
		return &taskReply{err: err}
	}
	// Queue it before answering, so that tasks one caller creates are claimed in that order;
	// but the answer is "created" either way, and a queue that is slow or failing is retried
	// after the answer rather than making the caller wait.
	a.enqueueWithin(enqueueBudget)
	return &taskReply{task: a.task}
}

// enqueueBudget is how long a create waits for its task to be queued before it answers anyway.
const enqueueBudget = time.Second

// enqueue puts the task in its mode's queue, retrying every second while the queue is
// unavailable. The create was acknowledged once its event was durable: the task is queued
// eventually, by this actor or, if the process dies first, by the hub's reconciliation after a
// restart (or after the log recovers from a failure).
func (a *taskActor) enqueue() { a.enqueueWithin(a.h.cfg.CallTimeout) }

func (a *taskActor) enqueueWithin(budget time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), budget)
	defer cancel()
	if _, err := a.h.log.Enqueue(ctx, a.task.Mode, a.task.Owner, a.id); err != nil {
		a.h.logger.Warn("cannot queue task; retrying", "task", a.id, "err", err)
		a.enqueuePending = true
		a.after(&a.retryTimer, time.Second, &recheck{})
		return
	}
	a.enqueuePending = false
}

func (a *taskActor) cancel(c *cancelCmd) *taskReply {
	if a.task == nil || a.task.Owner != c.owner {
		return &taskReply{err: notFound(a.id)}
	}
	if taskhub.Terminal(a.task.State) {
		return &taskReply{err: taskhub.Errorf(taskhub.FailedPrecondition, "task %s is already %s", a.id, taskhub.StateName(a.task.State))}
	}
	was := a.task.State
	t := a.next()
	t.State = taskhubv1.TaskState_TASK_STATE_CANCELLED
	t.FinishedAt = timestamppb.New(a.h.now())
	if err := a.appendBy(taskhubv1.EventKind_EVENT_KIND_CANCELLED, t, a.lease, c.actedBy); err != nil {
		return &taskReply{err: err}
	}
	a.leaveQueue(was)
	return &taskReply{task: a.task}
}

// leaveQueue removes a finished task from the queue, once its caller has the answer. Errors are
// only logged: a queue message left behind is acked by the next claim that finds the task
// finished.
func (a *taskActor) leaveQueue(was taskhubv1.TaskState) {
	mode, ack := a.task.Mode, ""
	if was == taskhubv1.TaskState_TASK_STATE_RUNNING && a.lease != nil {
		ack = a.lease.AckSubject
	}
	a.then(func() {
		ctx, cancel := context.WithTimeout(context.Background(), a.h.cfg.CallTimeout)
		defer cancel()
		var err error
		if ack != "" {
			err = a.h.log.Ack(ctx, ack)
		} else {
			err = a.h.log.Dequeue(ctx, mode, a.id)
		}
		if err != nil {
			a.h.logger.Warn("cannot remove a finished task from the queue", "task", a.id, "err", err)
		}
	})
}

func (a *taskActor) claim(c *claimCmd) *taskReply {
	d := c.delivery
	ack := func() {
		a.then(func() {
			ctx, cancel := context.WithTimeout(context.Background(), a.h.cfg.CallTimeout)
			defer cancel()
			_ = a.h.log.Ack(ctx, d.AckSubject)
		})
	}
	switch {
	case a.task == nil || taskhub.Terminal(a.task.State):
		// A stale ticket: the task is gone or finished.
		ack()
		return &taskReply{}
	case a.running() && a.h.leaseOver(a.lease):
		// The lease ran out and the hub's timer did not requeue the task yet: requeue it now,
		// then let this claim have it.
		if r := a.expire(); r.err != nil {
			return r
		}
		if a.task.State != taskhubv1.TaskState_TASK_STATE_QUEUED {
			ack() // out of attempts: failed
			return &taskReply{}
		}
	case a.task.State == taskhubv1.TaskState_TASK_STATE_RUNNING:
		if a.lease != nil && a.lease.QueueSeq == d.QueueSeq {
			// JetStream redelivered the message this lease holds (its ack wait ran out before
			// the lease did, for example across a restart): keep the lease, follow the delivery.
			lease := copyLease(a.lease)
			lease.AckSubject = d.AckSubject
			a.lease, a.queueRenewed = lease, a.h.now()
			a.then(func() { _ = a.h.log.Renew(d.AckSubject) })
		} else {
			ack()
		}
		return &taskReply{}
	}

	token := rand.Text()
	hash := sha256.Sum256([]byte(token))
	now := a.h.now()
	expires := now.Add(a.h.cfg.LeaseTimeout)
	lease := &storagev1.Lease{
		TokenSha256: hash[:],
		Worker:      c.worker,
		ExpiresAt:   timestamppb.New(expires),
		AckSubject:  d.AckSubject,
		QueueSeq:    d.QueueSeq,
	}
	t := a.next()
	t.State = taskhubv1.TaskState_TASK_STATE_RUNNING
	t.StartedAt, t.ProgressedAt = timestamppb.New(now), timestamppb.New(now)
	t.Progress, t.Message, t.WorkerId, t.Stalled = 0, "", c.workerID, false
	if err := a.append(taskhubv1.EventKind_EVENT_KIND_STARTED, t, lease); err != nil {
		return &taskReply{err: err}
	}
	a.queueRenewed = now // a new delivery: its whole ack wait is ahead
	return &taskReply{task: a.task, claimed: true, leaseToken: token, leaseExpires: expires}
}

// checkLease returns nil when token proves worker's current, unexpired lease on the task.
func (a *taskActor) checkLease(worker, token string) error {
	if a.task == nil {
		return notFound(a.id)
	}
	hash := sha256.Sum256([]byte(token))
	if a.lease == nil || subtle.ConstantTimeCompare(hash[:], a.lease.TokenSha256) != 1 {
		return taskhub.Errorf(taskhub.PermissionDenied, "the lease token does not match task %s's lease: only the worker that claimed it may report on it", a.id)
	}
	if a.lease.Worker != worker {
		return taskhub.Errorf(taskhub.PermissionDenied, "task %s is leased to worker %q", a.id, a.lease.Worker)
	}
	switch a.task.State {
	case taskhubv1.TaskState_TASK_STATE_RUNNING:
		if !a.h.leaseOver(a.lease) {
			return nil
		}
		if r := a.expire(); r.err != nil {
			return r.err
		}
		return taskhub.Errorf(taskhub.FailedPrecondition, "the lease on task %s expired at %s; the task was %s",
			a.id, a.lease.ExpiresAt.AsTime().Format(time.RFC3339Nano), requeuedOrFailed(a.task.State))
	case taskhubv1.TaskState_TASK_STATE_QUEUED:
		return taskhub.Errorf(taskhub.FailedPrecondition, "the lease on task %s expired at %s; the task was requeued",
			a.id, a.lease.ExpiresAt.AsTime().Format(time.RFC3339Nano))
	case taskhubv1.TaskState_TASK_STATE_CANCELLED:
		return errCancelled
	}
	return taskhub.Errorf(taskhub.FailedPrecondition, "task %s is already %s", a.id, taskhub.StateName(a.task.State))
}

func (a *taskActor) report(c *reportCmd) *taskReply {
	if err := a.checkLease(c.worker, c.token); err != nil {
		if err == errCancelled {
			return &taskReply{task: a.task, cancelRequested: true}
		}
		return &taskReply{err: err}
	}
	now := a.h.now()
	expires := now.Add(a.h.cfg.LeaseTimeout)
	lease := copyLease(a.lease)
	lease.ExpiresAt = timestamppb.New(expires)
	t := a.next()
	t.Progress, t.Message, t.Stalled, t.ProgressedAt = c.progress, c.message, false, timestamppb.New(now)
	if err := a.append(taskhubv1.EventKind_EVENT_KIND_PROGRESS, t, lease); err != nil {
		return &taskReply{err: err}
	}
	a.renewQueue(now)
	return &taskReply{task: a.task, leaseExpires: expires}
}

// renew extends the lease. The new expiry is stored (an event watchers are not sent), so that
// every node of a cluster, and a restarted one, knows it.
func (a *taskActor) renew(c *renewCmd) *taskReply {
	if err := a.checkLease(c.worker, c.token); err != nil {
		if err == errCancelled {
			return &taskReply{task: a.task, cancelRequested: true}
		}
		return &taskReply{err: err}
	}
	now := a.h.now()
	expires := now.Add(a.h.cfg.LeaseTimeout)
	lease := copyLease(a.lease)
	lease.ExpiresAt = timestamppb.New(expires)
	if err := a.append(taskhubv1.EventKind_EVENT_KIND_LEASE_RENEWED, a.next(), lease); err != nil {
		return &taskReply{err: err}
	}
	a.renewQueue(now)
	return &taskReply{task: a.task, leaseExpires: expires}
}

// renewQueue extends the running task's queue delivery, which JetStream redelivers after its
// ack wait unless renewed, at most every queueRenewEvery: a worker reporting ten times a second
// would otherwise send the queue ten renewals a second, each parsed and applied by JetStream,
// where one every few seconds keeps the delivery as surely. The lease itself is renewed by
// every report (it is in the event). An actor that was stopped and started again renews at its
// first report.
func (a *taskActor) renewQueue(now time.Time) {
	if now.Sub(a.queueRenewed) < a.h.queueRenewEvery {
		return
	}
	a.queueRenewed = now
	_ = a.h.log.Renew(a.lease.AckSubject)
}

// stall marks a running task that made no progress for the stall timeout.
func (a *taskActor) stall() *taskReply {
	if !a.running() || a.task.Stalled || a.h.cfg.StallTimeout <= 0 {
		return &taskReply{task: a.task}
	}
	if at := a.task.ProgressedAt.AsTime().Add(a.h.cfg.StallTimeout); a.h.now().Before(at) {
		return &taskReply{task: a.task}
	}
	t := a.next()
	t.Stalled = true
	if err := a.append(taskhubv1.EventKind_EVENT_KIND_STALLED, t, a.lease); err != nil {
		return &taskReply{err: err}
	}
	return &taskReply{task: a.task}
}

func (a *taskActor) complete(c *completeCmd) *taskReply {
	if err := a.checkLease(c.worker, c.token); err != nil {
		if err == errCancelled {
			err = taskhub.Errorf(taskhub.FailedPrecondition, "task %s was cancelled; its result is not kept", a.id)
		}
		return &taskReply{err: err}
	}
	t := a.next()
	t.State = taskhubv1.TaskState_TASK_STATE_COMPLETED
	t.Progress, t.Result = 100, c.result
	t.FinishedAt = timestamppb.New(a.h.now())
	return a.finish(taskhubv1.EventKind_EVENT_KIND_COMPLETED, t)
}

func (a *taskActor) fail(c *failCmd) *taskReply {
	if err := a.checkLease(c.worker, c.token); err != nil {
		if err == errCancelled {
			err = taskhub.Errorf(taskhub.FailedPrecondition, "task %s was cancelled", a.id)
		}
		return &taskReply{err: err}
	}
	if c.retryable && int(a.task.Attempt) < a.h.maxAttempts(a.task.Mode) {
		return a.requeue(fmt.Sprintf("attempt %d failed: %s", a.task.Attempt, c.text))
	}
	t := a.next()
	t.State = taskhubv1.TaskState_TASK_STATE_FAILED
	t.Error = c.text
	if c.retryable {
		t.Error = fmt.Sprintf("%s (gave up after %d attempts)", c.text, a.task.Attempt)
	}
	t.FinishedAt = timestamppb.New(a.h.now())
	return a.finish(taskhubv1.EventKind_EVENT_KIND_FAILED, t)
}

// finish records a terminal event of a running task and takes it out of the queue.
func (a *taskActor) finish(kind taskhubv1.EventKind, t *taskhubv1.Task) *taskReply {
	if err := a.append(kind, t, a.lease); err != nil {
		return &taskReply{err: err}
	}
	a.leaveQueue(taskhubv1.TaskState_TASK_STATE_RUNNING)
	return &taskReply{task: a.task}
}

// expire requeues (or, out of attempts, fails) a running task whose lease has run out.
func (a *taskActor) expire() *taskReply {
	if !a.running() || !a.h.leaseOver(a.lease) {
		return &taskReply{task: a.task}
	}
	a.h.counts.expiries.Add(1)
	reason := fmt.Sprintf("worker %q stopped reporting and its lease expired", a.task.WorkerId)
	if int(a.task.Attempt) < a.h.maxAttempts(a.task.Mode) {
		return a.requeue(reason)
	}
	t := a.next()
	t.State = taskhubv1.TaskState_TASK_STATE_FAILED
	t.Error = fmt.Sprintf("%s (gave up after %d attempts)", reason, a.task.Attempt)
	t.FinishedAt = timestamppb.New(a.h.now())
	return a.finish(taskhubv1.EventKind_EVENT_KIND_FAILED, t)
}

// abort fails a task that is not finished, for a reason of the hub's own.
func (a *taskActor) abort(c *abortCmd) *taskReply {
	if a.task == nil || taskhub.Terminal(a.task.State) {
		return &taskReply{task: a.task}
	}
	was := a.task.State
	t := a.next()
	t.State = taskhubv1.TaskState_TASK_STATE_FAILED
	t.Error = c.reason
	t.FinishedAt = timestamppb.New(a.h.now())
	if err := a.append(taskhubv1.EventKind_EVENT_KIND_FAILED, t, a.lease); err != nil {
		return &taskReply{err: err}
	}
	a.leaveQueue(was)
	return &taskReply{task: a.task}
}

// requeue puts a running task back in the queue for its next attempt, after a backoff.
func (a *taskActor) requeue(reason string) *taskReply {
	t := a.next()
	t.State = taskhubv1.TaskState_TASK_STATE_QUEUED
	t.Attempt++
	t.Progress, t.Message, t.StartedAt, t.ProgressedAt, t.Stalled = 0, reason, nil, nil, false
	if err := a.append(taskhubv1.EventKind_EVENT_KIND_REQUEUED, t, a.lease); err != nil {
		return &taskReply{err: err}
	}
	if err := a.h.log.Release(a.lease.AckSubject, backoff(t.Attempt)); err != nil {
		a.h.logger.Warn("cannot release a requeued task; it returns after the ack wait", "task", a.id, "err", err)
	}
	return &taskReply{task: a.task}
}

// wake queues a queued task again when asked, after handle (re)loaded it.
func (a *taskActor) wake(c *wakeCmd) *taskReply {
	if c.enqueue && a.task.GetState() == taskhubv1.TaskState_TASK_STATE_QUEUED {
		a.enqueue()
	}
	return &taskReply{task: a.task}
}

// next returns a copy of the current task to change into the next state.
func (a *taskActor) next() *taskhubv1.Task { return copyTask(a.task) }

// copyTask and copyLease copy a stored task or lease to change into the next: a shallow copy,
// which shares the params, the webhook and the timestamps with the original. A stored record's
// parts are read-only (a change sets a field of the copy to a new value, never changes a part
// in place), so they need no copying, and a task's params (up to 32 KiB) are not copied with
// every report as proto.Clone did (with them a tenth of a report's allocations). TestCopyTask
// fails when a field is added to Task or Lease and not here.
func copyTask(t *taskhubv1.Task) *taskhubv1.Task {
	if t == nil {
		return nil
	}
	return &taskhubv1.Task{Id: t.Id, Owner: t.Owner, Prompt: t.Prompt, Mode: t.Mode, Params: t.Params,
		State: t.State, Progress: t.Progress, Message: t.Message, Result: t.Result, Error: t.Error,
		Attempt: t.Attempt, CreatedAt: t.CreatedAt, UpdatedAt: t.UpdatedAt, StartedAt: t.StartedAt,
		FinishedAt: t.FinishedAt, WorkerId: t.WorkerId, Seq: t.Seq, Stalled: t.Stalled,
		ProgressedAt: t.ProgressedAt, Webhook: t.Webhook, WebhookStatus: t.WebhookStatus}
}

func copyLease(l *storagev1.Lease) *storagev1.Lease {
	if l == nil {
		return nil
	}
	return &storagev1.Lease{TokenSha256: l.TokenSha256, Worker: l.Worker, ExpiresAt: l.ExpiresAt,
		AckSubject: l.AckSubject, QueueSeq: l.QueueSeq}
}

// after sends msg to the actor after d, replacing what *t was set to.
func (a *taskActor) after(t **time.Timer, d time.Duration, msg any) {
	stop(t)
	self, root := a.self, a.root
	*t = time.AfterFunc(d, func() { root.Send(self, msg) })
}

func stop(t **time.Timer) {
	if *t != nil {
		(*t).Stop()
		*t = nil
	}
}

// backoff is the delay before attempt is offered to workers: 1s, 2s, 4s, ... up to 30s.
func backoff(attempt uint32) time.Duration {
	if attempt < 2 {
		return 0
	}
	return min(time.Second<<min(attempt-2, 5), 30*time.Second)
}

func requeuedOrFailed(s taskhubv1.TaskState) string {
	if s == taskhubv1.TaskState_TASK_STATE_QUEUED {
		return "requeued"
	}
	return taskhub.StateName(s)
}

func notFound(id string) error { return taskhub.Errorf(taskhub.NotFound, "task %s not found", id) }
