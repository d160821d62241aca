package actors

import (
	"fmt"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/taskhub/taskhub"
)

// supervisor owns one actor per live task. It spawns a task's actor on the first command for it,
// forwards commands (each carries its reply channel: the task actor answers the caller directly), restarts
// an actor that panics, and stops idle ones when they ask.
type supervisor struct {
	h        *Hub
	children map[string]*actor.PID // task id -> its actor
	ids      map[string]string     // actor id -> task id
	aborting map[string]bool       // task ids whose actor crashed out and is failing the task
}

// maxRestarts is how many times a minute a task actor may panic and be restarted. One more, and
// the supervisor stops it and fails its task with a reason.
const maxRestarts = 10

// supervisorStrategy restarts a task actor that panics, up to maxRestarts times a minute; after
// that the actor is stopped.
func supervisorStrategy() actor.SupervisorStrategy {
	return actor.NewOneForOneStrategy(maxRestarts, time.Minute, func(any) actor.Directive {
		return actor.RestartDirective
	})
}

func (s *supervisor) spawn(ctx actor.Context, id string) *actor.PID {
	pid := ctx.Spawn(actor.PropsFromProducer(func() actor.Actor {
		return &taskActor{h: s.h, id: id}
	}, actor.WithReceiverMiddleware(replyOnPanic), actor.WithDispatcher(s.h.dispatcher)))
	s.children[id] = pid
	s.ids[pid.Id] = id
	return pid
}

func (s *supervisor) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		s.children = map[string]*actor.PID{}
		s.ids = map[string]string{}
		s.aborting = map[string]bool{}
	case *toTask:
		pid := s.children[m.id]
		if pid == nil {
			pid = s.spawn(ctx, m.id)
		}
		ctx.Forward(pid)
	case *passivate:
		// Poison, not Stop: commands already in the actor's mailbox are still answered, while
		// new ones go to a fresh actor (the log's fence keeps the two from both writing).
		if pid := s.children[m.id]; pid != nil && pid.Equal(ctx.Sender()) {
			delete(s.children, m.id)
			delete(s.ids, pid.Id)
			delete(s.aborting, m.id)
			ctx.Poison(pid)
		}
	case *actor.Terminated:
		// An actor that stops while still ours did not passivate: the strategy stopped it after
		// too many restarts. Fail its task with a fresh actor, once; if that one crashes out
		// too, give up on the task until the next command for it.
		id, ok := s.ids[m.Who.Id]
		if !ok {
			return
		}
		delete(s.ids, m.Who.Id)
		delete(s.children, id)
		if s.h.closed.Load() {
			return
		}
		if s.aborting[id] {
			delete(s.aborting, id)
			s.h.logger.Error("giving up on a task: its actor fails even to fail it", "task", id)
			return
		}
		s.aborting[id] = true
		s.h.logger.Error("a task's actor kept failing; failing the task", "task", id)
		ctx.Send(s.spawn(ctx, id), &toTask{id: id, cmd: &abortCmd{
			reason: fmt.Sprintf("internal error: taskhub could not process this task (its actor failed more than %d times within a minute)", maxRestarts),
		}})
	}
}

// replyOnPanic answers a command whose handling panicked, so the caller gets an error at once
// instead of a timeout, then lets the panic reach the supervisor, which restarts the actor.
func replyOnPanic(next actor.ReceiverFunc) actor.ReceiverFunc {
	return func(c actor.ReceiverContext, env *actor.MessageEnvelope) {
		defer func() {
			if r := recover(); r != nil {
				if m, ok := env.Message.(*toTask); ok {
					m.answer(&taskReply{
						err: taskhub.Errorf(taskhub.Internal, "the task's actor failed while handling the call and was restarted; get the task to see whether the change was made"),
					})
				}
				panic(r)
			}
		}()
		next(c, env)
	}
}
