package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/stretchr/testify/require"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"
	"github.com/taskhub/taskhub/gen/taskhub/v1/taskhubv1connect"
	"github.com/taskhub/taskhub/internal/freeport"

	"github.com/taskhub/taskhub/eventlog"
)

// startCluster starts n taskhub nodes as child processes, clustered on loopback, each with its
// own data dir, and waits until every one serves.
func startCluster(t *testing.T, n int, extra string) []*child {
	t.Helper()
	peers := make([]string, n)
	for i := range peers {
		peers[i] = freeport.Addr(t)
	}
	nodes := make([]*child, n)
	for i := range nodes {
		addr := freeport.Addr(t)
		nodes[i] = &child{t: t, url: "http://" + addr,
			args: fmt.Sprintf("serve --addr %s --data-dir %s --demo-workers 0 --log-level error --cluster-addr %s --peers %s --node-name node%d %s",
				addr, t.TempDir(), peers[i], strings.Join(peers, ","), i+1, extra)}
		require.NoError(t, nodes[i].launch())
		t.Cleanup(nodes[i].kill)
	}
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i, c := range nodes {
		wg.Go(func() { errs[i] = c.waitUp(60 * time.Second) })
	}
	wg.Wait()
	require.NoError(t, errors.Join(errs...))
	return nodes
}

// anyNode is a client transport that sends each request to one of the nodes, picked at random
// among those it can connect to: a load balancer without stickiness. With prefer set, it tries
// that node first.
type anyNode struct {
	nodes  []*child
	base   http.RoundTripper
	prefer int // 1 + the index of the node to try first; 0: none
}

func (a *anyNode) RoundTrip(r *http.Request) (*http.Response, error) {
	var err error
	order := rand.Perm(len(a.nodes))
	if a.prefer > 0 {
		order = append([]int{a.prefer - 1}, order...)
	}
	for _, i := range order {
		u, _ := url.Parse(a.nodes[i].url)
		r2 := r.Clone(r.Context())
		r2.URL.Host, r2.Host = u.Host, u.Host
		var res *http.Response
		res, err = a.base.RoundTrip(r2)
		if err == nil {
			res.Header.Set(nodeHeader, u.Host) // for a failure's message (see resumer)
			return res, nil
		}
		if r.Body != nil && r.GetBody == nil {
			return nil, err // the body is spent: let the caller retry
		}
		if r.GetBody != nil {
			if r2.Body, err = r.GetBody(); err != nil {
				return nil, err
			}
			r.Body = r2.Body
		}
	}
	return nil, err
}

