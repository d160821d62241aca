package actors

import (
	"context"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"

	"github.com/taskhub/taskhub"
)

// startWatch is a subscriber's first message: the watch it feeds and where its client is. The
// subscribers share one Props, so this is how a subscriber learns which watch is its own.
type startWatch struct {
	w     *Watch
	epoch string // the client's, with after: what it has seen
	after uint64
}

var (
	errWatchClosed  = taskhub.Errorf(taskhub.Unavailable, "the watch was closed")
	errWatchFailed  = taskhub.Errorf(taskhub.Unavailable, "the watch failed; resume with the last seq you saw")
	errTooFarBehind = taskhub.Errorf(taskhub.Unavailable, "this watch fell behind the history the server keeps; watch again for a fresh snapshot")
	errShuttingDown = taskhub.Errorf(taskhub.Unavailable, "the server is shutting down; resume with the last seq you saw")
)

// subscriber starts one WatchTasks stream and ends it. It decides how the stream starts: a
// fresh snapshot, or, for a client that resumes, a recovered one and the events it missed. From
// then on the watch's outbox and the stream's send loop do the rest (see outbox): live events
// go from the feed straight into the outbox, so a busy server never queues them ahead of it,
// where they could be neither coalesced nor bounded; and what the outbox could not keep, the
// send loop reads from the log as the client makes room.
//
// It holds little, as there is one per open stream. Its watch arrives in its first message; a
// subscriber that fails ends its watch (the client resumes by seq), so the fresh instance a
// restart makes, which has no watch, does nothing.
type subscriber struct {
	h *Hub
	w *Watch // nil until startWatch
}

func (s *subscriber) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *startWatch:
		s.w = m.w
		s.start(m.epoch, m.after)
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
	if s.h.closed.Load() {
		err = errShuttingDown
	}
	s.w.out.close(err)
}

// clusterReadTimeout bounds the reads a watch makes in a cluster before it starts. A healthy
// stream leader answers in about a millisecond.
const clusterReadTimeout = 2 * time.Second

func (s *subscriber) start(clientEpoch string, after uint64) {
	out := &s.w.out
	epoch := s.h.log.Epoch()
	// Read your writes: a watch opened after a call was answered sees what it wrote.
	if w := s.h.log.Appended(); !s.h.cfg.Shared && w > s.h.feed.position() {
		s.h.feed.await(context.Background(), w, time.Second)
	}
	if s.h.cfg.Shared {
		// The call may have been answered by another node: wait for what the log holds. Not
		// long: while the stream elects a leader it cannot say, and nothing new is written.
		ctx, cancel := context.WithTimeout(context.Background(), clusterReadTimeout)
		if _, last, err := s.h.log.Bounds(ctx); err == nil {
			s.h.feed.await(ctx, last, time.Second)
		}
		cancel()
	}
	behind := false // the client saw events of the log this hub has not applied yet
	if clientEpoch == epoch && after > s.h.feed.position() {
		// It may have seen them on another node, or on a page rendered from the log: wait for
		// them, briefly. A client whose seq is past the log's end is started afresh below.
		ctx, cancel := context.WithTimeout(context.Background(), min(s.h.cfg.CallTimeout, clusterReadTimeout))
		if _, last, err := s.h.log.Bounds(ctx); err == nil && after <= last {
			behind = !s.h.feed.await(ctx, after, clusterReadTimeout)
		}
		cancel()
	}
	if behind {
		// A fresh snapshot from here would be older than what the client has seen.
		out.close(taskhub.Errorf(taskhub.Unavailable, "this node has not caught up with the event log to seq %d yet; resume again, here or on another node", after))
		return
	}
	pos, active := s.h.feed.subscribe(s.w.owner, s.w)
	if s.h.closed.Load() {
		// Close stops the watches it finds registered; this one may have come after it looked,
		// and with the hub's heartbeat loop gone nothing else would wake its stream.
		out.close(errShuttingDown)
		return
	}
	resume := clientEpoch == epoch && after > 0 && after <= pos
	if resume {
		// In a cluster this reads the log, which cannot answer while a stream elects a leader:
		// the client is told to retry rather than held for the whole call timeout.
		ctx, cancel := context.WithTimeout(context.Background(), min(s.h.cfg.CallTimeout, clusterReadTimeout))
		floor, err := s.h.compactor.floor(ctx)
		cancel()
		if err != nil {
			out.close(err)
			return
		}
		resume = after >= floor
	}
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
		out.begin(&item{seq: pos, snap: &snapshot{epoch: epoch, seq: pos, tasks: active}}, pos)
		return
	}
	out.begin(&item{seq: after, msg: taskhub.NewMessage(&taskhubv1.WatchTasksResponse{Message: &taskhubv1.WatchTasksResponse_Snapshot{
		Snapshot: &taskhubv1.Snapshot{Epoch: epoch, Seq: after, Recovered: true},
	}})}, after)
}
