package actors

import (
	"cmp"
	"container/heap"
	"context"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	storagev1 "github.com/taskhub/taskhub/gen/taskhub/storage/v1"
	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"
	"github.com/taskhub/taskhub/webhook"

	"github.com/taskhub/taskhub"
	"github.com/taskhub/taskhub/eventlog"
)

// item is one message for watchers: built once, shared read-only by every outbox it goes to.
type item struct {
	seq    uint64
	taskID string
	kind   taskhubv1.EventKind // EVENT_KIND_UNSPECIFIED for a snapshot
	msg    *taskhub.Message
	snap   *snapshot // instead of msg: a fresh snapshot, made into messages as it is sent
}

// snapshot is how a fresh watch starts: its owner's active tasks as of seq, as the feed keeps
// them (without prompts and params). The stream's own goroutine reads those from the log a part
// at a time as it sends it (Watch.snapshotPart), so a watch that does not read holds at most one
// part of them: a user with many large tasks cannot fill the server's memory by opening watches
// and not reading.
type snapshot struct {
	epoch string
	seq   uint64
	tasks []*taskhubv1.Task // slim, shared with the feed: read-only
}

// eventItem builds the watcher message of a log entry. The lease stays behind. The item, its
// message and the message's two wrappers are one allocation, where they were four: they are
// made together for every event, and let go together.
func eventItem(e *eventlog.Entry) *item {
	ev := e.Record.Event
	a := &struct {
		it   item
		msg  taskhub.Message
		res  taskhubv1.WatchTasksResponse
		wrap taskhubv1.WatchTasksResponse_Event
	}{}
	a.wrap.Event = ev
	a.res.Message = &a.wrap
	a.msg.WatchTasksResponse = &a.res
	a.it = item{seq: e.Seq, taskID: ev.Task.Id, kind: ev.Kind, msg: &a.msg}
	return &a.it
}

// feed follows the event log in sequence order. It keeps the active (queued or running) tasks of
// every owner, without their prompts and params (see slim), and hands each event to the
// subscribers of its owner. Subscribing takes the position and the active tasks under the same
// lock that applying an event takes, so a subscriber gets exactly the events after its snapshot.
type feed struct {
	root      *actor.RootContext
	logger    *slog.Logger
	compactor *compactor
	queued    func(mode string) // called, outside the lock, when a task of mode is queued

	hooks *hooks // told of each event of a task with a webhook; nil with webhooks off

	mu       sync.Mutex
	pos      uint64                                // the last sequence applied
	applied  atomic.Uint64                         // pos, for readers without the lock
	active   map[string]map[string]*taskhubv1.Task // owner -> task id -> slim task
	owners   map[string]string                     // task id -> owner: the active tasks, and those in gone
	gone     []endedTask                           // tasks finished within endedKept, oldest first, from goneHead
	goneHead int                                   // gone's first entry still kept
	modes    map[string]int                        // mode -> its active tasks
	subs     map[string]map[*Watch]struct{}        // owner -> its watches
	ends     map[string][]chan struct{}            // task id -> closed when the task ends
	running  map[string]runTimes                   // task id -> its lease and stall times
	after    afterHeap                             // what to do once pos reaches a seq
	creating creating                              // creates admitted, not yet applied
	history  history                               // the owners' events, for replays
	hooked   history                               // the events of tasks with a webhook, by task, for their deliveries
	ready    chan struct{}                         // closed once every task has been read
	once     sync.Once
	stop     func()
}

