package actors

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"golang.org/x/time/rate"

	storagev1 "github.com/taskhub/taskhub/gen/taskhub/storage/v1"
	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"

	"github.com/taskhub/taskhub"
)

// Config configures a Hub: what it runs on, and its Options.
type Config struct {
	Log    Log
	Logger *slog.Logger // [slog.Default()]
	// Shared says other processes use the same log (the nodes of a cluster, or of one external
	// NATS): what this one read of it may be behind what they wrote.
	Shared bool
	// ParamCheck, when set, validates a new task's params for its mode (built-in executors
	// use it to refuse params they cannot run).
	ParamCheck func(mode string, params map[string]string) error
	Options
}

// Hub is the API of the task hub. Its methods take the caller's identity from the transport,
// which has authenticated it: an owner (a valid name: it becomes part of log subjects), or a
// worker name ("" when auth is off, for every worker).
type Hub struct {
	cfg        Config
	log        Log
	logger     *slog.Logger
	system     *actor.ActorSystem
	root       *actor.RootContext
	supervisor *actor.PID
	feed       *feed
	subscriber *actor.Props      // shared by every subscriber: a watch's own data comes in a message
	dispatcher *workerDispatcher // runs the supervisor's and the task actors' mailboxes
	claims     *claims
	hooks      *hooks // nil with webhooks off
	compactor  *compactor
	deadlines  *deadlines // the ends of calls to task actors, shared by the calls of a tick
	watches    watchCount
	writers    *writers // deliver the watches that send by themselves (Watch.Deliver)
	counts     counters
	// byID limits the reads of a task by its id alone for workers' calls (see taskActor.load):
	// each costs time in proportion to the owners the log holds, and only ids the feed knows no
	// owner of need one (a task finished long ago, an id nobody made), so a client naming
	// made-up ids cannot spend the node.
	byID      *rate.Limiter
	graceFrom atomic.Int64           // unix ns: when the hub started, or its log last recovered (see leaseOver)
	behind    atomic.Pointer[string] // why the feed is behind the log, or nil (see checkLag)
	life      context.Context        // ends with Close
	cancel    context.CancelFunc
	wg        sync.WaitGroup // the compactor, the heartbeats, the timers and reconciliation
	closed    atomic.Bool
	stopped   chan struct{} // closed by Close once the task actors are stopped
	closeOnce sync.Once
	now       func() time.Time
	// queueRenewEvery spaces a running task's queue renewals (taskActor.renewQueue): a quarter
	// of the lease timeout, and no more than the ack wait's margin over it, so that the queue
	// never delivers a task again while its lease holds.
	queueRenewEvery time.Duration
}

// byIDReads is how many reads of a task by its id alone a hub makes a second for workers' calls,
// at most, after a burst as large (see Hub.byID): at 5000 owners, about 5 % of a core.
const byIDReads = 100

