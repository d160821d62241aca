package client_test

import (
	"strconv"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"
	"github.com/taskhub/taskhub/gen/taskhub/v1/taskhubv1connect"

	"github.com/taskhub/taskhub/server"
)

// TestReporter: the reports of many tasks, made at once, go in fewer calls than reports, each
// answered as ReportProgress answers it alone (a refused one with its own code, a cancelled
// task with cancel_requested), and each task ends with its last report.
func TestReporter(t *testing.T) {
	t.Parallel()
	b := setup(t, server.Config{})
	c := b.client()
	ctx := t.Context()
	const tasks, reports = 40, 10

	type running struct{ id, lease string }
	runs := make([]running, tasks)
	for i := range runs {
		_, err := c.Create(ctx, &taskhubv1.CreateTaskRequest{Prompt: "task " + strconv.Itoa(i), Mode: "rep"})
		require.NoError(t, err)
		res, err := c.Work().ClaimTask(ctx, connect.NewRequest(&taskhubv1.ClaimTaskRequest{WorkerId: "w", Modes: []string{"rep"}, WaitSeconds: 5}))
		require.NoError(t, err)
		runs[i] = running{res.Msg.Task.Id, res.Msg.LeaseToken}
	}
	cancelled := runs[0]
	_, err := c.Cancel(ctx, cancelled.id)
	require.NoError(t, err)

	r := c.Reporter()
	started := time.Now()
	var wg sync.WaitGroup
	for i, run := range runs {
		wg.Go(func() {
			for k := 1; k <= reports; k++ {
				lease := run.lease
				if i == 1 && k == 5 {
					lease = "AAAAAAAAAAAAAAAAAAAAAAAAAA" // not the task's
				}
				res, err := r.Report(ctx, &taskhubv1.ReportProgressRequest{TaskId: run.id, LeaseToken: lease, Progress: float64(k), Message: "step " + strconv.Itoa(k)})
				// assert, not require: this is not the test's goroutine.
				switch {
				case i == 1 && k == 5:
					assert.Equal(t, connect.CodePermissionDenied, connect.CodeOf(err), "a refused report: %v", err)
				case run == cancelled:
					if assert.NoError(t, err) {
						assert.True(t, res.CancelRequested, "the cancelled task")
					}
				default:
					if assert.NoError(t, err, "task %d, report %d", i, k) {
						assert.False(t, res.CancelRequested)
						assert.WithinRange(t, res.LeaseExpiresAt.AsTime(), started, time.Now().Add(time.Hour))
					}
				}
			}
		})
	}
	wg.Wait()

	single := b.calls.of("/" + taskhubv1connect.WorkerServiceName + "/ReportProgress")
	batches := b.calls.of("/" + taskhubv1connect.WorkerServiceName + "/BatchReportProgress")
	t.Logf("%d reports in %d calls of one report and %d batches", tasks*reports, single, batches)
	require.Positive(t, batches)
	require.Less(t, single+batches, tasks*reports/2, "the reports that came together went together")

	for i, run := range runs[1:] {
		task, err := c.Get(ctx, run.id)
		require.NoError(t, err)
		require.Equal(t, "step "+strconv.Itoa(reports), task.Message, "task %d ends with its last report", i+1)
		require.Equal(t, float64(reports), task.Progress)
	}
	task, err := c.Get(ctx, cancelled.id)
	require.NoError(t, err)
	require.Equal(t, taskhubv1.TaskState_TASK_STATE_CANCELLED, task.State)
	require.Zero(t, task.Progress, "no report was recorded on the cancelled task")
}
