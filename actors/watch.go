package actors

import (
	"cmp"
	"context"
	"errors"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"google.golang.org/protobuf/proto"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"

	"github.com/taskhub/taskhub"
	"github.com/taskhub/taskhub/eventlog"
)

// Watch is one client's view of its tasks: what Hub.Watch started. Next is for one goroutine.
//
// A server holds one per open stream, most of them idle, so a watch is one allocation that holds
// its outbox in place; its subscriber actor holds a pointer to it.
type Watch struct {
	out       outbox
	h         *Hub
	pid       *actor.PID // of its subscriber
	owner     string
	items     []*item
	msgs      []*taskhub.Message
	rest      []*taskhub.Message // with Deliver: the end of msgs the sink has not taken yet
	waitDone  <-chan struct{}    // ctx.Done() of the context in out.waiter
	closeOnce sync.Once

	// While a snapshot is sent: it, the index in its tasks of the next task to read, the task
	// read that did not fit in the part before, and the items taken with the snapshot, sent
	// after its last part (see snapshotPart).
	snap      *snapshot
	snapNext  int
	snapCarry *taskhubv1.Task
	after     []*item

	// Set by Deliver.
	pushCtx    context.Context
	sink       taskhub.Sink
	writer     *writer
	delivering atomic.Int32 // deliverIdle, ...
}

// Next waits for the next messages to send: queued events, or a heartbeat when the watch has
// been idle for the heartbeat interval. The messages are shared and must not be modified; the
// slice is valid until the next call. It fails when ctx ends (a Next that is waiting sees that
// within a second) or the watch is closed (the error is Unavailable when the hub is shutting
// down).
func (w *Watch) Next(ctx context.Context) ([]*taskhub.Message, error) {
	for {
		msgs, err := w.poll(ctx)
		if msgs != nil || err != nil {
			return msgs, err
		}
		<-w.out.signal
	}
}

// poll is Next without the wait: nil messages and a nil error when there is nothing to send
// yet. The outbox wakes the watch (its signal, or, with Deliver, its writer) when there is.
func (w *Watch) poll(ctx context.Context) ([]*taskhub.Message, error) {
	clear(w.msgs) // sent: do not keep them (a snapshot's part can be large) while the watch idles
	if w.snap != nil {
		w.msgs = w.msgs[:0]
		return w.snapshotPart(ctx)
	}
	for {
		items, work, err := w.out.take(w.items)
		w.items = items
		if len(items) > 0 {
			return w.messages(ctx, items)
		}
		if err != nil {
			return nil, err
		}
		if work != nil {
			if err := w.replay(ctx, work); err != nil {
				return nil, err
			}
			continue
		}
		return nil, w.watchCtx(ctx)
	}
}

// Deliver makes the watch hand its messages to to by itself, as Next would return them (see
// taskhub.Sink), holding no goroutine (nor its stack) while it is idle, where a Next that waits
// holds one. When there is something to send, one of the hub's writers sends it with the
// messages of the other watches that are ready (see writer); a goroutine of the watch's own
// takes over while a send waits for its client, or the watch reads the log or ends. Use either
// Next or Deliver, not both.
func (w *Watch) Deliver(ctx context.Context, to taskhub.Sink) {
	w.pushCtx, w.sink = ctx, to
	w.writer = w.h.writers.pick()
	_ = w.watchCtx(ctx) // the heartbeats wake the watch when ctx ends
	w.out.mu.Lock()
	w.out.notify = w.kick
	w.kick() // for what was queued before
	w.out.mu.Unlock()
}

// The states of a delivering watch. Whoever delivers it (its writer, or its own goroutine)
// holds it running until it has nothing left to send.
const (
	deliverIdle    int32 = iota // nobody delivers it
	deliverRunning              // its writer or its goroutine delivers it
	deliverAgain                // it is delivered, and was woken meanwhile: look again
	deliverEnded                // the watch ended
)

// kick makes the watch ready for its writer (after the outbox's hold), unless it is being
// delivered (then that looks again). It is called under the outbox's lock, so it must not take
// the lock.
func (w *Watch) kick() {
	for {
		switch s := w.delivering.Load(); s {
		case deliverIdle:
			if w.delivering.CompareAndSwap(s, deliverRunning) {
				w.writer.add(w)
				return
			}
		case deliverRunning:
			if w.delivering.CompareAndSwap(s, deliverAgain) {
				return
			}
		default:
			return
		}
	}
}

