package actors

import (
	"cmp"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	cmap "github.com/orcaman/concurrent-map"
	"google.golang.org/protobuf/types/known/timestamppb"

	storagev1 "github.com/taskhub/taskhub/gen/taskhub/storage/v1"
	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"

	"github.com/taskhub/taskhub"
	"github.com/taskhub/taskhub/eventlog"
)

// Log is the event log and task queue the hub persists to; *eventlog.Log implements it. The
// method contracts are those of eventlog.Log.
type Log interface {
	Epoch() string
	Append(ctx context.Context, owner, id string, rec *storagev1.Record, expectLast uint64) (seq uint64, err error)
	Last(ctx context.Context, owner, id string) (*eventlog.Entry, error)
	Get(ctx context.Context, seq uint64) (*eventlog.Entry, error)
	Next(ctx context.Context, filter string, from uint64) (*eventlog.Entry, error)
	Bounds(ctx context.Context) (first, last uint64, err error)
	TaskIDs(ctx context.Context, owner string) ([]string, error)
	Follow(ctx context.Context, fn func(e *eventlog.Entry, pending uint64)) (stop func(), err error)
	Compact(ctx context.Context, owner, id string) error
	Compacted(ctx context.Context) (uint64, error)
	SetCompacted(ctx context.Context, w uint64) error

	ClaimKey(ctx context.Context, owner, key, id string) (string, error)
	Ready() error
	Recovered() <-chan struct{}

	Enqueue(ctx context.Context, mode, id string) (added bool, err error)
	Dequeue(ctx context.Context, mode, id string) error
	Queued(ctx context.Context) (map[string]bool, error)
	EnsureQueue(ctx context.Context, mode string) error
	QueueModes(ctx context.Context) ([]string, error)
	DropQueue(ctx context.Context, mode string) error
	Fetch(ctx context.Context, mode string, max int, wait time.Duration) ([]eventlog.Delivery, error)
	Renew(ackSubject string) error
	Release(ackSubject string, delay time.Duration) error
	Ack(ctx context.Context, ackSubject string) error
}

func init() {
	// protoactor's process registry spreads actors over 1024 concurrent maps of SHARD_COUNT Go
	// maps each: with the default 32, 32768 maps, so nearly every actor (one per open watch)
	// gets a map of its own, about 250 bytes. One map per bucket still spreads the registry's
	// locks over 1024 maps. concurrent-map reads SHARD_COUNT on every call, so it must be set
	// before any map exists and never changed: hence init, before any actor system. It is
	// process-wide, which is fine while only protoactor's actor package uses concurrent-map in
	// this binary (go mod why github.com/orcaman/concurrent-map).
	cmap.SHARD_COUNT = 1
}

