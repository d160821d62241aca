package actors

import (
	"context"
	"errors"
	"log/slog"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	storagev1 "github.com/taskhub/taskhub/gen/taskhub/storage/v1"
	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"

	"github.com/taskhub/taskhub"
	"github.com/taskhub/taskhub/eventlog"
	"github.com/taskhub/taskhub/webhook"
)

// hookCall bounds each read and write of the deliveries: after a node's loss a request to a
// stream electing a leader goes unanswered, and the next attempt, a second later, finds the
// new one sooner than a long wait would.
const hookCall = 3 * time.Second

// hooks delivers the events of tasks with a webhook, from the event log: each such task has a
// delivery loop that reads the task's events after its cursor, POSTs those its webhook asks
// for, one at a time and in order, retrying a failure with backoff, and records the cursor in
// the log's cursor bucket after each. Only the node that leads (the one that settles finished
// tasks; any single node) delivers: when another takes the lead over, it starts a loop for
// every task with a webhook that is active or unsettled, each resuming at its recorded cursor.
// An event is delivered at least once: a node that dies between a delivery and its cursor's
// write leaves the next node to deliver it again (with the same webhook-id).
//
// A finished task stays unsettled (its history whole, in the live index) until its deliveries
// are done: its final event handled, or given up after failing for Config.GiveUpAfter.
type hooks struct {
	log interface {
		Cursors
		Next(ctx context.Context, filter string, from uint64) (*eventlog.Entry, error)
		Get(ctx context.Context, seq uint64) (*eventlog.Entry, error)
	}
	// index finds a task's next event in the feed's index of tasks with a webhook
	// (feed.nextOfTask); nil: the log is searched.
	index  func(id string, seq uint64) (uint64, bool)
	sender *webhook.Sender
	logger *slog.Logger
	life   context.Context

	delivered, failed, gaveUp atomic.Uint64
	failing                   atomic.Int64 // tasks whose next delivery is failing now

	mu      sync.Mutex
	leading bool
	lead    context.Context // ends when this node stops leading
	endLead context.CancelFunc
	loops   map[string]*hookLoop                // task id -> its delivery loop, while one runs
	cursors map[string]*storagev1.WebhookCursor // where loops that ran out of events left off
	done    map[string]bool                     // tasks whose deliveries are done, until settled
	wg      sync.WaitGroup
}

type hookLoop struct {
	owner, id string
	wake      chan struct{} // a new event of the task
	failing   bool          // counted in hooks.failing
}

// setFailing counts the loop among those whose next delivery fails, or not.
func (k *hooks) setFailing(l *hookLoop, failing bool) {
	if l.failing != failing {
		l.failing = failing
		if failing {
			k.failing.Add(1)
		} else {
			k.failing.Add(-1)
		}
	}
}

func newHooks(life context.Context, log Log, sender *webhook.Sender, logger *slog.Logger) *hooks {
	return &hooks{log: log, sender: sender, logger: logger, life: life,
		loops: map[string]*hookLoop{}, cursors: map[string]*storagev1.WebhookCursor{}, done: map[string]bool{}}
}

// setLeading starts or stops this node's deliveries. Taking the lead over starts a loop for
// each task in tasks (owner, id) that might have events left to deliver.
func (k *hooks) setLeading(leading bool, tasks [][2]string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if leading == k.leading {
		return
	}
	k.leading = leading
	if !leading {
		k.endLead()
		// The next leader decides, from the stored cursors; the loops of this lead end.
		clear(k.loops)
		clear(k.cursors)
		clear(k.done)
		return
	}
	k.lead, k.endLead = context.WithCancel(k.life)
	for _, t := range tasks {
		k.startLocked(t[0], t[1])
	}
}

// notify tells the deliveries that a task with a webhook has a new event of a kind it sends, or
// its final event. (The others are passed over when the next of those is delivered.)
func (k *hooks) notify(owner, id string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.leading {
		k.startLocked(owner, id)
	}
}