// pass is the writer's turn at the watch: it sends what is queued without waiting, or hands
// the watch to a goroutine of its own (deliver) for what would wait: a send its client does not
// take at once, a snapshot or a replay read from the log, the end of the watch. A panic ends
// the watch rather than the writer.
func (w *Watch) pass() {
	defer func() {
		if p := recover(); p != nil {
			w.h.logger.Error("watch delivery panic", "owner", w.owner, "panic", p, "stack", string(debug.Stack()))
			go w.deliver(false, taskhub.Errorf(taskhub.Internal, "internal error"))
		}
	}()
	w.delivering.Store(deliverRunning)
	items, more := w.out.takeQueued(w.items)
	w.items = items
	var pending bool
	var err error
	if len(items) > 0 {
		var msgs []*taskhub.Message
		if msgs, err = w.messages(w.pushCtx, items); err == nil { // no snapshot: takeQueued leaves those
			pending, err = w.send(msgs)
		}
		if len(w.rest) == 0 {
			clear(w.msgs) // sent: do not keep them while the watch idles
		}
	}
	// The stream's context is looked at on every pass, not only when nothing is queued: the
	// heartbeats wake a watch whose context ended (its token expired), and an owner's events
	// could otherwise keep it busy, and open, for as long as they come.
	if err != nil || pending || more || w.pushCtx.Err() != nil {
		go w.deliver(pending, err)
		return
	}
	if !w.delivering.CompareAndSwap(deliverRunning, deliverIdle) {
		w.delivering.Store(deliverRunning) // woken meanwhile: after the watches ready now
		w.writer.add(w)
	}
}

// deliver sends what the watch has, waiting for its client and reading the log as needed,
// until it has nothing or it ends; flush first when a send left bytes to write, or end at once
// with failed. A panic ends the watch with Internal, and is logged, rather than ending the
// process: no stream's handler is there to recover it.
func (w *Watch) deliver(flush bool, failed error) {
	defer func() {
		if p := recover(); p != nil {
			w.h.logger.Error("watch delivery panic", "owner", w.owner, "panic", p, "stack", string(debug.Stack()))
			w.end(taskhub.Errorf(taskhub.Internal, "internal error"))
		}
	}()
	if failed != nil {
		w.end(failed)
		return
	}
	for {
		w.delivering.Store(deliverRunning)
		for {
			var err error
			if flush {
				flush, err = false, w.sink.Flush()
			} else if len(w.rest) > 0 {
				flush, err = w.send(w.rest)
			} else {
				var msgs []*taskhub.Message
				msgs, err = w.poll(w.pushCtx)
				if err == nil && msgs == nil {
					break
				}
				if err == nil {
					flush, err = w.send(msgs)
				}
			}
			if err != nil {
				w.end(err)
				return
			}
		}
		if w.delivering.CompareAndSwap(deliverRunning, deliverIdle) {
			return
		}
	}
}

// send hands msgs to the sink, a write at a time, until it has taken them all or a write waits
// for the client (pending: flush it, then send w.rest, what the sink has not taken yet). It
// counts the writes.
func (w *Watch) send(msgs []*taskhub.Message) (pending bool, err error) {
	for len(msgs) > 0 && !pending {
		var n int
		n, pending, err = w.sink.Send(msgs)
		if err == nil && (n < 1 || n > len(msgs)) {
			err = taskhub.Errorf(taskhub.Internal, "the stream took %d of %d messages", n, len(msgs))
		}
		if err != nil {
			break
		}
		msgs = msgs[n:]
		if pending {
			w.h.counts.sendsWaited.Add(1)
		} else {
			w.h.counts.sendsAtOnce.Add(1)
		}
	}
	w.rest = msgs
	return pending, err
}

// end ends a delivering watch with err, once.
func (w *Watch) end(err error) {
	if w.delivering.Swap(deliverEnded) == deliverEnded {
		return
	}
	clear(w.msgs)
	clear(w.after)
	w.rest, w.snap, w.snapCarry = nil, nil, nil
	w.Close()
	w.sink.Done(err)
}

