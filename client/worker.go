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
	"github.com/taskhub/taskhub/gen/taskhub/v1/taskhubv1connect"
)

// Worker claims tasks of its modes and runs a Handler for each, Concurrency at a time.
type Worker struct {
	Work        taskhubv1connect.WorkerServiceClient
	ID          string   // the worker_id it claims as
	Modes       []string // the modes it claims
	Concurrency int      // tasks at once; [1]
	Logger      *slog.Logger
}

// Handler does a task's work. It returns the task's result, or an error that fails the task:
// retryably (the task is requeued while it has attempts left) unless it wraps ErrPermanent.
// Its context ends when the task is cancelled or its lease is lost; what it returns then is
// dropped.
type Handler func(ctx context.Context, job *Job) (result string, err error)

// ErrPermanent, wrapped in a Handler's error, fails the task for good.
var ErrPermanent = errors.New("permanent failure")

// Job is a claimed task: its handler reports progress with it.
type Job struct {
	Task *taskhubv1.Task

	w      *Worker
	lease  string
	cancel context.CancelCauseFunc

	mu       sync.Mutex
	reported time.Time // when the lease was last renewed, by a report or a renewal
}

// ErrCancelled is the cause of a job's context when its task was cancelled; ErrLeaseLost when
// its lease was (it expired, or the task was given to another worker).
var (
	ErrCancelled = errors.New("the task was cancelled")
	ErrLeaseLost = errors.New("the task's lease was lost")
)

// Report reports progress (0 to 100) and a message; it renews the lease. When the task was
// cancelled, or the lease lost, it ends the job's context and returns the cause.
func (j *Job) Report(ctx context.Context, progress float64, message string) error {
	res, err := j.w.Work.ReportProgress(ctx, connect.NewRequest(&taskhubv1.ReportProgressRequest{
		TaskId: j.Task.Id, LeaseToken: j.lease, Progress: progress, Message: message,
	}))
	return j.after(err, res != nil && res.Msg.CancelRequested)
}

// renew renews the lease without a report.
func (j *Job) renew(ctx context.Context) error {
	res, err := j.w.Work.RenewLease(ctx, connect.NewRequest(&taskhubv1.RenewLeaseRequest{TaskId: j.Task.Id, LeaseToken: j.lease}))
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

// Run claims and runs tasks until ctx ends; then it claims no more and waits for the tasks
// under way to finish (a drain). It returns ctx's error.
func (w *Worker) Run(ctx context.Context, handle Handler) error {
	logger := cmp.Or(w.Logger, slog.Default())
	var wg sync.WaitGroup
	for range max(w.Concurrency, 1) {
		wg.Go(func() {
			for ctx.Err() == nil {
				// The claim is not cancelled with ctx: a task the server granted as the drain
				// began would be lost to this worker, and held by no one until its lease ran
				// out. It waits claimWait at most, so a drain waits that long at most for it.
				claim, cancel := context.WithTimeout(context.Background(), claimWait+10*time.Second)
				res, err := w.Work.ClaimTask(claim, connect.NewRequest(&taskhubv1.ClaimTaskRequest{
					WorkerId: w.ID, Modes: w.Modes, WaitSeconds: uint32(claimWait / time.Second),
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
				w.run(res.Msg, handle, logger)
			}
		})
	}
	wg.Wait()
	return ctx.Err()
}

// run runs one claimed task to its end: completed, failed, or dropped when it was cancelled or
// its lease lost. It outlives the worker's context, so that a drain lets it finish.
func (w *Worker) run(claim *taskhubv1.ClaimTaskResponse, handle Handler, logger *slog.Logger) {
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	job := &Job{Task: claim.Task, w: w, lease: claim.LeaseToken, cancel: cancel, reported: time.Now()}
	// Renew the lease when the handler has been silent for a third of the lease's length.
	every := max(time.Until(claim.LeaseExpiresAt.AsTime())/3, time.Second)
	renewed := make(chan struct{})
	go func() {
		defer close(renewed)
		t := time.NewTicker(every / 4)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				job.mu.Lock()
				due := time.Since(job.reported) >= every
				job.mu.Unlock()
				if due {
					if err := job.renew(ctx); err != nil && ctx.Err() == nil {
						logger.Warn("renewing the lease failed", "task", claim.Task.Id, "err", err)
					}
				}
			}
		}
	}()
	result, err := handle(ctx, job)
	if cause := context.Cause(ctx); cause != nil {
		cancel(nil)
		<-renewed
		logger.Info("task dropped", "task", claim.Task.Id, "why", cause)
		return
	}
	cancel(nil)
	<-renewed
	end, stop := context.WithTimeout(context.Background(), 30*time.Second)
	defer stop()
	if err == nil {
		_, err = w.Work.CompleteTask(end, connect.NewRequest(&taskhubv1.CompleteTaskRequest{TaskId: claim.Task.Id, LeaseToken: claim.LeaseToken, Result: result}))
	} else {
		_, err = w.Work.FailTask(end, connect.NewRequest(&taskhubv1.FailTaskRequest{
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