// TestCluster_AnyNodeAnyCall: three nodes behave as one hub. A task created on one node is
// claimed on another and reported, renewed, cancelled and read on every node; an idempotent
// create sent to two nodes makes one task.
func TestCluster_AnyNodeAnyCall(t *testing.T) {
	t.Parallel()
	nodes := startCluster(t, 3, "--lease-timeout 5s")
	hc := &http.Client{Timeout: 10 * time.Second}
	tasks := make([]taskhubv1connect.TaskServiceClient, len(nodes))
	work := make([]taskhubv1connect.WorkerServiceClient, len(nodes))
	for i, n := range nodes {
		tasks[i] = taskhubv1connect.NewTaskServiceClient(hc, n.url)
		work[i] = taskhubv1connect.NewWorkerServiceClient(hc, n.url)
	}
	ctx := t.Context()

	created, err := tasks[0].CreateTask(ctx, connect.NewRequest(&taskhubv1.CreateTaskRequest{Prompt: "a cat", Mode: "paint"}))
	require.NoError(t, err)
	id := created.Msg.Task.Id
	for i := range nodes {
		got, err := tasks[i].GetTask(ctx, connect.NewRequest(&taskhubv1.GetTaskRequest{Id: id}))
		require.NoError(t, err, "node %d", i+1)
		require.Equal(t, taskhubv1.TaskState_TASK_STATE_QUEUED, got.Msg.Task.State, "node %d reads the create at once", i+1)
	}

	claim, err := claimWithin(ctx, work[2], "w1", "paint", 20*time.Second)
	require.NoError(t, err)
	require.NotNil(t, claim.Msg.Task)
	require.Equal(t, id, claim.Msg.Task.Id)
	token := claim.Msg.LeaseToken

	// The lease is good on every node, the one that created the task (and cached it) first.
	for step, i := range []int{0, 1, 2, 0} {
		_, err := work[i].ReportProgress(ctx, connect.NewRequest(&taskhubv1.ReportProgressRequest{
			TaskId: id, LeaseToken: token, Progress: float64(10 * (step + 1)), Message: fmt.Sprintf("step %d", step)}))
		require.NoError(t, err, "report on node %d", i+1)
		_, err = work[(i+1)%3].RenewLease(ctx, connect.NewRequest(&taskhubv1.RenewLeaseRequest{TaskId: id, LeaseToken: token}))
		require.NoError(t, err, "renew on node %d", (i+1)%3+1)
	}
	// A forged token is refused on every node.
	for i := range nodes {
		_, err := work[i].ReportProgress(ctx, connect.NewRequest(&taskhubv1.ReportProgressRequest{TaskId: id, LeaseToken: "forged", Progress: 99}))
		require.Equal(t, connect.CodePermissionDenied, connect.CodeOf(err), "node %d: %v", i+1, err)
	}
	// Cancel on one node reaches the worker on the others.
	_, err = tasks[1].CancelTask(ctx, connect.NewRequest(&taskhubv1.CancelTaskRequest{Id: id}))
	require.NoError(t, err)
	for i := range nodes {
		res, err := work[i].ReportProgress(ctx, connect.NewRequest(&taskhubv1.ReportProgressRequest{TaskId: id, LeaseToken: token, Progress: 90}))
		require.NoError(t, err, "node %d", i+1)
		require.True(t, res.Msg.CancelRequested, "node %d tells the worker of the cancel", i+1)
		got, err := tasks[i].GetTask(ctx, connect.NewRequest(&taskhubv1.GetTaskRequest{Id: id}))
		require.NoError(t, err)
		require.Equal(t, taskhubv1.TaskState_TASK_STATE_CANCELLED, got.Msg.Task.State, "node %d", i+1)
	}

	// A node that cached the task's first lease honours the next one. Worker w1 claims on node
	// 3 and reports on node 1 (whose actor now holds w1's lease), fails on node 2, and w2 claims
	// the retry on node 2: its lease must work on node 1 too.
	created, err = tasks[0].CreateTask(ctx, connect.NewRequest(&taskhubv1.CreateTaskRequest{Prompt: "a bird", Mode: "paint"}))
	require.NoError(t, err)
	id = created.Msg.Task.Id
	claim, err = claimWithin(ctx, work[2], "w1", "paint", 20*time.Second)
	require.NoError(t, err)
	require.Equal(t, id, claim.Msg.Task.GetId())
	_, err = work[0].ReportProgress(ctx, connect.NewRequest(&taskhubv1.ReportProgressRequest{TaskId: id, LeaseToken: claim.Msg.LeaseToken, Progress: 5}))
	require.NoError(t, err)
	_, err = work[1].FailTask(ctx, connect.NewRequest(&taskhubv1.FailTaskRequest{TaskId: id, LeaseToken: claim.Msg.LeaseToken, Error: "out of paint", Retryable: true}))
	require.NoError(t, err)
	claim2, err := claimWithin(ctx, work[1], "w2", "paint", 20*time.Second)
	require.NoError(t, err)
	require.Equal(t, id, claim2.Msg.Task.GetId())
	_, err = work[0].ReportProgress(ctx, connect.NewRequest(&taskhubv1.ReportProgressRequest{TaskId: id, LeaseToken: claim2.Msg.LeaseToken, Progress: 20}))
	require.NoError(t, err, "node 1 honours the second lease")
	_, err = work[0].ReportProgress(ctx, connect.NewRequest(&taskhubv1.ReportProgressRequest{TaskId: id, LeaseToken: claim.Msg.LeaseToken, Progress: 30}))
	require.Equal(t, connect.CodePermissionDenied, connect.CodeOf(err), "node 1 refuses the first lease: %v", err)

	// A worker that only renews, on other nodes than the ones that saw its claim and reports,
	// keeps its lease past the lease timeout (5s).
	for range 8 {
		time.Sleep(time.Second)
		_, err = work[2].RenewLease(ctx, connect.NewRequest(&taskhubv1.RenewLeaseRequest{TaskId: id, LeaseToken: claim2.Msg.LeaseToken}))
		require.NoError(t, err, "renew on node 3")
	}
	_, err = work[0].CompleteTask(ctx, connect.NewRequest(&taskhubv1.CompleteTaskRequest{TaskId: id, LeaseToken: claim2.Msg.LeaseToken, Result: "a bird"}))
	require.NoError(t, err, "the renewed lease still holds on node 1")

	// One task per idempotency key, whichever nodes the retries reach.
	var ids sync.Map
	var wg sync.WaitGroup
	for i := range nodes {
		wg.Go(func() {
			res, err := tasks[i].CreateTask(ctx, connect.NewRequest(&taskhubv1.CreateTaskRequest{Prompt: "a dog", Mode: "paint", IdempotencyKey: "dog-1"}))
			if err == nil {
				ids.Store(res.Msg.Task.Id, true)
			}
		})
	}
	wg.Wait()
	n := 0
	ids.Range(func(any, any) bool { n++; return true })
	require.Equal(t, 1, n, "three creates with one key made one task")
}