func startFeed(ctx context.Context, log Events, root *actor.RootContext, logger *slog.Logger, c *compactor, queued func(string), hooks *hooks) (*feed, error) {
	f := &feed{
		hooks:     hooks,
		root:      root,
		logger:    logger,
		compactor: c,
		queued:    queued,
		active:    map[string]map[string]*taskhubv1.Task{},
		owners:    map[string]string{},
		modes:     map[string]int{},
		subs:      map[string]map[*Watch]struct{}{},
		ends:      map[string][]chan struct{}{},
		running:   map[string]runTimes{},
		ready:     make(chan struct{}),
	}
	first, last, err := log.Bounds(ctx)
	if err != nil {
		return nil, taskhub.Errorf(taskhub.Unavailable, "read the event log: %v", err)
	}
	if first == 0 {
		f.pos = last
		f.applied.Store(last)
		f.markReady()
	}
	if hooks != nil {
		hooks.index = f.nextOfTask // before any delivery loop starts
	}
	f.stop, err = log.Follow(ctx, f.apply)
	if err != nil {
		return nil, taskhub.Errorf(taskhub.Unavailable, "follow the event log: %v", err)
	}
	select {
	case <-f.ready:
		return f, nil
	case <-ctx.Done():
		f.stop()
		return nil, taskhub.Errorf(taskhub.Unavailable, "read the event log: %v", ctx.Err())
	}
}

func (f *feed) markReady() { f.once.Do(func() { close(f.ready) }) }

// apply is called by the log's follower, one entry at a time, in sequence order.
func (f *feed) apply(e *eventlog.Entry, pending uint64) {
	var it *item
	if e.Record != nil && e.Record.Event.Kind != taskhubv1.EventKind_EVENT_KIND_LEASE_RENEWED {
		it = eventItem(e) // a renewal is for the hub's timers alone
	}
	var due []func()
	queuedMode, hooked := "", false
	f.mu.Lock()
	if e.Seq > f.pos {
		if e.Record != nil {
			ev := e.Record.Event
			f.creating.drop(ev.Task.Id) // active (or finished) from now on
			if f.track(ev.Task, e.Record.Lease, e.Seq, ev.Time.AsTime()) {
				queuedMode = ev.Task.Mode
			}
			hooked = ev.Task.Webhook != nil && (webhook.Wants(ev.Task.Webhook, ev.Kind) || taskhub.Terminal(ev.Task.State))
			if ev.Task.Webhook != nil && f.hooks != nil {
				f.hooked.add(ev.Task.Id, e.Seq)
			}
		}
		if it != nil {
			owner := it.msg.GetEvent().Task.Owner
			f.history.add(owner, e.Seq)
			for w := range f.subs[owner] {
				w.out.offer(it)
			}
		}
		f.pos = e.Seq
		f.applied.Store(e.Seq)
		due = f.after.due(f.pos)
	}
	if pending == 0 && f.history.floor == 0 {
		// Every task is read: from here on the follower hands over every event in order.
		f.history.start(f.pos + 1)
		f.hooked.start(f.pos + 1)
	}
	f.mu.Unlock()
	for _, fn := range due {
		fn()
	}
	if queuedMode != "" && f.queued != nil {
		f.queued(queuedMode)
	}
	if hooked && f.hooks != nil {
		f.hooks.notify(e.Record.Event.Task.Owner, e.Record.Event.Task.Id)
	}
	if pending == 0 {
		f.markReady()
	}
}

// track updates the active tasks with t, the task as of event seq at time at under lease, and
// reports whether it is queued now. The caller holds f.mu.
func (f *feed) track(t *taskhubv1.Task, lease *storagev1.Lease, seq uint64, at time.Time) (queued bool) {
	if t.State == taskhubv1.TaskState_TASK_STATE_RUNNING && lease != nil {
		// By value: a progress event, the commonest, allocates nothing here.
		f.running[t.Id] = runTimes{leaseEnd: lease.ExpiresAt.AsTime(), progressed: t.ProgressedAt.AsTime(), stalled: t.Stalled}
	} else {
		delete(f.running, t.Id)
	}
	tasks := f.active[t.Owner]
	old := tasks[t.Id]
	now := time.Now() // this node's clock: an event's time is its writer's, on any node
	f.forget(now)
	if taskhub.Terminal(t.State) {
		if old != nil {
			delete(tasks, t.Id)
			if len(tasks) == 0 {
				delete(f.active, t.Owner)
			}
			f.countMode(old.Mode, -1)
		}
		f.owners[t.Id] = t.Owner
		f.gone = append(f.gone, endedTask{id: t.Id, at: now})
		for _, ch := range f.ends[t.Id] {
			close(ch)
		}
		delete(f.ends, t.Id)
		f.compactor.add(seq, t.Owner, t.Id, at, t.Webhook != nil)
		return false
	}
	if tasks == nil {
		tasks = map[string]*taskhubv1.Task{}
		f.active[t.Owner] = tasks
	}
	if old == nil {
		f.owners[t.Id] = t.Owner
		f.countMode(t.Mode, +1)
	}
	tasks[t.Id] = slim(t)
	return t.State == taskhubv1.TaskState_TASK_STATE_QUEUED
}

