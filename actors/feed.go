package actors

import (
	"cmp"
	"context"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"

	"github.com/taskhub/taskhub"
	"github.com/taskhub/taskhub/eventlog"
)

// item is one message for watchers: built once, shared read-only by every outbox it goes to.
type item struct {
	seq    uint64
	taskID string
	kind   taskhubv1.EventKind // EVENT_KIND_UNSPECIFIED for a snapshot
	resp   *taskhubv1.WatchTasksResponse
}

// eventItem builds the watcher message of a log entry. The lease stays behind.
func eventItem(e *eventlog.Entry) *item {
	ev := e.Record.Event
	return &item{
		seq:    e.Seq,
		taskID: ev.Task.Id,
		kind:   ev.Kind,
		resp:   &taskhubv1.WatchTasksResponse{Message: &taskhubv1.WatchTasksResponse_Event{Event: ev}},
	}
}

// feed follows the event log in sequence order. It keeps the active tasks of every owner and
// hands each event to the subscribers of its owner. Subscribing takes the position and the
// active tasks under the same lock that applying an event takes, so a subscriber gets exactly
// the events after its snapshot.
type feed struct {
	root      *actor.RootContext
	logger    *slog.Logger
	compactor *compactor

	mu     sync.Mutex
	pos    uint64                                // the last sequence applied
	active map[string]map[string]*taskhubv1.Task // owner -> task id -> task (queued or running)
	subs   map[string]map[*Watch]struct{}        // owner -> its watches
	ends   map[string][]chan struct{}            // task id -> closed when the task ends
	ready  chan struct{}                         // closed once every task has been read
	once   sync.Once
	stop   func()
}

func startFeed(ctx context.Context, log Log, root *actor.RootContext, logger *slog.Logger, c *compactor) (*feed, error) {
	f := &feed{
		root:      root,
		logger:    logger,
		compactor: c,
		active:    map[string]map[string]*taskhubv1.Task{},
		subs:      map[string]map[*Watch]struct{}{},
		ends:      map[string][]chan struct{}{},
		ready:     make(chan struct{}),
	}
	first, last, err := log.Bounds(ctx)
	if err != nil {
		return nil, taskhub.Errorf(taskhub.Unavailable, "read the event log: %v", err)
	}
	if first == 0 {
		f.pos = last
		f.markReady()
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
	if e.Record != nil {
		it = eventItem(e)
	}
	f.mu.Lock()
	if e.Seq > f.pos {
		if it != nil {
			t := it.resp.GetEvent().Task
			tasks := f.active[t.Owner]
			if terminal(t.State) {
				delete(tasks, t.Id)
				if len(tasks) == 0 {
					delete(f.active, t.Owner)
				}
				for _, ch := range f.ends[t.Id] {
					close(ch)
				}
				delete(f.ends, t.Id)
				f.compactor.add(e.Seq, t.Owner, t.Id, it.resp.GetEvent().Time.AsTime())
			} else {
				if tasks == nil {
					tasks = map[string]*taskhubv1.Task{}
					f.active[t.Owner] = tasks
				}
				tasks[t.Id] = t
			}
			for w := range f.subs[t.Owner] {
				w.out.offer(it)
			}
		}
		f.pos = e.Seq
	}
	f.mu.Unlock()
	if pending == 0 {
		f.markReady()
	}
}

// subscribe registers w, a watch of owner, for the events of owner after the returned position,
// and returns the owner's active tasks as of that position, newest first.
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

// await waits until the feed has applied seq, for at most timeout.
func (f *feed) await(ctx context.Context, seq uint64, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for f.position() < seq {
		if time.Now().After(deadline) || ctx.Err() != nil {
			return false
		}
		time.Sleep(200 * time.Microsecond)
	}
	return true
}

// position is the last sequence applied.
func (f *feed) position() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.pos
}

// activeTasks returns every queued or running task.
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
