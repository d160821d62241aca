package actors

import (
	"context"
	"math"
	"sync"
	"sync/atomic"
	"time"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"

	"github.com/taskhub/taskhub"
)

// outbox is one watch's delivery: its bounded queue, and the state machine that decides what
// goes into it. The feed offers it its owner's events; the stream's send loop (Watch.Next)
// takes what is queued and, when the outbox owes events the queue could not keep, reads them
// from the log and hands them back (replayed) as the client makes room. Every event is queued
// while the queue has room. Once it is full, its client is behind what it is sent (real
// backlog: a writer that holds a busy watch, see holdLocked, sends it before it is half full),
// and each task's queued progress events are coalesced to the latest, which keeps its place, so
// the seq order of what is queued never goes backwards; until the client takes, a progress
// event that comes then replaces its task's queued one at once. Only progress is coalesced;
// every other event is kept until it is taken. "The queue has room" below means it holds fewer
// than its limit, at once or once its progress is so coalesced.
//
// The promise it keeps: every event of the owner with seq <= cursor is queued, was taken, or was
// replaced by a newer progress event of its task; every event after cursor up to replayTo is
// owed, and will be read from the log. Offered events at or below cursor are ignored in every
// state.
//
// Its states and transitions, one row each (TestOutbox_Transitions has a case for every row):
//
//	state      input          condition                  next       effect
//	starting   attach(pos)                               starting   cursor = replayTo = pos
//	starting   begin(m, a)                               replaying  m queued, whatever the limit; cursor = a: (a, pos] owed
//	starting   take                                      starting   nothing to take, nothing owed
//	replaying  offer(e)       e.seq <= replayTo          replaying  none: it is owed, and will be read
//	replaying  offer(e)       held has room              replaying  held (kept aside, in order)
//	replaying  offer(e)       held is full               replaying  held dropped; lost
//	replaying  take           nothing queued             replaying  (cursor, replayTo] owed, to read from the log
//	replaying  replayed(e)    the queue has room         replaying  queued; cursor = e.seq
//	replaying  replayed(e)    the queue is full          replaying  refused: read again after a take
//	replaying  replayed(e)    maxReplayBytes queued      replaying  refused: read again after a take
//	replaying  done           nothing lost, held fit     live       held queued; cursor = replayTo, then the last held
//	replaying  done           lost, or held overflowed   behind     cursor = replayTo, or the last held that fit
//	live       offer(e)       the queue has room         live       queued; cursor = e.seq
//	live       offer(e)       the queue is full          behind     dropped
//	live       tick           idle for the interval      live       a heartbeat queued
//	behind     offer(e)                                  behind     dropped
//	behind     take                                      replaying  replayTo = the last seq offered: (cursor, replayTo] owed
//	any        close(err)                                closed     what is queued can still be taken, then err
//
// In every state offer records the last seq offered (seen) and ignores events at or below
// cursor; a starting outbox treats offers as a replaying one does. A watch's first message is
// its snapshot: a fresh one (a = pos: nothing owed) or a recovered one, after which the events
// the client missed are owed. So the start, the catch-up of a client that fell behind, and the
// end of either are one path.
type outbox struct {
	mu       sync.Mutex
	items    []*item         // in seq order; nil where a progress event was coalesced away
	progress map[string]int  // task id -> index in items of its queued progress event; made on first use
	err      error           // why the outbox was closed
	waiter   context.Context // the context of the Next that takes from it (see Watch.watchCtx)
	signal   chan struct{}   // cap 1: something to take, or the outbox was closed
	notify   func()          // when set (Watch.Deliver), called under mu instead of signalling

	state      deliveryState
	cursor     uint64 // see the type's doc
	replayTo   uint64 // while replaying: the last seq owed
	replayFrom uint64 // while replaying: the first seq owed when the replay began
	seen       uint64 // the last seq offered
	held       []*item
	lost       bool // held overflowed: once the replay is done, the outbox is behind

	coalesced *atomic.Uint64 // counts the progress events replaced; nil: not counted

	delivered  uint64      // the seq of the last item taken
	lastTaken  int64       // when items were last taken (or a heartbeat queued), in UnixNano; 0: never
	every      int64       // Options.WatchInterval in nanoseconds (holdLocked); 0: no hold
	holdTimer  *time.Timer // wakes a held taker (release); made on the first hold
	holding    bool        // holdTimer is set to release the taker
	n          int32       // non-nil items
	replayedN  int32       // the bytes of the replayed events queued: maxReplayBytes and one event at most
	coalescing bool        // the queue was full since the last take: progress is coalesced as it comes
	limit      int32
}

type deliveryState uint8

const (
	starting deliveryState = iota
	replaying
	live
	behind
)