func (k *hooks) startLocked(owner, id string) {
	if l := k.loops[id]; l != nil {
		select {
		case l.wake <- struct{}{}:
		default:
		}
		return
	}
	if k.done[id] {
		return
	}
	l := &hookLoop{owner: owner, id: id, wake: make(chan struct{}, 1)}
	k.loops[id] = l
	k.wg.Go(func() { k.run(k.lead, l) })
}

// settleable reports whether a finished task's deliveries are done, so that its history may
// go; if no loop is finding that out, it starts one. Only the leader asks.
func (k *hooks) settleable(owner, id string) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.done[id] {
		return true
	}
	if k.leading {
		k.startLocked(owner, id)
	}
	return false
}

// settled forgets a task that the compactor settled.
func (k *hooks) settled(id string) {
	k.mu.Lock()
	delete(k.done, id)
	delete(k.cursors, id)
	k.mu.Unlock()
}

// idle ends a loop that has nothing to deliver, unless an event came meanwhile: then it goes on.
// A loop that ends keeps its cursor in memory while this node leads: the next event of the
// task starts a loop there, without reading it back.
func (k *hooks) idle(l *hookLoop, done bool, cur *storagev1.WebhookCursor) (ended bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if !done {
		select {
		case <-l.wake:
			return false
		default:
		}
	}
	k.setFailing(l, false)
	if k.loops[l.id] != l {
		return true // a loop of a lead this node lost
	}
	delete(k.loops, l.id)
	switch {
	case done:
		k.done[l.id] = true
	case cur != nil:
		k.cursors[l.id] = cur
	}
	return true
}

// wait sleeps for d, or until the task has a new event (wake) or ctx ends.
func wait(ctx context.Context, d time.Duration, wake <-chan struct{}) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	case <-wake:
	}
}

// run is a task's delivery loop: see hooks.
func (k *hooks) run(ctx context.Context, l *hookLoop) {
	k.mu.Lock()
	cur := k.cursors[l.id]
	delete(k.cursors, l.id)
	k.mu.Unlock()
	if cur == nil {
		cur = k.cursor(ctx, l.id)
	}
	if cur == nil {
		k.idle(l, false, nil)
		return
	}
	st := cur.Status
	if st.Done {
		k.idle(l, true, cur)
		return
	}
	subject := eventlog.Subject(l.owner, l.id)
	for ctx.Err() == nil {
		call, cancel := context.WithTimeout(ctx, hookCall)
		e, err := k.next(call, l, subject, st.DeliveredSeq+1)
		cancel()
		if errors.Is(err, eventlog.ErrNotFound) {
			if k.idle(l, false, cur) {
				return
			}
			continue
		}
		if err != nil {
			k.logger.Debug("webhook: cannot read the task's next event; will retry", "task", l.id, "err", err)
			wait(ctx, time.Second, nil)
			continue
		}
		ev := proto.CloneOf(e.Record.Event)
		ev.Seq = e.Seq
		wh, terminal := ev.Task.GetWebhook(), taskhub.Terminal(ev.Task.State)
		send := wh != nil && webhook.Wants(wh, ev.Kind)
		if send && ev.Kind == taskhubv1.EventKind_EVENT_KIND_PROGRESS && cur.ProgressSentAt != nil {
			next := cur.ProgressSentAt.AsTime().Add(webhook.ProgressInterval(wh))
			if ev.Time.AsTime().Before(next) {
				// Too soon after the last: skipped if a later event is stored (as far as this
				// node's feed has applied, see next); else sent when the interval is over,
				// unless a later event comes first.
				call, cancel := context.WithTimeout(ctx, hookCall)
				_, err := k.next(call, l, subject, e.Seq+1)
				cancel()
				if err == nil {
					send = false
				} else if d := time.Until(next); d > 0 {
					wait(ctx, d, l.wake)
					continue
				}
			}
		}
		if send {
			if !k.deliver(ctx, l, ev, cur) {
				if st.GaveUp {
					k.put(ctx, l.id, cur)
					k.idle(l, true, cur)
					return
				}
				continue // retry, or the lead is gone
			}
		}
		st.DeliveredSeq = e.Seq
		if terminal {
			st.Done = true
		}
		if send || terminal {
			k.put(ctx, l.id, cur)
		}
		if terminal {
			k.idle(l, true, cur)
			return
		}
	}
	k.idle(l, false, nil)
}

