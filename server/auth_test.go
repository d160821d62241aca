package server_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/stretchr/testify/require"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"

	"github.com/taskhub/taskhub"
	"github.com/taskhub/taskhub/server"
)

const (
	aliceToken  = "alice-token-0123456789"
	bobToken    = "bob-token-0123456789ab"
	workerToken = "worker-token-0123456789"
)

// writeAuthFile writes an auth file with users alice and bob and worker gpu-1.
func writeAuthFile(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "auth.json")
	require.NoError(t, os.WriteFile(path, []byte(`{"users":[{"name":"alice","token":"`+aliceToken+`"},{"name":"bob","token":"`+bobToken+`"}],"workers":[{"name":"gpu-1","token":"`+workerToken+`"}]}`), 0o600))
	return path
}

func TestAuth_Rejects(t *testing.T) {
	t.Parallel()
	b := setup(t, server.Config{AuthFile: writeAuthFile(t)})
	id := taskhub.NewTaskID(time.Now())

	// Each call is well-formed: only the caller's token is wrong.
	taskCalls := map[string]func(ctx context.Context, token string) error{
		"CreateTask": func(ctx context.Context, token string) error {
			_, err := b.tasks.CreateTask(ctx, as(&taskhubv1.CreateTaskRequest{Prompt: "p", Mode: "render"}, token))
			return err
		},
		"GetTask": func(ctx context.Context, token string) error {
			_, err := b.tasks.GetTask(ctx, as(&taskhubv1.GetTaskRequest{Id: id}, token))
			return err
		},
		"ListTasks": func(ctx context.Context, token string) error {
			_, err := b.tasks.ListTasks(ctx, as(&taskhubv1.ListTasksRequest{}, token))
			return err
		},
		"CancelTask": func(ctx context.Context, token string) error {
			_, err := b.tasks.CancelTask(ctx, as(&taskhubv1.CancelTaskRequest{Id: id}, token))
			return err
		},
		"WatchTasks": func(ctx context.Context, token string) error {
			ss, err := b.tasks.WatchTasks(ctx, as(&taskhubv1.WatchTasksRequest{}, token))
			if err != nil {
				return err
			}
			defer ss.Close()
			if ss.Receive() {
				return errors.New("the stream was accepted")
			}
			return ss.Err()
		},
	}
	workerCalls := map[string]func(ctx context.Context, token string) error{
		"ClaimTask": func(ctx context.Context, token string) error {
			_, err := b.work.ClaimTask(ctx, as(&taskhubv1.ClaimTaskRequest{WorkerId: "w", Modes: []string{"render"}}, token))
			return err
		},
		"ReportProgress": func(ctx context.Context, token string) error {
			_, err := b.work.ReportProgress(ctx, as(&taskhubv1.ReportProgressRequest{TaskId: id, LeaseToken: "x", Progress: 1}, token))
			return err
		},
		"CompleteTask": func(ctx context.Context, token string) error {
			_, err := b.work.CompleteTask(ctx, as(&taskhubv1.CompleteTaskRequest{TaskId: id, LeaseToken: "x"}, token))
			return err
		},
		"FailTask": func(ctx context.Context, token string) error {
			_, err := b.work.FailTask(ctx, as(&taskhubv1.FailTaskRequest{TaskId: id, LeaseToken: "x", Error: "e"}, token))
			return err
		},
	}
	type tokenCase struct {
		name  string
		token string
		code  connect.Code
		msg   []string
	}
	noToken := tokenCase{"no token", "", connect.CodeUnauthenticated, []string{"Authorization: Bearer"}}
	unknown := tokenCase{"unknown token", "nobody-token-0123456789", connect.CodeUnauthenticated, []string{"unknown token"}}
	taskTokens := []tokenCase{noToken, unknown, {"worker token", workerToken, connect.CodePermissionDenied, []string{"worker's token", "user"}}}
	workerTokens := []tokenCase{noToken, unknown, {"user token", aliceToken, connect.CodePermissionDenied, []string{"user's token", "worker"}}}

	// Sequential: each call takes a millisecond, and parallel subtests would queue behind the
	// package's other tests for a slot.
	run := func(calls map[string]func(context.Context, string) error, tokens []tokenCase) {
		for name, call := range calls {
			for _, tc := range tokens {
				t.Run(name+"/"+tc.name, func(t *testing.T) {
					ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
					defer cancel()
					requireCode(t, call(ctx, tc.token), tc.code, tc.msg...)
				})
			}
		}
	}
	run(taskCalls, taskTokens)
	run(workerCalls, workerTokens)

	t.Run("a token without the Bearer scheme", func(t *testing.T) {
		req := connect.NewRequest(&taskhubv1.ListTasksRequest{})
		req.Header().Set("Authorization", aliceToken)
		_, err := b.tasks.ListTasks(t.Context(), req)
		requireCode(t, err, connect.CodeUnauthenticated, "Bearer")
	})

	// None of the refused creates made a task, and the right tokens work.
	require.Empty(t, listTasks(t, b.tasks, aliceToken))
	require.Empty(t, listTasks(t, b.tasks, bobToken))
	res, err := b.work.ClaimTask(t.Context(), as(&taskhubv1.ClaimTaskRequest{Modes: []string{"render"}}, workerToken))
	require.NoError(t, err)
	require.Nil(t, res.Msg.Task)
}

