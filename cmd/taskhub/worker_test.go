package main

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/stretchr/testify/require"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"
	"github.com/taskhub/taskhub/gen/taskhub/v1/taskhubv1connect"
	"github.com/taskhub/taskhub/server"
)

// workerEnv is a real server for the worker wrapper, with short leases.
type workerEnv struct {
	t     *testing.T
	url   string
	tasks taskhubv1connect.TaskServiceClient
}

func newWorkerEnv(t *testing.T, cfg server.Config) *workerEnv {
	t.Helper()
	cfg.Addr, cfg.DataDir, cfg.DemoWorkers = "127.0.0.1:0", t.TempDir(), -1
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	srv, err := server.Open(t.Context(), cfg)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, srv.Close()) })
	hc := &http.Client{Timeout: 30 * time.Second}
	t.Cleanup(hc.CloseIdleConnections)
	return &workerEnv{t: t, url: srv.URL(), tasks: taskhubv1connect.NewTaskServiceClient(hc, srv.URL())}
}

// worker starts `taskhub worker` as a process of its own (this test binary, see TestMain),
// running script with sh for each task of mode.
func (e *workerEnv) worker(mode, script string, flags ...string) *exec.Cmd {
	e.t.Helper()
	argv := append([]string{"worker", "--server", e.url, "--mode", mode}, flags...)
	argv = append(argv, "--", "sh", "-c", script)
	b, err := json.Marshal(argv)
	require.NoError(e.t, err)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childArgsJSONEnv+"="+string(b))
	cmd.Stderr = testLog{e.t}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	require.NoError(e.t, cmd.Start())
	e.t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	return cmd
}

func (e *workerEnv) create(mode, prompt string, params map[string]string) string {
	e.t.Helper()
	res, err := e.tasks.CreateTask(e.t.Context(), connect.NewRequest(&taskhubv1.CreateTaskRequest{Prompt: prompt, Mode: mode, Params: params}))
	require.NoError(e.t, err)
	return res.Msg.Task.Id
}

// waitState waits until task id is in state, and returns it.
func (e *workerEnv) waitState(id string, state taskhubv1.TaskState) *taskhubv1.Task {
	e.t.Helper()
	var last *taskhubv1.Task
	require.Eventually(e.t, func() bool {
		res, err := e.tasks.GetTask(e.t.Context(), connect.NewRequest(&taskhubv1.GetTaskRequest{Id: id}))
		if err == nil {
			last = res.Msg.Task
		}
		return err == nil && last.State == state
	}, 30*time.Second, 20*time.Millisecond, "task %s did not become %v: %v", id, state, last)
	return last
}

// events watches the user's tasks and returns a function that waits for task id to finish and
// returns its events.
func (e *workerEnv) events(id string) func() []*taskhubv1.TaskEvent {
	e.t.Helper()
	stream, err := e.tasks.WatchTasks(e.t.Context(), connect.NewRequest(&taskhubv1.WatchTasksRequest{}))
	require.NoError(e.t, err)
	require.True(e.t, stream.Receive(), "the snapshot")
	return func() []*taskhubv1.TaskEvent {
		defer stream.Close()
		var got []*taskhubv1.TaskEvent
		for stream.Receive() {
			if ev := stream.Msg().GetEvent(); ev != nil && ev.Task.Id == id {
				got = append(got, ev)
				switch ev.Task.State {
				case taskhubv1.TaskState_TASK_STATE_COMPLETED, taskhubv1.TaskState_TASK_STATE_FAILED, taskhubv1.TaskState_TASK_STATE_CANCELLED:
					return got
				}
			}
		}
		e.t.Fatalf("the watch ended: %v", stream.Err())
		return nil
	}
}

