package actors

import (
	"context"
	"errors"
	"time"

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

// subscriber feeds one WatchTasks stream. It decides how the stream starts (a fresh snapshot,
// or a recovered one and a replay), and it fills its outbox from the log whenever the outbox
// could not keep every live event. Live events do not pass through it: the feed offers them to
// the outbox directly (see outbox), so a busy server never queues them ahead of the outbox,
// where they could be neither coalesced nor bounded.
type subscriber struct {
	h      *Hub
	owner  string
	epoch  string
	after  uint64
	out    *outbox
	self   *actor.PID
	cancel context.CancelFunc // of the replay under way
	from   uint64             // the replay under way started after this seq
}

func (s *subscriber) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		s.self = ctx.Self()
		self, root := s.self, s.h.root
		s.out.behind = func() { root.Send(self, &drained{}) }
		s.start()
	case *drained:
		s.replay(false, 0)
	case *replayDone:
		s.replayed(m.err)
	case *actor.Stopping:
		s.h.feed.unsubscribe(s.owner, s.out)
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
	epoch := s.h.log.Epoch()
	if s.epoch == epoch && s.after > s.h.feed.position() {
		// A client may have seen (on a page rendered from the log) events this hub has not
		// applied yet: wait for them, briefly, rather than start it afresh.
		ctx, cancel := context.WithTimeout(context.Background(), s.h.cfg.CallTimeout)
		if _, last, err := s.h.log.Bounds(ctx); err == nil && s.after <= last {
			s.h.feed.await(ctx, s.after, time.Second)
		}
		cancel()
	}
	pos, active := s.h.feed.subscribe(s.owner, s.out, s.self)
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
		s.out.finishReplay() // nothing to replay: go live
		return
	}
	s.out.push(&item{seq: s.after, resp: &taskhubv1.WatchTasksResponse{Message: &taskhubv1.WatchTasksResponse_Snapshot{
		Snapshot: &taskhubv1.Snapshot{Epoch: epoch, Seq: s.after, Recovered: true},
	}}})
	s.replay(true, s.after)
}

// replay reads the owner's events the outbox needs from the log into it, on a goroutine that
// waits for room as the client reads.
func (s *subscriber) replay(start bool, after uint64) {
	from, to, ok := s.out.startReplay(start, after)
	if !ok {
		return
	}
	if from-1 < s.h.compactor.watermark.Load() {
		s.out.close(errTooFarBehind) // events it needs may be gone
		return
	}
	s.from = from - 1
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	filter, log, out := eventlog.OwnerFilter(s.owner), s.h.log, s.out
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
	if err != nil {
		s.out.close(taskhub.Errorf(taskhub.Unavailable, "replay from the event log: %v", err))
		return
	}
	if s.h.compactor.watermark.Load() > s.from {
		s.out.close(errTooFarBehind) // a compaction may have removed events during the replay
		return
	}
	if s.out.finishReplay() {
		s.replay(false, 0)
	}
}
