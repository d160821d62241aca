package actors

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/taskhub/taskhub/eventlog"
)

// claims hands queue deliveries to waiting ClaimTask calls. While a mode has waiters and may have
// work, one goroutine keeps a pull request open on the mode's consumer and gives each delivery
// to the longest-waiting claim; a delivery that finds no waiter is released at once. A claim
// waiting on several modes takes the first delivery of any of them.
//
// A mode that has no task and is not configured costs nothing durable: a claim for it waits in
// memory, and its poller starts only when the feed sees a task of the mode queued (wake). So
// naming made-up modes in claims can neither create queue consumers nor load JetStream, and
// the pollers of real modes are not slowed by them.
type claims struct {
	log     Queue
	logger  *slog.Logger
	ctx     context.Context // ends when the hub closes
	hasWork func(mode string) bool
	wg      sync.WaitGroup

	mu    sync.Mutex
	modes map[string]*modeWaiters
}

type modeWaiters struct {
	waiters []*waiter
	polling bool
	work    chan struct{} // cap 1: a task of the mode was queued
}

type waiter struct {
	ch   chan eventlog.Delivery // cap 1
	done bool                   // served or gone; guarded by claims.mu
}

// pollWait bounds each pull request, so an idle mode's goroutine looks again at its waiters.
const pollWait = 5 * time.Second

// failWarnAfter is how long fetches of a mode fail before it is worth a warning.
const failWarnAfter = 5 * time.Second

func newClaims(ctx context.Context, log Queue, logger *slog.Logger, hasWork func(string) bool) *claims {
	return &claims{log: log, logger: logger, ctx: ctx, hasWork: hasWork, modes: map[string]*modeWaiters{}}
}

// next returns a delivery of one of modes, waiting up to wait for one; nil if none came.
func (c *claims) next(ctx context.Context, modes []string, wait time.Duration) (*eventlog.Delivery, error) {
	if wait <= 0 {
		for _, m := range modes {
			if !c.hasWork(m) {
				continue
			}
			ds, err := c.fetch(ctx, m, 0)
			if errors.Is(err, eventlog.ErrNoQueue) {
				continue // its last task ended since hasWork said it had one
			}
			if err != nil {
				return nil, err
			}
			if len(ds) > 0 {
				return &ds[0], nil
			}
		}
		return nil, nil
	}

	w := &waiter{ch: make(chan eventlog.Delivery, 1)}
	c.mu.Lock()
	for _, m := range modes {
		mw := c.modes[m]
		if mw == nil {
			mw = &modeWaiters{work: make(chan struct{}, 1)}
			c.modes[m] = mw
		}
		mw.waiters = append(mw.waiters, w)
		// After registering: a task queued since then wakes the mode (see wake).
		if !mw.polling && c.hasWork(m) {
			c.startLocked(m, mw)
		}
	}
	c.mu.Unlock()

	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case d := <-w.ch:
		return &d, nil
	case <-timer.C:
	case <-ctx.Done():
	case <-c.ctx.Done():
	}
	c.mu.Lock()
	w.done = true
	for _, m := range modes {
		if mw := c.modes[m]; mw != nil && !mw.polling {
			// Nobody polls it, so nobody prunes it.
			if mw.waiters = pruned(mw.waiters); len(mw.waiters) == 0 {
				delete(c.modes, m)
			}
		}
	}
	c.mu.Unlock()
	select {
	case d := <-w.ch: // it came just now
		return &d, nil
	default:
		return nil, nil
	}
}

// wake tells the claims that a task of mode was queued. The feed calls it.
func (c *claims) wake(mode string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	mw := c.modes[mode]
	if mw == nil {
		return
	}
	if !mw.polling {
		c.startLocked(mode, mw)
		return
	}
	select {
	case mw.work <- struct{}{}:
	default:
	}
}

func (c *claims) startLocked(mode string, mw *modeWaiters) {
	mw.polling = true
	c.wg.Add(1)
	go c.poll(mode, mw)
}

// fetch takes up to one delivery of mode, waiting up to wait. A mode whose consumer JetStream
// removed while idle gets it back when it has work.
func (c *claims) fetch(ctx context.Context, mode string, wait time.Duration) ([]eventlog.Delivery, error) {
	ds, err := c.log.Fetch(ctx, mode, 1, wait)
	if !errors.Is(err, eventlog.ErrNoQueue) {
		return ds, err
	}
	if !c.hasWork(mode) {
		return nil, err
	}
	if err := c.log.EnsureQueue(ctx, mode); err != nil {
		return nil, err
	}
	return c.log.Fetch(ctx, mode, 1, wait)
}

// poll serves the waiters of one mode until there are none, or the mode has no work.
func (c *claims) poll(mode string, mw *modeWaiters) {
	defer c.wg.Done()
	// Fetches fail for a moment when a replicated consumer is new and elects its leader:
	// failures are a warning once they last, and then once a minute.
	var failing, warned time.Time
	for {
		c.mu.Lock()
		mw.waiters = pruned(mw.waiters)
		if len(mw.waiters) == 0 || c.ctx.Err() != nil {
			mw.polling = false
			delete(c.modes, mode)
			c.mu.Unlock()
			return
		}
		c.mu.Unlock()

		ds, err := c.fetch(c.ctx, mode, pollWait)
		switch {
		case errors.Is(err, eventlog.ErrNoQueue):
			// No task of the mode, and no consumer: wait for one to be queued.
			select {
			case <-mw.work:
			case <-time.After(pollWait):
			case <-c.ctx.Done():
			}
			continue
		case err != nil:
			if c.ctx.Err() == nil {
				now := time.Now()
				if failing.IsZero() {
					failing = now
				}
				if now.Sub(failing) >= failWarnAfter && now.Sub(warned) >= time.Minute {
					warned = now
					c.logger.Warn("cannot fetch from the task queue", "mode", mode, "failing_for", now.Sub(failing).Round(time.Second), "err", err)
				} else {
					c.logger.Debug("cannot fetch from the task queue; retrying", "mode", mode, "err", err)
				}
				select {
				case <-time.After(time.Second):
				case <-c.ctx.Done():
				}
			}
			continue
		}
		failing = time.Time{}
		for _, d := range ds {
			if !c.hand(mw, d) {
				if err := c.log.Release(d.AckSubject, 0); err != nil {
					c.logger.Warn("cannot release a task nobody waited for", "task", d.TaskID, "err", err)
				}
			}
		}
	}
}

// hand gives d to the longest-waiting claim of a mode, reporting false if there is none.
func (c *claims) hand(mw *modeWaiters, d eventlog.Delivery) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for len(mw.waiters) > 0 {
		w := mw.waiters[0]
		mw.waiters[0] = nil
		mw.waiters = mw.waiters[1:]
		if !w.done {
			w.done = true
			w.ch <- d
			return true
		}
	}
	return false
}

func pruned(ws []*waiter) []*waiter {
	kept := ws[:0]
	for _, w := range ws {
		if !w.done {
			kept = append(kept, w)
		}
	}
	clear(ws[len(kept):])
	return kept
}

// wait returns when every poll goroutine has ended (after the hub's context ended).
func (c *claims) wait() { c.wg.Wait() }
