package natstest

import "go.uber.org/goleak"

// LeakOptions are goleak's options for tests that run NATS servers: the goroutines that
// nats-server itself may leave running after a clustered server's Shutdown (a file store's
// flush loop, whose store a stream being placed at shutdown did not stop, and the
// process-wide access-time ticker that store keeps registered), and protoactor's dead-letter
// throttle, a one-second timer goroutine that ends on its own. They are not taskhub's:
// goleak is there to find those.
func LeakOptions() []goleak.Option {
	return []goleak.Option{
		goleak.IgnoreTopFunction("github.com/nats-io/nats-server/v2/server.(*fileStore).flushStreamStateLoop"),
		goleak.IgnoreTopFunction("github.com/nats-io/nats-server/v2/server/ats.Register.func1"),
		goleak.IgnoreTopFunction("github.com/asynkron/protoactor-go/actor.NewDeadLetter.NewThrottle.func4.1"),
	}
}