// Config configures a Hub. Zero values take the defaults in brackets.
type Config struct {
	Log    Log
	Logger *slog.Logger // [slog.Default()]
	// LeaseTimeout is how long a claimed task stays leased without a report [30s].
	LeaseTimeout time.Duration
	// MaxAttempts is how many times a task may be claimed before a lease expiry or a
	// retryable failure fails it for good [3].
	MaxAttempts int
	// ModeAttempts overrides MaxAttempts for some modes.
	ModeAttempts map[string]int
	// StallTimeout marks a running task stalled when it makes no progress for this long
	// (0: never).
	StallTimeout time.Duration
	// Retention is how long the events of a finished task are kept before all but the final
	// one are removed (0: forever). A watch resuming from before the removed history gets a
	// fresh snapshot.
	Retention time.Duration
	// Modes, when not empty, are the only modes tasks may be created in.
	Modes []string
	// ParamCheck, when set, validates a new task's params for its mode (built-in executors
	// use it to refuse params they cannot run).
	ParamCheck func(mode string, params map[string]string) error
	// Heartbeat is how often an idle watch gets a heartbeat [15s].
	Heartbeat time.Duration
	// OutboxLimit bounds each watcher's queue, in events [1024].
	OutboxLimit int
	// MaxWatches bounds the open watches in all [100000]; MaxWatchesPerUser those of one user
	// [10000]. Past a limit, Watch fails with ResourceExhausted.
	MaxWatches, MaxWatchesPerUser int
	// MaxActiveTasksPerUser bounds a user's queued and running tasks [1000]. Past it,
	// CreateTask fails with ResourceExhausted (a retry of a create that succeeded still
	// returns its task).
	MaxActiveTasksPerUser int
	// MaxModes bounds the modes that have queued or running tasks at once [100]: each has a
	// queue consumer. A task in another mode fails with ResourceExhausted. With Modes set, only
	// those modes are allowed, and this does not apply.
	MaxModes int
	// IdleTimeout is how long a task actor with nothing to do stays in memory [1m].
	IdleTimeout time.Duration
	// CallTimeout bounds each call into the actors and the log [10s].
	CallTimeout time.Duration
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
	subscriber *actor.Props // shared by every subscriber: a watch's own data comes in a message
	claims     *claims
	compactor  *compactor
	watches    watchCount
	creating   creating
	cancel     context.CancelFunc
	wg         sync.WaitGroup // the compactor and the heartbeats
	closed     atomic.Bool
	closeOnce  sync.Once
	now        func() time.Time
}

