package actors

import (
	"context"
	"slices"
	"time"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"

	"github.com/taskhub/taskhub"
)

// The WorkerService side of the hub.
var _ taskhub.WorkerService = (*Hub)(nil)

// ClaimTask takes a queued task of one of the modes, leased to the worker. It waits up to Wait
// for one and returns nil if none came.
func (h *Hub) ClaimTask(ctx context.Context, p taskhub.ClaimParams) (*taskhub.Claim, error) {
	worker, workerID, modes, wait := p.Worker, p.WorkerID, p.Modes, p.Wait
	if err := taskhub.ValidateWorkerID(workerID); err != nil {
		return nil, err
	}
	if len(modes) == 0 || len(modes) > taskhub.MaxClaimModes {
		return nil, taskhub.Errorf(taskhub.Invalid, "modes: give 1 to %d modes: got %d", taskhub.MaxClaimModes, len(modes))
	}
	for _, m := range modes {
		if err := taskhub.ValidateMode(m); err != nil {
			return nil, err
		}
	}
	if wait < 0 || wait > taskhub.MaxClaimWait {
		return nil, taskhub.Errorf(taskhub.Invalid, "wait_seconds must be 0..%d: got %v", int(taskhub.MaxClaimWait.Seconds()), wait.Seconds())
	}
	modes = slices.Compact(slices.Sorted(slices.Values(modes)))
	deadline := h.now().Add(wait)
	for {
		d, err := h.claims.next(ctx, modes, time.Until(deadline))
		if err != nil {
			return nil, taskhub.Errorf(taskhub.Unavailable, "claim: %v", err)
		}
		if d == nil {
			return nil, nil
		}
		r := h.ask(ctx, d.TaskID, &claimCmd{worker: worker, workerID: workerID, delivery: *d})
		if r.err != nil {
			// Give the task back at once rather than after the ack wait.
			_ = h.log.Release(d.AckSubject, 0)
			return nil, r.err
		}
		if r.claimed {
			return &taskhub.Claim{Task: r.task, LeaseToken: r.leaseToken, LeaseExpires: r.leaseExpires}, nil
		}
		if time.Until(deadline) <= 0 && wait > 0 {
			return nil, nil
		}
	}
}

// ReportProgress records progress on a task the worker holds the lease of, and renews the
// lease. A cancelled task answers CancelRequested: the worker should stop.
func (h *Hub) ReportProgress(ctx context.Context, r taskhub.Report) (taskhub.LeaseStatus, error) {
	if err := checkWork(r.Lease); err != nil {
		return taskhub.LeaseStatus{}, err
	}
	if err := taskhub.ValidateProgress(r.Progress, r.Message); err != nil {
		return taskhub.LeaseStatus{}, err
	}
	reply := h.ask(ctx, r.TaskID, &reportCmd{worker: r.Worker, token: r.Token, progress: r.Progress, message: r.Message})
	return taskhub.LeaseStatus{CancelRequested: reply.cancelRequested, Expires: reply.leaseExpires}, reply.err
}

// BatchReportProgress applies each report as ReportProgress does, the tasks' actors at work
// together: a worker running many tasks sends their reports in one call rather than one call
// each. The batch waits for the feed once (see pace), and a task's reports are applied in their
// order: a report of a task goes to its actor once the task's report before it is answered.
func (h *Hub) BatchReportProgress(ctx context.Context, rs []taskhub.Report) ([]taskhub.ReportResult, error) {
	if err := taskhub.ValidateBatch(len(rs)); err != nil {
		return nil, err
	}
	out := make([]taskhub.ReportResult, len(rs))
	deadline := h.deadline(ctx)
	if err := h.pace(ctx, deadline); err != nil {
		for i := range out {
			out[i].Err = err
		}
		return out, nil
	}
	sent := make([]asked, len(rs))
	answered := make([]bool, len(rs))
	expired := h.expiry(deadline)
	answer := func(i int) {
		if !answered[i] {
			answered[i] = true
			reply := sent[i].answer(expired)
			out[i] = taskhub.ReportResult{LeaseStatus: taskhub.LeaseStatus{CancelRequested: reply.cancelRequested, Expires: reply.leaseExpires}, Err: reply.err}
		}
	}
	last := map[string]int{} // task id -> its latest report sent
	for i, r := range rs {
		if err := checkWork(r.Lease); err != nil {
			out[i].Err, answered[i] = err, true
			continue
		}
		if err := taskhub.ValidateProgress(r.Progress, r.Message); err != nil {
			out[i].Err, answered[i] = err, true
			continue
		}
		if j, ok := last[r.TaskID]; ok {
			answer(j)
		}
		sent[i], last[r.TaskID] = h.send(ctx, r.TaskID, &reportCmd{worker: r.Worker, token: r.Token, progress: r.Progress, message: r.Message}, deadline), i
	}
	for i := range out {
		answer(i)
	}
	return out, nil
}

// TaskEnded returns a channel that is closed once the task has ended (completed, failed or
// cancelled), for in-process executors that want to stop at once when their task is cancelled,
// and a function to release it. It only speeds things up: a task that ended before the call
// may never close the channel, and ReportProgress answering CancelRequested stays the rule.
func (h *Hub) TaskEnded(id string) (ended <-chan struct{}, release func()) { return h.feed.ended(id) }

// RenewLease extends the worker's lease on a task without recording progress. A cancelled task
// answers CancelRequested: the worker should stop.
func (h *Hub) RenewLease(ctx context.Context, l taskhub.Lease) (taskhub.LeaseStatus, error) {
	if err := checkWork(l); err != nil {
		return taskhub.LeaseStatus{}, err
	}
	reply := h.ask(ctx, l.TaskID, &renewCmd{worker: l.Worker, token: l.Token})
	return taskhub.LeaseStatus{CancelRequested: reply.cancelRequested, Expires: reply.leaseExpires}, reply.err
}

// CompleteTask finishes a task the worker holds the lease of, with its result.
func (h *Hub) CompleteTask(ctx context.Context, l taskhub.Lease, result string) (*taskhubv1.Task, error) {
	if err := checkWork(l); err != nil {
		return nil, err
	}
	if err := taskhub.ValidateResult(result); err != nil {
		return nil, err
	}
	r := h.ask(ctx, l.TaskID, &completeCmd{worker: l.Worker, token: l.Token, result: result})
	return r.task, r.err
}

// FailTask fails a task the worker holds the lease of. A retryable failure requeues the task
// while it has attempts left.
func (h *Hub) FailTask(ctx context.Context, l taskhub.Lease, f taskhub.Failure) (*taskhubv1.Task, error) {
	if err := checkWork(l); err != nil {
		return nil, err
	}
	if err := taskhub.ValidateFailure(f.Error); err != nil {
		return nil, err
	}
	r := h.ask(ctx, l.TaskID, &failCmd{worker: l.Worker, token: l.Token, text: f.Error, retryable: f.Retryable})
	return r.task, r.err
}

func checkWork(l taskhub.Lease) error {
	if err := taskhub.ValidateTaskID(l.TaskID); err != nil {
		return err
	}
	if l.Token == "" {
		return taskhub.Errorf(taskhub.Invalid, "lease_token is required: use the one ClaimTask returned")
	}
	if len(l.Token) > 128 {
		return taskhub.Errorf(taskhub.Invalid, "lease_token is too long to be one this server issued")
	}
	return nil
}
