// Package pythonworker_test runs the Python examples against a real server: a worker and a
// watcher written with nothing but Python's standard library.
package pythonworker_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/stretchr/testify/require"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"
	"github.com/taskhub/taskhub/gen/taskhub/v1/taskhubv1connect"
	"github.com/taskhub/taskhub/server"
)

func needPython(t *testing.T) string {
	t.Helper()
	path, err := exec.LookPath("python3")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("python3 is not installed: .ci/run must install it")
		}
		t.Skip("python3 is not installed")
	}
	return path
}

func start(t *testing.T) (*server.Server, taskhubv1connect.TaskServiceClient) {
	t.Helper()
	srv, err := server.Open(t.Context(), server.Config{
		Addr: "127.0.0.1:0", DataDir: t.TempDir(), DemoWorkers: -1,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, srv.Close()) })
	hc := &http.Client{Timeout: 30 * time.Second}
	t.Cleanup(hc.CloseIdleConnections)
	return srv, taskhubv1connect.NewTaskServiceClient(hc, srv.URL())
}

// python starts a script with args; its stdout is collected, its stderr goes to the test log.
func python(t *testing.T, script string, args ...string) (*exec.Cmd, *lockedBuffer) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	cmd := exec.CommandContext(ctx, needPython(t), append([]string{script}, args...)...)
	out := &lockedBuffer{}
	cmd.Stdout = out
	cmd.Stderr = testWriter{t}
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	return cmd, out
}

// lockedBuffer is a bytes.Buffer that a process writes while the test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// Bytes is a copy of what was written so far.
func (l *lockedBuffer) Bytes() []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return bytes.Clone(l.b.Bytes())
}

// TestPythonWorker: worker.py claims a task, reports progress and completes it; watch.py sees
// every step live and stops when the task has finished.
func TestPythonWorker(t *testing.T) {
	srv, tasks := start(t)
	ctx := t.Context()
	res, err := tasks.CreateTask(ctx, connect.NewRequest(&taskhubv1.CreateTaskRequest{
		Prompt: "users.csv", Mode: "py-import", Params: map[string]string{"steps": "3"},
	}))
	require.NoError(t, err)
	id := res.Msg.Task.Id

	watcher, lines := python(t, "watch.py", "--server", srv.URL(), "--until-finished", id)
	require.Eventually(t, func() bool { return bytes.Contains(lines.Bytes(), []byte(`"snapshot"`)) }, 30*time.Second, 10*time.Millisecond,
		"the watcher has its snapshot before the worker claims")
	worker, _ := python(t, "worker.py", "--server", srv.URL(), "--mode", "py-import", "--once", "--step-seconds", "0.05")
	require.NoError(t, worker.Wait(), "the worker exits 0 after its one task")
	require.NoError(t, watcher.Wait(), "the watcher exits once the task has finished")

	got, err := tasks.GetTask(ctx, connect.NewRequest(&taskhubv1.GetTaskRequest{Id: id}))
	require.NoError(t, err)
	require.Equal(t, taskhubv1.TaskState_TASK_STATE_COMPLETED, got.Msg.Task.State)
	require.Equal(t, "did 3 steps for 'users.csv'", got.Msg.Task.Result)

	var kinds []string
	sc := bufio.NewScanner(bytes.NewReader(lines.Bytes()))
	for sc.Scan() {
		var line struct {
			Kind string `json:"kind"`
			Task string `json:"task"`
		}
		require.NoError(t, json.Unmarshal(sc.Bytes(), &line), sc.Text())
		if line.Task == id {
			kinds = append(kinds, line.Kind)
		}
	}
	// STARTED, up to three PROGRESS (a watcher that falls behind gets only the latest progress
	// of a task), COMPLETED.
	require.GreaterOrEqual(t, len(kinds), 3, "%v", kinds)
	require.Equal(t, "EVENT_KIND_STARTED", kinds[0])
	require.Equal(t, "EVENT_KIND_COMPLETED", kinds[len(kinds)-1])
	require.LessOrEqual(t, len(kinds), 5)
	for _, k := range kinds[1 : len(kinds)-1] {
		require.Equal(t, "EVENT_KIND_PROGRESS", k)
	}
}

// TestPythonWorker_Cancelled: a task cancelled while worker.py runs it is dropped at the next
// report, and not completed.
func TestPythonWorker_Cancelled(t *testing.T) {
	srv, tasks := start(t)
	ctx := t.Context()
	res, err := tasks.CreateTask(ctx, connect.NewRequest(&taskhubv1.CreateTaskRequest{
		Prompt: "a long one", Mode: "py-long", Params: map[string]string{"steps": "200"},
	}))
	require.NoError(t, err)
	id := res.Msg.Task.Id
	worker, _ := python(t, "worker.py", "--server", srv.URL(), "--mode", "py-long", "--once", "--step-seconds", "0.05")
	require.Eventually(t, func() bool {
		got, err := tasks.GetTask(ctx, connect.NewRequest(&taskhubv1.GetTaskRequest{Id: id}))
		return err == nil && got.Msg.Task.Progress > 0
	}, 30*time.Second, 20*time.Millisecond, "the worker reported progress")
	_, err = tasks.CancelTask(ctx, connect.NewRequest(&taskhubv1.CancelTaskRequest{Id: id}))
	require.NoError(t, err)

	done := make(chan error, 1)
	go func() { done <- worker.Wait() }()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("the worker went on with a cancelled task")
	}
	got, err := tasks.GetTask(ctx, connect.NewRequest(&taskhubv1.GetTaskRequest{Id: id}))
	require.NoError(t, err)
	require.Equal(t, taskhubv1.TaskState_TASK_STATE_CANCELLED, got.Msg.Task.State)
	require.Empty(t, got.Msg.Task.Result)
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Logf("%s", bytes.TrimRight(p, "\n"))
	return len(p), nil
}
