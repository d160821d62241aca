// Package eventlog keeps taskhub's event log and task queue in NATS JetStream, with the NATS
// server embedded in the process by default (no port, files under the data directory) or an
// external NATS server or cluster.
//
// # The event log
//
// One stream (TASKS) holds every task event on subject tasks.<owner>.<task id>; each message is a
// storagev1.Record carrying the full task after the change. Its stream sequence is the event's
// seq, its identity (name and creation time) is the epoch, and the last message on a task's
// subject is the task's current state. Appends are fenced with ExpectLastSequencePerSubject, so a
// task has a single writer even across processes; a create is fenced on the task having no event,
// so a second create of a task is refused.
//
// A third stream (TASKHUB) keeps taskhub's own state, one message per subject: the compaction
// watermark, below which finished tasks' events may have been removed; the live index, a
// marker per task from just before its create until it is settled, which lets Follow start
// from the tasks that matter rather than every task ever (live.go); and the settings each node
// sharing the log records for the others to compare (settings.go).
//
// # The task queue
//
// A work-queue stream (TASKQ) holds at most one message per queued task, on subject
// taskq.<mode>.<task id>; a durable pull consumer per mode hands them out. A delivery is a lease:
// its ack subject renews it (in progress), releases it (nak, with a delay for backoff) or ends it
// (ack). Queue messages are claim tickets, not the truth: the task's state in the event log is.
//
// # Concurrency
//
// A Log is safe for concurrent use. Append returns after JetStream acknowledged the write: with
// the embedded server it is then on disk in the OS page cache (it survives kill -9 of the process);
// with SyncAlways it is also fsynced (it survives power loss).
package eventlog
