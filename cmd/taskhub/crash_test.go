package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"sync"
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

// The crash tests run taskhub as a child process (this test binary, re-executed: see TestMain)
// and kill it with SIGKILL.
const (
	childArgsEnv = "TASKHUB_TEST_CHILD_ARGS"
	// childArgsJSONEnv runs the test binary as taskhub with the JSON array of arguments it holds.
	childArgsJSONEnv = "TASKHUB_TEST_CHILD_ARGV"
	childWorkerEnv   = "TASKHUB_TEST_CHILD_WORKER"
)

func TestMain(m *testing.M) {
	if url := os.Getenv(childWorkerEnv); url != "" {
		os.Exit(fragileWorker(url))
	}
	if url := os.Getenv(childAliceEnv); url != "" {
		os.Exit(legitimateUser(url))
	}
	if args := os.Getenv(childArgsJSONEnv); args != "" {
		var argv []string
		if err := json.Unmarshal([]byte(args), &argv); err != nil {
			fmt.Fprintln(os.Stderr, "child:", err)
			os.Exit(2)
		}
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
		defer stop()
		if err := run(ctx, argv, os.Stdout, os.Stderr); err != nil {
			fmt.Fprintln(os.Stderr, "child:", err)
			var code exitCode
			if errors.As(err, &code) {
				os.Exit(code.code)
			}
			os.Exit(2)
		}
		os.Exit(0)
	}
	if args := os.Getenv(childArgsEnv); args != "" {
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
		defer stop()
		if err := run(ctx, strings.Fields(args), io.Discard, os.Stderr); err != nil {
			fmt.Fprintln(os.Stderr, "child:", err)
			os.Exit(2)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// child is a taskhub process on a fixed port and data dir, so it can be killed and restarted.
type child struct {
	t    *testing.T
	args string
	url  string
	cmd  *exec.Cmd
	// bin, when set, is a taskhub binary to run instead of this test binary, with nofile file
	// descriptors (the shell's ulimit -n).
	bin    string
	nofile int
}

func startChild(t *testing.T, dir string, extra string) *child {
	t.Helper()
	addr := freeport.Addr(t)
	c := &child{t: t, url: "http://" + addr,
		args: fmt.Sprintf("serve --addr %s --data-dir %s --demo-workers 0 --log-level error %s", addr, dir, extra)}
	c.start()
	t.Cleanup(c.kill)
	return c
}

func (c *child) start() {
	c.t.Helper()
	require.NoError(c.t, c.launch())
	require.NoError(c.t, c.waitUp(20*time.Second))
}

// launch starts the process without waiting for it to serve.
func (c *child) launch() error {
	if c.bin != "" {
		c.cmd = exec.Command("/bin/sh", append([]string{"-c", fmt.Sprintf(`ulimit -n %d && exec "$0" "$@"`, c.nofile), c.bin},
			strings.Fields(c.args)...)...)
	} else {
		c.cmd = exec.Command(os.Args[0], "-test.run=^$")
		c.cmd.Env = append(os.Environ(), childArgsEnv+"="+c.args)
	}
	c.cmd.Stderr = os.Stderr
	// A test binary that dies (a timeout's panic) takes its children with it.
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return c.cmd.Start()
}

// waitUp waits up to timeout for the process to answer /healthz.
func (c *child) waitUp(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	// A node listens before it serves: a request may wait, so each has a deadline of its own.
	hc := &http.Client{Timeout: 2 * time.Second}
	for {
		res, err := hc.Get(c.url + "/healthz")
		if err == nil {
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the child on %s did not come up: %v", c.url, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// kill sends SIGKILL and waits for the process to be gone.
func (c *child) kill() {
	if c.cmd == nil || c.cmd.Process == nil {
		return
	}
	_ = c.cmd.Process.Signal(syscall.SIGKILL)
	_ = c.cmd.Wait()
	c.cmd = nil
}

// stop ends the child gracefully, and reports whether it did: a child that has not stopped 15 s
// after SIGTERM is killed.
func (c *child) stop() bool {
	if c.cmd == nil {
		return true
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = c.cmd.Wait(); close(done) }()
	defer func() { c.cmd = nil }()
	select {
	case <-done:
		return true
	case <-time.After(15 * time.Second):
		c.t.Logf("the child on %s did not stop within 15 s of SIGTERM: killed", c.url)
		_ = c.cmd.Process.Signal(syscall.SIGKILL)
		<-done
		return false
	}
}

func retryable(err error) bool {
	code := connect.CodeOf(err)
	return code == connect.CodeUnavailable || code == connect.CodeUnknown || code == connect.CodeDeadlineExceeded ||
		code == connect.CodeInternal || code == connect.CodeCanceled
}

// ledger records what the server acknowledged.
type ledger struct {
	mu       sync.Mutex
	created  map[string]string // idempotency key -> task id
	reported map[string]bool   // task id + "/" + message of an acknowledged report
	done     map[string]string // task id -> result of an acknowledged completion
}

// TestCrash_KillNineAtRandomMoments drives tasks with workers and watchers while the server is
// killed with SIGKILL at random moments and restarted on the same data dir, then checks what a
// user relies on: every acknowledged create, report and completion is in the log; every watcher
// that resumed saw a duplicate-free, in-order stream with no event missing; no task completed
// twice; every task ends in a terminal state.
func TestCrash_KillNineAtRandomMoments(t *testing.T) {
	if testing.Short() {
		t.Skip("kills and restarts a server several times")
	}
	dir := t.TempDir()
	srv := startChild(t, dir, "--lease-timeout 1s --max-attempts 20 --retention 0 --stall-timeout 0")
	hc := &http.Client{Transport: &http.Transport{}, Timeout: 5 * time.Second}
	defer hc.CloseIdleConnections()
	tasks := taskhubv1connect.NewTaskServiceClient(hc, srv.url)
	work := taskhubv1connect.NewWorkerServiceClient(hc, srv.url)
	led := &ledger{created: map[string]string{}, reported: map[string]bool{}, done: map[string]string{}}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	creating := make(chan struct{})
	watchers := crashLoad(ctx, &wg, tasks, work, []taskhubv1connect.TaskServiceClient{tasks, tasks, tasks}, led, creating)

	for kill := range 4 {
		time.Sleep(time.Duration(400+rand.IntN(900)) * time.Millisecond)
		srv.kill()
		t.Logf("kill -9 #%d", kill+1)
		srv.start()
	}
	close(creating)

	// Let the workers finish everything (abandoned leases requeue after 1s).
	require.Eventually(t, func() bool {
		res, err := tasks.ListTasks(ctx, connect.NewRequest(&taskhubv1.ListTasksRequest{
			States: []taskhubv1.TaskState{taskhubv1.TaskState_TASK_STATE_QUEUED, taskhubv1.TaskState_TASK_STATE_RUNNING}, PageSize: 500,
		}))
		return err == nil && len(res.Msg.Tasks) == 0
	}, 60*time.Second, 100*time.Millisecond, "tasks are still active")
	// Watchers catch up to the last task event, then everything stops.
	last, token := uint64(0), ""
	for {
		res, err := tasks.ListTasks(ctx, connect.NewRequest(&taskhubv1.ListTasksRequest{PageSize: 500, PageToken: token}))
		require.NoError(t, err)
		for _, task := range res.Msg.Tasks {
			last = max(last, task.Seq)
		}
		if token = res.Msg.NextPageToken; token == "" {
			break
		}
	}
	catchUp(t, watchers, last)
	cancel()
	wg.Wait()
	srv.stop()

	// Read the whole log from the data dir.
	log, err := eventlog.Open(context.Background(), eventlog.Config{DataDir: dir, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	require.NoError(t, err)
	defer log.Close()
	var all []*taskhubv1.TaskEvent
	for seq := uint64(1); ; {
		e, err := log.Next(context.Background(), "tasks.>", seq)
		if errors.Is(err, eventlog.ErrNotFound) {
			break
		}
		require.NoError(t, err)
		all = append(all, e.Record.Event)
		seq = e.Seq + 1
	}

	verifyRun(t, all, led, watchers)
	for i, w := range watchers {
		require.Positive(t, w.resumes, "watcher %d never had to resume", i)
	}
}

// verifyRun checks what a user relies on against all the log's events: every acknowledged
// create, report and completion is there, one task per idempotency key; every task completed
// once, with nothing after its end, and every report in it came from the worker that held the
// task then; every watcher saw an in-order, duplicate-free stream missing no event.
func verifyRun(t *testing.T, all []*taskhubv1.TaskEvent, led *ledger, watchers []*resumer) {
	t.Helper()
	byTask := map[string][]*taskhubv1.TaskEvent{}
	reportsSeen := map[string]bool{}
	for _, e := range all {
		byTask[e.Task.Id] = append(byTask[e.Task.Id], e)
		if e.Kind == taskhubv1.EventKind_EVENT_KIND_PROGRESS {
			reportsSeen[e.Task.Id+"/"+e.Task.Message] = true
			// The workers' reports say "<worker> step <n> attempt <a>".
			require.Equal(t, e.Task.WorkerId, strings.Fields(e.Task.Message)[0], "a report on %s from a worker that did not hold it", e.Task.Id)
		}
	}
	led.mu.Lock()
	defer led.mu.Unlock()
	t.Logf("%d events, %d tasks; acknowledged: %d creates, %d reports, %d completions",
		len(all), len(byTask), len(led.created), len(led.reported), len(led.done))
	require.NotEmpty(t, led.done, "the workload did nothing")

	// Every acknowledged create is there, once per key.
	require.Len(t, byTask, len(led.created), "one task per idempotency key")
	for key, id := range led.created {
		require.Contains(t, byTask, id, "acknowledged create %s lost", key)
	}
	// Every acknowledged report and completion is there.
	for r := range led.reported {
		if !reportsSeen[r] {
			id, _, _ := strings.Cut(r, "/")
			for _, e := range byTask[id] {
				t.Logf("%s seq %d %s worker %s attempt %d msg %q", id, e.Seq, e.Kind, e.Task.WorkerId, e.Task.Attempt, e.Task.Message)
			}
		}
		require.True(t, reportsSeen[r], "acknowledged report %s lost", r)
	}
	for id, result := range led.done {
		events := byTask[id]
		last := events[len(events)-1]
		require.Equal(t, taskhubv1.EventKind_EVENT_KIND_COMPLETED, last.Kind, "acknowledged completion of %s lost", id)
		require.Equal(t, result, last.Task.Result)
	}
	// Every task ends terminal, completes at most once, and nothing follows its end.
	for id, events := range byTask {
		completions := 0
		for i, e := range events {
			if e.Kind == taskhubv1.EventKind_EVENT_KIND_COMPLETED {
				completions++
			}
			if i < len(events)-1 {
				require.NotContains(t, []taskhubv1.TaskState{taskhubv1.TaskState_TASK_STATE_COMPLETED,
					taskhubv1.TaskState_TASK_STATE_FAILED, taskhubv1.TaskState_TASK_STATE_CANCELLED}, e.Task.State,
					"task %s has events after it ended", id)
			}
		}
		require.LessOrEqual(t, completions, 1, "task %s completed twice", id)
		require.Equal(t, taskhubv1.TaskState_TASK_STATE_COMPLETED, events[len(events)-1].Task.State, "task %s", id)
	}
	// Every watcher saw an in-order, duplicate-free stream with no event missing: all the log's
	// events after its first snapshot but progress, which may be coalesced for a slow watcher
	// (and lease renewals, which watchers are not sent).
	// Every watcher is checked before the test fails, so that a failure shows which ones missed
	// what, and on which nodes.
	var missed []string
	for i, w := range watchers {
		w.mu.Lock()
		if len(w.violations) > 0 {
			missed = append(missed, fmt.Sprintf("watcher %d: %s; its streams: %s", i, strings.Join(w.violations, ", "), strings.Join(w.history, "; ")))
		}
		seen := map[uint64]bool{}
		for _, s := range w.seqs {
			seen[s] = true
		}
		for _, e := range all {
			if e.Seq > w.from && e.Kind != taskhubv1.EventKind_EVENT_KIND_PROGRESS && e.Kind != taskhubv1.EventKind_EVENT_KIND_LEASE_RENEWED && !seen[e.Seq] {
				missed = append(missed, fmt.Sprintf("watcher %d missed event %d (%s of %s); its streams: %s; seqs it got around it: %v",
					i, e.Seq, e.Kind, e.Task.Id, strings.Join(w.history, "; "), around(w.seqs, e.Seq)))
				break
			}
		}
		t.Logf("watcher %d: %d events over %d resumes", i, len(w.seqs), w.resumes)
		w.mu.Unlock()
	}
	require.Empty(t, missed, "every watcher sees every event once and in order")
}

// around returns the seqs of seqs within 5 of seq.
func around(seqs []uint64, seq uint64) []uint64 {
	var out []uint64
	for _, s := range seqs {
		if s+5 >= seq && s <= seq+5 {
			out = append(out, s)
		}
	}
	return out
}

// crashLoad starts, on wg: two creators (until creating is closed), three workers, and a watcher
// on each of watch (until ctx ends).
func crashLoad(ctx context.Context, wg *sync.WaitGroup, tasks taskhubv1connect.TaskServiceClient, work taskhubv1connect.WorkerServiceClient,
	watch []taskhubv1connect.TaskServiceClient, led *ledger, creating <-chan struct{}) []*resumer {
	// Creators: each create retried with its idempotency key until acknowledged.
	for c := range 2 {
		wg.Go(func() { crashCreator(ctx, tasks, led, fmt.Sprintf("c%d", c), creating) })
	}
	// Workers: claim, report a few steps, complete; ride out restarts with the same lease.
	for w := range 3 {
		wg.Go(func() { crashWorker(ctx, work, led, fmt.Sprintf("w%d", w)) })
	}
	// Watchers: resume with epoch and the last seq after every break.
	watchers := make([]*resumer, len(watch))
	for i, client := range watch {
		watchers[i] = &resumer{client: client}
		wg.Go(func() { watchers[i].run(ctx) })
	}
	return watchers
}

// crashCreator creates tasks of mode "crash" until stop is closed, each retried with its
// idempotency key until acknowledged.
func crashCreator(ctx context.Context, tasks taskhubv1connect.TaskServiceClient, led *ledger, name string, stop <-chan struct{}) {
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		default:
		}
		key := fmt.Sprintf("%s-%d", name, i)
		for {
			res, err := tasks.CreateTask(ctx, connect.NewRequest(&taskhubv1.CreateTaskRequest{Prompt: key, Mode: "crash", IdempotencyKey: key}))
			if err == nil {
				led.mu.Lock()
				led.created[key] = res.Msg.Task.Id
				led.mu.Unlock()
				break
			}
			if ctx.Err() != nil {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		time.Sleep(time.Duration(rand.IntN(20)) * time.Millisecond)
	}
}

func crashWorker(ctx context.Context, work taskhubv1connect.WorkerServiceClient, led *ledger, name string) {
	for ctx.Err() == nil {
		res, err := work.ClaimTask(ctx, connect.NewRequest(&taskhubv1.ClaimTaskRequest{WorkerId: name, Modes: []string{"crash"}, WaitSeconds: 1}))
		if err != nil || res.Msg.Task == nil {
			time.Sleep(20 * time.Millisecond)
			continue
		}
		id, token := res.Msg.Task.Id, res.Msg.LeaseToken
		lost := false
		for step := 1; step <= 3 && !lost; step++ {
			time.Sleep(time.Duration(20+rand.IntN(60)) * time.Millisecond)
			msg := fmt.Sprintf("%s step %d attempt %d", name, step, res.Msg.Task.Attempt)
			for ctx.Err() == nil {
				_, err := work.ReportProgress(ctx, connect.NewRequest(&taskhubv1.ReportProgressRequest{TaskId: id, LeaseToken: token, Progress: float64(step * 30), Message: msg}))
				if err == nil {
					led.mu.Lock()
					led.reported[id+"/"+msg] = true
					led.mu.Unlock()
					break
				}
				if !retryable(err) {
					lost = true // the lease is gone: another worker has it, or will
					break
				}
				time.Sleep(50 * time.Millisecond)
			}
		}
		for !lost && ctx.Err() == nil {
			result := "done by " + name
			_, err := work.CompleteTask(ctx, connect.NewRequest(&taskhubv1.CompleteTaskRequest{TaskId: id, LeaseToken: token, Result: result}))
			if err == nil {
				led.mu.Lock()
				led.done[id] = result
				led.mu.Unlock()
				break
			}
			if !retryable(err) {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// resumer watches, and after every break resumes with the epoch and the last seq it saw.
type resumer struct {
	client     taskhubv1connect.TaskServiceClient
	mu         sync.Mutex
	epoch      string
	from       uint64 // the seq of its first snapshot
	last       uint64
	seqs       []uint64
	resumes    int
	on         string // the node (nodeHeader) of the stream it reads, once that sent a message
	violations []string
	broke      time.Time       // when its last stream ended
	gaps       []time.Duration // from a stream's end to the resumed snapshot, one per resume
	history    []string        // what each stream began and ended with, for a failure's message
}

func (r *resumer) run(ctx context.Context) {
	for ctx.Err() == nil {
		r.mu.Lock()
		req := &taskhubv1.WatchTasksRequest{Epoch: r.epoch, AfterSeq: r.last}
		r.mu.Unlock()
		stream, err := r.client.WatchTasks(ctx, connect.NewRequest(req))
		if err != nil {
			time.Sleep(50 * time.Millisecond)
			continue
		}
		for stream.Receive() {
			m := stream.Msg()
			r.mu.Lock()
			r.on = stream.ResponseHeader().Get(nodeHeader)
			switch {
			case m.GetSnapshot() != nil:
				s := m.GetSnapshot()
				if r.epoch == "" {
					r.epoch, r.from, r.last = s.Epoch, s.Seq, s.Seq
				} else {
					r.resumes++
					r.gaps = append(r.gaps, time.Since(r.broke))
					if !s.Recovered || s.Seq != r.last {
						r.violations = append(r.violations, fmt.Sprintf("resume after %d: recovered=%v seq=%d", r.last, s.Recovered, s.Seq))
					}
				}
			case m.GetEvent() != nil:
				seq := m.GetEvent().Seq
				if seq <= r.last {
					r.violations = append(r.violations, fmt.Sprintf("seq %d after %d", seq, r.last))
				}
				r.last = seq
				r.seqs = append(r.seqs, seq)
			case m.GetHeartbeat() != nil:
				if hb := m.GetHeartbeat().Seq; hb > r.last {
					r.history = append(r.history, fmt.Sprintf("heartbeat %d raised last from %d", hb, r.last))
					r.last = hb
				}
			}
			r.mu.Unlock()
		}
		r.mu.Lock()
		r.on = ""
		r.broke = time.Now()
		r.history = append(r.history, fmt.Sprintf("stream after %d on %s ended at last %d: %v",
			req.AfterSeq, cmp.Or(stream.ResponseHeader().Get(nodeHeader), "the node"), r.last, stream.Err()))
		r.mu.Unlock()
		stream.Close()
		time.Sleep(50 * time.Millisecond)
	}
}

// catchUp waits, for up to a minute, until every watcher has seen seq (a watcher that resumed
// late may still be replaying what it missed), and logs those that have not.
func catchUp(t *testing.T, watchers []*resumer, seq uint64) {
	t.Helper()
	behind := func() []string {
		var out []string
		for i, w := range watchers {
			w.mu.Lock()
			if w.last < seq {
				out = append(out, fmt.Sprintf("watcher %d at %d", i, w.last))
			}
			w.mu.Unlock()
		}
		return out
	}
	start := time.Now()
	for time.Since(start) < time.Minute && len(behind()) > 0 {
		time.Sleep(50 * time.Millisecond)
	}
	if b := behind(); len(b) > 0 {
		t.Logf("not caught up to seq %d after a minute: %s", seq, strings.Join(b, ", "))
	} else {
		t.Logf("every watcher had seq %d %v after the last write", seq, time.Since(start).Round(time.Millisecond))
	}
}

// fragileWorker is a worker process: it claims one task of mode "fragile", reports once, says
// so on stdout, and then hangs until it is killed.
func fragileWorker(url string) int {
	work := taskhubv1connect.NewWorkerServiceClient(http.DefaultClient, url)
	ctx := context.Background()
	res, err := work.ClaimTask(ctx, connect.NewRequest(&taskhubv1.ClaimTaskRequest{WorkerId: "fragile-1", Modes: []string{"fragile"}, WaitSeconds: 10}))
	if err != nil || res.Msg.Task == nil {
		fmt.Fprintln(os.Stderr, "worker: no claim:", err)
		return 1
	}
	if _, err := work.ReportProgress(ctx, connect.NewRequest(&taskhubv1.ReportProgressRequest{
		TaskId: res.Msg.Task.Id, LeaseToken: res.Msg.LeaseToken, Progress: 25, Message: "a quarter"})); err != nil {
		fmt.Fprintln(os.Stderr, "worker: report:", err)
		return 1
	}
	fmt.Printf("reported %s %s\n", res.Msg.Task.Id, res.Msg.LeaseToken)
	select {}
}

// TestCrash_WorkerKilledMidTask kills a worker process holding a task: the task goes back to the
// queue when the lease expires and another worker completes it.
func TestCrash_WorkerKilledMidTask(t *testing.T) {
	t.Parallel()
	srv := startChild(t, t.TempDir(), "--lease-timeout 1s")
	hc := &http.Client{Transport: &http.Transport{}}
	defer hc.CloseIdleConnections()
	tasks := taskhubv1connect.NewTaskServiceClient(hc, srv.url)
	work := taskhubv1connect.NewWorkerServiceClient(hc, srv.url)
	ctx := t.Context()

	created, err := tasks.CreateTask(ctx, connect.NewRequest(&taskhubv1.CreateTaskRequest{Prompt: "render a film", Mode: "fragile"}))
	require.NoError(t, err)
	id := created.Msg.Task.Id

	worker := exec.Command(os.Args[0], "-test.run=^$")
	worker.Env = append(os.Environ(), childWorkerEnv+"="+srv.url)
	worker.Stderr = os.Stderr
	out, err := worker.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, worker.Start())
	line := make([]byte, 256)
	n, err := out.Read(line)
	require.NoError(t, err)
	var gotID, oldToken string
	_, err = fmt.Sscanf(string(line[:n]), "reported %s %s", &gotID, &oldToken)
	require.NoError(t, err)
	require.Equal(t, id, gotID)
	require.NoError(t, worker.Process.Signal(syscall.SIGKILL))
	_ = worker.Wait()

	// Another worker gets it once the lease has expired (1s) and the backoff passed (1s).
	res, err := work.ClaimTask(ctx, connect.NewRequest(&taskhubv1.ClaimTaskRequest{WorkerId: "steady-1", Modes: []string{"fragile"}, WaitSeconds: 10}))
	require.NoError(t, err)
	require.NotNil(t, res.Msg.Task, "the task did not come back to the queue")
	require.Equal(t, id, res.Msg.Task.Id)
	require.Equal(t, uint32(2), res.Msg.Task.Attempt)
	require.Equal(t, "steady-1", res.Msg.Task.WorkerId)

	// The dead worker's lease is void.
	_, err = work.ReportProgress(ctx, connect.NewRequest(&taskhubv1.ReportProgressRequest{TaskId: id, LeaseToken: oldToken, Progress: 50}))
	require.Equal(t, connect.CodePermissionDenied, connect.CodeOf(err), err)

	done, err := work.CompleteTask(ctx, connect.NewRequest(&taskhubv1.CompleteTaskRequest{TaskId: id, LeaseToken: res.Msg.LeaseToken, Result: "a film"}))
	require.NoError(t, err)
	require.Equal(t, taskhubv1.TaskState_TASK_STATE_COMPLETED, done.Msg.Task.State)
	require.Equal(t, uint32(2), done.Msg.Task.Attempt)
}