// Open starts the hub: it reads the active tasks from the log, then resumes what they were
// doing (lease timers of running tasks, queueing of queued ones).
func Open(ctx context.Context, cfg Config) (*Hub, error) {
	if cfg.Log == nil {
		return nil, errors.New("actors: Config.Log is required")
	}
	cfg.Logger = cmp.Or(cfg.Logger, slog.Default())
	cfg.LeaseTimeout = cmp.Or(cfg.LeaseTimeout, 30*time.Second)
	cfg.MaxAttempts = cmp.Or(cfg.MaxAttempts, 3)
	cfg.Heartbeat = cmp.Or(cfg.Heartbeat, 15*time.Second)
	cfg.OutboxLimit = cmp.Or(cfg.OutboxLimit, 1024)
	cfg.MaxWatches = cmp.Or(cfg.MaxWatches, 100000)
	cfg.MaxWatchesPerUser = cmp.Or(cfg.MaxWatchesPerUser, 10000)
	cfg.MaxActiveTasksPerUser = cmp.Or(cfg.MaxActiveTasksPerUser, 1000)
	cfg.MaxModes = cmp.Or(cfg.MaxModes, 100)
	cfg.IdleTimeout = cmp.Or(cfg.IdleTimeout, time.Minute)
	cfg.CallTimeout = cmp.Or(cfg.CallTimeout, 10*time.Second)
	for _, m := range cfg.Modes {
		if err := taskhub.ValidateMode(m); err != nil {
			return nil, err
		}
	}
	for m, n := range cfg.ModeAttempts {
		if err := taskhub.ValidateMode(m); err != nil {
			return nil, err
		}
		if n < 1 {
			return nil, fmt.Errorf("actors: mode %s: max attempts must be at least 1, got %d", m, n)
		}
	}

	protoLogger := slog.New(minLevel{cfg.Logger.Handler(), slog.LevelWarn}).With("component", "protoactor")
	system := actor.NewActorSystem(actor.WithLoggerFactory(func(*actor.ActorSystem) *slog.Logger { return protoLogger }))
	life, cancel := context.WithCancel(context.Background())
	h := &Hub{
		cfg:    cfg,
		log:    cfg.Log,
		logger: cfg.Logger,
		system: system,
		root:   system.Root,
		cancel: cancel,
		now:    time.Now,
	}
	h.compactor = &compactor{log: h.log, logger: h.logger, retention: cfg.Retention, now: h.now}
	w, err := h.log.Compacted(ctx)
	if err != nil {
		cancel()
		system.Shutdown()
		return nil, taskhub.Errorf(taskhub.Unavailable, "read the compaction watermark: %v", err)
	}
	h.compactor.watermark.Store(w)
	h.claims = newClaims(life, h.log, h.logger, h.hasWork)
	h.feed, err = startFeed(ctx, h.log, h.root, h.logger, h.compactor, h.claims.wake)
	if err != nil {
		cancel()
		system.Shutdown()
		return nil, err
	}
	h.wg.Add(3)
	go func() {
		defer h.wg.Done()
		h.compactor.run(life)
	}()
	go func() {
		defer h.wg.Done()
		h.heartbeats(life)
	}()
	// A subscriber gets a handful of messages in its life, so a lock-free mailbox (a node per
	// message) costs less than the default ring buffer it would keep for each idle watch.
	h.subscriber = actor.PropsFromProducer(func() actor.Actor { return &subscriber{h: h} },
		actor.WithMailbox(actor.UnboundedLockfree()))
	h.supervisor = h.root.Spawn(actor.PropsFromProducer(func() actor.Actor { return &supervisor{h: h} },
		actor.WithSupervisor(supervisorStrategy())))
	for _, t := range h.feed.activeTasks() {
		if t.State == taskhubv1.TaskState_TASK_STATE_RUNNING {
			h.root.Send(h.supervisor, &toTask{id: t.Id, cmd: &wakeCmd{}})
		}
	}
	go func() {
		defer h.wg.Done()
		h.reconcile(life)
		for {
			select {
			case <-life.Done():
				return
			case <-h.log.Recovered():
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
	return nil
}

// reconcile makes the queue agree with the event log, after a start or after the log recovered
// from a failure: a task stored as queued whose queue write was lost (the process died, or the
// store failed, between the two) is queued again, and the queue consumers of modes that have no
// active task and are not configured are removed. It runs beside serving: a start does not wait
// for it, and it queues directly, in one pass, rather than waking an actor per task. It retries
// every second until it has gone through without an error.
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
		added, err := h.log.Enqueue(ctx, t.Mode, t.Id)
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
	modes, err := h.log.QueueModes(ctx)
	if err != nil {
		return err
	}
	for _, m := range modes {
		if active, _ := h.feed.modeActive(m); active || slices.Contains(h.cfg.Modes, m) {
			continue
		}
		if err := h.log.DropQueue(ctx, m); err != nil {
			return err
		}
	}
	return nil
}

// hasWork reports whether mode may have tasks to claim: it has active tasks, or it is one of
// the configured modes.
func (h *Hub) hasWork(mode string) bool {
	active, _ := h.feed.modeActive(mode)
	return active || slices.Contains(h.cfg.Modes, mode)
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
		h.claims.wait()
		h.wg.Wait()
		h.system.Shutdown()
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
	if h.closed.Load() {
		return &taskReply{err: errShuttingDown}
	}
	deadline := time.Now().Add(h.cfg.CallTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	f := h.root.RequestFuture(h.supervisor, &toTask{id: id, cmd: cmd, ctx: ctx, deadline: deadline}, time.Until(deadline)+answerMargin)
	res, err := f.Result()
	if err != nil {
		return &taskReply{err: taskhub.Errorf(taskhub.DeadlineExceeded,
			"task %s: the hub did not answer before the call's deadline; the change may or may not have been made: get the task to see", id)}
	}
	return res.(*taskReply)
}

// CreateTask queues a new task of owner. It returns once the task is durable.
func (h *Hub) CreateTask(ctx context.Context, owner string, spec taskhub.TaskSpec) (*taskhubv1.Task, error) {
	if err := taskhub.ValidateName(owner); err != nil {
		return nil, err
	}
	spec.Mode = cmp.Or(spec.Mode, taskhub.DefaultMode)
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	if len(h.cfg.Modes) > 0 && !slices.Contains(h.cfg.Modes, spec.Mode) {
		return nil, taskhub.Errorf(taskhub.Invalid, "mode %q is not enabled on this server; enabled modes: %s", spec.Mode, strings.Join(h.cfg.Modes, ", "))
	}
	if h.cfg.ParamCheck != nil {
		if err := h.cfg.ParamCheck(spec.Mode, spec.Params); err != nil {
			return nil, err
		}
	}
	now := h.now()
	id := taskhub.NewTaskID(now)
	if spec.IdempotencyKey != "" {
		first, err := h.log.ClaimKey(ctx, owner, spec.IdempotencyKey, id)
		if err != nil {
			return nil, logError("idempotency key", err)
		}
		if first != id {
			// A retry: answer with the task the first create made, limits or not. If it was
			// not made (the first create failed, or is still under way), make it now under
			// its id, where the log's fence lets only one create through.
			t, err := h.GetTask(ctx, owner, first)
			if err == nil {
				h.ensureQueued(ctx, t)
				return t, nil
			}
			if taskhub.ErrorCode(err) != taskhub.NotFound {
				return nil, err
			}
			id = first
		}
	}
	if err := h.admit(owner, spec.Mode); err != nil {
		return nil, err
	}
	ts := timestamppb.New(now)
	t := &taskhubv1.Task{
		Id:        id,
		Owner:     owner,
		Prompt:    spec.Prompt,
		Mode:      spec.Mode,
		Params:    spec.Params,
		State:     taskhubv1.TaskState_TASK_STATE_QUEUED,
		Attempt:   1,
		CreatedAt: ts,
		UpdatedAt: ts,
	}
	r := h.ask(ctx, id, &createCmd{task: t})
	if r.err != nil {
		h.creating.done(owner, spec.Mode)
		return nil, r.err
	}
	// The task counts against its owner's limit from here on: as one being created until the
	// feed has it, then as active.
	h.feed.when(r.task.Seq, func() { h.creating.done(owner, spec.Mode) })
	return r.task, nil
}

// ensureQueued queues t again if it is queued: a retried create answers with the task the first
// made, which may have been cut off before it was queued. Queueing twice is harmless.
func (h *Hub) ensureQueued(ctx context.Context, t *taskhubv1.Task) {
	if t.State != taskhubv1.TaskState_TASK_STATE_QUEUED {
		return
	}
	if _, err := h.log.Enqueue(ctx, t.Mode, t.Id); err != nil {
		h.logger.Warn("cannot queue a task again; the hub will when the log recovers", "task", t.Id, "err", err)
	}
}

// logError is what a caller is told when the event log fails a call of the hub's own.
func logError(what string, err error) error {
	if errors.Is(err, eventlog.ErrUncertain) {
		return taskhub.Errorf(taskhub.DeadlineExceeded, "%s: the event log did not confirm in time: %v", what, err)
	}
	return taskhub.Errorf(taskhub.Unavailable, "%s: %v", what, err)
}

// admit checks the limits a new task of owner in mode must be within, and counts it as being
// created (see creating) until the caller calls creating.done.
func (h *Hub) admit(owner, mode string) error {
	maxModes := h.cfg.MaxModes
	if len(h.cfg.Modes) > 0 {
		maxModes = 0 // only the configured modes are allowed: no more to bound
	}
	return h.creating.start(creatingParams{owner: owner, mode: mode, feed: h.feed,
		maxActive: h.cfg.MaxActiveTasksPerUser, maxModes: maxModes})
}

// creating counts the creates under way, per owner and per mode: admitted, but not yet among the
// feed's active tasks. Admission counts both, so concurrent creates cannot pass a limit
// together.
type creating struct {
	mu      sync.Mutex
	byOwner map[string]int
	byMode  map[string]int
}

type creatingParams struct {
	owner, mode         string
	feed                *feed
	maxActive, maxModes int // maxModes 0: no limit on modes
}

func (c *creating) start(p creatingParams) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if n := p.feed.activeCount(p.owner) + c.byOwner[p.owner]; n >= p.maxActive {
		return taskhub.Errorf(taskhub.ResourceExhausted,
			"you have %d queued or running tasks, the most one user may have (--max-active-tasks-per-user): wait for some to finish, or cancel some", n)
	}
	if p.maxModes > 0 && c.byMode[p.mode] == 0 {
		active, modes := p.feed.modeActive(p.mode)
		for m := range c.byMode {
			if a, _ := p.feed.modeActive(m); !a {
				modes++ // a mode only creates under way use yet
			}
		}
		if !active && modes >= p.maxModes {
			return taskhub.Errorf(taskhub.ResourceExhausted,
				"%d modes have unfinished tasks, the most this server allows (--max-modes): use one of them, or wait for their tasks to finish", modes)
		}
	}
	if c.byOwner == nil {
		c.byOwner, c.byMode = map[string]int{}, map[string]int{}
	}
	c.byOwner[p.owner]++
	c.byMode[p.mode]++
	return nil
}

func (c *creating) done(owner, mode string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.byOwner[owner]--; c.byOwner[owner] <= 0 {
		delete(c.byOwner, owner)
	}
	if c.byMode[mode]--; c.byMode[mode] <= 0 {
		delete(c.byMode, mode)
	}
}

// GetTask returns owner's task id as it is now.
func (h *Hub) GetTask(ctx context.Context, owner, id string) (*taskhubv1.Task, error) {
	if err := taskhub.ValidateName(owner); err != nil {
		return nil, err
	}
	if err := taskhub.ValidateTaskID(id); err != nil {
		return nil, err
	}
	e, err := h.log.Last(ctx, owner, id)
	if errors.Is(err, eventlog.ErrNotFound) {
		return nil, notFound(id)
	}
	if err != nil {
		return nil, taskhub.Errorf(taskhub.Unavailable, "get task %s: %v", id, err)
	}
	return e.Record.Event.Task, nil
}

// ListTasks returns a page of owner's tasks, newest first, in the given states (all if none).
func (h *Hub) ListTasks(ctx context.Context, owner string, states []taskhubv1.TaskState, pageSize int, pageToken string) ([]*taskhubv1.Task, string, error) {
	if err := taskhub.ValidateName(owner); err != nil {
		return nil, "", err
	}
	switch {
	case pageSize == 0:
		pageSize = 50
	case pageSize < 0 || pageSize > 500:
		return nil, "", taskhub.Errorf(taskhub.Invalid, "page_size must be 1..500: got %d", pageSize)
	}
	var want map[taskhubv1.TaskState]bool
	for _, s := range states {
		if _, ok := taskhubv1.TaskState_name[int32(s)]; !ok || s == taskhubv1.TaskState_TASK_STATE_UNSPECIFIED {
			return nil, "", taskhub.Errorf(taskhub.Invalid, "states: %d is not a task state", s)
		}
		if want == nil {
			want = map[taskhubv1.TaskState]bool{}
		}
		want[s] = true
	}
	before, err := decodePageToken(pageToken)
	if err != nil {
		return nil, "", err
	}
	ids, err := h.log.TaskIDs(ctx, owner)
	if err != nil {
		return nil, "", taskhub.Errorf(taskhub.Unavailable, "list tasks: %v", err)
	}
	slices.SortFunc(ids, func(a, b string) int { return cmp.Compare(b, a) })
	var out []*taskhubv1.Task
	for _, id := range ids {
		if before != "" && id >= before {
			continue
		}
		if len(out) == pageSize {
			return out, encodePageToken(out[len(out)-1].Id), nil
		}
		e, err := h.log.Last(ctx, owner, id)
		if errors.Is(err, eventlog.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, "", taskhub.Errorf(taskhub.Unavailable, "list tasks: %v", err)
		}
		if t := e.Record.Event.Task; want == nil || want[t.State] {
			out = append(out, t)
		}
	}
	return out, "", nil
}

// A page token is the id of the last task of the page before, base64url-encoded.
func encodePageToken(lastID string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(lastID))
}

// decodePageToken returns the task id a page token carries ("" for no token).
func decodePageToken(token string) (string, error) {
	if token == "" {
		return "", nil
	}
	// The decoder skips newlines: only the one spelling this server issues is taken.
	b, err := base64.RawURLEncoding.Strict().DecodeString(token)
	if err != nil || taskhub.ValidateTaskID(string(b)) != nil || encodePageToken(string(b)) != token {
		return "", taskhub.Errorf(taskhub.Invalid, "page_token is not one this server issued")
	}
	return string(b), nil
}

// CancelTask cancels owner's task id if it is queued or running.
func (h *Hub) CancelTask(ctx context.Context, owner, id string) (*taskhubv1.Task, error) {
	if err := taskhub.ValidateName(owner); err != nil {
		return nil, err
	}
	if err := taskhub.ValidateTaskID(id); err != nil {
		return nil, err
	}
	r := h.ask(ctx, id, &cancelCmd{owner: owner})
	return r.task, r.err
}

// Watch starts a watch of owner's tasks: a snapshot, then every change. With the log's epoch
// and an afterSeq it still covers, the snapshot is recovered and the events after afterSeq are
// replayed first. The caller must Close it.
func (h *Hub) Watch(ctx context.Context, owner, epoch string, afterSeq uint64) (*Watch, error) {
	if h.closed.Load() {
		return nil, errShuttingDown
	}
	if err := taskhub.ValidateName(owner); err != nil {
		return nil, err
	}
	if err := h.watches.open(owner, h.cfg.MaxWatches, h.cfg.MaxWatchesPerUser); err != nil {
		return nil, err
	}
	w := &Watch{h: h, owner: owner}
	w.out.init(h.cfg.OutboxLimit)
	w.pid = h.root.Spawn(h.subscriber)
	h.root.Send(w.pid, &startWatch{w: w, epoch: epoch, after: afterSeq})
	return w, nil
}

// watchCount counts the open watches, in all and per user.
type watchCount struct {
	mu     sync.Mutex
	total  int
	byUser map[string]int
}

func (c *watchCount) open(user string, max, maxPerUser int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.byUser[user] >= maxPerUser:
		return taskhub.Errorf(taskhub.ResourceExhausted, "you have %d open watches, the most one user may have: close some (one watch sees all your tasks)", c.byUser[user])
	case c.total >= max:
		return taskhub.Errorf(taskhub.ResourceExhausted, "the server has %d open watches, its limit: try again later", c.total)
	}
	if c.byUser == nil {
		c.byUser = map[string]int{}
	}
	c.byUser[user]++
	c.total++
	return nil
}

