package client_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"
	"github.com/taskhub/taskhub/gen/taskhub/v1/taskhubv1connect"

	"github.com/taskhub/taskhub/client"
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

	runs := claimTasks(t, c, tasks, "rep")
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

// running is a task a test claimed, with its lease.
type running struct{ id, lease string }

// claimTasks creates n tasks of mode and claims them.
func claimTasks(t *testing.T, c *client.Client, n int, mode string) []running {
	t.Helper()
	runs := make([]running, n)
	for i := range runs {
		_, err := c.Create(t.Context(), &taskhubv1.CreateTaskRequest{Prompt: "task " + strconv.Itoa(i), Mode: mode})
		require.NoError(t, err)
		res, err := c.Work().ClaimTask(t.Context(), connect.NewRequest(&taskhubv1.ClaimTaskRequest{WorkerId: "w", Modes: []string{mode}, WaitSeconds: 5}))
		require.NoError(t, err)
		runs[i] = running{res.Msg.Task.Id, res.Msg.LeaseToken}
	}
	return runs
}

// olderServer is a WorkerService without BatchReportProgress, as a server before it answers.
type olderServer struct {
	taskhubv1connect.UnimplementedWorkerServiceHandler
	mu      sync.Mutex
	reports []string
	release chan struct{} // the first report waits for it, so that others queue meanwhile
}

func (s *olderServer) ReportProgress(_ context.Context, req *connect.Request[taskhubv1.ReportProgressRequest]) (*connect.Response[taskhubv1.ReportProgressResponse], error) {
	s.mu.Lock()
	first := len(s.reports) == 0
	s.reports = append(s.reports, req.Msg.TaskId)
	s.mu.Unlock()
	if first {
		<-s.release
	}
	return connect.NewResponse(&taskhubv1.ReportProgressResponse{}), nil
}

// TestReporter_OlderServer: against a server without BatchReportProgress the reports that
// queued go one call each, and every report is answered.
func TestReporter_OlderServer(t *testing.T) {
	t.Parallel()
	older := &olderServer{release: make(chan struct{})}
	mux := http.NewServeMux()
	mux.Handle(taskhubv1connect.NewWorkerServiceHandler(older))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	r := client.New(srv.URL).Reporter()

	errs := make(chan error, 5)
	for i := range 5 {
		go func() {
			_, err := r.Report(t.Context(), &taskhubv1.ReportProgressRequest{TaskId: strconv.Itoa(i), LeaseToken: "l", Progress: 1})
			errs <- err
		}()
		if i == 0 {
			require.Eventually(t, func() bool { older.mu.Lock(); defer older.mu.Unlock(); return len(older.reports) == 1 }, 5*time.Second, time.Millisecond)
		}
	}
	time.Sleep(50 * time.Millisecond) // the other four queue behind the first
	close(older.release)
	for range 5 {
		require.NoError(t, <-errs)
	}
	older.mu.Lock()
	defer older.mu.Unlock()
	require.Len(t, older.reports, 5, "each report once, in a call of its own")
}

// TestReporter_LongMessages: reports that together pass the server's limit on a request (1
// MiB) go in more than one batch, and every one is recorded.
func TestReporter_LongMessages(t *testing.T) {
	t.Parallel()
	b := setup(t, server.Config{})
	c := b.client()
	ctx := t.Context()
	_, err := c.Create(ctx, &taskhubv1.CreateTaskRequest{Prompt: "long", Mode: "long"})
	require.NoError(t, err)
	claim, err := c.Work().ClaimTask(ctx, connect.NewRequest(&taskhubv1.ClaimTaskRequest{WorkerId: "w", Modes: []string{"long"}, WaitSeconds: 5}))
	require.NoError(t, err)

	// The first call takes 200 ms longer, so that the others all queue behind it.
	var first sync.Once
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	slow := &http.Client{Transport: b.calls.wrap(roundTripper(func(req *http.Request) (*http.Response, error) {
		first.Do(func() { time.Sleep(200 * time.Millisecond) })
		return tr.RoundTrip(req)
	}))}
	r := b.client(client.WithHTTPClient(slow)).Reporter()
	message := strings.Repeat("m", 1<<10) // the longest a report may have
	const n = 1000
	errs := make(chan error, n)
	for range n {
		go func() {
			_, err := r.Report(ctx, &taskhubv1.ReportProgressRequest{TaskId: claim.Msg.Task.Id, LeaseToken: claim.Msg.LeaseToken, Progress: 50, Message: message})
			errs <- err
		}()
	}
	for range n {
		require.NoError(t, <-errs)
	}
	batches := b.calls.of("/" + taskhubv1connect.WorkerServiceName + "/BatchReportProgress")
	require.GreaterOrEqual(t, batches, 2, "1000 reports of 1 KiB are over a request's limit")
}

