package actors

import (
	"context"
	"sync"
	"time"
)

// deadlineTick is how finely deadlines are kept: a call's ends at most this much after the
// instant it asked for.
const deadlineTick = 10 * time.Millisecond

// deadlines hands out the ends of calls. Every call to a task's actor has two: when its caller
// stops waiting for the actor's answer, and when the actor's write stops waiting for the log. A
// timer each (time.AfterFunc, context.WithDeadline), started and stopped with every progress
// report, was 5 to 6 % of the write path's CPU (a profile of BenchmarkHub_ReportProgress: the
// timers' own work, and the scheduler's over a heap of 20,000 timers a second). Instead each
// deadline is rounded up to the next tick, and all the calls whose deadlines fall in one tick
// share a slot: one channel and one timer. A slot lives until its instant and is then let go.
type deadlines struct {
	start time.Time // ticks are counted from here, on the monotonic clock

	mu    sync.Mutex
	slots map[int64]*slot // by tick
}

func newDeadlines() *deadlines {
	return &deadlines{start: time.Now(), slots: map[int64]*slot{}}
}

// slot is the end of every call whose deadline falls in one tick.
type slot struct {
	at   time.Time
	done chan struct{} // closed at at

	mu    sync.Mutex
	fired bool
	funcs map[*func()]struct{} // to call once fired (see deadlineCtx.AfterFunc)
}

// at returns the slot of deadline t: its channel is closed at t, or at most deadlineTick after.
func (d *deadlines) at(t time.Time) *slot {
	k := (t.Sub(d.start) + deadlineTick - 1) / deadlineTick
	d.mu.Lock()
	defer d.mu.Unlock()
	if s := d.slots[int64(k)]; s != nil {
		return s
	}
	s := &slot{at: d.start.Add(k * deadlineTick), done: make(chan struct{})}
	d.slots[int64(k)] = s
	time.AfterFunc(time.Until(s.at), func() {
		d.mu.Lock()
		delete(d.slots, int64(k))
		d.mu.Unlock()
		s.fire()
	})
	return s
}

func (s *slot) fire() {
	s.mu.Lock()
	s.fired = true
	funcs := s.funcs
	s.funcs = nil
	close(s.done)
	s.mu.Unlock()
	for f := range funcs {
		go (*f)()
	}
}

// ctx returns a context that carries parent's values and ends at deadline t (or at most a tick
// after), with context.DeadlineExceeded. Its end is the slot's: it needs no cancel.
func (d *deadlines) ctx(parent context.Context, t time.Time) context.Context {
	return &deadlineCtx{Context: parent, s: d.at(t)}
}

// deadlineCtx is a context that ends with its slot. Its parent gives only values: it must be
// one that never ends (context.Background, or one made with context.WithoutCancel).
type deadlineCtx struct {
	context.Context
	s *slot
}

func (c *deadlineCtx) Deadline() (time.Time, bool) { return c.s.at, true }

func (c *deadlineCtx) Done() <-chan struct{} { return c.s.done }

func (c *deadlineCtx) Err() error {
	select {
	case <-c.s.done:
		return context.DeadlineExceeded
	default:
		return nil
	}
}

// AfterFunc arranges for f to run in its own goroutine once c ends, and returns a function
// that stops it, as context.AfterFunc does: the context package finds this method, so that a
// context made from c (context.WithTimeout, say) is ended by it, and not by a goroutine of its
// own that waits for c to end.
func (c *deadlineCtx) AfterFunc(f func()) (stop func() bool) {
	s := c.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fired {
		go f()
		return func() bool { return false }
	}
	p := &f
	if s.funcs == nil {
		s.funcs = map[*func()]struct{}{}
	}
	s.funcs[p] = struct{}{}
	return func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		_, ok := s.funcs[p]
		delete(s.funcs, p)
		return ok
	}
}