func (c *watchCount) close(user string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.total--
	if c.byUser[user]--; c.byUser[user] == 0 {
		delete(c.byUser, user)
	}
}

// Claim is a task handed to a worker, with the lease that proves it.
type Claim struct {
	Task         *taskhubv1.Task
	LeaseToken   string
	LeaseExpires time.Time
}

// ClaimTask takes a queued task of one of modes for worker (the authenticated worker, "" when
// auth is off), naming workerID as its runner. It waits up to wait for one and returns nil if
// none came.
func (h *Hub) ClaimTask(ctx context.Context, worker, workerID string, modes []string, wait time.Duration) (*Claim, error) {
	if err := taskhub.ValidateWorkerID(workerID); err != nil {
		return nil, err
	}
	if len(modes) == 0 || len(modes) > taskhub.MaxClaimModes {
		return nil, taskhub.Errorf(taskhub.Invalid, "modes: give 1 to %d modes: got %d", taskhub.MaxClaimModes, len(modes))
	}
	for _, m := range modes {
		if err := taskhub.ValidateMode(m); err != nil {
			return nil, err
		}
	}
	if wait < 0 || wait > taskhub.MaxClaimWait {
		return nil, taskhub.Errorf(taskhub.Invalid, "wait_seconds must be 0..%d: got %v", int(taskhub.MaxClaimWait.Seconds()), wait.Seconds())
	}
	modes = slices.Compact(slices.Sorted(slices.Values(modes)))
	deadline := h.now().Add(wait)
	for {
		d, err := h.claims.next(ctx, modes, time.Until(deadline))
		if err != nil {
			return nil, taskhub.Errorf(taskhub.Unavailable, "claim: %v", err)
		}
		if d == nil {
			return nil, nil
		}
		r := h.ask(ctx, d.TaskID, &claimCmd{worker: worker, workerID: workerID, delivery: *d})
		if r.err != nil {
			// Give the task back at once rather than after the ack wait.
			_ = h.log.Release(d.AckSubject, 0)
			return nil, r.err
		}
		if r.claimed {
			return &Claim{Task: r.task, LeaseToken: r.leaseToken, LeaseExpires: r.leaseExpires}, nil
		}
		if time.Until(deadline) <= 0 && wait > 0 {
			return nil, nil
		}
	}
}

