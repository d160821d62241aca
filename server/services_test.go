package server_test

import (
	"os"
	"path/filepath"
	"testing"

	"connectrpc.com/connect"
	"github.com/stretchr/testify/require"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"
	"github.com/taskhub/taskhub/rpc"
	"github.com/taskhub/taskhub/server"
)

const serviceToken = "shop-backend-token-0123456789"

// onBehalf is a request of the shop's backend for user ("" for itself).
func onBehalf[T any](msg *T, user string) *connect.Request[T] {
	req := as(msg, serviceToken)
	if user != "" {
		req.Header().Set(rpc.OnBehalfOf, user)
	}
	return req
}

// TestServices_ActOnBehalfOfUsers: an app's backend creates and cancels tasks for two of its
// users; each user sees only their own, and the events say the service acted.
func TestServices_ActOnBehalfOfUsers(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "auth.json")
	require.NoError(t, os.WriteFile(path, []byte(`{
		"users":    [{"name":"alice","token":"`+aliceToken+`"},{"name":"bob","token":"`+bobToken+`"}],
		"workers":  [{"name":"gpu-1","token":"`+workerToken+`"}],
		"services": [{"name":"shop-backend","token":"`+serviceToken+`"}]}`), 0o600))
	b := setup(t, server.Config{AuthFile: path})
	ctx := t.Context()

	aliceWatch := watch(t, b.tasks, &taskhubv1.WatchTasksRequest{}, aliceToken)
	aliceWatch.wait(0)
	forAlice, err := b.tasks.CreateTask(ctx, onBehalf(&taskhubv1.CreateTaskRequest{Prompt: "alice's", Mode: "render"}, "alice"))
	require.NoError(t, err)
	require.Equal(t, "alice", forAlice.Msg.Task.Owner)
	forBob, err := b.tasks.CreateTask(ctx, onBehalf(&taskhubv1.CreateTaskRequest{Prompt: "bob's", Mode: "render"}, "bob"))
	require.NoError(t, err)
	require.Equal(t, "bob", forBob.Msg.Task.Owner)
	_, err = b.tasks.CancelTask(ctx, onBehalf(&taskhubv1.CancelTaskRequest{Id: forAlice.Msg.Task.Id}, "alice"))
	require.NoError(t, err)

	events := aliceWatch.waitFor(func(es []*taskhubv1.TaskEvent) bool { return len(es) >= 2 })
	require.Len(t, events, 2, "alice's stream has her task only")
	for _, e := range events {
		require.Equal(t, forAlice.Msg.Task.Id, e.Task.Id)
		require.Equal(t, "shop-backend", e.ActedBy, "the %v event records the service", e.Kind)
	}
	require.Equal(t, taskhubv1.EventKind_EVENT_KIND_CANCELLED, events[1].Kind)

	for user, token := range map[string]string{"alice": aliceToken, "bob": bobToken} {
		list, err := b.tasks.ListTasks(ctx, as(&taskhubv1.ListTasksRequest{}, token))
		require.NoError(t, err)
		require.Len(t, list.Msg.Tasks, 1, user)
		require.Equal(t, user, list.Msg.Tasks[0].Owner)
		viaService, err := b.tasks.ListTasks(ctx, onBehalf(&taskhubv1.ListTasksRequest{}, user))
		require.NoError(t, err)
		require.Len(t, viaService.Msg.Tasks, 1, "the service sees what %s sees", user)
	}

	// Without the header the service is a user of its own name.
	own, err := b.tasks.CreateTask(ctx, onBehalf(&taskhubv1.CreateTaskRequest{Prompt: "its own", Mode: "render"}, ""))
	require.NoError(t, err)
	require.Equal(t, "shop-backend", own.Msg.Task.Owner)
	s := watch(t, b.tasks, &taskhubv1.WatchTasksRequest{}, serviceToken)
	snap, _ := s.wait(0)
	require.Len(t, snap.Tasks, 1)
	require.Equal(t, own.Msg.Task.Id, snap.Tasks[0].Id)

	// Only a service may name another user; nobody gets a worker's calls with its token.
	req := as(&taskhubv1.ListTasksRequest{}, aliceToken)
	req.Header().Set(rpc.OnBehalfOf, "bob")
	_, err = b.tasks.ListTasks(ctx, req)
	require.Equal(t, connect.CodePermissionDenied, connect.CodeOf(err))
	_, err = b.tasks.ListTasks(ctx, onBehalf(&taskhubv1.ListTasksRequest{}, "not a name"))
	require.Equal(t, connect.CodeInvalidArgument, connect.CodeOf(err))
	_, err = b.work.ClaimTask(ctx, as(&taskhubv1.ClaimTaskRequest{WorkerId: "w", Modes: []string{"render"}}, serviceToken))
	require.Equal(t, connect.CodePermissionDenied, connect.CodeOf(err))
	require.ErrorContains(t, err, "service's token")
}

// TestServices_NameClash: a service may not share a user's name: acting as itself it would
// share their tasks.
func TestServices_NameClash(t *testing.T) {
	t.Parallel()
	_, err := rpc.NewAuth(rpc.AuthFile{
		Users:    []rpc.Principal{{Name: "alice", Token: aliceToken}},
		Services: []rpc.Principal{{Name: "alice", Token: serviceToken}},
	}, nil)
	require.ErrorContains(t, err, "a user has that name too")
	_, err = rpc.NewAuth(rpc.AuthFile{
		Users:    []rpc.Principal{{Name: "alice", Token: aliceToken}},
		Services: []rpc.Principal{{Name: "shop", Token: aliceToken}},
	}, nil)
	require.ErrorContains(t, err, "used twice")
}
