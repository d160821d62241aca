package server_test

import (
	"errors"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/stretchr/testify/require"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"
	"github.com/taskhub/taskhub/gen/taskhub/v1/taskhubv1connect"
	"github.com/taskhub/taskhub/internal/natstest"

	"github.com/taskhub/taskhub/server"
)

// TestExternalCluster: taskhub nodes on an external 3-node NATS cluster (--nats-url,
// --replicas 3, one NATS node each) are one hub, as embedded clustering makes them: a lease
// taken on one node holds on the others, an idempotent create sent to two nodes makes one task,
// and when the NATS node leading the event stream stops, the taskhub node on it carries on
// through the others.
func TestExternalCluster(t *testing.T) {
	t.Parallel()
	nss, urls := natstest.Cluster(t, 3)
	var cfgs []server.Config
	for i := range 3 {
		cfgs = append(cfgs, server.Config{Addr: "127.0.0.1:0", NATSURL: urls[i], Replicas: 3, Node: "taskhub" + strconv.Itoa(i+1), DemoWorkers: -1})
	}
	srvs := openAll(t, cfgs)
	var wg sync.WaitGroup
	hc := &http.Client{Transport: &http.Transport{}}
	tasks := make([]taskhubv1connect.TaskServiceClient, 3)
	work := make([]taskhubv1connect.WorkerServiceClient, 3)
	for i, s := range srvs {
		tasks[i] = taskhubv1connect.NewTaskServiceClient(hc, s.URL())
		work[i] = taskhubv1connect.NewWorkerServiceClient(hc, s.URL())
	}
	ctx := t.Context()

	// A lease from one node holds on the others.
	created := createTask(t, tasks[0], "external", "render")
	// A long poll: on a cluster just formed, the queue's consumer may still be electing its
	// leader, and a busy machine makes that take seconds.
	res, err := work[1].ClaimTask(ctx, connect.NewRequest(&taskhubv1.ClaimTaskRequest{WorkerId: "w1", Modes: []string{"render"}, WaitSeconds: 30}))
	require.NoError(t, err)
	claim := res.Msg
	require.NotNil(t, claim.Task, "nothing to claim")
	require.Equal(t, created.Id, claim.Task.Id)
	_, err = work[2].ReportProgress(ctx, connect.NewRequest(&taskhubv1.ReportProgressRequest{
		TaskId: claim.Task.Id, LeaseToken: claim.LeaseToken, Progress: 50, Message: "half"}))
	require.NoError(t, err)
	got, err := tasks[0].GetTask(ctx, connect.NewRequest(&taskhubv1.GetTaskRequest{Id: created.Id}))
	require.NoError(t, err)
	require.Equal(t, float64(50), got.Msg.Task.Progress, "read on the first node what the third wrote")

	// One task for one idempotency key, whichever nodes get it. A create answered Unavailable
	// ("retry") is sent again, as the API tells a client to: on a cluster just formed, the keys'
	// bucket may still be electing its leader, and a busy machine makes that take seconds.
	ids, errs := make([]string, 2), make([]error, 2)
	for i := range 2 {
		wg.Go(func() {
			for retryUntil := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
				res, err := tasks[i].CreateTask(ctx, connect.NewRequest(&taskhubv1.CreateTaskRequest{Prompt: "once", Mode: "render", IdempotencyKey: "k1"}))
				if connect.CodeOf(err) == connect.CodeUnavailable && time.Now().Before(retryUntil) {
					continue
				}
				if err == nil {
					ids[i] = res.Msg.Task.Id
				}
				errs[i] = err
				return
			}
		})
	}
	wg.Wait()
	require.NoError(t, errors.Join(errs...))
	require.Equal(t, ids[0], ids[1])

	// The NATS node that leads the event stream stops (with one replica, the stream would be
	// gone with it): its taskhub node goes on through the other two.
	leader := -1
	for i, ns := range nss {
		if ns.JetStreamIsStreamLeader("$G", "TASKS") {
			leader = i
		}
	}
	require.NotEqual(t, -1, leader)
	nss[leader].Shutdown()
	nss[leader].WaitForShutdown()
	require.Eventually(t, func() bool {
		_, err := work[leader].ReportProgress(ctx, connect.NewRequest(&taskhubv1.ReportProgressRequest{
			TaskId: claim.Task.Id, LeaseToken: claim.LeaseToken, Progress: 75, Message: "three quarters"}))
		return err == nil
	}, 30*time.Second, 100*time.Millisecond, "the taskhub node of the stopped NATS node writes again")
	_, err = work[(leader+1)%3].CompleteTask(ctx, connect.NewRequest(&taskhubv1.CompleteTaskRequest{TaskId: claim.Task.Id, LeaseToken: claim.LeaseToken, Result: "done"}))
	require.NoError(t, err)
	got, err = tasks[leader].GetTask(ctx, connect.NewRequest(&taskhubv1.GetTaskRequest{Id: created.Id}))
	require.NoError(t, err)
	require.Equal(t, taskhubv1.TaskState_TASK_STATE_COMPLETED, got.Msg.Task.State)
}