// replayWork is what a replaying outbox owes: the events from next to to (empty when next >
// to), and from, where the replay began, for the compaction check.
type replayWork struct{ from, next, to uint64 }

// init readies a zero outbox to hold up to limit events. Nothing else is allocated until it is
// needed: an idle watch costs only the outbox itself and its signal channel.
func (o *outbox) init(limit int) {
	o.limit = int32(min(limit, math.MaxInt32))
	o.signal = make(chan struct{}, 1)
}

// attach makes the outbox hold the events offered after the feed's position pos until its
// first message is queued (see begin). The feed calls it under its lock, so no event after pos
// is missed.
func (o *outbox) attach(pos uint64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.cursor, o.replayTo, o.seen = pos, pos, pos
}

// begin queues the first message of a stream, its snapshot, whatever the limit (a fresh one
// refers to the active tasks the feed keeps anyway; see snapshot), and makes the outbox owe the
// events after after up to the position it attached at: the client has seen them up to after.
func (o *outbox) begin(first *item, after uint64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.err != nil || o.state != starting {
		return
	}
	o.state, o.cursor, o.replayFrom = replaying, after, after+1
	o.items = append(o.items, first)
	o.n++
	o.wake()
}

// offer hands the outbox a live event. The feed calls it in seq order.
func (o *outbox) offer(it *item) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.seen = max(o.seen, it.seq)
	if it.seq <= o.cursor || o.err != nil {
		return
	}
	switch o.state {
	case live:
		o.queueLocked(it)
	case starting, replaying:
		switch {
		case it.seq <= o.replayTo, o.lost:
		case len(o.held) < int(o.limit):
			o.held = append(o.held, it)
		default:
			clear(o.held)
			o.held, o.lost = o.held[:0], true
		}
	}
}

// queueLocked queues a live event, or falls behind when the queue is full.
func (o *outbox) queueLocked(it *item) bool {
	if !o.pushLocked(it) {
		o.state = behind
		return false
	}
	o.cursor = it.seq
	return true
}

// replayed queues an event read from the log for a replaying outbox and reports whether the
// reader should go on: false when the queue is full, or holds maxReplayBytes of replayed events
// (the reader lets the client take what is queued, then reads it again), or the outbox was
// closed. size is the event's in bytes.
func (o *outbox) replayed(it *item, size int) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	switch {
	case o.err != nil || o.state != replaying:
		return false
	case it.seq <= o.cursor:
		return true
	case o.n > 0 && int(o.replayedN)+size > maxReplayBytes:
		return false
	case !o.pushLocked(it):
		return false
	}
	o.cursor = it.seq
	o.replayedN += int32(size)
	return true
}

// maxReplayBytes bounds the replayed events an outbox queues, in their encoded bytes, unless it
// queues one. Those are the watch's own copies, read from the log for it, where live events are
// shared by the watches of their owner: a client that resumes far back and does not read holds
// at most this of them, where a queue full of its largest events would be 50 MB.
const maxReplayBytes = 256 << 10

// replayDone ends a replay that read the log up to replayTo: the held events are queued and the
// outbox is live, or behind if some were lost or do not fit.
func (o *outbox) replayDone() {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.state != replaying {
		return
	}
	o.cursor = max(o.cursor, o.replayTo)
	held, lost := o.held, o.lost
	o.held, o.lost = nil, false
	o.state = live
	if lost {
		o.state = behind // the reader's next take starts the replay of what was lost
		return
	}
	for _, it := range held {
		if it.seq > o.cursor && !o.queueLocked(it) {
			break
		}
	}
}