// eachReadyz calls fn with the /readyz body of each live node in turn, every 100 ms, until fn
// returns true, and reports whether it did within timeout.
func eachReadyz(nodes []*child, timeout time.Duration, fn func(body string) bool) bool {
	hc := &http.Client{Timeout: 2 * time.Second}
	for start := time.Now(); time.Since(start) < timeout; time.Sleep(100 * time.Millisecond) {
		for _, n := range nodes {
			if n.cmd == nil {
				continue
			}
			res, err := hc.Get(n.url + "/readyz")
			if err != nil {
				continue
			}
			body, _ := io.ReadAll(res.Body)
			res.Body.Close()
			if fn(string(body)) {
				return true
			}
		}
	}
	return false
}

// leader returns the index of the node that leads the event log, as a live node's /readyz
// names it.
func leader(t *testing.T, nodes []*child) int {
	t.Helper()
	i := 0
	if !eachReadyz(nodes, 10*time.Second, func(body string) bool {
		_, name, ok := strings.Cut(body, "event log leader node")
		_, err := fmt.Sscanf(name, "%d", &i)
		return ok && err == nil && i >= 1 && i <= len(nodes)
	}) {
		t.Fatal("no node names the event log's leader")
	}
	return i - 1
}

// gathered waits until a live node's /readyz names one leader for every stream and queue
// consumer, and returns how long that took.
func gathered(t *testing.T, nodes []*child) time.Duration {
	t.Helper()
	start := time.Now()
	if !eachReadyz(nodes, time.Minute, func(body string) bool {
		leaders := map[string]bool{}
		groups := 0
		for line := range strings.Lines(body) {
			if _, who, ok := strings.Cut(strings.TrimSpace(line), " leader "); ok && !strings.HasPrefix(line, "event log") {
				leaders[who] = true
				groups++
			}
		}
		return groups >= 5 && len(leaders) == 1
	}) {
		t.Fatal("the leaders of the log's streams are not gathered on one node")
	}
	return time.Since(start)
}

// pulse writes (creates a task, then cancels it) every 20ms until ctx ends, and keeps the times writes were
// acknowledged, to measure how long a node's loss pauses writes.
type pulse struct {
	mu  sync.Mutex
	oks []time.Time
}

func (p *pulse) run(ctx context.Context, tasks taskhubv1connect.TaskServiceClient) {
	for i := 0; ctx.Err() == nil; i++ {
		call, cancel := context.WithTimeout(ctx, time.Second)
		res, err := tasks.CreateTask(call, connect.NewRequest(&taskhubv1.CreateTaskRequest{Prompt: "pulse", Mode: "pulse"}))
		if err == nil {
			p.mu.Lock()
			p.oks = append(p.oks, time.Now())
			p.mu.Unlock()
			// Cancelled, it no longer counts against the user's active tasks.
			_, _ = tasks.CancelTask(call, connect.NewRequest(&taskhubv1.CancelTaskRequest{Id: res.Msg.Task.Id}))
		}
		cancel()
		time.Sleep(20 * time.Millisecond)
	}
}

// since reports whether a write was acknowledged after at.
func (p *pulse) since(at time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.oks) > 0 && p.oks[len(p.oks)-1].After(at)
}

