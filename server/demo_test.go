package server_test

import (
	"testing"

	"connectrpc.com/connect"
	"github.com/stretchr/testify/require"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"

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