func (f *feed) countMode(mode string, d int) {
	if f.modes[mode] += d; f.modes[mode] <= 0 {
		delete(f.modes, mode)
	}
}

// slim is t without its prompt and params: what the feed keeps of an active task. Those two are
// the bulk of a task (up to 16 KiB and 32 KiB), never change after the create, and are read
// from the event log when a snapshot needs them (see subscriber.fill). Nor its webhook status,
// which GetTask reads for itself.
func slim(t *taskhubv1.Task) *taskhubv1.Task {
	s := copyTask(t)
	s.Prompt, s.Params, s.WebhookStatus = "", nil, nil
	return s
}

// subscribe registers w, a watch of owner, for the events of owner after the returned position,
// and returns the owner's active tasks as of that position (slim), newest first.
func (f *feed) subscribe(owner string, w *Watch) (pos uint64, active []*taskhubv1.Task) {
	f.mu.Lock()
	defer f.mu.Unlock()
	subs := f.subs[owner]
	if subs == nil {
		subs = map[*Watch]struct{}{}
		f.subs[owner] = subs
	}
	subs[w] = struct{}{}
	w.out.attach(f.pos)
	for _, t := range f.active[owner] {
		active = append(active, t)
	}
	slices.SortFunc(active, func(a, b *taskhubv1.Task) int { return cmp.Compare(b.Id, a.Id) })
	return f.pos, active
}

func (f *feed) unsubscribe(owner string, w *Watch) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.subs[owner], w)
	if len(f.subs[owner]) == 0 {
		delete(f.subs, owner)
	}
}

// ended returns a channel that is closed when the feed applies a terminal event of task id,
// and a function to call when the channel is no longer wanted.
func (f *feed) ended(id string) (<-chan struct{}, func()) {
	ch := make(chan struct{})
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ends[id] = append(f.ends[id], ch)
	return ch, func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		chans := f.ends[id]
		if i := slices.Index(chans, ch); i >= 0 {
			f.ends[id] = slices.Delete(chans, i, i+1)
			if len(f.ends[id]) == 0 {
				delete(f.ends, id)
			}
		}
	}
}

// when calls fn, on the follower's goroutine, once the feed has applied seq; at once, on the
// caller's, if it has (then it returns nil). The entry it returns cancels it (see cancel).
func (f *feed) when(seq uint64, fn func()) *afterEntry {
	f.mu.Lock()
	if f.pos >= seq {
		f.mu.Unlock()
		fn()
		return nil
	}
	e := &afterEntry{seq: seq, fn: fn}
	heap.Push(&f.after, e)
	f.mu.Unlock()
	return e
}

// cancel drops what when was asked to do, unless it was done already.
func (f *feed) cancel(e *afterEntry) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if e != nil && e.index >= 0 {
		heap.Remove(&f.after, e.index)
	}
}

// await waits until the feed has applied seq, for at most timeout. A wait that ends without
// it leaves nothing behind.
func (f *feed) await(ctx context.Context, seq uint64, timeout time.Duration) bool {
	done := make(chan struct{})
	e := f.when(seq, func() { close(done) })
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-done:
		return true
	case <-t.C:
	case <-ctx.Done():
	}
	f.cancel(e)
	return false
}

// nextOf returns the owner's first event at or after seq that watchers are sent (0: none yet),
// and whether the feed's index of its events covers seq; if not, it does not know (history).
func (f *feed) nextOf(owner string, seq uint64) (uint64, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.history.next(owner, seq)
}