// pause is the time between the last write acknowledged before at and the first after.
func (p *pulse) pause(at time.Time) time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	i, _ := slices.BinarySearchFunc(p.oks, at, time.Time.Compare)
	if i == 0 || i == len(p.oks) {
		return -1
	}
	return p.oks[i].Sub(p.oks[i-1])
}

// TestCluster_KillNodes runs creators, workers that send each call to a random node, and
// watchers that resume on a random node, while nodes are killed with SIGKILL one at a time (the
// event log's leader first) and brought back, then checks from the log that the cluster lost
// nothing it acknowledged, ran no task twice at once, and gave every watcher every event once
// and in order. TASKHUB_CLUSTER_KILLS sets how many kills (default 1; make test/cluster runs
// more, and the last of those brings its node back with an empty data dir).
func TestCluster_KillNodes(t *testing.T) {
	if testing.Short() {
		t.Skip("kills cluster nodes")
	}
	t.Parallel()
	kills := 1
	if v := os.Getenv("TASKHUB_CLUSTER_KILLS"); v != "" {
		var err error
		kills, err = strconv.Atoi(v)
		require.NoError(t, err)
	}
	nodes := startCluster(t, 3, "--lease-timeout 2s --max-attempts 50 --retention 0 --stall-timeout 0")
	lb := &anyNode{nodes: nodes, base: &http.Transport{}}
	hc := &http.Client{Transport: lb, Timeout: 5 * time.Second}
	tasks := taskhubv1connect.NewTaskServiceClient(hc, "http://cluster")
	work := taskhubv1connect.NewWorkerServiceClient(hc, "http://cluster")
	led := &ledger{created: map[string]string{}, reported: map[string]bool{}, done: map[string]string{}}

	// A first task: a watch that resumes after its create replays every event of the run.
	marker, err := tasks.CreateTask(t.Context(), connect.NewRequest(&taskhubv1.CreateTaskRequest{Prompt: "marker", Mode: "pulse"}))
	require.NoError(t, err)
	start := marker.Msg.Task.Seq
	epoch, _, err := lastSeq(t.Context(), tasks)
	require.NoError(t, err)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	creating := make(chan struct{})
	// Watcher i watches on node i while it is up, and resumes on another while it is not.
	watch := make([]taskhubv1connect.TaskServiceClient, len(nodes))
	for i := range watch {
		own := &anyNode{nodes: nodes, base: &http.Transport{}, prefer: i + 1}
		watch[i] = taskhubv1connect.NewTaskServiceClient(&http.Client{Transport: own}, "http://cluster")
	}
	// Three more watch as curl does, with JSON over HTTP/1.1, through a round-robin reverse
	// proxy that knows nothing of the nodes' health: their first streams land on the nodes in
	// turn, so one of them is likely on the node killed (a first stream that fails before its
	// snapshot moves the turn on).
	proxy := roundRobin(t, nodes)
	for range 3 {
		watch = append(watch, taskhubv1connect.NewTaskServiceClient(&http.Client{Transport: &http.Transport{}}, proxy, connect.WithProtoJSON()))
	}
	watchers := crashLoad(ctx, &wg, tasks, work, watch, led, creating)
	p := &pulse{}
	pulseCtx, stopPulse := context.WithCancel(ctx)
	wg.Go(func() { p.run(pulseCtx, tasks) })

	time.Sleep(time.Second)
	var victims []int
	proxiedOnVictim := map[int]bool{} // the watchers through the proxy whose stream was on a node killed
	for k := range kills {
		// In a settled cluster the leader of the event log leads every stream and queue
		// consumer too (see eventlog.Log.GatherLeaders): losing another node pauses nothing.
		waited := gathered(t, nodes).Round(100 * time.Millisecond)
		victim := leader(t, nodes)
		role := fmt.Sprintf("the event log's leader; leaders gathered %v after the last restart", waited)
		if k%2 == 1 {
			victim, role = (victim+1+rand.IntN(2))%3, fmt.Sprintf("a follower; leaders gathered %v after the last restart", waited)
		}
		victims = append(victims, victim)
		victimHost, err := url.Parse(nodes[victim].url)
		require.NoError(t, err)
		for j, w := range watchers[len(nodes):] {
			w.mu.Lock()
			if w.on == victimHost.Host {
				proxiedOnVictim[j] = true
			}
			w.mu.Unlock()
		}
		at := time.Now()
		nodes[victim].kill()
		require.Eventually(t, func() bool { return p.since(at) }, 60*time.Second, 10*time.Millisecond, "writes resume")
		t.Logf("kill -9 of node%d (%s): writes paused %v", victim+1, role, p.pause(at).Round(time.Millisecond))
		time.Sleep(2 * time.Second)
		if k == kills-1 && kills > 1 {
			dir := dataDir(nodes[victim].args)
			require.NoError(t, os.RemoveAll(dir))
			t.Logf("node%d comes back with an empty data dir", victim+1)
		}
		require.NoError(t, nodes[victim].launch())
		require.NoError(t, nodes[victim].waitUp(60*time.Second))
		time.Sleep(time.Second)
	}
	close(creating)
	stopPulse()

	require.Eventually(t, func() bool {
		res, err := tasks.ListTasks(ctx, connect.NewRequest(&taskhubv1.ListTasksRequest{
			States: []taskhubv1.TaskState{taskhubv1.TaskState_TASK_STATE_QUEUED, taskhubv1.TaskState_TASK_STATE_RUNNING}, PageSize: 500,
		}))
		if err != nil {
			return false
		}
		for _, task := range res.Msg.Tasks {
			if task.Mode == "crash" {
				return false
			}
		}
		return true
	}, 90*time.Second, 200*time.Millisecond, "tasks are still active")
	// A last task, whose cancel is the last event the replay below needs.
	end, err := tasks.CreateTask(t.Context(), connect.NewRequest(&taskhubv1.CreateTaskRequest{Prompt: "end", Mode: "pulse"}))
	require.NoError(t, err)
	ended, err := tasks.CancelTask(t.Context(), connect.NewRequest(&taskhubv1.CancelTaskRequest{Id: end.Msg.Task.Id}))
	require.NoError(t, err)
	catchUp(t, watchers, ended.Msg.Task.Seq)
	cancel()
	wg.Wait()

	// Every event of the run, as a watch that resumes after its first replays them: it shows
	// the cluster's history is whole, but may coalesce progress.
	replayed := replayAll(t, nodes, epoch, start, ended.Msg.Task.Seq)
	require.NotEmpty(t, replayed)
	dumpIfMissed(t, nodes, watchers, replayed)

	// Every event, read from the files of one node once the cluster has stopped.
	for _, n := range nodes {
		// The last node stops alone, its streams without a quorum: nothing may wait for one.
		require.True(t, n.stop(), "a node stops on SIGTERM")
	}
	log, err := eventlog.Open(context.Background(), eventlog.Config{DataDir: dataDir(nodes[0].args), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	require.NoError(t, err)
	defer log.Close()
	var all []*taskhubv1.TaskEvent
	for seq := start + 1; ; {
		e, err := log.Next(context.Background(), "tasks.>", seq)
		if errors.Is(err, eventlog.ErrNotFound) {
			break
		}
		require.NoError(t, err)
		all = append(all, e.Record.Event)
		seq = e.Seq + 1
	}
	var crash []*taskhubv1.TaskEvent
	for _, e := range all {
		if e.Task.Mode == "crash" {
			crash = append(crash, e)
		}
	}
	verifyRun(t, crash, led, watchers)
	for _, i := range victims {
		require.Positive(t, watchers[i].resumes, "the watcher on node%d resumed on another node", i+1)
	}
	for j := range proxiedOnVictim {
		require.Positive(t, watchers[len(nodes)+j].resumes, "watcher %d, through the proxy on a node killed, resumed", len(nodes)+j)
	}
	if len(proxiedOnVictim) == 0 {
		t.Log("no watcher through the proxy was on a node killed")
	}
	for i, w := range watchers {
		where := fmt.Sprintf("on node%d", i+1)
		if i >= len(nodes) {
			where = "with JSON through the proxy"
		}
		t.Logf("watcher %d (%s): stream end to resumed snapshot: %v", i, where, w.gaps)
	}
}

// nodeHeader is the response header in which the test's balancers say which node answered.
const nodeHeader = "Test-Node"

// dumpIfMissed makes every live node print its goroutines (SIGQUIT: the stacks go to the test's
// output, and the node exits) when a watcher missed an event the replay has, so that a failure
// shows where the node's side of that watcher's stream was.
func dumpIfMissed(t *testing.T, nodes []*child, watchers []*resumer, replayed []*taskhubv1.TaskEvent) {
	for i, w := range watchers {
		w.mu.Lock()
		seen := map[uint64]bool{}
		for _, s := range w.seqs {
			seen[s] = true
		}
		missed := slices.ContainsFunc(replayed, func(e *taskhubv1.TaskEvent) bool {
			return e.Seq > w.from && e.Kind != taskhubv1.EventKind_EVENT_KIND_PROGRESS && !seen[e.Seq]
		})
		w.mu.Unlock()
		if !missed {
			continue
		}
		t.Logf("watcher %d missed an event: every node prints its goroutines", i)
		for _, n := range nodes {
			if n.cmd != nil {
				_ = n.cmd.Process.Signal(syscall.SIGQUIT)
			}
		}
		time.Sleep(2 * time.Second)
		return
	}
}

// roundRobin starts a reverse proxy that sends each request to the next node in turn, up or
// not (a dead node's turn answers 502), and returns its URL.
func roundRobin(t *testing.T, nodes []*child) string {
	var next atomic.Int64
	proxy := httptest.NewServer(&httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			u, _ := url.Parse(nodes[int(next.Add(1)-1)%len(nodes)].url)
			r.SetURL(u)
		},
		FlushInterval: -1, // stream messages go through as they are written
		ModifyResponse: func(res *http.Response) error {
			res.Header.Set(nodeHeader, res.Request.URL.Host)
			return nil
		},
		ErrorLog: log.New(io.Discard, "", 0),
	})
	t.Cleanup(proxy.Close)
	return proxy.URL
}

