package server_test

import (
	"context"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/stretchr/testify/require"

	"github.com/taskhub/taskhub/actors"
	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"
	"github.com/taskhub/taskhub/gen/taskhub/v1/taskhubv1connect"

	"github.com/taskhub/taskhub"
	"github.com/taskhub/taskhub/rpc"
	"github.com/taskhub/taskhub/server"
)

func TestErrors_CreateTask(t *testing.T) {
	t.Parallel()
	// Demo workers on, so the demo params are checked.
	b := setup(t, server.Config{DemoWorkers: 1})
	createTask(t, b.tasks, "already here", "render")

	params := func(n int) map[string]string {
		p := map[string]string{}
		for i := range n {
			p[fmt.Sprintf("k%d", i)] = "v"
		}
		return p
	}
	cases := []struct {
		name string
		req  *taskhubv1.CreateTaskRequest
		code connect.Code
		msg  []string
	}{
		{"empty prompt", &taskhubv1.CreateTaskRequest{Mode: "render"}, connect.CodeInvalidArgument, []string{"prompt"}},
		{"mode with a space and capitals", &taskhubv1.CreateTaskRequest{Prompt: "p", Mode: "Bad Mode"}, connect.CodeInvalidArgument, []string{"mode", "Bad Mode"}},
		{"mode with a dot", &taskhubv1.CreateTaskRequest{Prompt: "p", Mode: "a.b"}, connect.CodeInvalidArgument, []string{"mode", "a.b"}},
		{"mode of a symbol", &taskhubv1.CreateTaskRequest{Prompt: "p", Mode: ">"}, connect.CodeInvalidArgument, []string{"mode"}},
		{"mode starting with a dash", &taskhubv1.CreateTaskRequest{Prompt: "p", Mode: "-x"}, connect.CodeInvalidArgument, []string{"mode"}},
		{"mode too long", &taskhubv1.CreateTaskRequest{Prompt: "p", Mode: strings.Repeat("m", taskhub.MaxModeLen+1)}, connect.CodeInvalidArgument, []string{"mode"}},
		{"prompt over 16 KiB", &taskhubv1.CreateTaskRequest{Prompt: strings.Repeat("x", 16<<10+1), Mode: "render"}, connect.CodeInvalidArgument, []string{"prompt", "16384"}},
		{"too many params", &taskhubv1.CreateTaskRequest{Prompt: "p", Mode: "render", Params: params(33)}, connect.CodeInvalidArgument, []string{"params", "32"}},
		{"malformed param name", &taskhubv1.CreateTaskRequest{Prompt: "p", Mode: "render", Params: map[string]string{"a b": "1"}}, connect.CodeInvalidArgument, []string{"param"}},
		{"param value over 1 KiB", &taskhubv1.CreateTaskRequest{Prompt: "p", Mode: "render", Params: map[string]string{"k": strings.Repeat("v", 1<<10+1)}}, connect.CodeInvalidArgument, []string{"param"}},
		{"idempotency key over 128 bytes", &taskhubv1.CreateTaskRequest{Prompt: "p", Mode: "render", IdempotencyKey: strings.Repeat("k", 129)}, connect.CodeInvalidArgument, []string{"idempotency_key"}},
		{"demo steps not a number", &taskhubv1.CreateTaskRequest{Prompt: "p", Mode: "demo", Params: map[string]string{"steps": "abc"}}, connect.CodeInvalidArgument, []string{"steps", "abc"}},
		{"demo steps zero", &taskhubv1.CreateTaskRequest{Prompt: "p", Mode: "demo", Params: map[string]string{"steps": "0"}}, connect.CodeInvalidArgument, []string{"steps"}},
		{"demo steps in the default mode", &taskhubv1.CreateTaskRequest{Prompt: "p", Params: map[string]string{"steps": "1001"}}, connect.CodeInvalidArgument, []string{"steps"}},
		{"demo step_ms negative", &taskhubv1.CreateTaskRequest{Prompt: "p", Mode: "demo", Params: map[string]string{"step_ms": "-1"}}, connect.CodeInvalidArgument, []string{"step_ms"}},
	}
	// Sequential: each case checks that the task list did not change.
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := listTasks(t, b.tasks, "")
			_, err := b.tasks.CreateTask(t.Context(), connect.NewRequest(tc.req))
			requireCode(t, err, tc.code, tc.msg...)
			requireSameTasks(t, before, listTasks(t, b.tasks, ""))
		})
	}

	t.Run("valid demo params are accepted", func(t *testing.T) {
		res, err := b.tasks.CreateTask(t.Context(), connect.NewRequest(&taskhubv1.CreateTaskRequest{
			Prompt: "p", Mode: "demo", Params: map[string]string{"steps": "1", "step_ms": "0"},
		}))
		require.NoError(t, err)
		require.Len(t, listTasks(t, b.tasks, ""), 2)
		waitTask(t, b.tasks, res.Msg.Task.Id, "", finished)
	})
}