// nextOfTask returns the first event at or after seq of task id, which has a webhook (0: none
// yet), and whether the feed's index of such tasks' events covers seq (see history).
func (f *feed) nextOfTask(id string, seq uint64) (uint64, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.hooked.next(id, seq)
}

// position is the last sequence applied.
func (f *feed) position() uint64 { return f.applied.Load() }

// modeActive reports whether mode has queued or running tasks.
func (f *feed) modeActive(mode string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.modes[mode] > 0
}

// activeTasks returns every queued or running task (slim).
func (f *feed) activeTasks() []*taskhubv1.Task {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*taskhubv1.Task
	for _, tasks := range f.active {
		for _, t := range tasks {
			out = append(out, t)
		}
	}
	return out
}

// watches appends every registered watch to dst.
func (f *feed) watches(dst []*Watch) []*Watch {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, subs := range f.subs {
		for w := range subs {
			dst = append(dst, w)
		}
	}
	return dst
}

// runTimes is what the hub's timers need of a running task: when its stored lease ends, and
// when it last made progress.
type runTimes struct {
	leaseEnd   time.Time
	progressed time.Time
	stalled    bool
	sent       time.Time // when a timer last sent it a check
}

// due returns the running tasks whose lease is over at now (by leaseOver) and those that made
// no progress for stall, leaving out those sent a check less than resend ago (whose check is
// under way, or failed and is retried then).
func (f *feed) due(now time.Time, leaseOver func(time.Time) bool, stall, resend time.Duration) (expired, stalled []taskRef) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for id, r := range f.running {
		if now.Sub(r.sent) < resend {
			continue
		}
		switch {
		case leaseOver(r.leaseEnd):
			expired = append(expired, taskRef{f.owners[id], id})
		case stall > 0 && !r.stalled && now.Sub(r.progressed) >= stall:
			stalled = append(stalled, taskRef{f.owners[id], id})
		default:
			continue
		}
		r.sent = now
		f.running[id] = r
	}
	return expired, stalled
}

// endedKept is how long the feed knows the owner of a finished task (at most maxEnded of them):
// its worker's next call, which learns of a cancel, or a retried complete, comes within a lease
// timeout (30 s by default), and its actor, let go, reads the task by owner (taskActor.load).
const (
	endedKept = 2 * time.Minute
	maxEnded  = 100_000
)

type endedTask struct {
	id string
	at time.Time // when this node's feed applied its end
}

// forget drops the owners of the tasks that finished over endedKept before now, or beyond the
// newest maxEnded. The caller holds f.mu.
func (f *feed) forget(now time.Time) {
	for f.goneHead < len(f.gone) && (now.Sub(f.gone[f.goneHead].at) > endedKept || len(f.gone)-f.goneHead >= maxEnded) {
		delete(f.owners, f.gone[f.goneHead].id)
		f.gone[f.goneHead] = endedTask{}
		f.goneHead++
	}
	if f.goneHead > len(f.gone)/2 { // the slice's dropped head is larger than its rest
		f.gone = slices.Clone(f.gone[f.goneHead:])
		f.goneHead = 0
	}
}

// owner is the owner of task id if it is active (queued or running) or finished within
// endedKept, or "".
func (f *feed) owner(id string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.owners[id]
}

// taskRef names a task.
type taskRef struct{ owner, id string }

// afterHeap holds what feed.when was asked to do, by seq.
type afterHeap []*afterEntry

type afterEntry struct {
	seq   uint64
	fn    func()
	index int // in the heap; -1 once out of it
}

func (h afterHeap) Len() int           { return len(h) }
func (h afterHeap) Less(i, j int) bool { return h[i].seq < h[j].seq }
func (h afterHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index, h[j].index = i, j
}
func (h *afterHeap) Push(x any) {
	e := x.(*afterEntry)
	e.index = len(*h)
	*h = append(*h, e)
}
func (h *afterHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	e.index = -1
	return e
}

// due removes and returns what is due once pos is applied.
func (h *afterHeap) due(pos uint64) []func() {
	var fns []func()
	for h.Len() > 0 && (*h)[0].seq <= pos {
		fns = append(fns, heap.Pop(h).(*afterEntry).fn)
	}
	return fns
}
