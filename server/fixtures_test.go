package server_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"
	"github.com/taskhub/taskhub/gen/taskhub/v1/taskhubv1connect"
)

// as builds a request carrying token as its bearer token ("" sends none).
func as[T any](msg *T, token string) *connect.Request[T] {
	req := connect.NewRequest(msg)
	if token != "" {
		bearer(req, token)
	}
	return req
}

// requireCode checks that err is a Connect error with code whose message is not empty and
// mentions every one of words (case-insensitively).
func requireCode(t *testing.T, err error, code connect.Code, words ...string) {
	t.Helper()
	require.Error(t, err)
	require.Equal(t, code, connect.CodeOf(err), "error: %v", err)
	var ce *connect.Error
	require.True(t, errors.As(err, &ce), "not a Connect error: %v", err)
	require.NotEmpty(t, ce.Message())
	for _, w := range words {
		require.Contains(t, strings.ToLower(ce.Message()), strings.ToLower(w))
	}
}

// listTasks returns all of token's user's tasks (at most 500), newest first.
func listTasks(t *testing.T, c taskhubv1connect.TaskServiceClient, token string) []*taskhubv1.Task {
	t.Helper()
	res, err := c.ListTasks(t.Context(), as(&taskhubv1.ListTasksRequest{PageSize: 500}, token))
	require.NoError(t, err)
	require.Empty(t, res.Msg.NextPageToken, "more than one page")
	return res.Msg.Tasks
}

func getTask(t *testing.T, c taskhubv1connect.TaskServiceClient, id, token string) *taskhubv1.Task {
	t.Helper()
	res, err := c.GetTask(t.Context(), as(&taskhubv1.GetTaskRequest{Id: id}, token))
	require.NoError(t, err)
	return res.Msg.Task
}

// requireSameTasks checks that two task lists are equal, field by field (updated_at included, so
// any accepted change shows).
func requireSameTasks(t *testing.T, want, got []*taskhubv1.Task) {
	t.Helper()
	require.Len(t, got, len(want))
	for i := range want {
		requireSameTask(t, want[i], got[i])
	}
}

func requireSameTask(t *testing.T, want, got *taskhubv1.Task) {
	t.Helper()
	require.True(t, proto.Equal(want, got), "the task changed:\nwant %v\ngot  %v", want, got)
}

// waitTask polls GetTask until done(task) or 5 seconds pass.
func waitTask(t *testing.T, c taskhubv1connect.TaskServiceClient, id, token string, done func(*taskhubv1.Task) bool) *taskhubv1.Task {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		task := getTask(t, c, id, token)
		if done(task) {
			return task
		}
		if time.Now().After(deadline) {
			t.Fatalf("task %s did not get there; it is %v", id, task)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func finished(task *taskhubv1.Task) bool {
	switch task.State {
	case taskhubv1.TaskState_TASK_STATE_COMPLETED, taskhubv1.TaskState_TASK_STATE_FAILED, taskhubv1.TaskState_TASK_STATE_CANCELLED:
		return true
	}
	return false
}