// Open starts the hub: it reads the active tasks from the log, then resumes what they were
// doing (the timers of running tasks, queueing of queued ones).
func Open(ctx context.Context, cfg Config) (*Hub, error) {
	if cfg.Log == nil {
		return nil, errors.New("actors: Config.Log is required")
	}
	cfg.Logger = cmp.Or(cfg.Logger, slog.Default())
	if err := tuneRegistry(); err != nil {
		return nil, err
	}
	cfg.Options = cfg.WithDefaults()
	if err := cfg.Options.check(); err != nil {
		return nil, err
	}

	protoLogger := slog.New(minLevel{cfg.Logger.Handler(), slog.LevelWarn}).With("component", "protoactor")
	system := actor.NewActorSystem(actor.WithLoggerFactory(func(*actor.ActorSystem) *slog.Logger { return protoLogger }))
	// A command that reached no actor (forwarded to one the supervisor's strategy had just
	// stopped, or sent as Close stopped the supervisor) is answered at once: nothing was
	// changed. Commands still in the mailbox of an actor that stops are not: their callers wait
	// until the call's expiry, or the hub's Close.
	system.EventStream.Subscribe(func(evt any) {
		if dl, ok := evt.(*actor.DeadLetterEvent); ok {
			if m, ok := dl.Message.(*toTask); ok {
				m.answer(&taskReply{err: taskhub.Errorf(taskhub.Unavailable, "task %s: its actor stopped before it took the call; nothing was changed: retry", m.id)})
			}
		}
	})
	life, cancel := context.WithCancel(context.Background())
	dispatcher := newWorkerDispatcher(mailboxThroughput)
	h := &Hub{
		deadlines:  newDeadlines(),
		cfg:        cfg,
		log:        cfg.Log,
		logger:     cfg.Logger,
		system:     system,
		root:       system.Root,
		life:       life,
		cancel:     cancel,
		now:        time.Now,
		byID:       rate.NewLimiter(byIDReads, byIDReads),
		dispatcher: dispatcher,
		writers:    newWriters(dispatcher.Schedule),
		stopped:    make(chan struct{}),
	}
	h.graceFrom.Store(h.now().UnixNano())
	h.queueRenewEvery = min(cfg.LeaseTimeout/4, cfg.Log.AckWait()-cfg.LeaseTimeout)
	h.compactor = &compactor{log: h.log, logger: h.logger, retention: cfg.Retention, now: h.now, shared: cfg.Shared}
	if cfg.Webhooks != nil {
		h.hooks = newHooks(life, h.log, cfg.Webhooks, h.logger)
		h.compactor.hooks = h.hooks
		if !cfg.Shared {
			h.hooks.setLeading(true, nil) // the only node: the feed's start notifies each task
		}
	}
	w, err := h.log.Compacted(ctx)
	if err != nil {
		cancel()
		system.Shutdown()
		return nil, taskhub.Errorf(taskhub.Unavailable, "read the compaction watermark: %v", err)
	}
	h.compactor.watermark.Store(w)
	h.claims = newClaims(life, h.log, h.logger, h.hasWork)
	h.feed, err = startFeed(ctx, h.log, h.root, h.logger, h.compactor, h.claims.wake, h.hooks)
	if err != nil {
		cancel()
		system.Shutdown()
		return nil, err
	}
	h.compactor.active = h.feed.activeTasks
	h.wg.Add(5)
	go func() {
		defer h.wg.Done()
		h.compactor.run(life)
	}()
	go func() {
		defer h.wg.Done()
		h.checkLag(life)
	}()
	go func() {
		defer h.wg.Done()
		h.heartbeats(life)
	}()
	go func() {
		defer h.wg.Done()
		h.timers(life)
	}()
	// A subscriber gets a handful of messages in its life, so a lock-free mailbox (a node per
	// message) costs less than the default ring buffer it would keep for each idle watch.
	h.subscriber = actor.PropsFromProducer(func() actor.Actor { return &subscriber{h: h} },
		actor.WithMailbox(actor.UnboundedLockfree()))
	h.supervisor = h.root.Spawn(actor.PropsFromProducer(func() actor.Actor { return &supervisor{h: h} },
		actor.WithSupervisor(supervisorStrategy()), actor.WithDispatcher(h.dispatcher)))
	go func() {
		defer h.wg.Done()
		h.reconcile(life)
		for {
			select {
			case <-life.Done():
				return
			case <-h.log.Recovered():
				h.graceFrom.Store(h.now().UnixNano())
				h.reconcile(life)
			}
		}
	}()
	return h, nil
}

// Ready returns nil while the hub can take writes: it is open and its event log takes writes.
func (h *Hub) Ready() error {
	if h.closed.Load() {
		return errShuttingDown
	}
	if err := h.log.Ready(); err != nil {
		return taskhub.Errorf(taskhub.Unavailable, "%v", err)
	}
	if why := h.behind.Load(); why != nil {
		return taskhub.Errorf(taskhub.Unavailable, "%s", *why)
	}
	return nil
}

// maxLag is how far behind the log the feed may fall before the hub says it is not ready: its
// watchers would be sent nothing new, and a resume would be refused.
const maxLag = 5 * time.Second

