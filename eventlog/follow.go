package eventlog

import (
	"context"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// followStall is how long a follower may receive nothing while the log holds an event this
// process appended and the follower has not delivered, before it makes a new consumer from its
// next sequence.
//
// The consumer stalls without it when the process is busy. nats.go's pull consumer (v1.55 and
// v1.56) asks the server for more once fewer than half its batch are outstanding, unless its
// previous request is still being sent, and then it skips the request; when the rest of the
// batch is consumed before that send returns (its goroutine waits for a busy core) it asks for
// nothing more. The server, holding no request, sends nothing, not even heartbeats, and only
// the missed heartbeats (2 s) revive the consumer. Measured on one core at 9,000 events/s: 15
// such stalls in 10 s, and watchers saw events 2.5 to 5 s late (p50).
const followStall = 100 * time.Millisecond

// follower reads the event stream with an ordered consumer and hands each message's entry to
// fn, one at a time and in sequence order, from its start sequence on. When its consumer
// stalls (followStall) it consumes a new one from the sequence after the last it delivered; a
// message of the replaced consumer that still comes is dropped.
type follower struct {
	l  *Log
	fn func(e *Entry, pending uint64)

	mu       sync.Mutex // held while a message is handed to fn, and while the consumer is replaced
	next     uint64     // the sequence expected next
	last     time.Time  // when fn last returned, or the consumer was made
	behind   time.Time  // since when the log holds an appended event not delivered; zero: it does not
	cons     jetstream.Consumer
	cc       jetstream.ConsumeContext
	stopped  bool
	failing  bool // the last replacement failed (logged once)
	stopOnce sync.Once
	done     chan struct{}
}

// follow starts a follower from sequence from, and returns its stop. From 0, its first consumer
// delivers the last event of every subject, then every event after (a log read whole, see
// Follow).
func (l *Log) follow(ctx context.Context, from uint64, fn func(e *Entry, pending uint64)) (stop func(), err error) {
	f := &follower{l: l, fn: fn, next: from, done: make(chan struct{})}
	f.mu.Lock()
	err = f.consume(ctx)
	f.mu.Unlock()
	if err != nil {
		return nil, err
	}
	l.followers.Store(f, struct{}{})
	l.following.Add(1)
	l.wg.Go(f.watch)
	return f.stop, nil
}

// consume makes a consumer from f.next and consumes it. The caller holds f.mu.
func (f *follower) consume(ctx context.Context) error {
	// No filter: the stream holds only tasks.> and the probes, and the follower wants both. A
	// filter of those two subjects would be the same messages at a far higher price: the server
	// matches a consumer of several filters against every subject of a block for each message
	// (29 % of a busy server's CPU with 1000 running tasks).
	cfg := jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: f.next}
	if f.next == 0 {
		cfg = jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverLastPerSubjectPolicy}
	}
	cons, err := f.l.events.OrderedConsumer(ctx, cfg)
	if err != nil {
		return f.l.unavailable("follow", err)
	}
	cc, err := cons.Consume(f.receive, jetstream.PullHeartbeat(followHeartbeat))
	if err != nil {
		return f.l.unavailable("follow", err)
	}
	f.cons, f.cc, f.last, f.behind = cons, cc, time.Now(), time.Time{}
	return nil
}

func (f *follower) receive(m jetstream.Msg) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.stopped {
		return // before entry, which would take a record of this process's for nothing
	}
	e, pending, ok := f.l.entry(m)
	if !ok || e.Seq < f.next {
		return // a replaced consumer's (entry took no record: the follower has passed it)
	}
	f.next = e.Seq + 1
	f.fn(e, pending)
	f.last, f.behind = time.Now(), time.Time{} // after fn: the time fn takes is not a stall
}

// watch replaces a stalled consumer until the follower stops or the log closes: one that has
// delivered nothing for followStall, while the log has held an event this process appended and
// the follower has not delivered for as long.
func (f *follower) watch() {
	t := time.NewTicker(followStall / 4)
	defer t.Stop()
	for {
		select {
		case <-f.done:
			return
		case <-f.l.life.Done():
			f.stop()
			return
		case <-t.C:
		}
		f.mu.Lock()
		if f.stalled(time.Now()) {
			f.replace()
		}
		f.mu.Unlock()
	}
}

// stalled reports whether the consumer is stalled at now: the log has held an event this
// process appended and the follower has not delivered for followStall, and the follower has
// delivered nothing for as long. The caller holds f.mu.
func (f *follower) stalled(now time.Time) bool {
	switch {
	case f.stopped || f.l.appended.Load() < max(f.next, 1): // from 0: behind once this process appended
		f.behind = time.Time{}
	case f.behind.IsZero():
		f.behind = now
	case now.Sub(f.behind) >= followStall && now.Sub(f.last) >= followStall:
		return true
	}
	return false
}

// replace consumes a new consumer in place of the stalled one, and deletes the stalled one's
// from the server (which would otherwise keep it for minutes). The caller holds f.mu.
func (f *follower) replace() {
	f.cc.Stop()
	if info := f.cons.CachedInfo(); info != nil {
		name := info.Name
		f.l.wg.Go(func() {
			ctx, cancel := context.WithTimeout(f.l.life, 5*time.Second)
			defer cancel()
			_ = f.l.events.DeleteConsumer(ctx, name) // gone already, or the server's clean-up will do
		})
	}
	ctx, cancel := context.WithTimeout(f.l.life, 2*time.Second)
	defer cancel()
	if err := f.consume(ctx); err != nil {
		f.last, f.behind = time.Now(), time.Time{} // try again after followStall
		if !f.failing {
			f.failing = true
			f.l.logger.Warn("event log: the follower stalled and could not make a new consumer; trying again", "seq", f.next, "err", err)
		}
		return
	}
	if f.failing {
		f.failing = false
		f.l.logger.Info("event log: the follower has a new consumer", "seq", f.next)
	}
	f.l.followRestarts.Add(1)
}

func (f *follower) stop() {
	f.stopOnce.Do(func() {
		f.mu.Lock()
		f.stopped = true
		f.cc.Stop()
		f.mu.Unlock()
		f.l.followers.Delete(f)
		f.l.following.Add(-1)
		close(f.done)
	})
}
