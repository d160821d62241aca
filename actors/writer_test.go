package actors

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/taskhub/taskhub"
)

// TestWatch_PassEndsAWatchWhoseContextEnded: a watch whose stream's context ended (its token
// expired, its deadline passed) is ended by its writer's next pass, even when that pass has
// events to send: a watch whose owner's events keep it busy is not kept open by them. (The
// heartbeat loop's wake of an ended context finds such a watch with events queued each time.)
func TestWatch_PassEndsAWatchWhoseContextEnded(t *testing.T) {
	h := benchHub(t)
	tw, err := h.Watch(t.Context(), taskhub.WatchQuery{Owner: "alice"})
	require.NoError(t, err)
	w := tw.(*Watch)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	sent := make(chan int, 16)
	done := make(chan error, 1)
	w.Deliver(ctx, taskhub.Sink{
		Send:  func(msgs []*taskhub.Message) (bool, error) { sent <- len(msgs); return false, nil },
		Flush: func() error { return nil },
		Done:  func(err error) { done <- err },
	})
	select {
	case <-sent: // the snapshot
	case <-time.After(10 * time.Second):
		t.Fatal("no snapshot")
	}
	require.Eventually(t, func() bool { return w.delivering.CompareAndSwap(deliverIdle, deliverRunning) },
		10*time.Second, time.Millisecond, "the watch never went idle")

	// The test is the watch's writer now: an event comes, the stream's context ends, its pass.
	_, err = h.CreateTask(t.Context(), "alice", taskhub.TaskSpec{Prompt: "one", Mode: "paint"})
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		w.out.mu.Lock()
		defer w.out.mu.Unlock()
		return w.out.n > 0
	}, 10*time.Second, time.Millisecond)
	cancel()
	w.pass()
	require.Equal(t, 1, <-sent, "the event is sent")
	require.NotEqual(t, deliverIdle, w.delivering.Load(), "the pass left a watch whose context ended idle")
	select {
	case err := <-done:
		require.ErrorIs(t, err, context.Canceled)
	case <-time.After(10 * time.Second):
		t.Fatal("the watch did not end")
	}
}

// deliveredWatch is alice's watch of h delivering to a sink that reports the count of each
// send's messages, once its snapshot is sent and it went idle.
func deliveredWatch(t *testing.T, h *Hub) (*Watch, <-chan int) {
	t.Helper()
	tw, err := h.Watch(t.Context(), taskhub.WatchQuery{Owner: "alice"})
	require.NoError(t, err)
	w := tw.(*Watch)
	sent := make(chan int, 16)
	w.Deliver(t.Context(), taskhub.Sink{
		Send:  func(msgs []*taskhub.Message) (bool, error) { sent <- len(msgs); return false, nil },
		Flush: func() error { return nil },
		Done:  func(error) {},
	})
	select {
	case <-sent: // the snapshot
	case <-time.After(10 * time.Second):
		t.Fatal("no snapshot")
	}
	require.Eventually(t, func() bool { return w.delivering.Load() == deliverIdle },
		10*time.Second, time.Millisecond, "the watch never went idle")
	return w, sent
}

// TestWatch_HeldWatchIsSent: an event that comes within the watch interval of the watch's last send is
// held, then sent: the outbox's hold timer (release) hands the watch to its writer.
func TestWatch_HeldWatchIsSent(t *testing.T) {
	h := benchHub(t)
	w, sent := deliveredWatch(t, h)

	// A last send as good as now, however slow this machine: the event's wake is held, for
	// the watch interval, and only the timer hands the watch on.
	w.out.mu.Lock()
	w.out.lastTaken = time.Now().Add(time.Hour).UnixNano()
	require.Equal(t, DefaultWatchInterval, w.out.holdLocked())
	w.out.mu.Unlock()
	_, err := h.CreateTask(t.Context(), "alice", taskhub.TaskSpec{Prompt: "one", Mode: "paint"})
	require.NoError(t, err)
	select {
	case n := <-sent:
		require.Equal(t, 1, n, "the created event")
	case <-time.After(10 * time.Second):
		t.Fatal("a held watch was never sent to")
	}
}

// TestWatch_HalfFullHeldWatchIsSent: a held watch is sent as soon as its queue is half full, not
// when its hold ends, so a busy watch's events are not coalesced while it waits.
func TestWatch_HalfFullHeldWatchIsSent(t *testing.T) {
	const buffer = 8
	h := benchHubWith(t, Options{WatchInterval: time.Hour, WatchBuffer: buffer})
	_, sent := deliveredWatch(t, h)
	for i := range buffer / 2 {
		_, err := h.CreateTask(t.Context(), "alice", taskhub.TaskSpec{Prompt: fmt.Sprint(i), Mode: "paint"})
		require.NoError(t, err)
		if i == 0 {
			select {
			case n := <-sent: // the first event after the snapshot's send waits an hour
				t.Fatalf("a watch sent to just now was sent %d messages at once", n)
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	select {
	case n := <-sent:
		require.Equal(t, buffer/2, n, "the created events, all in one send")
	case <-time.After(10 * time.Second):
		t.Fatal("a half-full held watch was not sent to")
	}
	require.Zero(t, h.Stats().Coalesced)
}

// TestWriter_WaitsForMoreThenEnds: a writer's goroutine that has passed over its ready watches
// waits for more, rather than ending (a new goroutine's stack grows again for each burst), and
// passes over a watch made ready meanwhile; it ends when nothing became ready for its idle time,
// or once the writers are stopped, and a watch made ready later is still passed over.
func TestWriter_WaitsForMoreThenEnds(t *testing.T) {
	t.Parallel()
	w := &Watch{pushCtx: t.Context()} // nothing to send: a pass leaves it idle
	w.out.init(8)
	state := func(wr *writer) (running, waiting bool) {
		wr.mu.Lock()
		defer wr.mu.Unlock()
		return wr.running, wr.waiting
	}
	ready := func(wr *writer, msg string) {
		t.Helper()
		w.delivering.Store(deliverRunning)
		wr.add(w)
		require.Eventually(t, func() bool { return w.delivering.Load() == deliverIdle }, 10*time.Second, time.Millisecond,
			"%s: the watch was not passed over", msg)
	}
	ended := func(wr *writer, msg string) {
		t.Helper()
		// Well within the writer's idle time (an hour), unless that is what is tested.
		require.Eventually(t, func() bool { running, _ := state(wr); return !running }, 5*time.Second, time.Millisecond,
			"%s: the writer's goroutine did not end", msg)
	}

	ws := newWriters()
	wr := ws.all[0]
	wr.idle = time.Hour
	for i := range 3 {
		ready(wr, fmt.Sprint("add ", i))
		require.Eventually(t, func() bool { running, waiting := state(wr); return running && waiting },
			10*time.Second, time.Millisecond, "add %d: the writer's goroutine did not wait for more", i)
	}
	ws.stop()
	ended(wr, "stopped")
	ready(wr, "after stop")
	ended(wr, "after stop")

	// Idle for its idle time, it ends by itself; the next watch starts it again.
	ws = newWriters()
	wr = ws.all[0]
	wr.idle = 50 * time.Millisecond
	ready(wr, "idle")
	ended(wr, "idle")
	ready(wr, "after idle")
	ws.stop()
	ended(wr, "stopped after idle")
}