// checkLag reads the log's last seq every second until ctx ends, and marks the hub behind
// while its feed has not reached the last seq read maxLag ago. The log's write probes add an
// entry every second, so a follower that stopped is found even when nothing else is written.
func (h *Hub) checkLag(ctx context.Context) {
	type sample struct {
		last uint64
		at   time.Time
	}
	var samples []sample
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		call, cancel := context.WithTimeout(ctx, time.Second)
		_, last, err := h.log.Bounds(call)
		cancel()
		if err != nil {
			continue // the log's own health says so
		}
		now := h.now()
		samples = append(samples, sample{last, now})
		i := 0
		for i+1 < len(samples) && now.Sub(samples[i+1].at) >= maxLag {
			i++ // keep the newest sample at least maxLag old, and those after it
		}
		samples = samples[i:]
		if old := samples[0]; now.Sub(old.at) >= maxLag && h.feed.position() < old.last {
			why := fmt.Sprintf("this node's feed is behind the event log: it has applied seq %d, the log held %d %v ago", h.feed.position(), old.last, now.Sub(old.at).Round(time.Second))
			if h.behind.Swap(&why) == nil {
				h.logger.Warn("the feed is behind the event log", "applied", h.feed.position(), "log", old.last, "since", now.Sub(old.at).Round(time.Second))
			}
		} else if h.behind.Swap(nil) != nil {
			h.logger.Info("the feed has caught up with the event log")
		}
	}
}

// reconcile makes the queue agree with the event log, after a start or after the log recovered
// from a failure: a task stored as queued whose queue write was lost (the process died, or the
// store failed, between the two) is queued again. (Queue consumers of modes nobody uses are left
// to JetStream, which removes them after the queue's idle time: removing one here could race a
// create of it on another node, which the server does not survive cleanly.) It runs beside
// serving: a start does not wait for it, and it queues directly, in one pass, rather than
// waking an actor per task. It retries every second until it has gone through without an
// error.
func (h *Hub) reconcile(ctx context.Context) {
	for {
		err := h.reconcileOnce(ctx)
		if err == nil || ctx.Err() != nil {
			return
		}
		h.logger.Warn("cannot reconcile the queue with the event log; retrying", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

func (h *Hub) reconcileOnce(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	// Tasks created after this position may be queued after the queue is read below: leave
	// them to their actors.
	pos := h.feed.position()
	inQueue, err := h.log.Queued(ctx)
	if err != nil {
		return err
	}
	queued := 0
	for _, t := range h.feed.activeTasks() {
		if t.State != taskhubv1.TaskState_TASK_STATE_QUEUED || t.Seq > pos || inQueue[t.Id] {
			continue
		}
		// The task may have been claimed since the feed said it was queued: a ticket for a
		// running or finished task is acked by the claim that gets it.
		added, err := h.log.Enqueue(ctx, t.Mode, t.Owner, t.Id)
		if err != nil {
			return err
		}
		if added {
			queued++
		}
	}
	if queued > 0 {
		h.logger.Info("queued tasks whose queue write had been lost", "tasks", queued)
	}
	return nil
}

// hasWork reports whether mode may have tasks to claim: it has active tasks, or it is one of
// the configured modes.
func (h *Hub) hasWork(mode string) bool {
	return h.feed.modeActive(mode) || slices.Contains(h.cfg.Modes, mode)
}

// Close ends every watch (their streams get Unavailable) and stops the actors. Calls under
// way may fail with Unavailable.
func (h *Hub) Close() error {
	h.closeOnce.Do(func() {
		h.closed.Store(true)
		h.cancel()
		if h.feed.stop != nil {
			h.feed.stop()
		}
		for _, w := range h.feed.watches(nil) {
			_ = h.root.StopFuture(w.pid).Wait()
		}
		_ = h.root.StopFuture(h.supervisor).Wait()
		close(h.stopped) // no task actor answers from here on
		h.claims.wait()
		h.wg.Wait()
		if h.hooks != nil {
			h.hooks.stop()
		}
		h.system.Shutdown()
		h.dispatcher.stop()
	})
	return nil
}

// heartbeats gives every idle watch a heartbeat each interval, looking a few times an interval
// (at most every second), until ctx ends; on the same ticks it wakes each watch whose stream has
// ended (see Watch.watchCtx). One goroutine for all watches: a timer per watch, reset with every
// message, would cost each delivery.
func (h *Hub) heartbeats(ctx context.Context) {
	tick := time.NewTicker(min(h.cfg.Heartbeat/4, time.Second))
	defer tick.Stop()
	var ws []*Watch
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			ws = h.feed.watches(ws[:0])
			for _, w := range ws {
				w.out.tick(now, h.cfg.Heartbeat)
			}
			clear(ws)
		}
	}
}

// leaseOver reports whether a lease stored as ending at end is over. Workers could not renew
// while this node's log was down, so a lease lasts at least LeaseTimeout from when it came
// back (or the hub started): the whole cluster's outage does not expire every lease at once.
// A node that stayed up uses the stored end, since the workers could reach it.
func (h *Hub) leaseOver(l *storagev1.Lease) bool { return h.leaseEnded(l.ExpiresAt.AsTime()) }

func (h *Hub) leaseEnded(end time.Time) bool {
	grace := time.Unix(0, h.graceFrom.Load()).Add(h.cfg.LeaseTimeout)
	return !h.now().Before(end) && !h.now().Before(grace)
}

// timers expires the leases of running tasks and marks the stalled ones, until ctx ends. Every
// node of a cluster runs them for every running task, from what its feed read of the log; the
// task actor checks the task as the log holds it, and its write is fenced, so each expiry or
// stall is written once, by whichever node gets there first, and still happens when any node
// is lost. A check that fails (the log is down) is sent again a second later.
func (h *Hub) timers(ctx context.Context) {
	every := h.cfg.LeaseTimeout
	if h.cfg.StallTimeout > 0 {
		every = min(every, h.cfg.StallTimeout)
	}
	tick := time.NewTicker(min(max(every/8, 10*time.Millisecond), time.Second))
	defer tick.Stop()
	resend := min(time.Second, h.cfg.CallTimeout)
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			expired, stalled := h.feed.due(h.now(), h.leaseEnded, h.cfg.StallTimeout, resend)
			for _, t := range expired {
				h.root.Send(h.supervisor, &toTask{id: t.id, cmd: &leaseExpired{owner: t.owner}})
			}
			for _, t := range stalled {
				h.root.Send(h.supervisor, &toTask{id: t.id, cmd: &stallCheck{owner: t.owner}})
			}
		}
	}
}

