package client

import (
	"cmp"
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"
	"unicode/utf8"

	"connectrpc.com/connect"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"
)

// Worker claims tasks and runs a Handler for each, Concurrency at a time. Set its fields, then
// call Run.
type Worker struct {
	// Client is how the worker reaches the server, with a worker's token when auth is on.
	Client *Client
	// ID is the worker_id it claims as [with auth, the name of the worker's token].
	ID string
	// Concurrency is how many tasks it runs at once [1].
	Concurrency int
	// DrainTimeout bounds the drain once Run's context ends: that long after, the contexts of
	// the tasks still under way (and of a claim under way) end with ErrStopped, and the tasks
	// are dropped: they go back to the queue when their leases run out. Zero waits as long as
	// they take; negative does not wait at all.
	DrainTimeout time.Duration
	// BatchDelay is how long a batch of the jobs' reports waits after its first for more to
	// join it (see BatchDelay) [0: it goes as soon as no other is on its way]. Job.Report
	// returns with its answer, so a job makes one report per BatchDelay at most.
	BatchDelay time.Duration
	// Logger receives what goes wrong [slog.Default()].
	Logger *slog.Logger
	// TaskEnded, when set, tells the worker early that a task ended (it was cancelled, say),
	// where otherwise it learns it at the job's next report or lease renewal: the worker then
	// asks the server at once, with a lease renewal. It is for an executor inside the server's
	// process, which hears of a cancel before any renewal could (the server's own demo
	// executor passes the hub's). It returns a channel closed when the task ends, and a
	// function that releases it.
	TaskEnded func(taskID string) (ended <-chan struct{}, release func())
}

// Handler does a task's work. It returns the task's result, or an error that fails the task:
// retryably (the task is requeued while it has attempts left) unless it wraps ErrPermanent.
// Its context ends when the task is cancelled, its lease is lost, or the worker stops before
// it is done (context.Cause says which); what it returns then is dropped.
type Handler func(ctx context.Context, job *Job) (result string, err error)

// ErrPermanent, wrapped in a Handler's error, fails the task for good (see Permanent).
var ErrPermanent = errors.New("permanent failure")

// Permanent marks err, a Handler's error, to fail its task for good rather than retryably.
// Its message stays err's.
func Permanent(err error) error {
	if err == nil {
		return ErrPermanent
	}
	return permanent{err}
}

type permanent struct{ error }

func (p permanent) Unwrap() error        { return p.error }
func (p permanent) Is(target error) bool { return target == ErrPermanent }

// Job is a claimed task: its handler reports progress with it.
type Job struct {
	Task *taskhubv1.Task

	w      *Worker
	rep    *Reporter // the worker's, shared by its jobs
	lease  string
	cancel context.CancelCauseFunc

	mu       sync.Mutex
	reported time.Time // when the lease was last renewed, by a report or a renewal
}

// ErrCancelled is the cause of a job's context when its task was cancelled; ErrLeaseLost when
// its lease was (it expired, or the task was given to another worker); ErrStopped when the
// worker stopped before the task ended (DrainTimeout).
var (
	ErrCancelled = errors.New("the task was cancelled")
	ErrLeaseLost = errors.New("the task's lease was lost")
	ErrStopped   = errors.New("the worker stopped before the task ended")
)

// Report reports progress (0 to 100) and a message; it renews the lease. When the task was
// cancelled, or the lease lost, it ends the job's context and returns the cause.
func (j *Job) Report(ctx context.Context, progress float64, message string) error {
	res, err := j.rep.Report(ctx, &taskhubv1.ReportProgressRequest{
		TaskId: j.Task.Id, LeaseToken: j.lease, Progress: progress, Message: message,
	})
	return j.after(err, res != nil && res.CancelRequested)
}

// renew renews the lease without a report.
func (j *Job) renew(ctx context.Context) error {
	res, err := j.w.Client.work.RenewLease(ctx, connect.NewRequest(&taskhubv1.RenewLeaseRequest{TaskId: j.Task.Id, LeaseToken: j.lease}))
	return j.after(err, res != nil && res.Msg.CancelRequested)
}

// after looks at a report's or renewal's answer: a cancel or a lost lease ends the job.
func (j *Job) after(err error, cancelled bool) error {
	switch {
	case cancelled:
		j.cancel(ErrCancelled)
		return ErrCancelled
	case err == nil:
		j.mu.Lock()
		j.reported = time.Now()
		j.mu.Unlock()
		return nil
	}
	switch connect.CodeOf(err) {
	case connect.CodeFailedPrecondition, connect.CodePermissionDenied, connect.CodeNotFound:
		j.cancel(ErrLeaseLost)
		return errors.Join(ErrLeaseLost, err)
	}
	return err
}

// claimWait is how long a claim waits for a task to come.
const claimWait = 5 * time.Second

