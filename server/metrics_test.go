package server_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/require"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"
	"github.com/taskhub/taskhub/gen/taskhub/v1/taskhubv1connect"
	"github.com/taskhub/taskhub/server"
)

// TestMetrics: a scrape of /metrics, parsed with Prometheus' own text parser, counts what the
// API and the hub did.
func TestMetrics(t *testing.T) {
	t.Parallel()
	b := setup(t, server.Config{AuthFile: writeAuthFile(t)})
	ctx := t.Context()
	start := time.Now()
	w := watch(t, b.tasks, &taskhubv1.WatchTasksRequest{}, aliceToken)
	w.wait(0)
	queued, err := b.tasks.CreateTask(ctx, as(&taskhubv1.CreateTaskRequest{Prompt: "stays queued", Mode: "later"}, aliceToken))
	require.NoError(t, err)
	_, err = b.tasks.CreateTask(ctx, as(&taskhubv1.CreateTaskRequest{Prompt: "done", Mode: "render"}, aliceToken))
	require.NoError(t, err)
	claim, err := b.work.ClaimTask(ctx, as(&taskhubv1.ClaimTaskRequest{WorkerId: "w", Modes: []string{"render"}, WaitSeconds: 5}, workerToken))
	require.NoError(t, err)
	lease := claim.Msg.LeaseToken
	for _, p := range []float64{10, 50} {
		_, err = b.work.ReportProgress(ctx, as(&taskhubv1.ReportProgressRequest{TaskId: claim.Msg.Task.Id, LeaseToken: lease, Progress: p}, workerToken))
		require.NoError(t, err)
	}
	// A batch's reports count one by one: here one stored, one naming a task nobody made.
	batch, err := b.work.BatchReportProgress(ctx, as(&taskhubv1.BatchReportProgressRequest{Reports: []*taskhubv1.ReportProgressRequest{
		{TaskId: claim.Msg.Task.Id, LeaseToken: lease, Progress: 60},
		{TaskId: "01JAAAAAAAAAAAAAAAAAAAAAAB", LeaseToken: lease, Progress: 60},
	}}, workerToken))
	require.NoError(t, err)
	require.Equal(t, "not_found", batch.Msg.Results[1].GetError().GetCode())
	_, err = b.work.CompleteTask(ctx, as(&taskhubv1.CompleteTaskRequest{TaskId: claim.Msg.Task.Id, LeaseToken: lease, Result: "ok"}, workerToken))
	require.NoError(t, err)
	_, err = b.tasks.GetTask(ctx, as(&taskhubv1.GetTaskRequest{Id: "01JAAAAAAAAAAAAAAAAAAAAAAA"}, aliceToken))
	require.Equal(t, connect.CodeNotFound, connect.CodeOf(err))
	// Created x2, started, progress x2, completed; the first progress may be coalesced away.
	got := w.waitFor(func(es []*taskhubv1.TaskEvent) bool {
		return len(es) > 0 && es[len(es)-1].Kind == taskhubv1.EventKind_EVENT_KIND_COMPLETED
	})

	scrape := func(token string) (int, map[string]*dto.MetricFamily) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, b.srv.URL()+"/metrics", nil)
		require.NoError(t, err)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		res, err := b.http.Do(req)
		require.NoError(t, err)
		defer res.Body.Close()
		if res.StatusCode != http.StatusOK {
			return res.StatusCode, nil
		}
		parser := expfmt.NewTextParser(model.UTF8Validation)
		families, err := parser.TextToMetricFamilies(res.Body)
		require.NoError(t, err)
		return res.StatusCode, families
	}
	// Refused calls count too, an unknown path as "other".
	_, err = b.tasks.ListTasks(ctx, as(&taskhubv1.ListTasksRequest{}, "not-a-token-of-anyone"))
	require.Equal(t, connect.CodeUnauthenticated, connect.CodeOf(err))
	res, err := b.http.Post(b.srv.URL()+"/taskhub.v1.TaskService/NoSuchThing-a1b2c3", "application/json", strings.NewReader("{}"))
	require.NoError(t, err)
	res.Body.Close()

	code, _ := scrape("")
	require.Equal(t, http.StatusUnauthorized, code, "no token, no metrics")
	code, m := scrape(workerToken)
	require.Equal(t, http.StatusOK, code)

	value := func(name string, labels map[string]string) float64 {
		t.Helper()
		f := m[name]
		require.NotNil(t, f, name)
	next:
		for _, metric := range f.Metric {
			for _, l := range metric.Label {
				if v, ok := labels[l.GetName()]; ok && v != l.GetValue() {
					continue next
				}
			}
			switch {
			case metric.Counter != nil:
				return metric.Counter.GetValue()
			case metric.Gauge != nil:
				return metric.Gauge.GetValue()
			case metric.Histogram != nil:
				return float64(metric.Histogram.GetSampleCount())
			}
		}
		t.Fatalf("no %s with %v in %v", name, labels, f)
		return 0
	}
	require.Equal(t, 2.0, value("taskhub_rpc_calls_total", map[string]string{"procedure": "taskhub.v1.TaskService/CreateTask", "code": "ok"}))
	require.Equal(t, 2.0, value("taskhub_rpc_calls_total", map[string]string{"procedure": "taskhub.v1.WorkerService/ReportProgress", "code": "ok"}))
	require.Equal(t, 1.0, value("taskhub_rpc_calls_total", map[string]string{"procedure": "taskhub.v1.TaskService/GetTask", "code": "not_found"}))
	require.Equal(t, 1.0, value("taskhub_rpc_calls_total", map[string]string{"procedure": "taskhub.v1.TaskService/ListTasks", "code": "unauthenticated"}))
	require.Equal(t, 1.0, value("taskhub_rpc_calls_total", map[string]string{"procedure": "other", "code": "unauthenticated"}))
	require.Equal(t, 1.0, value("taskhub_batched_reports_total", map[string]string{"code": "ok"}))
	require.Equal(t, 1.0, value("taskhub_batched_reports_total", map[string]string{"code": "not_found"}))
	require.Equal(t, 1.0, value("taskhub_task_reads_by_id_total", map[string]string{"result": "read"}), "the task nobody made, and only it")
	require.Equal(t, 0.0, value("taskhub_task_reads_by_id_total", map[string]string{"result": "refused"}))
	for kind, n := range map[string]float64{"created": 2, "started": 1, "progress": 3, "completed": 1} {
		require.Equal(t, n, value("taskhub_events_appended_total", map[string]string{"kind": kind}), kind)
	}
	require.Equal(t, 7.0, value("taskhub_event_log_append_seconds", nil), "one observation per append")
	require.Equal(t, 7.0, value("taskhub_event_log_batched_appends_total", nil), "every append went in a batch")
	require.InDelta(t, 4.0, value("taskhub_event_log_batches_total", nil), 3.0, "of one to seven appends")
	require.Equal(t, 1.0, value("taskhub_watches_open", nil))
	require.GreaterOrEqual(t, value("taskhub_watch_messages_total", nil), float64(1+len(got)), "the snapshot and the events")
	// The watch is on an HTTP/1.1 connection of its own, which takes every write at once.
	require.GreaterOrEqual(t, value("taskhub_watch_sends_total", map[string]string{"result": "sent"}), 2.0, "the snapshot, then events")
	require.Equal(t, 0.0, value("taskhub_watch_sends_total", map[string]string{"result": "waited"}))
	require.GreaterOrEqual(t, value("taskhub_watch_delivery_seconds", nil), float64(len(got)), "one observation per event sent")
	require.Equal(t, 1.0, value("taskhub_tasks_active", map[string]string{"mode": "later", "state": "queued"}))
	waited := value("taskhub_queue_oldest_seconds", map[string]string{"mode": "later"})
	require.Greater(t, waited, 0.0)
	require.Less(t, waited, time.Since(start).Seconds()+1, "the task queued during the test")
	// Present; not asserted zero: a busy test machine can hold a delivery past the stall time.
	require.GreaterOrEqual(t, value("taskhub_event_log_follower_restarts_total", nil), 0.0)
	require.Equal(t, 0.0, value("taskhub_writes_paced_total", nil), "no write waited for the feed")
	require.NotNil(t, m["taskhub_build_info"])
	require.NotNil(t, m["go_goroutines"])
	require.Equal(t, taskhubv1.TaskState_TASK_STATE_QUEUED, queued.Msg.Task.State)
}