func TestErrors_TaskID(t *testing.T) {
	t.Parallel()
	b := setup(t, server.Config{})
	createTask(t, b.tasks, "already here", "render")
	unknown := taskhub.NewTaskID(time.Now())

	get := func(ctx context.Context, id string) error {
		_, err := b.tasks.GetTask(ctx, connect.NewRequest(&taskhubv1.GetTaskRequest{Id: id}))
		return err
	}
	cancel := func(ctx context.Context, id string) error {
		_, err := b.tasks.CancelTask(ctx, connect.NewRequest(&taskhubv1.CancelTaskRequest{Id: id}))
		return err
	}
	cases := []struct {
		name string
		call func(ctx context.Context, id string) error
		id   string
		code connect.Code
		msg  []string
	}{
		{"get an unknown id", get, unknown, connect.CodeNotFound, []string{unknown, "not found"}},
		{"cancel an unknown id", cancel, unknown, connect.CodeNotFound, []string{unknown, "not found"}},
		{"get a malformed id", get, "not-a-task-id", connect.CodeInvalidArgument, []string{"task id", "not-a-task-id"}},
		{"cancel a malformed id", cancel, "not-a-task-id", connect.CodeInvalidArgument, []string{"task id"}},
		{"get a lowercase id", get, strings.ToLower(unknown) + "!", connect.CodeInvalidArgument, []string{"task id"}},
		{"get no id", get, "", connect.CodeInvalidArgument, []string{"task id", "required"}},
		{"cancel no id", cancel, "", connect.CodeInvalidArgument, []string{"task id", "required"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := listTasks(t, b.tasks, "")
			requireCode(t, tc.call(t.Context(), tc.id), tc.code, tc.msg...)
			requireSameTasks(t, before, listTasks(t, b.tasks, ""))
		})
	}
}

// leased is a task in some state and the lease token of its last claim ("" if never claimed).
type leased struct {
	task  *taskhubv1.Task
	token string
}

