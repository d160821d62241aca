package actors

import (
	"context"
	"math"
	"sync"
	"time"

	"github.com/taskhub/taskhub"
	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"
)

// outbox is the bounded queue of one watch: the feed offers it its owner's events, the stream's
// send loop takes them, and the subscriber actor fills it from the log when live events could
// not all be kept. A progress event replaces the queued progress event of the same task, if
// any, and takes its place at the tail, so the seq order of what is queued never goes
// backwards. Only progress is coalesced; every other event is kept until it is taken.
//
// Its delivery state is the promise it keeps: every event of the owner with seq <= cursor is
// queued, was taken, or was replaced by a newer progress event of the same task.
//   - live: an offered event is queued, or, when the outbox is full, the outbox is behind.
//   - behind: offered events are dropped; once the client has taken everything, the subscriber
//     replays the log from cursor+1 to the last seq offered, then the outbox is live again.
//   - replaying: offered events after replayTo are held aside (up to the limit; past it they are
//     dropped and another replay follows) and queued when the replay is done.
type outbox struct {
	mu       sync.Mutex
	items    []*item         // in seq order; nil where a progress event was coalesced away
	progress map[string]int  // task id -> index in items of its queued progress event; made on first use
	err      error           // why the outbox was closed
	waiter   context.Context // the context of the Next that takes from it (see Watch.watchCtx)

	signal chan struct{} // cap 1: items to take
	room   chan struct{} // cap 1: items were taken, or the outbox was closed; made by the first pushWait

	delivered uint64 // the seq of the last item taken
	lastTaken int64  // when items were last taken (or a heartbeat queued), in UnixNano
	cursor    uint64 // see the type's doc
	seen      uint64 // the last seq offered
	replayTo  uint64 // while replaying: the replay ends at this seq
	n         int32  // non-nil items
	limit     int32
	mode      deliveryMode
	heldLost  bool    // held overflowed: replay again
	askReplay bool    // the next take that empties the outbox calls behind
	held      []*item // while replaying: offered events after replayTo
	behind    func()  // tells the subscriber to replay, once the client has taken everything
}

type deliveryMode uint8

const (
	live deliveryMode = iota
	behind
	replaying
)

// attach starts the delivery: the subscriber decides what comes first (a snapshot, or a
// replay), so events offered after pos are held until it calls finishReplay. The feed calls it
// under its lock, so no event after pos can be missed.
func (o *outbox) attach(pos uint64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.mode, o.seen, o.replayTo, o.cursor = replaying, pos, pos, pos
}

// offer queues a live event. The feed calls it in seq order.
func (o *outbox) offer(it *item) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.seen = max(o.seen, it.seq)
	if it.seq <= o.cursor || o.err != nil {
		return
	}
	switch o.mode {
	case live:
		o.queueLocked(it)
	case replaying:
		if it.seq > o.replayTo && !o.heldLost {
			if len(o.held) >= int(o.limit) {
				clear(o.held)
				o.held, o.heldLost = o.held[:0], true
			} else {
				o.held = append(o.held, it)
			}
		}
	}
}

// queueLocked queues a live event, or falls behind when the outbox is full.
func (o *outbox) queueLocked(it *item) bool {
	if o.pushLocked(it) {
		o.cursor = it.seq
		return true
	}
	o.mode = behind
	o.askReplay = true
	return false
}

// startReplay begins a replay of the events after cursor up to the last seq offered, if the
// outbox is behind (or start is set: the first replay of a resumed watch, from after).
func (o *outbox) startReplay(start bool, after uint64) (from, to uint64, ok bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	switch {
	case start:
		o.cursor = after
	case o.mode != behind:
		return 0, 0, false
	}
	o.mode, o.replayTo = replaying, o.seen
	return o.cursor + 1, o.replayTo, true
}

// finishReplay ends a replay that read the log up to replayTo: the held events are queued and
// the outbox is live again, or behind if they did not fit. again reports that held events were
// lost: the caller replays once more.
func (o *outbox) finishReplay() (again bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.cursor = max(o.cursor, o.replayTo)
	held, lost := o.held, o.heldLost
	o.held, o.heldLost = nil, false
	o.mode = live
	if lost {
		o.mode = behind
		return true
	}
	for _, it := range held {
		if it.seq > o.cursor && !o.queueLocked(it) {
			break
		}
	}
	return false
}

// init readies a zero outbox to hold up to limit events. Nothing else is allocated until it is
// needed: an idle watch costs only the outbox itself and its signal channel.
func (o *outbox) init(limit int) {
	o.limit = int32(min(limit, math.MaxInt32))
	o.lastTaken = time.Now().UnixNano()
	o.signal = make(chan struct{}, 1)
}

