package actors

import (
	"context"
	"fmt"
	"sync/atomic"
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
		Send:  func(msgs []*taskhub.Message) (int, bool, error) { sent <- len(msgs); return len(msgs), false, nil },
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
		Send:  func(msgs []*taskhub.Message) (int, bool, error) { sent <- len(msgs); return len(msgs), false, nil },
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

// TestWriter_RunsOnTheDispatcher: a writer runs on the goroutines its schedule gives it (the
// hub's workerDispatcher, which keeps them between bursts: TestWorkerDispatcher), once a burst
// of ready watches, and passes over each; between bursts it does not run.
func TestWriter_RunsOnTheDispatcher(t *testing.T) {
	t.Parallel()
	d := newWorkerDispatcher(mailboxThroughput)
	defer d.stop()
	var runs atomic.Int32
	wr := newWriters(func(fn func()) { runs.Add(1); d.Schedule(fn) }).all[0]
	w := &Watch{pushCtx: t.Context()} // nothing to send: a pass leaves it idle
	w.out.init(8)
	for i := range 3 {
		w.delivering.Store(deliverRunning)
		wr.add(w)
		require.Eventually(t, func() bool { return w.delivering.Load() == deliverIdle }, 10*time.Second, time.Millisecond,
			"burst %d: the watch was not passed over", i)
		require.Eventually(t, func() bool { wr.mu.Lock(); defer wr.mu.Unlock(); return !wr.running },
			10*time.Second, time.Millisecond, "burst %d: the writer still runs", i)
		require.EqualValues(t, i+1, runs.Load(), "burst %d: the writer did not run through its schedule once", i)
	}
}