// next reads the task's first event at or after from (ErrNotFound if there is none yet): by
// its sequence from the feed's index of the tasks with a webhook (see history), or by asking
// the log for the next event on the task's subject (see indexedRead). "Yet" is as far as this
// node's feed has applied, for an indexed read: the loop is woken when it applies more.
func (k *hooks) next(ctx context.Context, l *hookLoop, subject string, from uint64) (*eventlog.Entry, error) {
	if k.index == nil {
		return k.log.Next(ctx, subject, from)
	}
	index := func(seq uint64) (uint64, bool) { return k.index(l.id, seq) }
	return indexedRead(ctx, k.log, index, subject, func(s string) bool { return s == subject }, from, math.MaxUint64)
}

// deliver sends one event and records the outcome in cur; after a failure it waits out the
// backoff. It reports whether the event was delivered.
func (k *hooks) deliver(ctx context.Context, l *hookLoop, ev *taskhubv1.TaskEvent, cur *storagev1.WebhookCursor) bool {
	st := cur.Status
	err := k.sender.Send(ctx, ev)
	if err == nil {
		k.setFailing(l, false)
		st.FailedAttempts, st.LastError, st.FailingSince = 0, "", nil
		if ev.Kind == taskhubv1.EventKind_EVENT_KIND_PROGRESS {
			cur.ProgressSentAt = ev.Time
		}
		k.delivered.Add(1)
		return true
	}
	if ctx.Err() != nil {
		return false
	}
	k.failed.Add(1)
	now := time.Now()
	if st.FailingSince == nil {
		st.FailingSince = timestamppb.New(now)
	}
	k.setFailing(l, true)
	st.FailedAttempts++
	st.LastError = err.Error()
	var refused *webhook.Refused
	if errors.As(err, &refused) || now.Sub(st.FailingSince.AsTime()) >= k.sender.Config().GiveUpAfter {
		st.GaveUp, st.Done = true, true
		k.gaveUp.Add(1)
		k.logger.Warn("webhook: gave up delivering a task's events", "task", l.id, "seq", ev.Seq, "attempts", st.FailedAttempts, "err", err)
		return false
	}
	k.logger.Debug("webhook: delivery failed; will retry", "task", l.id, "seq", ev.Seq, "attempts", st.FailedAttempts, "err", err)
	k.put(ctx, l.id, cur)
	wait(ctx, k.sender.Backoff(st.FailedAttempts), nil)
	return false
}

// cursor reads a task's cursor (a new one if none was written), retrying while the log is
// unavailable; nil once ctx ends.
func (k *hooks) cursor(ctx context.Context, id string) *storagev1.WebhookCursor {
	for ctx.Err() == nil {
		call, cancel := context.WithTimeout(ctx, hookCall)
		c, err := k.log.WebhookCursor(call, id)
		cancel()
		switch {
		case errors.Is(err, eventlog.ErrNotFound):
			return &storagev1.WebhookCursor{Status: &taskhubv1.WebhookStatus{}}
		case err == nil:
			if c.Status == nil {
				c.Status = &taskhubv1.WebhookStatus{}
			}
			return c
		}
		k.logger.Debug("webhook: cannot read a cursor; will retry", "task", id, "err", err)
		wait(ctx, time.Second, nil)
	}
	return nil
}

// put records a task's cursor, retrying while the log is unavailable and this node leads.
func (k *hooks) put(ctx context.Context, id string, c *storagev1.WebhookCursor) {
	for ctx.Err() == nil {
		call, cancel := context.WithTimeout(ctx, hookCall)
		err := k.log.PutWebhookCursor(call, id, c)
		cancel()
		if err == nil {
			return
		}
		k.logger.Debug("webhook: cannot record a cursor; will retry", "task", id, "err", err)
		wait(ctx, time.Second, nil)
	}
}

// stop waits for the delivery loops to end once the hub's life has ended.
func (k *hooks) stop() { k.wg.Wait() }
