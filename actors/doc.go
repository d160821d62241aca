// Package actors is the task hub: a supervisor actor that owns one actor per live task, one
// subscriber actor per watching client, the feed that follows the event log, and the dispatcher
// that hands queued tasks to claiming workers. Hub is its only API; no PID leaks out.
//
// # Who writes what
//
// A task actor is the only writer of its task. It validates each command against the task's
// current state, appends the resulting event to the event log (fenced on the task's last
// sequence, so a second writer anywhere is refused and the actor reloads), and only then replies.
// A task actor that panics is restarted by the supervisor and reloads its state from the log.
//
// # How events reach watchers
//
// Events are published through the log: one follower per process (the feed) reads the event
// stream in sequence order and offers each event, built once and shared read-only, straight to
// the outbox of every watch of its owner. So every watcher sees events in strictly increasing seq
// order, sees only what is durable, and events from other processes (an external NATS cluster)
// arrive the same way.
//
// A watch's subscriber actor decides how its stream starts: it registers the watch with the
// feed and takes the snapshot in one step that cannot interleave with an event, so the snapshot
// (or the replay a resuming client is owed) ends exactly where live events begin: no gap, no
// duplicate. The outbox is bounded: once it is full, the progress of one task is coalesced to
// the latest, and when even that overflows the outbox stops taking live events, lets the client
// drain, and the stream's send loop refills it from the log from the last seq it queued. Nothing is lost,
// memory stays bounded, and a slow client never blocks the feed or the task actors. The outbox
// is one state machine (starting, replaying, live, behind) whose transitions its doc lists.
//
// A watch whose stream writes to its connection itself (Watch.Deliver: HTTP/1.1) is sent by
// one of the hub's writers, one per processor, that passes over the ready watches in turn (on
// a goroutine of the actors' dispatcher, kept between bursts) and writes each one's queue
// without waiting. Whatever would wait (a client slow to read,
// a snapshot or a replay to read from the log, the end of the stream) goes to a goroutine of
// the watch's own, so one slow client delays nobody else's writes.
//
// # Concurrency
//
// Hub methods are safe for concurrent use. Messages between actors are pointers to structs that
// are never mutated after sending; events and tasks handed to watchers are shared and read-only.
package actors
