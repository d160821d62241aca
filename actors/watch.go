package actors

import (
	"context"
	"sync"

	"github.com/asynkron/protoactor-go/actor"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"
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
	msgs      []*taskhubv1.WatchTasksResponse
	waitDone  <-chan struct{} // ctx.Done() of the context in out.waiter
	closeOnce sync.Once
}

// Next waits for the next messages to send: queued events, or a heartbeat when the watch has
// been idle for the heartbeat interval. The messages are shared and must not be modified; the
// slice is valid until the next call. It fails when ctx ends (a Next that is waiting sees that
// within a second) or the watch is closed (the error is Unavailable when the hub is shutting
// down).
func (w *Watch) Next(ctx context.Context) ([]*taskhubv1.WatchTasksResponse, error) {
	clear(w.msgs) // sent: do not keep them (a snapshot can be large) while the watch idles
	w.msgs = w.msgs[:0]
	for {
		var err error
		w.items, err = w.out.take(w.items)
		if len(w.items) > 0 {
			for _, it := range w.items {
				w.msgs = append(w.msgs, it.resp)
			}
			clear(w.items)
			return w.msgs, nil
		}
		if err != nil {
			return nil, err
		}
		if err := w.watchCtx(ctx); err != nil {
			return nil, err
		}
		<-w.out.signal
	}
}

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