// TestMetrics_DeliveryOverHTTP2: an event sent live to a watch stream that connect serves
// (HTTP/2) is observed in the delivery histogram, as one on an HTTP/1.1 connection of its own
// is; an event replayed to a client that resumes is not (its age is the client's absence).
func TestMetrics_DeliveryOverHTTP2(t *testing.T) {
	t.Parallel()
	b := setup(t, server.Config{})
	tasks := taskhubv1connect.NewTaskServiceClient(b.h2c, b.srv.URL())
	createTask(t, b.tasks, "before the watch", "later") // so that the snapshot's seq is not 0: a watch from 0 does not resume
	w := watch(t, tasks, &taskhubv1.WatchTasksRequest{}, "")
	snap, _ := w.wait(0)
	require.NotZero(t, snap.Seq)
	createTask(t, b.tasks, "a lighthouse at dawn", "later")
	w.waitFor(func(es []*taskhubv1.TaskEvent) bool { return len(es) == 1 })
	require.Eventually(t, func() bool {
		return scrape(t, b.srv.URL())["taskhub_watch_delivery_seconds_count"] == 1
	}, 5*time.Second, 10*time.Millisecond, "the created event's delivery")

	for _, c := range []taskhubv1connect.TaskServiceClient{tasks, b.tasks} { // HTTP/2, HTTP/1.1
		back := watch(t, c, &taskhubv1.WatchTasksRequest{Epoch: snap.Epoch, AfterSeq: snap.Seq}, "")
		_, events := back.wait(1)
		require.Len(t, events, 1, "the created event, replayed")
	}
	time.Sleep(100 * time.Millisecond) // an observation would be made as the event was written
	require.Equal(t, 1.0, scrape(t, b.srv.URL())["taskhub_watch_delivery_seconds_count"], "replayed events are not observed")
}