// ReportProgress records progress on a task worker holds the lease of, and renews the lease.
// cancelRequested is true when the task was cancelled: the worker should stop.
func (h *Hub) ReportProgress(ctx context.Context, worker, id, token string, progress float64, message string) (cancelRequested bool, leaseExpires time.Time, err error) {
	if err := checkWork(id, token); err != nil {
		return false, time.Time{}, err
	}
	if err := taskhub.ValidateProgress(progress, message); err != nil {
		return false, time.Time{}, err
	}
	r := h.ask(ctx, id, &reportCmd{worker: worker, token: token, progress: progress, message: message})
	return r.cancelRequested, r.leaseExpires, r.err
}

// TaskEnded returns a channel that is closed once the task has ended (completed, failed or
// cancelled), for in-process executors that want to stop at once when their task is cancelled,
// and a function to release it. It only speeds things up: a task that ended before the call
// may never close the channel, and ReportProgress answering cancel_requested stays the rule.
func (h *Hub) TaskEnded(id string) (ended <-chan struct{}, release func()) { return h.feed.ended(id) }

// RenewLease extends the lease worker holds on a task without recording progress.
// cancelRequested is true when the task was cancelled: the worker should stop.
func (h *Hub) RenewLease(ctx context.Context, worker, id, token string) (cancelRequested bool, leaseExpires time.Time, err error) {
	if err := checkWork(id, token); err != nil {
		return false, time.Time{}, err
	}
	r := h.ask(ctx, id, &renewCmd{worker: worker, token: token})
	return r.cancelRequested, r.leaseExpires, r.err
}