// lastSeq returns the epoch and the position of a fresh watch's snapshot: every event so far.
func lastSeq(ctx context.Context, tasks taskhubv1connect.TaskServiceClient) (string, uint64, error) {
	stream, err := tasks.WatchTasks(ctx, connect.NewRequest(&taskhubv1.WatchTasksRequest{}))
	if err != nil {
		return "", 0, err
	}
	defer stream.Close()
	for stream.Receive() {
		if s := stream.Msg().GetSnapshot(); s != nil {
			return s.Epoch, s.Seq, nil
		}
	}
	return "", 0, cmp.Or(stream.Err(), errors.New("the stream ended before its snapshot"))
}

// dataDir is the --data-dir of a child's arguments.
func dataDir(args string) string {
	f := strings.Fields(args)
	i := slices.Index(f, "--data-dir")
	return f[i+1]
}

// replayAll returns the events after seq from up to seq to, read by a watch on a random node
// that resumes after from.
func replayAll(t *testing.T, nodes []*child, epoch string, from, to uint64) []*taskhubv1.TaskEvent {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	tasks := taskhubv1connect.NewTaskServiceClient(&http.Client{Transport: &anyNode{nodes: nodes, base: &http.Transport{}}}, "http://cluster")
	stream, err := tasks.WatchTasks(ctx, connect.NewRequest(&taskhubv1.WatchTasksRequest{Epoch: epoch, AfterSeq: from}))
	require.NoError(t, err)
	defer stream.Close()
	var all []*taskhubv1.TaskEvent
	for stream.Receive() {
		m := stream.Msg()
		if s := m.GetSnapshot(); s != nil {
			require.True(t, s.Recovered, "the log's history is all there: asked %s after %d, got %v", epoch, from, s)
		}
		if e := m.GetEvent(); e != nil {
			all = append(all, e)
			if e.Seq >= to {
				return all
			}
		}
	}
	require.NoError(t, stream.Err())
	return all
}

// claimWithin claims a task of mode as a worker does, long-polling again while none comes, for
// up to within: on a busy machine a mode's queue consumer, new on a cluster, takes seconds to
// elect its leader.
func claimWithin(ctx context.Context, work taskhubv1connect.WorkerServiceClient, worker, mode string, within time.Duration) (*connect.Response[taskhubv1.ClaimTaskResponse], error) {
	deadline := time.Now().Add(within)
	for {
		res, err := work.ClaimTask(ctx, connect.NewRequest(&taskhubv1.ClaimTaskRequest{WorkerId: worker, Modes: []string{mode}, WaitSeconds: 5}))
		if err != nil || res.Msg.Task != nil || time.Now().After(deadline) {
			return res, err
		}
	}
}