// messages returns the messages of items in w.msgs, and clears items. A snapshot among them
// (begin queues it first) is sent a part at a time (see snapshotPart): its first part then, the
// rest and the items after it on the next polls.
func (w *Watch) messages(ctx context.Context, items []*item) ([]*taskhub.Message, error) {
	defer clear(items)
	w.msgs = w.msgs[:0]
	for i, it := range items {
		if it.snap != nil {
			w.snap, w.snapNext = it.snap, 0
			w.after = append(w.after[:0], items[i+1:]...)
			return w.snapshotPart(ctx)
		}
		w.msgs = append(w.msgs, it.msg)
	}
	w.h.counts.watchMessages.Add(uint64(len(w.msgs)))
	return w.msgs, nil
}

// replay reads what the outbox owes from the log into it, until the queue is full or holds
// maxReplayBytes of them (the client takes them, then the replay goes on from there), or the
// work is done. A failed read, or a compaction that may have removed events it needs, closes
// the outbox: what it queued is still sent, then the error.
func (w *Watch) replay(ctx context.Context, work *replayWork) error {
	if work.next <= work.to {
		if floor, err := w.floor(ctx); err != nil || work.from-1 < floor {
			w.out.close(cmp.Or(err, errTooFarBehind))
			return nil
		}
		if work.next == work.from { // once a replay: a leader holds what it has held
			if err := w.leaderHolds(ctx, work.to); err != nil {
				w.out.close(err)
				return nil
			}
		}
		filter := eventlog.OwnerFilter(w.owner)
		for seq := work.next; seq <= work.to; {
			call, cancel := context.WithTimeout(ctx, w.h.cfg.CallTimeout)
			e, err := w.next(call, filter, seq, work.to)
			cancel()
			switch {
			case ctx.Err() != nil:
				return ctx.Err()
			case errors.Is(err, eventlog.ErrNotFound):
				seq = work.to + 1
				continue
			case err != nil:
				w.out.close(taskhub.Errorf(taskhub.Unavailable, "replay from the event log: %v; resume with the last seq you saw", err))
				return nil
			case e.Seq > work.to:
				seq = work.to + 1
				continue
			}
			if e.Record.Event.Kind == taskhubv1.EventKind_EVENT_KIND_LEASE_RENEWED {
				seq = e.Seq + 1 // not for watchers (see feed.apply)
				continue
			}
			it := eventItem(e)
			it.msg.Replayed = true
			if !w.out.replayed(it, proto.Size(e.Record.Event)) {
				return nil // the queue is full, or the watch closed: take first
			}
			w.h.counts.replays.Add(1)
			seq = e.Seq + 1
		}
		if floor, err := w.floor(ctx); err != nil || work.from-1 < floor {
			w.out.close(cmp.Or(err, errTooFarBehind)) // a compaction may have removed events as it read
			return nil
		}
	}
	w.out.replayDone()
	return nil
}

// next reads the owner's first event at or after seq, if it is at most to (ErrNotFound if
// none is): by its sequence from the feed's index of the owners' events (see history), or by
// asking the log (see indexedRead).
func (w *Watch) next(ctx context.Context, filter string, seq, to uint64) (*eventlog.Entry, error) {
	index := func(seq uint64) (uint64, bool) { return w.h.feed.nextOf(w.owner, seq) }
	prefix := eventlog.Subject(w.owner, "") // of each of the owner's tasks' subjects
	return indexedRead(ctx, w.h.log, index, filter, func(subject string) bool { return strings.HasPrefix(subject, prefix) }, seq, to)
}

