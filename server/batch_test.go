package server_test

import (
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/stretchr/testify/require"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"

	"github.com/taskhub/taskhub"
	"github.com/taskhub/taskhub/server"
)

// TestBatchReportProgress: a batch applies each report as ReportProgress would, on its own:
// the refused ones answer the code ReportProgress answers and change nothing, the others are
// recorded, a task's in their order, and watchers see them. A batch with no reports, or too
// many, is refused whole.
func TestBatchReportProgress(t *testing.T) {
	t.Parallel()
	b := setup(t, server.Config{})
	ctx := t.Context()
	w := watch(t, b.tasks, &taskhubv1.WatchTasksRequest{}, "")
	w.wait(0)

	run := func() *taskhubv1.ClaimTaskResponse {
		createTask(t, b.tasks, "batch", "batch")
		return claimTask(t, b.work, "w1", "batch")
	}
	a, cancelled, completed := run(), run(), run()
	_, err := b.tasks.CancelTask(ctx, connect.NewRequest(&taskhubv1.CancelTaskRequest{Id: cancelled.Task.Id}))
	require.NoError(t, err)
	_, err = b.work.CompleteTask(ctx, connect.NewRequest(&taskhubv1.CompleteTaskRequest{TaskId: completed.Task.Id, LeaseToken: completed.LeaseToken, Result: "r"}))
	require.NoError(t, err)
	queued := createTask(t, b.tasks, "queued", "other")
	unknown := taskhub.NewTaskID(time.Now())
	others := []*taskhubv1.Task{getTask(t, b.tasks, cancelled.Task.Id, ""), getTask(t, b.tasks, completed.Task.Id, ""), queued}

	report := func(task string, token string, progress float64, message string) *taskhubv1.ReportProgressRequest {
		return &taskhubv1.ReportProgressRequest{TaskId: task, LeaseToken: token, Progress: progress, Message: message}
	}
	started := time.Now()
	res, err := b.work.BatchReportProgress(ctx, connect.NewRequest(&taskhubv1.BatchReportProgressRequest{Reports: []*taskhubv1.ReportProgressRequest{
		report(a.Task.Id, a.LeaseToken, 10, "a1"),
		report(cancelled.Task.Id, cancelled.LeaseToken, 50, ""),
		report(completed.Task.Id, completed.LeaseToken, 50, ""),
		report(queued.Id, a.LeaseToken, 50, ""),
		report(unknown, a.LeaseToken, 50, ""),
		report(a.Task.Id, a.LeaseToken, 101, "over"),
		report(a.Task.Id, "", 20, "no token"),
		report("not-a-task-id", a.LeaseToken, 20, ""),
		report(a.Task.Id, a.LeaseToken, 30, "a3"),
	}}))
	require.NoError(t, err)
	results := res.Msg.Results
	require.Len(t, results, 9)
	for _, i := range []int{0, 8} {
		require.Nil(t, results[i].Error, "report %d", i)
		require.False(t, results[i].CancelRequested)
		require.WithinRange(t, results[i].LeaseExpiresAt.AsTime(), started, time.Now().Add(time.Hour), "report %d's lease", i)
	}
	require.True(t, results[1].CancelRequested, "the cancelled task")
	require.Nil(t, results[1].Error)
	for i, want := range map[int]struct{ code, word string }{
		2: {"failed_precondition", "completed"},
		3: {"permission_denied", "lease"},
		4: {"not_found", unknown},
		5: {"invalid_argument", "101"},
		6: {"invalid_argument", "lease_token"},
		7: {"invalid_argument", "task id"},
	} {
		require.NotNil(t, results[i].Error, "report %d", i)
		require.Equal(t, want.code, results[i].Error.Code, "report %d: %v", i, results[i].Error)
		require.Contains(t, strings.ToLower(results[i].Error.Message), strings.ToLower(want.word), "report %d", i)
		require.Nil(t, results[i].LeaseExpiresAt, "report %d", i)
	}

	// The two recorded reports reach the watcher in their order; the refused ones wrote nothing.
	events := w.waitFor(func(es []*taskhubv1.TaskEvent) bool {
		return len(es) > 0 && es[len(es)-1].Task.Progress == 30
	})
	var progress []string
	for _, e := range events {
		if e.Kind == taskhubv1.EventKind_EVENT_KIND_PROGRESS {
			require.Equal(t, a.Task.Id, e.Task.Id, "a progress event of a refused report")
			progress = append(progress, e.Task.Message)
		}
	}
	require.Equal(t, []string{"a1", "a3"}, progress)
	for _, o := range others {
		requireSameTask(t, o, getTask(t, b.tasks, o.Id, ""))
	}

	// A batch of none, or of too many, is refused whole.
	before := getTask(t, b.tasks, a.Task.Id, "")
	_, err = b.work.BatchReportProgress(ctx, connect.NewRequest(&taskhubv1.BatchReportProgressRequest{}))
	requireCode(t, err, connect.CodeInvalidArgument, "1..1000", "got 0")
	many := make([]*taskhubv1.ReportProgressRequest, taskhub.MaxBatchReports+1)
	for i := range many {
		many[i] = report(a.Task.Id, a.LeaseToken, 99, "")
	}
	_, err = b.work.BatchReportProgress(ctx, connect.NewRequest(&taskhubv1.BatchReportProgressRequest{Reports: many}))
	requireCode(t, err, connect.CodeInvalidArgument, "got 1001")
	requireSameTask(t, before, getTask(t, b.tasks, a.Task.Id, ""))
}