// TestWorker_ShellScript: a shell script is a worker: it reads the task on stdin and in its
// environment, prints progress in both forms and its result, and the task completes.
func TestWorker_ShellScript(t *testing.T) {
	t.Parallel()
	e := newWorkerEnv(t, server.Config{})
	id := e.create("sh-import", "users.csv", map[string]string{"size": "3"})
	events := e.events(id)
	e.worker("sh-import", `
		task=$(cat | tr -d ' ')
		case "$task" in *'"prompt":"'"$TASKHUB_PROMPT"'"'*) ;; *) echo "no task on stdin: $task" >&2; exit 1;; esac
		if [ "$TASKHUB_PROMPT" = second ]; then echo "a first line"; echo "the last line"; exit 0; fi
		echo "progress 10 starting on $TASKHUB_PROMPT"
		echo '{"progress": 60, "message": "halfway"}'
		echo "result imported $TASKHUB_PARAM_SIZE rows of $TASKHUB_PROMPT"
		echo "a line after the result, not it"`)
	got := events()
	// STARTED, the two progress reports (the first may be coalesced away by the watch, as a
	// watcher that is behind gets only the latest progress), COMPLETED.
	require.GreaterOrEqual(t, len(got), 3)
	first, last := got[0], got[len(got)-1]
	require.Equal(t, taskhubv1.EventKind_EVENT_KIND_STARTED, first.Kind)
	require.Equal(t, taskhubv1.EventKind_EVENT_KIND_COMPLETED, last.Kind)
	progress := got[1 : len(got)-1]
	require.NotEmpty(t, progress)
	for _, ev := range progress {
		require.Equal(t, taskhubv1.EventKind_EVENT_KIND_PROGRESS, ev.Kind)
	}
	if len(progress) == 2 {
		require.Equal(t, 10.0, progress[0].Task.Progress)
		require.Equal(t, "starting on users.csv", progress[0].Task.Message)
	}
	require.Equal(t, 60.0, progress[len(progress)-1].Task.Progress)
	require.Equal(t, "halfway", progress[len(progress)-1].Task.Message)
	require.Equal(t, "imported 3 rows of users.csv", last.Task.Result)

	// Without a result line the last line is the result.
	id = e.create("sh-import", "second", nil)
	done := e.waitState(id, taskhubv1.TaskState_TASK_STATE_COMPLETED)
	require.Equal(t, "the last line", done.Result)
}

// TestWorker_BatchDelay: with --batch-delay the commands' reports wait for it, and reach the
// task; a delay out of range is refused before anything runs.
func TestWorker_BatchDelay(t *testing.T) {
	t.Parallel()
	e := newWorkerEnv(t, server.Config{})
	id := e.create("sh-delayed", "delayed", nil)
	events := e.events(id)
	const delay = time.Second
	e.worker("sh-delayed", `cat > /dev/null; echo "progress 60 halfway"; echo "result done"`, "--batch-delay", delay.String(), "--concurrency", "4")
	got := events()
	var progress []*taskhubv1.Task
	for _, ev := range got {
		if ev.Kind == taskhubv1.EventKind_EVENT_KIND_PROGRESS {
			progress = append(progress, ev.Task)
		}
	}
	require.Len(t, progress, 1, "the report: %v", got)
	require.GreaterOrEqual(t, got[len(got)-2].Time.AsTime().Sub(got[0].Time.AsTime()), delay,
		"the report was taken less than the delay after the task started")
	require.Equal(t, 60.0, progress[0].Progress)
	require.Equal(t, "halfway", progress[0].Message)
	require.Equal(t, taskhubv1.EventKind_EVENT_KIND_COMPLETED, got[len(got)-1].Kind)
	require.Equal(t, "done", got[len(got)-1].Task.Result)

	for _, bad := range []string{"-1ms", "11s"} {
		err := runWorker(t.Context(), []string{"--mode", "m", "--batch-delay", bad, "--", "true"}, io.Discard)
		require.ErrorContains(t, err, "--batch-delay must be 0..10s", bad)
	}
}

// TestWorker_ExitCodes: exit 100 fails the task for good with the end of stderr; another
// non-zero exit fails it retryably, until its attempts run out.
func TestWorker_ExitCodes(t *testing.T) {
	t.Parallel()
	cfg := server.Config{}
	cfg.MaxAttempts = 2
	e := newWorkerEnv(t, cfg)
	permanent := e.create("sh-fail", "permanent", nil)
	e.worker("sh-fail", `if [ "$TASKHUB_PROMPT" = permanent ]; then echo "bad input" >&2; exit 100; fi; echo "flaky" >&2; exit 3`)
	failed := e.waitState(permanent, taskhubv1.TaskState_TASK_STATE_FAILED)
	require.Contains(t, failed.Error, "bad input")
	require.EqualValues(t, 1, failed.Attempt, "not retried")

	retried := e.create("sh-fail", "retryable", nil)
	failed = e.waitState(retried, taskhubv1.TaskState_TASK_STATE_FAILED)
	require.Contains(t, failed.Error, "flaky")
	require.EqualValues(t, 2, failed.Attempt, "retried once, then out of attempts")
}