// maxAttempts is how many times a task of mode may be claimed.
func (h *Hub) maxAttempts(mode string) int {
	if n, ok := h.cfg.ModeAttempts[mode]; ok {
		return n
	}
	return h.cfg.MaxAttempts
}

// Epoch is the event log's identity, as snapshots carry it.
func (h *Hub) Epoch() string { return h.log.Epoch() }

// Position returns the epoch and the log's last seq, once the hub has applied everything up to
// it (so it reflects the caller's own writes). A page rendered after calling it can resume
// watching from seq without missing an event.
func (h *Hub) Position(ctx context.Context) (epoch string, seq uint64, err error) {
	_, last, err := h.log.Bounds(ctx)
	if err != nil {
		return "", 0, taskhub.Errorf(taskhub.Unavailable, "read the event log: %v", err)
	}
	if !h.feed.await(ctx, last, h.cfg.CallTimeout) {
		return "", 0, taskhub.Errorf(taskhub.Unavailable, "the hub is behind the event log")
	}
	return h.log.Epoch(), last, nil
}

// answerMargin is how long after a call's deadline the hub waits for the task actor's answer.
// The actor's write gives up waiting for the log at the deadline, and then has this long to
// find out whether it was stored; so the caller hears what happened, not a timeout of its own.
const answerMargin = 3 * time.Second

// ask sends cmd to the actor of task id and waits for its reply. The call's deadline is the
// caller's, or the call timeout if that comes first: an actor that gets to the command after it
// (or after the caller went away) does not start it, and one that started it answers what
// became of it. Only an actor that does not answer by the deadline and the margin leaves the
// outcome unknown: DeadlineExceeded.
func (h *Hub) ask(ctx context.Context, id string, cmd any) *taskReply {
	deadline := h.deadline(ctx)
	if _, claim := cmd.(*claimCmd); !claim { // a claim holds a queue delivery: it must not wait
		if err := h.pace(ctx, deadline); err != nil {
			return &taskReply{err: err}
		}
	}
	return h.send(ctx, id, cmd, deadline).answer(h.expiry(deadline))
}