// TestReporter_BatchDelay: with a BatchDelay, reports made one after another within it wait
// for it and go together in one call, where without it the first would go alone at once; each
// is recorded and answered.
func TestReporter_BatchDelay(t *testing.T) {
	t.Parallel()
	b := setup(t, server.Config{})
	c := b.client()
	ctx := t.Context()
	const tasks, delay = 5, 2 * time.Second
	runs := claimTasks(t, c, tasks, "delayed")
	single := "/" + taskhubv1connect.WorkerServiceName + "/ReportProgress"
	batch := "/" + taskhubv1connect.WorkerServiceName + "/BatchReportProgress"
	before := b.calls.of(single) + b.calls.of(batch)

	r := c.Reporter(client.BatchDelay(delay))
	first := time.Now()
	var answered []time.Duration
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i, run := range runs {
		if i > 0 {
			time.Sleep(15 * time.Millisecond) // all within the delay, unless this machine stalls for 1.9 s
		}
		wg.Go(func() {
			_, err := r.Report(ctx, &taskhubv1.ReportProgressRequest{TaskId: run.id, LeaseToken: run.lease, Progress: 50, Message: "half"})
			assert.NoError(t, err, "task %d", i)
			mu.Lock()
			answered = append(answered, time.Since(first))
			mu.Unlock()
		})
	}
	wg.Wait()
	require.Equal(t, 1, b.calls.of(batch)+b.calls.of(single)-before, "the reports went in one call")
	require.Equal(t, 0, b.calls.of(single), "no report went alone")
	for _, took := range answered {
		require.GreaterOrEqual(t, took, delay, "a report was answered before the delay was out")
	}
	for i, run := range runs {
		task, err := c.Get(ctx, run.id)
		require.NoError(t, err)
		require.Equal(t, "half", task.Message, "task %d", i)
	}
}

// TestReporter_BatchDelayFull: a batch that fills up goes at once, however long its delay.
func TestReporter_BatchDelayFull(t *testing.T) {
	t.Parallel()
	b := setup(t, server.Config{})
	c := b.client()
	batch := "/" + taskhubv1connect.WorkerServiceName + "/BatchReportProgress"
	before := b.calls.of(batch)

	r := c.Reporter(client.BatchDelay(time.Hour))
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	const full = 1000 // the most reports a batch holds
	errs := make(chan error, full)
	for i := range full {
		go func() {
			// No such task: each report is refused on its own, in the batch's answer (NotFound,
			// or Unavailable past the node's cap on reads of tasks it does not know).
			_, err := r.Report(ctx, &taskhubv1.ReportProgressRequest{TaskId: fmt.Sprintf("01JX%022d", i), LeaseToken: "AAAAAAAAAAAAAAAAAAAAAAAAAA", Progress: 1})
			errs <- err
		}()
	}
	for range full {
		err := <-errs
		require.NotErrorIs(t, err, context.DeadlineExceeded, "the full batch waited for its delay")
		require.Contains(t, []connect.Code{connect.CodeNotFound, connect.CodeUnavailable}, connect.CodeOf(err), "%v", err)
	}
	require.Equal(t, 1, b.calls.of(batch)-before, "the reports went in one call")
}

// TestReporter_BatchDelayFullBytes: a batch that fills up by its size (512 KiB) goes at once,
// however long its delay; the reports left over wait for theirs.
func TestReporter_BatchDelayFullBytes(t *testing.T) {
	t.Parallel()
	b := setup(t, server.Config{})
	c := b.client()
	r := c.Reporter(client.BatchDelay(time.Hour))
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	const reports = 600 // of about 1 KiB each: one full batch, and some left over
	long := strings.Repeat("x", 1000)
	errs := make(chan error, reports)
	for i := range reports {
		go func() {
			_, err := r.Report(ctx, &taskhubv1.ReportProgressRequest{TaskId: fmt.Sprintf("01JX%022d", i), LeaseToken: "AAAAAAAAAAAAAAAAAAAAAAAAAA", Progress: 1, Message: long})
			errs <- err
		}()
	}
	answered, waited := 0, 0
	for range reports {
		switch err := <-errs; {
		case errors.Is(err, context.DeadlineExceeded):
			waited++
		case connect.CodeOf(err) == connect.CodeNotFound, connect.CodeOf(err) == connect.CodeUnavailable: // no such task, as in TestReporter_BatchDelayFull
			answered++
		default:
			t.Errorf("unexpected: %v", err)
		}
	}
	require.Greater(t, answered, 400, "the full batch waited for its delay")
	require.Positive(t, waited, "the reports left over did not wait for their delay")
}