// CompleteTask finishes a task worker holds the lease of with its result.
func (h *Hub) CompleteTask(ctx context.Context, worker, id, token, result string) (*taskhubv1.Task, error) {
	if err := checkWork(id, token); err != nil {
		return nil, err
	}
	if err := taskhub.ValidateResult(result); err != nil {
		return nil, err
	}
	r := h.ask(ctx, id, &completeCmd{worker: worker, token: token, result: result})
	return r.task, r.err
}

// FailTask fails a task worker holds the lease of. A retryable failure requeues the task while
// it has attempts left.
func (h *Hub) FailTask(ctx context.Context, worker, id, token, text string, retryable bool) (*taskhubv1.Task, error) {
	if err := checkWork(id, token); err != nil {
		return nil, err
	}
	if err := taskhub.ValidateFailure(text); err != nil {
		return nil, err
	}
	r := h.ask(ctx, id, &failCmd{worker: worker, token: token, text: text, retryable: retryable})
	return r.task, r.err
}

func checkWork(id, token string) error {
	if err := taskhub.ValidateTaskID(id); err != nil {
		return err
	}
	if token == "" {
		return taskhub.Errorf(taskhub.Invalid, "lease_token is required: use the one ClaimTask returned")
	}
	if len(token) > 128 {
		return taskhub.Errorf(taskhub.Invalid, "lease_token is too long to be one this server issued")
	}
	return nil
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