// leaderHolds waits, for at most clusterReadTimeout, until the log's reads (answered by its
// leader) hold every event up to seq. In a cluster the feed reads from whichever replica its
// consumer lives on, and a replica may have applied events the leader has not applied yet:
// the leader has committed them, and applies them in order, but a busy leader can be a moment
// behind. Read from it before then, a replay up to seq would find nothing past what it holds
// and end there, and the client would miss the rest. A single node's feed reads the one
// store the reads do.
func (w *Watch) leaderHolds(ctx context.Context, seq uint64) error {
	if !w.h.cfg.Shared {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, clusterReadTimeout)
	defer cancel()
	for {
		_, last, err := w.h.log.Bounds(ctx)
		switch {
		case err == nil && last >= seq:
			return nil
		case ctx.Err() != nil:
			return taskhub.Errorf(taskhub.Unavailable, "the event log's leader does not hold seq %d yet; resume with the last seq you saw", seq)
		}
		select {
		case <-ctx.Done():
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// floor is the compaction watermark the replay must respect, read within the call timeout.
func (w *Watch) floor(ctx context.Context) (uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, w.h.cfg.CallTimeout)
	defer cancel()
	return w.h.compactor.floor(ctx)
}

// snapshotPart appends to w.msgs, and returns them, the next part of the snapshot being sent
// (w.snap): one Snapshot message at the snapshot's seq, of its next tasks with their prompts and
// params read from the event log (they never change after a create, so any event of the task
// has them), as many as fit in maxSnapshotPart bytes (one task alone, however large), with more
// set unless it is the last; then, after the last, the messages of the items taken with the
// snapshot. A watch so holds one part of its snapshot at a time, read when its client has taken
// the part before: the whole of a large one held by each stream whose client does not read
// (1000 active tasks of 50 KiB each, 50 MB) would let a few hundred such streams take the
// server's memory.
func (w *Watch) snapshotPart(ctx context.Context) ([]*taskhub.Message, error) {
	snap := w.snap
	var part []*taskhubv1.Task
	size := 0
	for w.snapCarry != nil || w.snapNext < len(snap.tasks) {
		full := w.snapCarry
		if full == nil {
			t := snap.tasks[w.snapNext]
			call, cancel := context.WithTimeout(ctx, w.h.cfg.CallTimeout)
			e, err := w.h.log.Last(call, t.Owner, t.Id)
			cancel()
			if err != nil {
				err = taskhub.Errorf(taskhub.Unavailable, "read the event log for the snapshot: %v; watch again", err)
				w.snap, w.snapCarry = nil, nil
				clear(w.after)
				w.out.close(err) // nothing may follow half a snapshot
				return nil, err
			}
			full = proto.CloneOf(t)
			full.Prompt, full.Params = e.Record.Event.Task.Prompt, e.Record.Event.Task.Params
			w.snapNext++
		}
		n := proto.Size(full)
		if len(part) > 0 && size+n > maxSnapshotPart {
			w.snapCarry = full // the next part's first
			break
		}
		w.snapCarry = nil
		part = append(part, full)
		size += n
	}
	more := w.snapCarry != nil || w.snapNext < len(snap.tasks)
	w.msgs = append(w.msgs, taskhub.NewMessage(&taskhubv1.WatchTasksResponse{Message: &taskhubv1.WatchTasksResponse_Snapshot{
		Snapshot: &taskhubv1.Snapshot{Epoch: snap.epoch, Seq: snap.seq, Tasks: part, More: more},
	}}))
	if !more {
		w.snap = nil
		for _, it := range w.after {
			w.msgs = append(w.msgs, it.msg)
		}
		clear(w.after)
		w.after = w.after[:0]
	}
	w.h.counts.watchMessages.Add(uint64(len(w.msgs)))
	return w.msgs, nil
}

// maxSnapshotPart bounds the tasks of a Snapshot message, in encoded bytes, unless it holds one
// (an active task is at most about 50 KiB, with the limits on prompt, params and progress
// message). It bounds what a watch holds of its snapshot at a time, and leaves room for the
// part's JSON in one write of a handed-off stream (maxWrite, in package rpc).
const maxSnapshotPart = 48 << 10

// watchCtx makes the end of ctx wake Next, so that Next waits on one channel rather than
// selecting over two: the wait is on the path of every delivery. The hub's heartbeat loop looks
// at ctx on each tick (at most a second apart) and wakes Next once ctx has ended: a stream whose
// client went away ends within a tick, and an idle watch keeps nothing on its context (an
// AfterFunc registration cost each watch about 500 bytes). A stream passes the same ctx each
// time, so this locks once per watch. Contexts are told apart by their Done channels: those
// always compare, where a Context of a non-comparable type would make == panic.
func (w *Watch) watchCtx(ctx context.Context) error {
	if d := ctx.Done(); d != w.waitDone {
		w.out.mu.Lock()
		w.out.waiter = ctx
		w.out.mu.Unlock()
		w.waitDone = d
	}
	return ctx.Err()
}

// Close ends the watch and frees its subscriber and its place under the limits.
func (w *Watch) Close() {
	w.closeOnce.Do(func() {
		w.out.close(errWatchClosed) // the subscriber may stop before it has seen the watch
		w.h.root.Stop(w.pid)
		w.h.watches.close(w.owner)
	})
}