// TestWorker_CancelKillsTheCommand: a command that ignores SIGTERM and says nothing is killed
// when its task is cancelled, and the task is not completed.
func TestWorker_CancelKillsTheCommand(t *testing.T) {
	t.Parallel()
	cfg := server.Config{}
	cfg.LeaseTimeout = 3 * time.Second
	e := newWorkerEnv(t, cfg)
	pidFile := filepath.Join(t.TempDir(), "pid")
	id := e.create("sh-hang", "hangs", nil)
	e.worker("sh-hang", `trap '' TERM; echo $$ > `+pidFile+`; echo "progress 5 working"; while true; do sleep 0.1; done; echo "result never"`, "--grace", "1s")
	e.waitState(id, taskhubv1.TaskState_TASK_STATE_RUNNING)
	var pid int
	require.Eventually(t, func() bool { // the shell creates the file, then writes its pid
		b, err := os.ReadFile(pidFile)
		if err != nil {
			return false
		}
		pid, err = strconv.Atoi(strings.TrimSpace(string(b)))
		return err == nil
	}, 10*time.Second, 10*time.Millisecond)

	_, err := e.tasks.CancelTask(t.Context(), connect.NewRequest(&taskhubv1.CancelTaskRequest{Id: id}))
	require.NoError(t, err)
	// The next lease renewal (a third of the lease) learns it; SIGTERM, then SIGKILL a second later.
	require.Eventually(t, func() bool { return syscall.Kill(pid, 0) != nil }, 10*time.Second, 20*time.Millisecond, "the command still runs")
	time.Sleep(500 * time.Millisecond)
	task := e.waitState(id, taskhubv1.TaskState_TASK_STATE_CANCELLED)
	require.Empty(t, task.Result)
}

// TestWorker_SilentStepKeepsTheLease: a command silent for three lease timeouts keeps its
// task: the wrapper renews the lease.
func TestWorker_SilentStepKeepsTheLease(t *testing.T) {
	t.Parallel()
	cfg := server.Config{}
	cfg.LeaseTimeout = 2 * time.Second
	e := newWorkerEnv(t, cfg)
	id := e.create("sh-slow", "slow", nil)
	e.worker("sh-slow", `sleep 6; echo "result slow but sure"`)
	task := e.waitState(id, taskhubv1.TaskState_TASK_STATE_COMPLETED)
	require.Equal(t, "slow but sure", task.Result)
	require.EqualValues(t, 1, task.Attempt, "never requeued")
}

// TestWorker_DrainsOnSIGTERM: SIGTERM stops the worker's claims, and the command under way
// finishes its task before the worker exits.
func TestWorker_DrainsOnSIGTERM(t *testing.T) {
	t.Parallel()
	e := newWorkerEnv(t, server.Config{})
	id := e.create("sh-drain", "drained", nil)
	w := e.worker("sh-drain", `echo "progress 1"; sleep 1; echo "result finished"`)
	e.waitState(id, taskhubv1.TaskState_TASK_STATE_RUNNING)
	require.NoError(t, w.Process.Signal(syscall.SIGTERM))
	exited := make(chan error, 1)
	go func() { exited <- w.Wait() }()
	select {
	case err := <-exited:
		require.NoError(t, err, "the worker exits 0 after its drain")
	case <-time.After(30 * time.Second):
		t.Fatal("the worker did not exit after SIGTERM")
	}
	task := e.waitState(id, taskhubv1.TaskState_TASK_STATE_COMPLETED)
	require.Equal(t, "finished", task.Result)

	later := e.create("sh-drain", "after the drain", nil)
	time.Sleep(500 * time.Millisecond)
	res, err := e.tasks.GetTask(t.Context(), connect.NewRequest(&taskhubv1.GetTaskRequest{Id: later}))
	require.NoError(t, err)
	require.Equal(t, taskhubv1.TaskState_TASK_STATE_QUEUED, res.Msg.Task.State, "nobody claims after the drain")
}

type testLog struct{ t *testing.T }

func (l testLog) Write(p []byte) (int, error) {
	l.t.Logf("%s", strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