// push queues it and reports true, or reports false when the outbox is full.
func (o *outbox) push(it *item) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.pushLocked(it)
}

func (o *outbox) pushLocked(it *item) bool {
	if o.err != nil {
		return true // closed: nobody will read it
	}
	progress := it.kind == taskhubv1.EventKind_EVENT_KIND_PROGRESS
	if progress {
		if i, ok := o.progress[it.taskID]; ok {
			o.items[i] = nil
			o.n--
			delete(o.progress, it.taskID)
		}
	}
	if o.n >= o.limit {
		return false
	}
	if len(o.items) >= 2*int(o.limit) {
		o.compact()
	}
	o.items = append(o.items, it)
	o.n++
	if progress {
		if o.progress == nil {
			o.progress = map[string]int{}
		}
		o.progress[it.taskID] = len(o.items) - 1
	}
	o.wake()
	return true
}

// pushStart queues the first message of a stream, its snapshot, whatever the limit: it refers to
// the active tasks the feed keeps anyway (see snapshot).
func (o *outbox) pushStart(it *item) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.err != nil {
		return
	}
	o.items = append(o.items, it)
	o.n++
	o.wake()
}

// wake tells whoever waits in take's caller to look again.
func (o *outbox) wake() {
	select {
	case o.signal <- struct{}{}:
	default:
	}
}

// compact drops the holes that coalescing left.
func (o *outbox) compact() {
	kept := o.items[:0]
	for _, it := range o.items {
		if it != nil {
			if it.kind == taskhubv1.EventKind_EVENT_KIND_PROGRESS {
				o.progress[it.taskID] = len(kept)
			}
			kept = append(kept, it)
		}
	}
	clear(o.items[len(kept):])
	o.items = kept
}

// pushWait queues it, waiting for room while the outbox is full.
func (o *outbox) pushWait(ctx context.Context, it *item) error {
	for {
		o.mu.Lock()
		if o.err != nil {
			o.mu.Unlock()
			return o.err
		}
		ok := o.pushLocked(it)
		if !ok && o.room == nil {
			o.room = make(chan struct{}, 1)
		}
		room := o.room
		o.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-room:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// take moves every queued item into dst and returns it. With nothing queued it returns dst
// empty, and the close error once the outbox is closed.
func (o *outbox) take(dst []*item) ([]*item, error) {
	dst = dst[:0]
	o.mu.Lock()
	if o.n == 0 {
		err := o.err
		o.mu.Unlock()
		return dst, err
	}
	for _, it := range o.items {
		if it != nil {
			dst = append(dst, it)
		}
	}
	clear(o.items)
	o.items = o.items[:0]
	if len(o.progress) > 0 {
		clear(o.progress)
	}
	o.n = 0
	o.delivered = dst[len(dst)-1].seq
	o.lastTaken = time.Now().UnixNano()
	room := o.room
	var behind func()
	if o.askReplay {
		behind, o.askReplay = o.behind, false
	}
	o.mu.Unlock()

	select { // a nil room (no pusher ever waited) is never ready: the default is taken
	case room <- struct{}{}:
	default:
	}
	if behind != nil {
		behind()
	}
	return dst, nil
}

// tick is called on every tick of the hub's heartbeat loop. It wakes the taker if the context it
// waits with has ended, and queues a heartbeat if the watch is live and nothing was taken for
// interval. A heartbeat's seq is that of the last item taken: everything up to it was sent.
func (o *outbox) tick(now time.Time, interval time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.waiter != nil && o.waiter.Err() != nil {
		o.wake()
		return
	}
	if o.err != nil || o.mode != live || o.n > 0 || now.UnixNano()-o.lastTaken < interval.Nanoseconds() {
		return
	}
	o.lastTaken = now.UnixNano()
	o.pushLocked(&item{seq: o.delivered, msg: taskhub.NewMessage(&taskhubv1.WatchTasksResponse{Message: &taskhubv1.WatchTasksResponse_Heartbeat{
		Heartbeat: &taskhubv1.Heartbeat{Seq: o.delivered},
	}})})
}

// close ends the outbox with err: what is queued can still be taken, then take returns err.
func (o *outbox) close(err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.err != nil {
		return
	}
	o.err = err
	// Wake whoever waits, to see the end; a nil room (no pusher ever waited) takes the default.
	for _, c := range []chan struct{}{o.signal, o.room} {
		select {
		case c <- struct{}{}:
		default:
		}
	}
}
