package actors

import (
	"context"
	"errors"
	"runtime"
	"sync/atomic"
	"testing"
	"time"
)

func waitClosed(t *testing.T, ch <-chan struct{}, within time.Duration) time.Time {
	t.Helper()
	select {
	case <-ch:
		return time.Now()
	case <-time.After(within):
		t.Fatalf("not closed within %v", within)
		return time.Time{}
	}
}

func TestDeadlines_ASlotEndsAtItsDeadlineAndIsShared(t *testing.T) {
	d := newDeadlines()
	want := time.Now().Add(50 * time.Millisecond)
	s := d.at(want)
	if s.at.Before(want) || s.at.Sub(want) >= deadlineTick {
		t.Fatalf("slot at %v for a deadline of %v: want within a tick after it", s.at, want)
	}
	if d.at(s.at.Add(-deadlineTick/2)) != s || d.at(s.at) != s {
		t.Fatal("deadlines within one tick got different slots")
	}
	if d.at(s.at.Add(time.Nanosecond)) == s {
		t.Fatal("a deadline past the slot's instant got that slot")
	}
	select {
	case <-s.done:
		t.Fatal("closed before its deadline")
	default:
	}
	if got := waitClosed(t, s.done, 2*time.Second); got.Before(want) {
		t.Fatalf("closed at %v, before the deadline %v", got, want)
	}
	// Fired slots are let go (the one a nanosecond later fires a tick after).
	waitClosed(t, d.at(s.at.Add(time.Nanosecond)).done, 2*time.Second)
	d.mu.Lock()
	n := len(d.slots)
	d.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d slots kept after their instants", n)
	}
	// A deadline already past ends at once.
	waitClosed(t, d.at(time.Now().Add(-time.Second)).done, time.Second)
}

type ctxKey struct{}

func TestDeadlines_Ctx(t *testing.T) {
	d := newDeadlines()
	parent := context.WithValue(context.Background(), ctxKey{}, "span")
	want := time.Now().Add(100 * time.Millisecond)
	ctx := d.ctx(parent, want)
	if at, ok := ctx.Deadline(); !ok || at.Before(want) || at.Sub(want) >= deadlineTick {
		t.Fatalf("Deadline() = %v, %v; want within a tick after %v", at, ok, want)
	}
	if ctx.Value(ctxKey{}) != "span" {
		t.Fatal("the parent's values are lost")
	}
	if ctx.Err() != nil {
		t.Fatalf("Err() = %v before the deadline", ctx.Err())
	}

	// Contexts made from it end with it, by its AfterFunc, not by a goroutine each.
	before := runtime.NumGoroutine()
	children := make([]context.Context, 200)
	for i := range children {
		c, cancel := context.WithCancel(ctx)
		defer cancel()
		children[i] = c
	}
	if grew := runtime.NumGoroutine() - before; grew > 20 {
		t.Errorf("200 contexts made from it started %d goroutines", grew)
	}
	var ran, stopped atomic.Int32
	stop := context.AfterFunc(ctx, func() { stopped.Add(1) })
	context.AfterFunc(ctx, func() { ran.Add(1) })
	if !stop() {
		t.Fatal("stop() = false before the deadline")
	}
	if stop() {
		t.Fatal("a second stop() = true")
	}

	waitClosed(t, ctx.Done(), 2*time.Second)
	if time.Now().Before(want) {
		t.Fatal("ended before its deadline")
	}
	if !errors.Is(ctx.Err(), context.DeadlineExceeded) {
		t.Fatalf("Err() = %v after the deadline", ctx.Err())
	}
	for i, c := range children {
		waitClosed(t, c.Done(), time.Second)
		if !errors.Is(c.Err(), context.DeadlineExceeded) {
			t.Fatalf("child %d: Err() = %v", i, c.Err())
		}
	}
	for end := time.Now().Add(time.Second); ran.Load() == 0 && time.Now().Before(end); {
		time.Sleep(time.Millisecond)
	}
	if ran.Load() != 1 || stopped.Load() != 0 {
		t.Fatalf("after the deadline: the func ran %d times, the stopped one %d", ran.Load(), stopped.Load())
	}
	// One registered after the end runs too.
	late := make(chan struct{})
	if context.AfterFunc(ctx, func() { close(late) })() {
		t.Error("stop() = true for a func registered after the end")
	}
	waitClosed(t, late, time.Second)
}
