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

// startWatch is a subscriber's first message: the watch it feeds and where its client is. The
// subscribers share one Props, so this is how a subscriber learns which watch is its own.
type startWatch struct {
	w     *Watch
	epoch string // the client's, with after: what it has seen
	after uint64
}

// Messages a subscriber sends itself.
type (
	// drained: the client took everything queued while the subscriber was catching up.
	drained struct{}
	// replayDone: the replay goroutine read the log up to replayTo, or failed.
	replayDone struct{ err error }
)

var (
	errWatchClosed  = taskhub.Errorf(taskhub.Unavailable, "the watch was closed")
	errWatchFailed  = taskhub.Errorf(taskhub.Unavailable, "the watch failed; resume with the last seq you saw")
	errTooFarBehind = taskhub.Errorf(taskhub.Unavailable, "this watch fell behind the history the server keeps; watch again for a fresh snapshot")
	errShuttingDown = taskhub.Errorf(taskhub.Unavailable, "the server is shutting down; resume with the last seq you saw")
)

// subscriber feeds one WatchTasks stream. It decides how the stream starts (a fresh snapshot,
// or a recovered one and a replay), and it fills its watch's outbox from the log whenever the
// outbox could not keep every live event. Live events do not pass through it: the feed offers
// them to the outbox directly (see outbox), so a busy server never queues them ahead of the
// outbox, where they could be neither coalesced nor bounded.
//
// It holds little, as there is one per open stream. Its watch arrives in its first message; a
// subscriber that fails ends its watch (the client resumes by seq), so the fresh instance a
// restart makes, which has no watch, does nothing.
type subscriber struct {
	h      *Hub
	w      *Watch             // nil until startWatch
	cancel context.CancelFunc // of the replay under way
	from   uint64             // the replay under way started after this seq
}

func (s *subscriber) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *startWatch:
		s.w = m.w
		self, root := ctx.Self(), s.h.root
		s.w.out.behind = func() { root.Send(self, &drained{}) }
		s.start(self, m.epoch, m.after)
	case *drained:
		if s.w != nil {
			s.replay(ctx.Self(), false, 0)
		}
	case *replayDone:
		if s.w != nil {
			s.replayed(ctx.Self(), m.err)
		}
	case *actor.Restarting:
		s.stop(errWatchFailed)
	case *actor.Stopping:
		s.stop(errWatchClosed)
	}
}

// stop ends the watch with err (errShuttingDown if the hub is closing).
func (s *subscriber) stop(err error) {
	if s.w == nil {
		return
	}
	s.h.feed.unsubscribe(s.w.owner, s.w)
	if s.cancel != nil {
		s.cancel()
	}
	if s.h.closed.Load() {
		err = errShuttingDown
	}
	s.w.out.close(err)
}

func (s *subscriber) start(self *actor.PID, clientEpoch string, after uint64) {
	out := &s.w.out
	epoch := s.h.log.Epoch()
	if w := s.h.written.Load(); w > s.h.feed.position() {
		// Read your writes: a watch opened after a call was answered sees what it wrote.
		s.h.feed.await(context.Background(), w, time.Second)
	}
	if clientEpoch == epoch && after > s.h.feed.position() {
		// A client may have seen (on a page rendered from the log) events this hub has not
		// applied yet: wait for them, briefly, rather than start it afresh.
		ctx, cancel := context.WithTimeout(context.Background(), s.h.cfg.CallTimeout)
		if _, last, err := s.h.log.Bounds(ctx); err == nil && after <= last {
			s.h.feed.await(ctx, after, time.Second)
		}
		cancel()
	}
	pos, active := s.h.feed.subscribe(s.w.owner, s.w)
	if s.h.closed.Load() {
		// Close stops the watches it finds registered; this one may have come after it looked,
		// and with the hub's heartbeat loop gone nothing else would wake its stream.
		out.close(errShuttingDown)
		return
	}
	resume := clientEpoch == epoch && after > 0 && after <= pos && after >= s.h.compactor.watermark.Load()
	if resume && after < pos {
		ctx, cancel := context.WithTimeout(context.Background(), s.h.cfg.CallTimeout)
		first, _, err := s.h.log.Bounds(ctx)
		cancel()
		if err != nil {
			out.close(taskhub.Errorf(taskhub.Unavailable, "read the event log: %v", err))
			return
		}
		resume = first != 0 && first <= after+1
	}
	if !resume {
		out.pushStart(&item{seq: pos, snap: &snapshot{epoch: epoch, seq: pos, tasks: active}})
		s.goLive(self) // nothing to replay
		return
	}
	out.push(&item{seq: after, msg: taskhub.NewMessage(&taskhubv1.WatchTasksResponse{Message: &taskhubv1.WatchTasksResponse_Snapshot{
		Snapshot: &taskhubv1.Snapshot{Epoch: epoch, Seq: after, Recovered: true},
	}})})
	s.replay(self, true, after)
}

// replay reads the owner's events the outbox needs from the log into it, on a goroutine that
// waits for room as the client reads.
func (s *subscriber) replay(self *actor.PID, start bool, after uint64) {
	out := &s.w.out
	from, to, ok := out.startReplay(start, after)
	if !ok {
		return
	}
	if from-1 < s.h.compactor.watermark.Load() {
		out.close(errTooFarBehind) // events it needs may be gone
		return
	}
	s.from = from - 1
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	filter, log := eventlog.OwnerFilter(s.w.owner), s.h.log
	root, timeout := s.h.root, s.h.cfg.CallTimeout
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

func (s *subscriber) replayed(self *actor.PID, err error) {
	out := &s.w.out
	if err != nil {
		out.close(taskhub.Errorf(taskhub.Unavailable, "replay from the event log: %v", err))
		return
	}
	if s.h.compactor.watermark.Load() > s.from {
		out.close(errTooFarBehind) // a compaction may have removed events during the replay
		return
	}
	s.goLive(self)
}

// goLive ends the start or a replay: the outbox queues the events it held meanwhile and goes
// live, or, when more came than it could hold, they are replayed from the log, as the client
// makes room.
func (s *subscriber) goLive(self *actor.PID) {
	if s.w.out.finishReplay() {
		s.replay(self, false, 0)
	}
}
