package taskhub

import (
	"context"
	"time"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"
)

// TaskService is what people and their pages do with their tasks. The transport authenticates
// the caller and passes who it is as owner: a valid name (it becomes part of event log
// subjects). A user sees and changes only their own tasks.
//
// Every method fails with an *Error. Besides the codes each lists, any may fail with
// Unavailable (nothing was changed: retry), and a method that changes something with
// DeadlineExceeded (the change may or may not have been made: look, or retry with the same
// idempotency key). A caller's context bounds the call: its deadline (or the service's own, if
// that comes first) and its cancellation reach the task's actor, which does not start a
// command whose caller has gone.
type TaskService interface {
	// CreateTask queues a new task and returns it once it is stored. A retry with the
	// idempotency key of a create that was made returns that task, limits or not.
	// Invalid: a bad spec, or a mode not enabled. ResourceExhausted: the owner's limit of
	// active tasks, or the server's of modes.
	CreateTask(ctx context.Context, owner string, spec TaskSpec) (*taskhubv1.Task, error)
	// GetTask returns the task as it is now. Invalid: a malformed id. NotFound: no such task of
	// owner's.
	GetTask(ctx context.Context, owner, id string) (*taskhubv1.Task, error)
	// ListTasks returns a page of the owner's tasks, newest first. Invalid: a bad page size,
	// state or page token.
	ListTasks(ctx context.Context, q ListQuery) (TaskPage, error)
	// CancelTask cancels a queued or running task. NotFound; FailedPrecondition: it has
	// finished.
	CancelTask(ctx context.Context, owner, id string) (*taskhubv1.Task, error)
	// Watch starts a watch of the owner's tasks (see Watch). ResourceExhausted: the limits on
	// open watches. The watch outlives ctx: the caller must Close it.
	Watch(ctx context.Context, q WatchQuery) (Watch, error)
	// Position returns the event log's epoch and last sequence, once the service has applied
	// everything up to it: a page rendered after it can resume a watch from there.
	Position(ctx context.Context) (epoch string, seq uint64, err error)
}

// WorkerService is what workers do: claim tasks and report on them. The transport passes the
// authenticated worker as Worker ("" when auth is off, for every worker); a lease is honoured
// only for the worker that claimed it.
//
// Every method fails with an *Error; besides the codes each lists, as TaskService's:
// Unavailable, DeadlineExceeded.
type WorkerService interface {
	// ClaimTask takes a queued task of one of the modes, waiting up to Wait for one, and leases
	// it to the worker. It returns nil if none came. Invalid: a bad worker id, modes or wait.
	ClaimTask(ctx context.Context, p ClaimParams) (*Claim, error)
	// ReportProgress records progress and renews the lease. Invalid; NotFound;
	// PermissionDenied: not the lease holder; FailedPrecondition: the lease expired, or the
	// task finished. A cancelled task answers CancelRequested instead of an error.
	ReportProgress(ctx context.Context, r Report) (LeaseStatus, error)
	// BatchReportProgress applies each report as ReportProgress would, on its own, and
	// answers a result per report, in their order; a task's reports are applied in their
	// order. Invalid, applying none: no reports, or more than MaxBatchReports.
	BatchReportProgress(ctx context.Context, rs []Report) ([]ReportResult, error)
	// RenewLease renews the lease without recording progress; errors as ReportProgress.
	RenewLease(ctx context.Context, l Lease) (LeaseStatus, error)
	// CompleteTask finishes the task with its result; errors as ReportProgress, and
	// FailedPrecondition for a cancelled task.
	CompleteTask(ctx context.Context, l Lease, result string) (*taskhubv1.Task, error)
	// FailTask fails the task, or requeues it when the failure is retryable and it has
	// attempts left; errors as CompleteTask.
	FailTask(ctx context.Context, l Lease, f Failure) (*taskhubv1.Task, error)
}