func TestErrors_Worker(t *testing.T) {
	t.Parallel()
	b := setup(t, server.Config{})
	const wrongToken = "AAAAAAAAAAAAAAAAAAAAAAAAAA"

	queued := func(t *testing.T, mode string) leased {
		return leased{task: createTask(t, b.tasks, "queued", mode)}
	}
	running := func(t *testing.T, mode string) leased {
		createTask(t, b.tasks, "running", mode)
		c := claimTask(t, b.work, "w1", mode)
		return leased{task: c.Task, token: c.LeaseToken}
	}
	completed := func(t *testing.T, mode string) leased {
		l := running(t, mode)
		_, err := b.work.CompleteTask(t.Context(), connect.NewRequest(&taskhubv1.CompleteTaskRequest{TaskId: l.task.Id, LeaseToken: l.token, Result: "done"}))
		require.NoError(t, err)
		return l
	}
	failed := func(t *testing.T, mode string) leased {
		l := running(t, mode)
		_, err := b.work.FailTask(t.Context(), connect.NewRequest(&taskhubv1.FailTaskRequest{TaskId: l.task.Id, LeaseToken: l.token, Error: "broke"}))
		require.NoError(t, err)
		return l
	}
	cancelled := func(t *testing.T, mode string) leased {
		l := running(t, mode)
		_, err := b.tasks.CancelTask(t.Context(), connect.NewRequest(&taskhubv1.CancelTaskRequest{Id: l.task.Id}))
		require.NoError(t, err)
		return l
	}

	progress := func(p float64, message string) func(context.Context, leased) error {
		return func(ctx context.Context, l leased) error {
			_, err := b.work.ReportProgress(ctx, connect.NewRequest(&taskhubv1.ReportProgressRequest{TaskId: l.task.Id, LeaseToken: l.token, Progress: p, Message: message}))
			return err
		}
	}
	progressWith := func(token string) func(context.Context, leased) error {
		return func(ctx context.Context, l leased) error {
			_, err := b.work.ReportProgress(ctx, connect.NewRequest(&taskhubv1.ReportProgressRequest{TaskId: l.task.Id, LeaseToken: token, Progress: 50}))
			return err
		}
	}
	complete := func(token string) func(context.Context, leased) error {
		return func(ctx context.Context, l leased) error {
			if token == "" {
				token = l.token
			}
			_, err := b.work.CompleteTask(ctx, connect.NewRequest(&taskhubv1.CompleteTaskRequest{TaskId: l.task.Id, LeaseToken: token, Result: "again"}))
			return err
		}
	}
	fail := func(ctx context.Context, l leased) error {
		_, err := b.work.FailTask(ctx, connect.NewRequest(&taskhubv1.FailTaskRequest{TaskId: l.task.Id, LeaseToken: l.token, Error: "late"}))
		return err
	}
	cancel := func(ctx context.Context, l leased) error {
		_, err := b.tasks.CancelTask(ctx, connect.NewRequest(&taskhubv1.CancelTaskRequest{Id: l.task.Id}))
		return err
	}
	claim := func(modes []string, wait uint32) func(context.Context, leased) error {
		return func(ctx context.Context, l leased) error {
			if modes == nil {
				modes = []string{} // none
			}
			_, err := b.work.ClaimTask(ctx, connect.NewRequest(&taskhubv1.ClaimTaskRequest{WorkerId: "w2", Modes: modes, WaitSeconds: wait}))
			return err
		}
	}
	claimMode := func(wait uint32) func(context.Context, leased) error {
		return func(ctx context.Context, l leased) error {
			_, err := b.work.ClaimTask(ctx, connect.NewRequest(&taskhubv1.ClaimTaskRequest{WorkerId: "w2", Modes: []string{l.task.Mode}, WaitSeconds: wait}))
			return err
		}
	}
	claimAs := func(workerID string) func(context.Context, leased) error {
		return func(ctx context.Context, l leased) error {
			_, err := b.work.ClaimTask(ctx, connect.NewRequest(&taskhubv1.ClaimTaskRequest{WorkerId: workerID, Modes: []string{l.task.Mode}}))
			return err
		}
	}

	cases := []struct {
		name  string
		state func(*testing.T, string) leased
		call  func(context.Context, leased) error
		code  connect.Code
		msg   []string
	}{
		{"progress over 100", running, progress(101, ""), connect.CodeInvalidArgument, []string{"progress", "101"}},
		{"progress below 0", running, progress(-1, ""), connect.CodeInvalidArgument, []string{"progress", "-1"}},
		{"progress NaN", running, progress(math.NaN(), ""), connect.CodeInvalidArgument, []string{"progress", "NaN"}},
		{"progress +Inf", running, progress(math.Inf(1), ""), connect.CodeInvalidArgument, []string{"progress"}},
		{"progress message over 1 KiB", running, progress(50, strings.Repeat("m", 1<<10+1)), connect.CodeInvalidArgument, []string{"message"}},
		{"progress without a lease token", running, progressWith(""), connect.CodeInvalidArgument, []string{"lease_token"}},
		{"progress after completion", completed, progress(50, ""), connect.CodeFailedPrecondition, []string{"completed"}},
		{"progress after failure", failed, progress(50, ""), connect.CodeFailedPrecondition, []string{"failed"}},
		{"complete twice", completed, complete(""), connect.CodeFailedPrecondition, []string{"completed"}},
		{"fail after completion", completed, fail, connect.CodeFailedPrecondition, []string{"completed"}},
		{"complete after cancel", cancelled, complete(""), connect.CodeFailedPrecondition, []string{"cancelled"}},
		{"cancel a completed task", completed, cancel, connect.CodeFailedPrecondition, []string{"completed"}},
		{"cancel a failed task", failed, cancel, connect.CodeFailedPrecondition, []string{"failed"}},
		{"cancel a cancelled task", cancelled, cancel, connect.CodeFailedPrecondition, []string{"cancelled"}},
		{"progress with a wrong lease token", running, progressWith(wrongToken), connect.CodePermissionDenied, []string{"lease"}},
		{"complete with a wrong lease token", running, complete(wrongToken), connect.CodePermissionDenied, []string{"lease"}},
		{"progress on a queued task", queued, progressWith(wrongToken), connect.CodePermissionDenied, []string{"lease"}},
		{"claim with no modes", queued, claim(nil, 0), connect.CodeInvalidArgument, []string{"modes"}},
		{"claim with 17 modes", queued, claim(strings.Split("a b c d e f g h i j k l m n o p q", " "), 0), connect.CodeInvalidArgument, []string{"modes"}},
		{"claim with a malformed mode", queued, claim([]string{"Bad Mode"}, 0), connect.CodeInvalidArgument, []string{"mode"}},
		{"claim waiting 61 seconds", queued, claimMode(61), connect.CodeInvalidArgument, []string{"wait_seconds", "61"}},
		{"claim with a malformed worker_id", queued, claimAs("a worker"), connect.CodeInvalidArgument, []string{"worker_id"}},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			// A mode of its own, so claims in other cases never take this case's task.
			l := tc.state(t, fmt.Sprintf("case-%d", i))
			before := getTask(t, b.tasks, l.task.Id, "")
			requireCode(t, tc.call(t.Context(), l), tc.code, tc.msg...)
			requireSameTask(t, before, getTask(t, b.tasks, l.task.Id, ""))
		})
	}
}