// expiry returns a channel closed answerMargin after deadline, when a call stops waiting for
// its actors' answers: one for a whole batch.
func (h *Hub) expiry(deadline time.Time) <-chan struct{} {
	return h.deadlines.at(deadline.Add(answerMargin)).done
}

// deadline is a call's: the caller's, or the call timeout if that comes first.
func (h *Hub) deadline(ctx context.Context) time.Time {
	deadline := time.Now().Add(h.cfg.CallTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	return deadline
}

// send is the second half of ask, after pace: it hands cmd to the task's actor and returns at
// once, so that a caller can have several tasks' actors at work together
// (BatchReportProgress).
func (h *Hub) send(ctx context.Context, id string, cmd any, deadline time.Time) asked {
	if h.closed.Load() {
		return asked{id: id, failed: &taskReply{err: errShuttingDown}}
	}
	reply := make(chan *taskReply, 1)
	h.root.Send(h.supervisor, &toTask{id: id, cmd: cmd, ctx: ctx, deadline: deadline, reply: reply})
	return asked{id: id, reply: reply, stopped: h.stopped}
}

// pace waits, before a write, until the feed is at most WriteAhead events behind this node's
// last write (see Options.WriteAhead). It fails with Unavailable, having changed nothing, when
// the caller's context ends or its deadline comes first, or when the feed stays behind for
// maxLag (the node then also reports itself not ready): not DeadlineExceeded, which would say
// that the change may have been made.
func (h *Hub) pace(ctx context.Context, deadline time.Time) error {
	w, ahead := h.log.Appended(), uint64(h.cfg.WriteAhead)
	if w <= ahead || h.feed.position() >= w-ahead {
		return nil
	}
	h.counts.paced.Add(1)
	wait, stop := context.WithCancel(ctx) // ends with the call, or at Close
	defer stop()
	defer context.AfterFunc(h.life, stop)()
	if h.feed.await(wait, w-ahead, min(time.Until(deadline), maxLag)) {
		return nil
	}
	if h.closed.Load() {
		return errShuttingDown
	}
	if ctx.Err() != nil || !time.Now().Before(deadline) {
		return taskhub.Errorf(taskhub.Unavailable, "the hub's feed was behind its writes until the call's deadline; nothing was changed: retry")
	}
	return taskhub.Errorf(taskhub.Unavailable, "the hub's feed is over %d events behind its writes; nothing was changed: retry", ahead)
}

// asked is a command sent to a task's actor, whose reply is yet to come.
type asked struct {
	id      string
	reply   chan *taskReply
	stopped <-chan struct{} // the hub's: closed once no actor can answer
	failed  *taskReply      // the reply when it could not be sent
}

// answer waits for the actor's reply until expired is closed (see Hub.expiry), or the hub's actors
// are stopped. A reply that came is taken over either: the channels of a batch's expiry and of
// Close may be closed long before a reply is read, and select picks among ready cases at random.
func (a asked) answer(expired <-chan struct{}) *taskReply {
	if a.failed != nil {
		return a.failed
	}
	select {
	case r := <-a.reply:
		return r
	case <-expired:
	case <-a.stopped:
	}
	select {
	case r := <-a.reply:
		return r
	default:
	}
	select {
	case <-a.stopped:
		return &taskReply{err: errShuttingDown}
	default:
		return &taskReply{err: taskhub.Errorf(taskhub.DeadlineExceeded,
			"task %s: the hub did not answer before the call's deadline; the change may or may not have been made: get the task to see", a.id)}
	}
}

// minLevel drops records below a level; the actor system's info chatter stays out of the logs.
type minLevel struct {
	slog.Handler
	level slog.Level
}

func (m minLevel) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= m.level && m.Handler.Enabled(ctx, l)
}

func (m minLevel) WithAttrs(attrs []slog.Attr) slog.Handler {
	return minLevel{m.Handler.WithAttrs(attrs), m.level}
}

func (m minLevel) WithGroup(name string) slog.Handler {
	return minLevel{m.Handler.WithGroup(name), m.level}
}
