package server_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
	"github.com/stretchr/testify/require"

	"github.com/taskhub/taskhub/client"
	"github.com/taskhub/taskhub/gen/taskhub/v1/taskhubv1connect"
	"github.com/taskhub/taskhub/server"
)

// TestStandard_Health: grpc.health.v1 answers for the server and its services, not for
// others, behind the API's auth (any of its tokens).
func TestStandard_Health(t *testing.T) {
	t.Parallel()
	b := setup(t, server.Config{AuthFile: writeAuthFile(t)})
	ctx := t.Context()
	bearerClient := func(token string) *grpchealth.Client {
		return grpchealth.NewClient(b.h2c, b.srv.URL(), connect.WithGRPC(), connect.WithInterceptors(client.Bearer(token)))
	}
	for _, token := range []string{aliceToken, workerToken} {
		for _, service := range []string{"", taskhubv1connect.TaskServiceName, taskhubv1connect.WorkerServiceName} {
			res, err := bearerClient(token).Check(ctx, &grpchealth.CheckRequest{Service: service})
			require.NoError(t, err, service)
			require.Equal(t, grpchealth.StatusServing, res.Status)
		}
	}
	_, err := bearerClient(aliceToken).Check(ctx, &grpchealth.CheckRequest{Service: "no.such.Service"})
	require.Equal(t, connect.CodeNotFound, connect.CodeOf(err))
	_, err = grpchealth.NewClient(b.h2c, b.srv.URL(), connect.WithGRPC()).Check(ctx, &grpchealth.CheckRequest{})
	require.Equal(t, connect.CodeUnauthenticated, connect.CodeOf(err), "no token")
}

// TestStandard_ReflectionWithBufCurl: buf curl lists the API's methods and calls one through
// server reflection, with no proto files. buf comes from make generate's npm packages.
func TestStandard_ReflectionWithBufCurl(t *testing.T) {
	t.Parallel()
	buf, err := filepath.Abs("../tools/npm/node_modules/.bin/buf")
	require.NoError(t, err)
	if _, err := os.Stat(buf); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("buf is not installed: make lint installs it (npm)")
		}
		t.Skip("buf is not installed: run make generate or make lint to install it")
	}
	b := setup(t, server.Config{AuthFile: writeAuthFile(t)})
	run := func(args ...string) (string, error) {
		cmd := exec.CommandContext(t.Context(), buf, append([]string{"curl", "--http2-prior-knowledge", "-H", "Authorization: Bearer " + aliceToken, "--reflect-header", "Authorization: Bearer " + aliceToken}, args...)...)
		cmd.Dir = t.TempDir() // not in this repository's buf workspace
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := run("--list-methods", b.srv.URL())
	require.NoError(t, err, out)
	for _, m := range []string{"taskhub.v1.TaskService/CreateTask", "taskhub.v1.TaskService/WatchTasks", "taskhub.v1.WorkerService/ClaimTask"} {
		require.Contains(t, out, m)
	}
	out, err = run("-d", `{"prompt":"via reflection","mode":"render"}`, b.srv.URL()+"/taskhub.v1.TaskService/CreateTask")
	require.NoError(t, err, out)
	require.Contains(t, out, `"owner": "alice"`)
	out, err = run("--protocol", "grpc", b.srv.URL()+"/grpc.health.v1.Health/Check")
	require.NoError(t, err, out)
	require.Contains(t, out, "SERVING")
	require.False(t, strings.Contains(out, "NOT_SERVING"))
}
