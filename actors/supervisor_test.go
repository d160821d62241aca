package actors_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	storagev1 "github.com/taskhub/taskhub/gen/taskhub/storage/v1"
	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"

	"github.com/taskhub/taskhub"
	"github.com/taskhub/taskhub/actors"
)

// panickyLog panics in the first Append of a progress event, before writing anything: a bug in
// the task actor's call path.
type panickyLog struct {
	actors.Log
	panicked atomic.Int32
}

func (p *panickyLog) Append(ctx context.Context, rec *storagev1.Record, expectLast uint64) (uint64, error) {
	if rec.GetEvent().GetKind() == taskhubv1.EventKind_EVENT_KIND_PROGRESS && p.panicked.CompareAndSwap(0, 1) {
		panic("injected: append of a progress event")
	}
	return p.Log.Append(ctx, rec, expectLast)
}

func setupPanicky(t *testing.T, lease time.Duration) (*bundle, *panickyLog) {
	t.Helper()
	p := &panickyLog{}
	b := setup(t, options{lease: lease, wrap: func(l actors.Log) actors.Log {
		p.Log = l
		return p
	}})
	return b, p
}

// reportThatPanics makes the report whose append panics, and checks the caller hears at once.
func reportThatPanics(t *testing.T, h *actors.Hub, p *panickyLog, c *taskhub.Claim) {
	t.Helper()
	start := time.Now()
	_, err := h.ReportProgress(t.Context(), taskhub.Report{Lease: taskhub.Lease{TaskID: c.Task.Id, Token: c.LeaseToken}, Progress: 10, Message: "boom"})
	require.Less(t, time.Since(start), 2*time.Second, "the caller must not wait for its timeout")
	require.Error(t, err)
	require.Equal(t, taskhub.Internal, codeOf(err), err)
	require.Equal(t, int32(1), p.panicked.Load())
}

func TestHub_SupervisorRestartsPanickingTask(t *testing.T) {
	t.Parallel()
	b, p := setupPanicky(t, 10*time.Second)
	h, ctx := b.hub, t.Context()
	w := watch(t, h, "alice", "", 0)
	w.wait(0)
	task := create(t, h, "alice", "x", "paint")
	c := claim(t, h, "paint")

	reportThatPanics(t, h, p, c)
	got, err := h.GetTask(ctx, "alice", task.Id)
	require.NoError(t, err)
	require.Equal(t, taskhubv1.TaskState_TASK_STATE_RUNNING, got.State)
	require.Zero(t, got.Progress, "the failed report wrote nothing")

	// The restarted actor reloaded the task, lease included: the same token works.
	st, err := h.ReportProgress(ctx, taskhub.Report{Lease: taskhub.Lease{TaskID: task.Id, Token: c.LeaseToken}, Progress: 20, Message: "after the restart"})
	cancelled, expires := st.CancelRequested, st.Expires
	require.NoError(t, err)
	require.False(t, cancelled)
	require.WithinDuration(t, time.Now().Add(10*time.Second), expires, 2*time.Second)
	got, err = h.GetTask(ctx, "alice", task.Id)
	require.NoError(t, err)
	require.Equal(t, float64(20), got.Progress)
	require.Equal(t, "after the restart", got.Message)

	done, err := h.CompleteTask(ctx, taskhub.Lease{TaskID: task.Id, Token: c.LeaseToken}, "a picture")
	require.NoError(t, err)
	require.Equal(t, taskhubv1.TaskState_TASK_STATE_COMPLETED, done.State)
	require.Equal(t, "a picture", done.Result)

	_, events := w.wait(4)
	require.Equal(t, []taskhubv1.EventKind{
		taskhubv1.EventKind_EVENT_KIND_CREATED, taskhubv1.EventKind_EVENT_KIND_STARTED,
		taskhubv1.EventKind_EVENT_KIND_PROGRESS, taskhubv1.EventKind_EVENT_KIND_COMPLETED,
	}, kinds(events))
	require.Equal(t, float64(20), events[2].Task.Progress)
}

// TestHub_SupervisorRestartKeepsLeaseTicking: after a restart the task's lease still expires,
// though nobody calls about the task again (as a hub restart does, see
// TestHub_WatchResumeAcrossRestart).
func TestHub_SupervisorRestartKeepsLeaseTicking(t *testing.T) {
	t.Parallel()
	b, p := setupPanicky(t, 500*time.Millisecond)
	h, ctx := b.hub, t.Context()
	task := create(t, h, "alice", "x", "paint")
	c := claim(t, h, "paint")
	reportThatPanics(t, h, p, c)

	// The worker died with the failed report. GetTask reads the log, not the task's actor.
	var got *taskhubv1.Task
	require.Eventually(t, func() bool {
		var err error
		got, err = h.GetTask(ctx, "alice", task.Id)
		require.NoError(t, err)
		return got.State != taskhubv1.TaskState_TASK_STATE_RUNNING
	}, 3*time.Second, 20*time.Millisecond, "the lease expired at %s but the task is still running", c.LeaseExpires.Format(time.StampMilli))
	require.Equal(t, taskhubv1.TaskState_TASK_STATE_QUEUED, got.State)
	require.Equal(t, uint32(2), got.Attempt)
}
