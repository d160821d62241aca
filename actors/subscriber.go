package actors

import (
	"context"
	"errors"

	"github.com/asynkron/protoactor-go/actor"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"

	"github.com/taskhub/taskhub"
	"github.com/taskhub/taskhub/eventlog"
)

// Messages a subscriber sends itself.
type (
	// drained: the client took everything queued while the subscriber was catching up.
	drained struct{}
	// replayDone: the replay goroutine read the log up to replayTo, or failed.
	replayDone struct{ err error }
)

var (
	errWatchClosed  = taskhub.Errorf(taskhub.Unavailable, "the watch was closed")
	errTooFarBehind = taskhub.Errorf(taskhub.Unavailable, "this watch fell behind the history the server keeps; watch again for a fresh snapshot")
	errShuttingDown = taskhub.Errorf(taskhub.Unavailable, "the server is shutting down; resume with the last seq you saw")
)

// subscriber feeds one WatchTasks stream. It takes its owner's events from the feed and queues
// them in its outbox, which the stream's send loop empties.
//
// cursor is the promise it keeps: every event of the owner with seq <= cursor is queued, was
// taken, or was replaced by a newer progress event of the same task. When the outbox is full it
// stops queueing live events (catching up), waits until the client has taken everything, then
// replays the log from cursor + 1 to the feed's position while holding later live events aside,
// and rejoins live. A resume with after_seq is the same replay, started at once.
type subscriber struct {
	h      *Hub
	owner  string
	epoch  string
	after  uint64
	out    *outbox
	self   *actor.PID
	cursor uint64

	catchingUp bool    // live events are ignored until the outbox drains and a replay runs
	replaying  bool    // a replay goroutine is filling the outbox
	replayFrom uint64  // the replay started after this seq
	replayTo   uint64  // the replay ends at this seq
	held       []*item // live events after replayTo, queued when the replay is done
	heldLost   bool    // held overflowed and was dropped: replay again
	cancel     context.CancelFunc
}

func (s *subscriber) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		s.self = ctx.Self()
		s.start()
	case *item:
		s.live(m)
	case *drained:
		if s.catchingUp && !s.replaying {
			s.replay(s.h.feed.position())
		}
	case *replayDone:
		s.replayed(m.err)
	case *actor.Stopping:
		s.h.feed.unsubscribe(s.owner, s.self)
		if s.cancel != nil {
			s.cancel()
		}
		if s.h.closed.Load() {
			s.out.close(errShuttingDown)
		}
		s.out.close(errWatchClosed)
	}
}

func (s *subscriber) start() {
	pos, active := s.h.feed.subscribe(s.owner, s.self)
	epoch := s.h.log.Epoch()
	resume := s.epoch == epoch && s.after > 0 && s.after <= pos && s.after >= s.h.compactor.watermark.Load()
	if resume && s.after < pos {
		ctx, cancel := context.WithTimeout(context.Background(), s.h.cfg.CallTimeout)
		first, _, err := s.h.log.Bounds(ctx)
		cancel()
		if err != nil {
			s.out.close(taskhub.Errorf(taskhub.Unavailable, "read the event log: %v", err))
			return
		}
		resume = first != 0 && first <= s.after+1
	}
	if !resume {
		s.out.push(&item{seq: pos, resp: &taskhubv1.WatchTasksResponse{Message: &taskhubv1.WatchTasksResponse_Snapshot{
			Snapshot: &taskhubv1.Snapshot{Epoch: epoch, Seq: pos, Tasks: active},
		}}})
		s.cursor = pos
		return
	}
	s.out.push(&item{seq: s.after, resp: &taskhubv1.WatchTasksResponse{Message: &taskhubv1.WatchTasksResponse_Snapshot{
		Snapshot: &taskhubv1.Snapshot{Epoch: epoch, Seq: s.after, Recovered: true},
	}}})
	s.cursor = s.after
	if s.after < pos {
		s.replay(pos)
	}
}

func (s *subscriber) live(it *item) {
	switch {
	case it.seq <= s.cursor:
		// Queued already (by a replay).
	case s.replaying:
		if it.seq > s.replayTo && !s.heldLost {
			if len(s.held) >= s.h.cfg.OutboxLimit {
				s.held, s.heldLost = nil, true
			} else {
				s.held = append(s.held, it)
			}
		}
	case s.catchingUp:
		// The replay after the drain reads it from the log.
	default:
		s.queue(it)
	}
}

// queue puts a live event in the outbox, or starts catching up when it is full.
func (s *subscriber) queue(it *item) {
	if s.out.push(it) {
		s.cursor = it.seq
		return
	}
	s.catchingUp = true
	self, root := s.self, s.h.root
	s.out.whenDrained(func() { root.Send(self, &drained{}) })
}

// replay reads the owner's events after cursor up to seq to from the log into the outbox, on a
// goroutine that waits for room as the client reads.
func (s *subscriber) replay(to uint64) {
	if s.cursor < s.h.compactor.watermark.Load() {
		s.out.close(errTooFarBehind) // events it needs may be gone
		return
	}
	s.catchingUp, s.replaying, s.replayFrom, s.replayTo = false, true, s.cursor, to
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	from, filter, log, out := s.cursor+1, eventlog.OwnerFilter(s.owner), s.h.log, s.out
	self, root, timeout := s.self, s.h.root, s.h.cfg.CallTimeout
	go func() {
		err := func() error {
			for seq := from; seq <= to; {
				callCtx, cancelCall := context.WithTimeout(ctx, timeout)
				e, err := log.Next(callCtx, filter, seq)
				cancelCall()
				switch {
				case errors.Is(err, eventlog.ErrNotFound):
					return nil
				case err != nil:
					return err
				case e.Seq > to:
					return nil
				}
				if err := out.pushWait(ctx, eventItem(e)); err != nil {
					return err
				}
				seq = e.Seq + 1
			}
			return nil
		}()
		if ctx.Err() == nil {
			root.Send(self, &replayDone{err: err})
		}
	}()
}

func (s *subscriber) replayed(err error) {
	s.replaying = false
	if err != nil {
		s.out.close(taskhub.Errorf(taskhub.Unavailable, "replay from the event log: %v", err))
		return
	}
	if s.h.compactor.watermark.Load() > s.replayFrom {
		s.out.close(errTooFarBehind) // a compaction may have removed events during the replay
		return
	}
	s.cursor = s.replayTo
	held, lost := s.held, s.heldLost
	s.held, s.heldLost = nil, false
	if lost {
		s.replay(s.h.feed.position())
		return
	}
	for i, it := range held {
		if s.live(it); s.catchingUp {
			clear(held[i+1:])
			return
		}
	}
}
