package actors

import (
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/taskhub/taskhub"
)

// supervisor owns one actor per live task. It spawns a task's actor on the first command for it,
// forwards commands (keeping the sender, so the task actor answers the caller directly), restarts
// an actor that panics, and stops idle ones when they ask.
type supervisor struct {
	h        *Hub
	children map[string]*actor.PID // task id -> its actor
	ids      map[string]string     // actor id -> task id
}

// supervisorStrategy restarts a task actor that panics, up to 10 times a minute; after that the
// actor is stopped, and the next command for the task starts a fresh one.
func supervisorStrategy() actor.SupervisorStrategy {
	return actor.NewOneForOneStrategy(10, time.Minute, func(any) actor.Directive {
		return actor.RestartDirective
	})
}

func (s *supervisor) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		s.children = map[string]*actor.PID{}
		s.ids = map[string]string{}
	case *toTask:
		pid := s.children[m.id]
		if pid == nil {
			id := m.id
			pid = ctx.Spawn(actor.PropsFromProducer(func() actor.Actor {
				return &taskActor{h: s.h, id: id}
			}, actor.WithReceiverMiddleware(replyOnPanic)))
			s.children[m.id] = pid
			s.ids[pid.Id] = m.id
		}
		ctx.Forward(pid)
	case *passivate:
		// Poison, not Stop: commands already in the actor's mailbox are still answered, while
		// new ones go to a fresh actor (the log's fence keeps the two from both writing).
		if pid := s.children[m.id]; pid != nil && pid.Equal(ctx.Sender()) {
			delete(s.children, m.id)
			delete(s.ids, pid.Id)
			ctx.Poison(pid)
		}
	case *actor.Terminated:
		if id, ok := s.ids[m.Who.Id]; ok {
			delete(s.ids, m.Who.Id)
			delete(s.children, id)
		}
	}
}

// replyOnPanic answers a request whose handling panicked, so the caller gets an error at once
// instead of a timeout, then lets the panic reach the supervisor, which restarts the actor.
func replyOnPanic(next actor.ReceiverFunc) actor.ReceiverFunc {
	return func(c actor.ReceiverContext, env *actor.MessageEnvelope) {
		defer func() {
			if r := recover(); r != nil {
				if env.Sender != nil {
					c.ActorSystem().Root.Send(env.Sender, &taskReply{
						err: taskhub.Errorf(taskhub.Internal, "the task's actor failed while handling the call and was restarted; get the task to see whether the change was made"),
					})
				}
				panic(r)
			}
		}()
		next(c, env)
	}
}