func TestErrors_LeaseExpired(t *testing.T) {
	t.Parallel()
	b := setup(t, server.Config{Options: actors.Options{LeaseTimeout: 300 * time.Millisecond}})
	task := createTask(t, b.tasks, "slow", "render")
	c := claimTask(t, b.work, "w1", "render")
	require.Equal(t, task.Id, c.Task.Id)

	// Nobody reports: the lease runs out and the task goes back to the queue.
	requeued := waitTask(t, b.tasks, task.Id, "", func(t *taskhubv1.Task) bool {
		return t.State == taskhubv1.TaskState_TASK_STATE_QUEUED && t.Attempt == 2
	})
	require.Contains(t, requeued.Message, "lease expired")

	calls := map[string]func() error{
		"progress": func() error {
			_, err := b.work.ReportProgress(t.Context(), connect.NewRequest(&taskhubv1.ReportProgressRequest{TaskId: task.Id, LeaseToken: c.LeaseToken, Progress: 50}))
			return err
		},
		"complete": func() error {
			_, err := b.work.CompleteTask(t.Context(), connect.NewRequest(&taskhubv1.CompleteTaskRequest{TaskId: task.Id, LeaseToken: c.LeaseToken, Result: "late"}))
			return err
		},
		"fail": func() error {
			_, err := b.work.FailTask(t.Context(), connect.NewRequest(&taskhubv1.FailTaskRequest{TaskId: task.Id, LeaseToken: c.LeaseToken, Error: "late"}))
			return err
		},
	}
	for name, call := range calls {
		t.Run(name, func(t *testing.T) {
			requireCode(t, call(), connect.CodeFailedPrecondition, "lease", "expired", "requeued")
			requireSameTask(t, requeued, getTask(t, b.tasks, task.Id, ""))
		})
	}

	// The next claim gets the task with a new lease; the old token is now someone else's.
	c2 := claimTask(t, b.work, "w2", "render")
	require.Equal(t, task.Id, c2.Task.Id)
	require.NotEqual(t, c.LeaseToken, c2.LeaseToken)
	before := getTask(t, b.tasks, task.Id, "")
	requireCode(t, calls["complete"](), connect.CodePermissionDenied, "lease")
	requireSameTask(t, before, getTask(t, b.tasks, task.Id, ""))
}

func TestErrors_Modes(t *testing.T) {
	t.Parallel()
	b := setup(t, server.Config{Options: actors.Options{Modes: []string{"render"}}})

	for _, mode := range []string{"paint", "", "demo"} {
		t.Run("mode "+mode, func(t *testing.T) {
			before := listTasks(t, b.tasks, "")
			_, err := b.tasks.CreateTask(t.Context(), connect.NewRequest(&taskhubv1.CreateTaskRequest{Prompt: "p", Mode: mode}))
			requireCode(t, err, connect.CodeInvalidArgument, "not enabled", "render")
			requireSameTasks(t, before, listTasks(t, b.tasks, ""))
		})
	}

	task := createTask(t, b.tasks, "p", "render")
	require.Equal(t, "render", task.Mode)
	tasks := listTasks(t, b.tasks, "")
	require.Len(t, tasks, 1)
	require.Equal(t, task.Id, tasks[0].Id)
}

func TestErrors_RequestTooLarge(t *testing.T) {
	t.Parallel()
	b := setup(t, server.Config{})
	createTask(t, b.tasks, "already here", "render")
	huge := &taskhubv1.CreateTaskRequest{Prompt: strings.Repeat("x", rpc.MaxRequestBytes), Mode: "render"}

	clients := map[string]taskhubv1connect.TaskServiceClient{
		"connect":      b.tasks,
		"connect json": taskhubv1connect.NewTaskServiceClient(b.http, b.srv.URL(), connect.WithProtoJSON()),
		"grpc":         b.grpcTasks(),
	}
	for name, c := range clients {
		t.Run(name, func(t *testing.T) {
			before := listTasks(t, b.tasks, "")
			_, err := c.CreateTask(t.Context(), connect.NewRequest(huge))
			requireCode(t, err, connect.CodeResourceExhausted, "larger than", fmt.Sprint(rpc.MaxRequestBytes))
			requireSameTasks(t, before, listTasks(t, b.tasks, ""))
		})
	}

	// Just under the limit is not resource_exhausted: it reaches validation (the prompt is over
	// 16 KiB).
	_, err := b.tasks.CreateTask(t.Context(), connect.NewRequest(&taskhubv1.CreateTaskRequest{Prompt: strings.Repeat("x", rpc.MaxRequestBytes-100), Mode: "render"}))
	requireCode(t, err, connect.CodeInvalidArgument, "prompt")
}