// Run claims tasks of modes and runs handle for each until ctx ends; then it claims no more
// and waits for the tasks under way to finish (a drain, bounded by DrainTimeout). It returns
// ctx's error.
func (w *Worker) Run(ctx context.Context, modes []string, handle Handler) error {
	logger := cmp.Or(w.Logger, slog.Default())
	// stopped ends what is under way, DrainTimeout after ctx ends (never when it is zero).
	stopped, stop := context.WithCancelCause(context.Background())
	defer stop(nil)
	if w.DrainTimeout != 0 {
		defer context.AfterFunc(ctx, func() {
			t := time.AfterFunc(max(w.DrainTimeout, 0), func() { stop(ErrStopped) })
			context.AfterFunc(stopped, func() { t.Stop() })
		})()
	}
	// The jobs' reports go through one Reporter: those that come while one is on its way go
	// together in one call.
	rep := w.Client.Reporter(BatchDelay(w.BatchDelay))
	var wg sync.WaitGroup
	for range max(w.Concurrency, 1) {
		wg.Go(func() {
			for ctx.Err() == nil {
				// The claim is not cancelled with ctx: a task the server granted as the drain
				// began would be lost to this worker, and held by no one until its lease ran
				// out. It waits claimWait at most, so a drain waits that long at most for it
				// (or DrainTimeout, when shorter).
				claim, cancel := context.WithTimeout(stopped, claimWait+10*time.Second)
				res, err := w.Client.work.ClaimTask(claim, connect.NewRequest(&taskhubv1.ClaimTaskRequest{
					WorkerId: w.ID, Modes: modes, WaitSeconds: uint32(claimWait / time.Second),
				}))
				cancel()
				switch {
				case err != nil && ctx.Err() != nil:
					return
				case err != nil:
					logger.Warn("claim failed; trying again in 2 s", "err", err)
					select {
					case <-ctx.Done():
					case <-time.After(2 * time.Second):
					}
					continue
				case res.Msg.Task == nil:
					continue
				}
				w.run(stopped, res.Msg, rep, handle, logger)
			}
		})
	}
	wg.Wait()
	return ctx.Err()
}

// run runs one claimed task to its end: completed, failed, or dropped when it was cancelled,
// its lease lost, or stopped ended. It outlives the worker's context, so that a drain lets it
// finish.
func (w *Worker) run(stopped context.Context, claim *taskhubv1.ClaimTaskResponse, rep *Reporter, handle Handler, logger *slog.Logger) {
	ctx, cancel := context.WithCancelCause(stopped)
	defer cancel(nil)
	job := &Job{Task: claim.Task, w: w, rep: rep, lease: claim.LeaseToken, cancel: cancel, reported: time.Now()}
	var ended <-chan struct{} // nil, which never closes, without TaskEnded
	if w.TaskEnded != nil {
		var release func()
		ended, release = w.TaskEnded(claim.Task.Id)
		defer release()
	}
	// Renew the lease when the handler has been silent for a third of the lease's length.
	every := max(time.Until(claim.LeaseExpiresAt.AsTime())/3, time.Second)
	renewed := make(chan struct{})
	go func() {
		defer close(renewed)
		t := time.NewTicker(every / 4)
		defer t.Stop()
		for {
			due := false
			select {
			case <-ctx.Done():
				return
			case <-ended:
				// The task ended under the handler (a cancel, say): the renewal's answer says
				// how, and ends the job.
				ended, due = nil, true
			case <-t.C:
				job.mu.Lock()
				due = time.Since(job.reported) >= every
				job.mu.Unlock()
			}
			if due {
				if err := job.renew(ctx); err != nil && ctx.Err() == nil {
					logger.Warn("renewing the lease failed", "task", claim.Task.Id, "err", err)
				}
			}
		}
	}()
	result, err := handle(ctx, job)
	cause := context.Cause(ctx)
	cancel(nil)
	<-renewed
	if cause != nil {
		logger.Info("task dropped", "task", claim.Task.Id, "why", cause)
		return
	}
	end, stop := context.WithTimeout(context.Background(), 30*time.Second)
	defer stop()
	if err == nil {
		_, err = w.Client.work.CompleteTask(end, connect.NewRequest(&taskhubv1.CompleteTaskRequest{TaskId: claim.Task.Id, LeaseToken: claim.LeaseToken, Result: result}))
	} else {
		_, err = w.Client.work.FailTask(end, connect.NewRequest(&taskhubv1.FailTaskRequest{
			TaskId: claim.Task.Id, LeaseToken: claim.LeaseToken, Error: truncate(err.Error(), 4000), Retryable: !errors.Is(err, ErrPermanent),
		}))
	}
	if err != nil {
		logger.Warn("ending the task failed", "task", claim.Task.Id, "err", err)
	}
}

// truncate cuts s to at most n bytes, keeping its end (the last lines say most).
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	i := len(s) - n
	for i < len(s) && !utf8.RuneStart(s[i]) {
		i++
	}
	return "…" + s[i:]
}
