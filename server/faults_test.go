package server_test

import (
	"context"
	"net"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
	"github.com/stretchr/testify/require"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"
	"github.com/taskhub/taskhub/gen/taskhub/v1/taskhubv1connect"
	"github.com/taskhub/taskhub/internal/freeport"
	"github.com/taskhub/taskhub/internal/natstest"

	"github.com/taskhub/taskhub/server"
)

// cutter is a dialer whose connections can all be cut at once, as a network drop would.
type cutter struct {
	mu    sync.Mutex
	conns []*net.TCPConn
}

func (c *cutter) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	conn, err := (&net.Dialer{}).DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.conns = append(c.conns, conn.(*net.TCPConn))
	c.mu.Unlock()
	return conn, nil
}

// cut resets every connection (SO_LINGER 0: the peer gets a RST, not a goodbye).
func (c *cutter) cut() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, conn := range c.conns {
		_ = conn.SetLinger(0)
		_ = conn.Close()
	}
	c.conns = nil
}

// TestFaults_NetworkDropThenResume cuts a watcher's connection in the middle of a task and has it
// resume with the epoch and the last seq it saw: it ends with exactly the events of a watcher
// whose connection never dropped.
func TestFaults_NetworkDropThenResume(t *testing.T) {
	t.Parallel()
	b := setup(t, server.Config{})
	ctx := t.Context()
	steady := watch(t, b.tasks, &taskhubv1.WatchTasksRequest{}, "")
	steady.wait(0)

	cut := &cutter{}
	flaky := &http.Client{Transport: &http.Transport{DialContext: cut.dial}}
	defer flaky.CloseIdleConnections()
	client := taskhubv1connect.NewTaskServiceClient(flaky, b.srv.URL())
	first := watch(t, client, &taskhubv1.WatchTasksRequest{}, "")
	snap, _ := first.wait(0)

	task := createTask(t, b.tasks, "x", "render")
	c := claimTask(t, b.work, "w", "render")
	report := func(p float64) {
		_, err := b.work.ReportProgress(ctx, connect.NewRequest(&taskhubv1.ReportProgressRequest{TaskId: task.Id, LeaseToken: c.LeaseToken, Progress: p}))
		require.NoError(t, err)
	}
	report(10)
	_, seen := first.wait(3)

	cut.cut()
	require.Error(t, first.end(), "the dropped stream ends with an error")
	report(20) // while the watcher is away
	report(30)

	resumed := watch(t, client, &taskhubv1.WatchTasksRequest{Epoch: snap.Epoch, AfterSeq: seen[len(seen)-1].Seq}, "")
	rsnap, _ := resumed.wait(0)
	require.True(t, rsnap.Recovered)
	_, err := b.work.CompleteTask(ctx, connect.NewRequest(&taskhubv1.CompleteTaskRequest{TaskId: task.Id, LeaseToken: c.LeaseToken, Result: "r"}))
	require.NoError(t, err)

	completed := func(events []*taskhubv1.TaskEvent) bool {
		return len(events) > 0 && events[len(events)-1].Kind == taskhubv1.EventKind_EVENT_KIND_COMPLETED
	}
	all := steady.waitFor(completed)
	missed := resumed.waitFor(completed)
	// Either watcher may see the two reports made while the first was away coalesced into the
	// later one (the replay reads them faster than the client takes them; a busy machine can
	// keep the steady one from taking the first before the second arrives), so compare all but
	// progress, then the last progress.
	got := append(seen, missed...)
	require.Equal(t, keys(withoutProgress(all)), keys(withoutProgress(got)), "nothing lost, nothing repeated")
	require.Equal(t, float64(30), missed[len(missed)-2].Task.Progress)
	for i := 1; i < len(got); i++ {
		require.Greater(t, got[i].Seq, got[i-1].Seq)
	}
}

func withoutProgress(events []*taskhubv1.TaskEvent) []*taskhubv1.TaskEvent {
	var out []*taskhubv1.TaskEvent
	for _, e := range events {
		if e.Kind != taskhubv1.EventKind_EVENT_KIND_PROGRESS {
			out = append(out, e)
		}
	}
	return out
}

// TestFaults_ExternalNATSRestarts runs taskhub against an external NATS server that goes away
// and comes back: meanwhile calls fail with unavailable and write nothing; afterwards calls
// work, and a watch that stayed open carries on with the new events.
func TestFaults_ExternalNATSRestarts(t *testing.T) {
	t.Parallel()
	storeDir, addr := t.TempDir(), freeport.Addr(t)
	_, portStr, _ := net.SplitHostPort(addr)
	port, _ := strconv.Atoi(portStr)
	startNATS := natstest.Single(t, port, storeDir)
	ns := startNATS()
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })

	b := setup(t, server.Config{NATSURL: "nats://127.0.0.1:" + strconv.Itoa(port)})
	ctx := t.Context()
	w := watch(t, b.tasks, &taskhubv1.WatchTasksRequest{}, "")
	w.wait(0)
	before := createTask(t, b.tasks, "before", "render")
	w.wait(1)

	ns.Shutdown()
	ns.WaitForShutdown()
	start := time.Now()
	_, err := b.tasks.CreateTask(ctx, connect.NewRequest(&taskhubv1.CreateTaskRequest{Prompt: "during", Mode: "render"}))
	require.Equal(t, connect.CodeUnavailable, connect.CodeOf(err), err)
	t.Logf("a create during the outage failed in %v: %v", time.Since(start), err)
	// Readiness turns red within a probe (they run at once after a failed call).
	require.Eventually(t, func() bool {
		res, err := b.http.Get(b.srv.URL() + "/readyz")
		require.NoError(t, err)
		res.Body.Close()
		return res.StatusCode == http.StatusServiceUnavailable
	}, 2*time.Second, 10*time.Millisecond)
	health := grpchealth.NewClient(b.h2c, b.srv.URL(), connect.WithGRPC())
	res, err := health.Check(ctx, &grpchealth.CheckRequest{})
	require.NoError(t, err)
	require.Equal(t, grpchealth.StatusNotServing, res.Status, "gRPC health agrees with /readyz")

	ns = startNATS()
	var after *taskhubv1.Task
	require.Eventually(t, func() bool {
		res, err := b.tasks.CreateTask(ctx, connect.NewRequest(&taskhubv1.CreateTaskRequest{Prompt: "after", Mode: "render"}))
		if err == nil {
			after = res.Msg.Task
		}
		return err == nil
	}, 15*time.Second, 100*time.Millisecond, "creates did not work again after NATS came back")
	require.Eventually(t, func() bool {
		res, err := health.Check(ctx, &grpchealth.CheckRequest{})
		return err == nil && res.Status == grpchealth.StatusServing
	}, 5*time.Second, 20*time.Millisecond, "gRPC health serves again")

	// The open watch carries on: the next event it gets is the new task, right after the first.
	_, events := w.wait(2)
	require.Equal(t, before.Id, events[0].Task.Id)
	require.Equal(t, after.Id, events[1].Task.Id, "the failed create left nothing behind")
	require.Equal(t, taskhubv1.EventKind_EVENT_KIND_CREATED, events[1].Kind)

	// Workers pick up where they were: the queue survived.
	c := claimTask(t, b.work, "w", "render")
	require.Equal(t, before.Id, c.Task.Id)
	list, err := b.tasks.ListTasks(ctx, connect.NewRequest(&taskhubv1.ListTasksRequest{}))
	require.NoError(t, err)
	require.Len(t, list.Msg.Tasks, 2)
}
