package actors

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/taskhub/taskhub/eventlog"
)

// claims hands queue deliveries to waiting ClaimTask calls. While a mode has waiters, one
// goroutine keeps a pull request open on the mode's consumer and gives each delivery to the
// longest-waiting claim; a delivery that finds no waiter is released at once. A claim waiting on
// several modes takes the first delivery of any of them.
type claims struct {
	log    Log
	logger *slog.Logger
	ctx    context.Context // ends when the hub closes
	wg     sync.WaitGroup

	mu    sync.Mutex
	modes map[string]*modeWaiters
}

type modeWaiters struct {
	waiters []*waiter
	polling bool
}

type waiter struct {
	ch   chan eventlog.Delivery // cap 1
	done bool                   // served or gone; guarded by claims.mu
}

// pollWait bounds each pull request, so an idle mode's goroutine looks again at its waiters.
const pollWait = 5 * time.Second

func newClaims(ctx context.Context, log Log, logger *slog.Logger) *claims {
	return &claims{log: log, logger: logger, ctx: ctx, modes: map[string]*modeWaiters{}}
}

// next returns a delivery of one of modes, waiting up to wait for one; nil if none came.
func (c *claims) next(ctx context.Context, modes []string, wait time.Duration) (*eventlog.Delivery, error) {
	if wait <= 0 {
		for _, m := range modes {
			ds, err := c.log.Fetch(ctx, m, 1, 0)
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
			mw = &modeWaiters{}
			c.modes[m] = mw
		}
		mw.waiters = append(mw.waiters, w)
		if !mw.polling {
			mw.polling = true
			c.wg.Add(1)
			go c.poll(m)
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
	c.mu.Unlock()
	select {
	case d := <-w.ch: // it came just now
		return &d, nil
	default:
		return nil, nil
	}
}

// poll serves the waiters of one mode until there are none.
func (c *claims) poll(mode string) {
	defer c.wg.Done()
	for {
		c.mu.Lock()
		mw := c.modes[mode]
		mw.waiters = pruned(mw.waiters)
		if len(mw.waiters) == 0 || c.ctx.Err() != nil {
			mw.polling = false
			c.mu.Unlock()
			return
		}
		c.mu.Unlock()

		ds, err := c.log.Fetch(c.ctx, mode, 1, pollWait)
		if err != nil {
			if c.ctx.Err() == nil {
				c.logger.Warn("cannot fetch from the task queue", "mode", mode, "err", err)
				select {
				case <-time.After(time.Second):
				case <-c.ctx.Done():
				}
			}
			continue
		}
		for _, d := range ds {
			if !c.hand(mode, d) {
				if err := c.log.Release(d.AckSubject, 0); err != nil {
					c.logger.Warn("cannot release a task nobody waited for", "task", d.TaskID, "err", err)
				}
			}
		}
	}
}

// hand gives d to the longest-waiting claim of mode, reporting false if there is none.
func (c *claims) hand(mode string, d eventlog.Delivery) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	mw := c.modes[mode]
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