// pushLocked queues it and reports true, or reports false when the queue is full.
func (o *outbox) pushLocked(it *item) bool {
	if o.err != nil {
		return true // closed: nobody will read it
	}
	progress := it.kind == taskhubv1.EventKind_EVENT_KIND_PROGRESS
	if o.n >= o.limit && !o.coalescing { // backlog: until the client takes, progress goes as its task's latest
		o.coalescing = true
		o.coalesceLocked() // once a fill: the queue took limit events since the last take
	}
	if progress && o.coalescing {
		if i, ok := o.progress[it.taskID]; ok {
			o.drop(i)
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
	o.wakeSoon()
	return true
}

// coalesceLocked drops every queued progress event that a later one of its task follows.
func (o *outbox) coalesceLocked() {
	for i, it := range o.items {
		if it != nil && it.kind == taskhubv1.EventKind_EVENT_KIND_PROGRESS && o.progress[it.taskID] != i {
			o.drop(i)
		}
	}
}

// drop removes the queued item at i, a progress event a later one of its task replaces.
func (o *outbox) drop(i int) {
	o.items[i] = nil
	o.n--
	if o.coalesced != nil {
		o.coalesced.Add(1)
	}
}

// holdLocked is how long what is queued now waits before its taker is woken (wakeSoon): 0 for
// a watch last sent to o.every (Options.WatchInterval) ago or longer, or whose queue is half
// full (it is sent before the queue fills, so nothing is coalesced while it waits), else the
// rest of that time. A watcher of thousands of events a second then gets tens of them with
// each write(2), where each was a write of its own, and no event waits more than o.every for
// it; one that gets fewer events gets each at once. The write(2) is most of a delivery's cost
// (71-77 % of the server's CPU with 1000 watchers on HTTP/1.1 connections of their own, each
// getting 100 events a second), so at 20 ms such a watcher's events go two to a write, and a
// delivery costs a quarter less (docs/benchmarks.md).
func (o *outbox) holdLocked() time.Duration { return o.holdAt(time.Now().UnixNano()) }

// holdAt is holdLocked at now (UnixNano). It is never more than o.every, even if the clock
// was set back since the last take.
func (o *outbox) holdAt(now int64) time.Duration {
	if o.filling() {
		return 0
	}
	return time.Duration(min(o.every, max(0, o.lastTaken+o.every-now)))
}

// filling reports whether the queue is half full: a watch held this far is sent at once.
func (o *outbox) filling() bool { return 2*o.n >= o.limit }

// wakeSoon wakes the taker for what was just queued: at once, or when the hold ends
// (holdLocked), by which time more may have come to go with it.
func (o *outbox) wakeSoon() {
	if o.holding && !o.filling() {
		return // the hold's timer wakes it
	}
	switch hold := o.holdLocked(); {
	case hold <= 0:
		if o.holding && o.holdTimer.Stop() {
			o.holding = false
		}
		o.wake()
	case o.holdTimer == nil:
		o.holding, o.holdTimer = true, time.AfterFunc(hold, o.release)
	default:
		o.holding = true
		o.holdTimer.Reset(hold)
	}
}

// release is the hold timer's: the hold is over.
func (o *outbox) release() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.holding = false
	o.wake()
}

// wake tells whoever waits in take's caller to look again.
func (o *outbox) wake() {
	if o.notify != nil {
		o.notify()
		return
	}
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

// take moves every queued item into dst and returns it. A behind outbox whose client has taken
// everything starts replaying what it missed. When nothing is queued, take returns what a
// replaying outbox owes (the caller reads it from the log and hands it back with replayed, then
// calls replayDone), or, once the outbox is closed, its error.
func (o *outbox) take(dst []*item) ([]*item, *replayWork, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.takeLocked(dst[:0])
}

// takeQueued is take for a caller that neither reads the log nor ends the watch (the hub's
// writers). It reports more when what comes next needs either: a snapshot is queued first
// (then it takes nothing), events are owed, or the outbox was closed.
func (o *outbox) takeQueued(dst []*item) (_ []*item, more bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.n > 0 && o.items[0] != nil && o.items[0].snap != nil { // begin queues it first
		return dst[:0], true
	}
	dst, _, _ = o.takeLocked(dst[:0])
	return dst, o.err != nil || o.state == replaying || o.state == behind
}

func (o *outbox) takeLocked(dst []*item) ([]*item, *replayWork, error) {
	if o.n > 0 {
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
		o.n, o.coalescing, o.replayedN = 0, false, 0
		o.delivered = dst[len(dst)-1].seq
		o.lastTaken = time.Now().UnixNano()
	}
	switch {
	case o.err != nil:
		if len(dst) > 0 {
			return dst, nil, nil
		}
		return dst, nil, o.err
	case o.state == behind:
		// The client has taken everything: what it missed is owed, from the log.
		o.state, o.replayTo, o.replayFrom = replaying, o.seen, o.cursor+1
	}
	if len(dst) == 0 && o.state == replaying {
		return dst, &replayWork{from: o.replayFrom, next: o.cursor + 1, to: o.replayTo}, nil
	}
	return dst, nil, nil
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
	if o.err != nil || o.state != live || o.n > 0 || now.UnixNano()-o.lastTaken < interval.Nanoseconds() {
		return
	}
	o.pushLocked(&item{seq: o.delivered, msg: taskhub.NewMessage(&taskhubv1.WatchTasksResponse{Message: &taskhubv1.WatchTasksResponse_Heartbeat{
		Heartbeat: &taskhubv1.Heartbeat{Seq: o.delivered},
	}})})
	o.lastTaken = now.UnixNano() // after the push, which it would hold (wakeSoon)
}

// close ends the outbox with err: what is queued can still be taken, then take returns err.
func (o *outbox) close(err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.err != nil {
		return
	}
	o.err = err
	o.wake()
}
