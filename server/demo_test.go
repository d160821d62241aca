package server_test

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/stretchr/testify/require"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"

	"github.com/taskhub/taskhub/demo"
	"github.com/taskhub/taskhub/server"
)

// TestDemo_CancelStopsAtOnce: the built-in executor drops a cancelled task in the middle of a
// long step, so its single worker is free for the next task right away.
func TestDemo_CancelStopsAtOnce(t *testing.T) {
	t.Parallel()
	b := setup(t, server.Config{DemoWorkers: 1})
	ctx := t.Context()
	w := watch(t, b.tasks, &taskhubv1.WatchTasksRequest{}, "")
	w.wait(0)

	long, err := b.tasks.CreateTask(ctx, connect.NewRequest(&taskhubv1.CreateTaskRequest{
		Prompt: "a very slow picture", Params: map[string]string{"steps": "10", "step_ms": "20000"},
	}))
	require.NoError(t, err)
	w.wait(2) // CREATED, STARTED
	_, err = b.tasks.CancelTask(ctx, connect.NewRequest(&taskhubv1.CancelTaskRequest{Id: long.Msg.Task.Id}))
	require.NoError(t, err)

	next, err := b.tasks.CreateTask(ctx, connect.NewRequest(&taskhubv1.CreateTaskRequest{
		Prompt: "a quick one", Params: map[string]string{"steps": "2", "step_ms": "10"},
	}))
	require.NoError(t, err)
	// Were the worker still sleeping through its 20 s step, the next task would wait for it.
	events := w.waitFor(func(events []*taskhubv1.TaskEvent) bool {
		last := events[len(events)-1]
		return last.Task.Id == next.Msg.Task.Id && last.Kind == taskhubv1.EventKind_EVENT_KIND_COMPLETED
	})
	for _, e := range events {
		if e.Task.Id == long.Msg.Task.Id {
			require.NotEqual(t, taskhubv1.EventKind_EVENT_KIND_PROGRESS, e.Kind, "no progress after the cancel")
			require.NotEqual(t, taskhubv1.EventKind_EVENT_KIND_COMPLETED, e.Kind)
		}
	}
	got, err := b.tasks.GetTask(ctx, connect.NewRequest(&taskhubv1.GetTaskRequest{Id: long.Msg.Task.Id}))
	require.NoError(t, err)
	require.Equal(t, taskhubv1.TaskState_TASK_STATE_CANCELLED, got.Msg.Task.State)
}

// TestDemo_WithAuth: with auth on, the demo executor claims and reports as a worker the server
// made for it, over the API, for every user; a prompt with "fail" fails for good.
func TestDemo_WithAuth(t *testing.T) {
	t.Parallel()
	for name, cfg := range map[string]func(t *testing.T) (server.Config, string){
		"auth file": func(t *testing.T) (server.Config, string) {
			return server.Config{AuthFile: writeAuthFile(t)}, aliceToken
		},
		"minted tokens only": func(t *testing.T) (server.Config, string) {
			return server.Config{JWTSecretFile: writeJWTSecret(t)}, hs256(t, claimsFor("carol", time.Hour))
		},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			cfg, token := cfg(t)
			cfg.DemoWorkers = 1
			b := setup(t, cfg)
			ctx := t.Context()
			fast := map[string]string{"steps": "3", "step_ms": "10"}
			ok, err := b.tasks.CreateTask(ctx, as(&taskhubv1.CreateTaskRequest{Prompt: "a lighthouse", Params: fast}, token))
			require.NoError(t, err)
			bad, err := b.tasks.CreateTask(ctx, as(&taskhubv1.CreateTaskRequest{Prompt: "please fail", Params: fast}, token))
			require.NoError(t, err)

			done := waitTask(t, b.tasks, ok.Msg.Task.Id, token, finished)
			require.Equal(t, taskhubv1.TaskState_TASK_STATE_COMPLETED, done.State, "task: %v", done)
			require.Equal(t, "demo-1", done.WorkerId)
			require.Equal(t, demo.Render("a lighthouse"), done.Result)
			failed := waitTask(t, b.tasks, bad.Msg.Task.Id, token, finished)
			require.Equal(t, taskhubv1.TaskState_TASK_STATE_FAILED, failed.State, "task: %v", failed)
			require.Equal(t, "the demo model gave up at step 2 of 3: the prompt asks it to fail", failed.Error)
			require.EqualValues(t, 1, failed.Attempt, "not retried")
		})
	}
}

// TestDemo_WorkerNameReserved: an auth file may not name a worker as the demo executor's own.
func TestDemo_WorkerNameReserved(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "auth.json")
	require.NoError(t, os.WriteFile(path, []byte(`{"workers":[{"name":"`+server.DemoWorker+`","token":"a-token-of-sixteen-or-more"}]}`), 0o600))
	cfg := server.Config{Addr: "127.0.0.1:0", DataDir: t.TempDir(), AuthFile: path, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	_, err := server.Open(t.Context(), cfg)
	require.ErrorContains(t, err, server.DemoWorker)

	cfg.DemoWorkers = -1
	srv, err := server.Open(t.Context(), cfg)
	require.NoError(t, err, "without the demo executor the name is free")
	require.NoError(t, srv.Close())
}

// TestDemo_CloseDoesNotWait: Close neither waits for a demo task's long step nor for a demo
// worker's claim; the task is left to its lease.
func TestDemo_CloseDoesNotWait(t *testing.T) {
	t.Parallel()
	b := setup(t, server.Config{DemoWorkers: 2})
	task, err := b.tasks.CreateTask(t.Context(), connect.NewRequest(&taskhubv1.CreateTaskRequest{
		Prompt: "a very slow picture", Params: map[string]string{"steps": "10", "step_ms": "20000"},
	}))
	require.NoError(t, err)
	waitTask(t, b.tasks, task.Msg.Task.Id, "", func(t *taskhubv1.Task) bool { return t.State == taskhubv1.TaskState_TASK_STATE_RUNNING })
	time.Sleep(100 * time.Millisecond) // the other worker waits in a claim
	begun := time.Now()
	b.stop()
	require.Less(t, time.Since(begun), 2*time.Second)
}