// Watch is one client's view of its tasks: a snapshot (or, resuming, a recovered snapshot and
// the events it missed), then every change, in sequence order, and a heartbeat while idle.
type Watch interface {
	// Next waits for the next messages to send. They are shared and must not be modified; the
	// slice is valid until the next call. It fails when ctx ends, or the watch ends
	// (Unavailable: resume from the last sequence seen).
	Next(ctx context.Context) ([]*Message, error)
	// Deliver makes the watch hand its messages to to by itself, as Next would return them,
	// with no goroutine held while it is idle. Use either Next or Deliver, not both.
	Deliver(ctx context.Context, to Sink)
	// Close ends the watch and frees its place under the limits.
	Close()
}

// Sink is where a watch delivers its messages by itself (Watch.Deliver).
type Sink struct {
	// Send sends the first messages of a batch, at least one, without waiting for the client:
	// as many as make one write of the size the sink allows, so that what it holds of a
	// client's messages stays bounded however many are queued and however large. Of that
	// write it writes what the connection takes at once, keeps the rest, and reports how many
	// messages it took and whether it kept bytes. The watch calls it in order, from one of the
	// hub's goroutines shared by many watches (so it must not block), with the messages it did
	// not take first, and calls Flush before the next call when bytes were kept. It must not
	// keep the slice. An error from it ends the watch.
	Send func([]*Message) (sent int, pending bool, err error)
	// Flush writes what Send kept, waiting for the client as long as it takes, on a goroutine
	// of the watch's own. An error from it ends the watch.
	Flush func() error
	// Done is called once when the watch ends (its context ends, it is closed, or Send or
	// Flush fails), after it was closed, with why. It may block.
	Done func(error)
}

// ListQuery asks for a page of an owner's tasks.
type ListQuery struct {
	Owner string
	// States filters the tasks (all when empty).
	States []taskhubv1.TaskState
	// PageSize is 1..500 [50].
	PageSize int
	// PageToken is the NextPageToken of the page before ("" for the newest tasks).
	PageToken string
}

// TaskPage is a page of tasks, newest first.
type TaskPage struct {
	Tasks []*taskhubv1.Task
	// NextPageToken asks for the next, older page; "" when there is none.
	NextPageToken string
}

// WatchQuery asks for a watch of an owner's tasks. With the epoch of the event log and a
// sequence it still covers, the watch resumes after AfterSeq; otherwise it starts with a fresh
// snapshot.
type WatchQuery struct {
	Owner    string
	Epoch    string
	AfterSeq uint64
}

// ClaimParams asks for a task to run.
type ClaimParams struct {
	// Worker is the authenticated worker: the lease is theirs.
	Worker string
	// WorkerID is the name the task shows as its runner.
	WorkerID string
	// Modes are the modes the worker runs: 1 to MaxClaimModes.
	Modes []string
	// Wait is how long to wait for a task: 0 to MaxClaimWait.
	Wait time.Duration
}

// Claim is a task handed to a worker, with the lease that proves it.
type Claim struct {
	Task         *taskhubv1.Task
	LeaseToken   string
	LeaseExpires time.Time
}

// Lease names a worker's lease on a task: what every report carries.
type Lease struct {
	Worker string // the authenticated worker
	TaskID string
	Token  string // the lease token ClaimTask returned
}

// Report is a progress report.
type Report struct {
	Lease
	Progress float64 // 0..100
	Message  string
}

// ReportResult answers one report of a batch: what ReportProgress would have answered.
type ReportResult struct {
	LeaseStatus
	Err error // nil: recorded (or, with CancelRequested, the task was cancelled)
}

// Failure says why a task failed.
type Failure struct {
	Error string
	// Retryable requeues the task while it has attempts left.
	Retryable bool
}

// LeaseStatus answers a report or a renewal.
type LeaseStatus struct {
	// CancelRequested: the task was cancelled; the worker should stop.
	CancelRequested bool
	// Expires is when the lease ends unless renewed (zero when cancelled).
	Expires time.Time
}

type actorKey struct{}

// WithActor marks ctx as a call a service makes on a user's behalf: the events it causes record
// the service (TaskEvent.acted_by).
func WithActor(ctx context.Context, service string) context.Context {
	return context.WithValue(ctx, actorKey{}, service)
}

// ActorOf is the service a call acts for a user as (WithActor); "" for the user themself.
func ActorOf(ctx context.Context) string {
	s, _ := ctx.Value(actorKey{}).(string)
	return s
}