func TestAuth_OwnerIsolation(t *testing.T) {
	t.Parallel()
	b := setup(t, server.Config{AuthFile: writeAuthFile(t)})
	ctx := t.Context()
	create := func(token, prompt, mode string) *taskhubv1.Task {
		t.Helper()
		res, err := b.tasks.CreateTask(ctx, as(&taskhubv1.CreateTaskRequest{Prompt: prompt, Mode: mode}, token))
		require.NoError(t, err)
		return res.Msg.Task
	}

	// Alice's first task stays queued, so it is in her snapshot.
	a1 := create(aliceToken, "alice's queued task", "later")
	require.Equal(t, "alice", a1.Owner, "the token's user owns the task")

	aw := watch(t, b.tasks, &taskhubv1.WatchTasksRequest{}, aliceToken)
	bw := watch(t, b.tasks, &taskhubv1.WatchTasksRequest{}, bobToken)
	asnap, _ := aw.wait(0)
	bsnap, _ := bw.wait(0)
	require.Len(t, asnap.Tasks, 1)
	require.Equal(t, a1.Id, asnap.Tasks[0].Id)
	require.Empty(t, bsnap.Tasks, "bob's snapshot has none of alice's tasks")

	// Alice's second task runs to completion on the worker while both watch.
	a2 := create(aliceToken, "alice's running task", "render")
	res, err := b.work.ClaimTask(ctx, as(&taskhubv1.ClaimTaskRequest{Modes: []string{"render"}, WaitSeconds: 5}, workerToken))
	require.NoError(t, err)
	require.Equal(t, a2.Id, res.Msg.Task.GetId())
	require.Equal(t, "gpu-1", res.Msg.Task.WorkerId, "worker_id defaults to the worker token's name")
	_, err = b.work.ReportProgress(ctx, as(&taskhubv1.ReportProgressRequest{TaskId: a2.Id, LeaseToken: res.Msg.LeaseToken, Progress: 50, Message: "half"}, workerToken))
	require.NoError(t, err)
	done, err := b.work.CompleteTask(ctx, as(&taskhubv1.CompleteTaskRequest{TaskId: a2.Id, LeaseToken: res.Msg.LeaseToken, Result: "ok"}, workerToken))
	require.NoError(t, err)
	require.Equal(t, "alice", done.Msg.Task.Owner)

	_, aev := aw.wait(4)
	require.Equal(t, []taskhubv1.EventKind{
		taskhubv1.EventKind_EVENT_KIND_CREATED, taskhubv1.EventKind_EVENT_KIND_STARTED,
		taskhubv1.EventKind_EVENT_KIND_PROGRESS, taskhubv1.EventKind_EVENT_KIND_COMPLETED,
	}, kindsOf(aev))
	for _, e := range aev {
		require.Equal(t, a2.Id, e.Task.Id)
		require.Equal(t, "alice", e.Task.Owner)
	}

	// Bob cannot see or touch alice's tasks, and trying changes nothing.
	for _, id := range []string{a1.Id, a2.Id} {
		before := getTask(t, b.tasks, id, aliceToken)
		_, err := b.tasks.GetTask(ctx, as(&taskhubv1.GetTaskRequest{Id: id}, bobToken))
		requireCode(t, err, connect.CodeNotFound, id, "not found")
		_, err = b.tasks.CancelTask(ctx, as(&taskhubv1.CancelTaskRequest{Id: id}, bobToken))
		requireCode(t, err, connect.CodeNotFound, id, "not found")
		requireSameTask(t, before, getTask(t, b.tasks, id, aliceToken))
	}
	require.Empty(t, listTasks(t, b.tasks, bobToken))
	require.Len(t, listTasks(t, b.tasks, aliceToken), 2)

	// Bob's first event is his own task: events are in order, so none of alice's came before it.
	b1 := create(bobToken, "bob's task", "render")
	require.Equal(t, "bob", b1.Owner)
	_, bev := bw.wait(1)
	require.Len(t, bev, 1)
	require.Equal(t, taskhubv1.EventKind_EVENT_KIND_CREATED, bev[0].Kind)
	require.Equal(t, b1.Id, bev[0].Task.Id)
	require.Equal(t, "bob", bev[0].Task.Owner)

	// And alice's stream skips bob's task: her next event is her own next task.
	a3 := create(aliceToken, "alice's third task", "later")
	_, aev = aw.wait(5)
	require.Len(t, aev, 5)
	require.Equal(t, a3.Id, aev[4].Task.Id)
	require.Len(t, listTasks(t, b.tasks, bobToken), 1)

	// The page acts as the token's user too.
	page := func(token string) *http.Response {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, b.srv.URL()+"/", nil)
		require.NoError(t, err)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		res, err := b.http.Do(req)
		require.NoError(t, err)
		t.Cleanup(func() { res.Body.Close() })
		return res
	}
	require.Equal(t, http.StatusUnauthorized, page("").StatusCode)
	body, err := io.ReadAll(page(bobToken).Body)
	require.NoError(t, err)
	require.Contains(t, string(body), b1.Id)
	require.NotContains(t, string(body), a1.Id)
	require.NotContains(t, string(body), a3.Id)
}

func TestAuth_ListensOnAllInterfaces(t *testing.T) {
	t.Parallel()
	srv, err := server.Open(t.Context(), server.Config{
		Addr:        "0.0.0.0:0",
		DataDir:     t.TempDir(),
		AuthFile:    writeAuthFile(t),
		DemoWorkers: -1,
		Logger:      slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	require.NoError(t, err, "with an auth file the server may listen beyond loopback")
	defer func() { require.NoError(t, srv.Close()) }()

	// It answers on loopback, for a Host that is not a loopback name.
	_, port, err := net.SplitHostPort(srv.URL()[len("http://"):])
	require.NoError(t, err)
	client := &http.Client{Transport: &http.Transport{}}
	defer client.CloseIdleConnections()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, "http://127.0.0.1:"+port+"/healthz", nil)
	require.NoError(t, err)
	req.Host = "taskhub.example:" + port
	res, err := client.Do(req)
	require.NoError(t, err)
	res.Body.Close()
	require.Equal(t, http.StatusOK, res.StatusCode)
}
