package server_test

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/taskhub/taskhub/client"
	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"
	"github.com/taskhub/taskhub/gen/taskhub/v1/taskhubv1connect"
	"github.com/taskhub/taskhub/internal/freeport"
	"github.com/taskhub/taskhub/internal/natstest"
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

// buildGRPCTools builds grpcurl and grpc-health-probe, pinned in tools/go.mod, into a temp
// dir. A tool that does not build fails the test: they come from the Go module proxy, as every
// module of the build does.
func buildGRPCTools(t *testing.T) (grpcurl, probe string) {
	t.Helper()
	dir := t.TempDir()
	build := exec.CommandContext(t.Context(), "go", "build", "-o", dir,
		"github.com/fullstorydev/grpcurl/cmd/grpcurl", "github.com/grpc-ecosystem/grpc-health-probe")
	build.Dir = "../tools"
	out, err := build.CombinedOutput()
	require.NoError(t, err, "building the gRPC tools of tools/go.mod: %s", out)
	return filepath.Join(dir, "grpcurl"), filepath.Join(dir, "grpc-health-probe")
}

// TestStandard_GRPCTools: with auth on, grpcurl lists, describes and calls the API through
// server reflection over unencrypted HTTP/2 (-plaintext), with any caller's token and not
// without one; grpc-health-probe's exit code says SERVING, names a service unknown or a call
// refused, and says NOT_SERVING while the event log is away, as /readyz does.
func TestStandard_GRPCTools(t *testing.T) {
	t.Parallel()
	grpcurl, probe := buildGRPCTools(t)

	storeDir, natsAddr := t.TempDir(), freeport.Addr(t)
	_, portStr, _ := net.SplitHostPort(natsAddr)
	port, _ := strconv.Atoi(portStr)
	startNATS := natstest.Single(t, port, storeDir)
	ns := startNATS()
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	b := setup(t, server.Config{AuthFile: writeAuthFile(t), NATSURL: "nats://" + natsAddr})
	host := strings.TrimPrefix(b.srv.URL(), "http://")

	// run runs a tool and returns its output and exit code (-1: it did not run).
	run := func(tool string, args ...string) (string, int) {
		t.Helper()
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, tool, args...).CombinedOutput()
		var exit *exec.ExitError
		switch {
		case err == nil:
			return string(out), 0
		case errors.As(err, &exit):
			return string(out), exit.ExitCode()
		}
		t.Fatalf("%s %v: %v: %s", tool, args, err, out)
		return "", -1
	}
	grpcurlAs := func(token string, args ...string) (string, int) {
		t.Helper()
		if token != "" {
			args = append([]string{"-H", "authorization: Bearer " + token}, args...)
		}
		return run(grpcurl, append([]string{"-plaintext", "-max-time", "20"}, args...)...)
	}

	t.Run("grpcurl lists, describes and calls through reflection", func(t *testing.T) {
		for _, token := range []string{aliceToken, workerToken} {
			out, code := grpcurlAs(token, host, "list")
			require.Zero(t, code, out)
			require.Equal(t, []string{"grpc.health.v1.Health", "taskhub.v1.TaskService", "taskhub.v1.WorkerService"}, strings.Fields(out))
		}
		out, code := grpcurlAs(aliceToken, host, "list", "taskhub.v1.WorkerService")
		require.Zero(t, code, out)
		require.Contains(t, strings.Fields(out), "taskhub.v1.WorkerService.ClaimTask")
		out, code = grpcurlAs(aliceToken, host, "describe", "taskhub.v1.TaskService.WatchTasks")
		require.Zero(t, code, out)
		require.Contains(t, out, "rpc WatchTasks ( .taskhub.v1.WatchTasksRequest ) returns ( stream .taskhub.v1.WatchTasksResponse );")
		out, code = grpcurlAs(aliceToken, host, "describe", "taskhub.v1.CreateTaskRequest")
		require.Zero(t, code, out)
		require.Contains(t, out, "string prompt = ")
		out, code = grpcurlAs(aliceToken, "-d", `{"prompt": "via grpcurl", "mode": "render"}`, host, "taskhub.v1.TaskService/CreateTask")
		require.Zero(t, code, out)
		require.Contains(t, out, `"owner": "alice"`)
		require.Contains(t, out, `"prompt": "via grpcurl"`)
	})

	t.Run("grpcurl without a token", func(t *testing.T) {
		out, code := grpcurlAs("", host, "list")
		require.NotZero(t, code, out)
		require.Contains(t, out, "Unauthenticated")
		out, code = grpcurlAs("not-a-token-of-anyone", host, "list")
		require.NotZero(t, code, out)
		require.Contains(t, out, "Unauthenticated")
	})

	probeAs := func(token string, args ...string) (string, int) {
		t.Helper()
		args = append([]string{"-addr", host, "-connect-timeout", "10s", "-rpc-timeout", "10s"}, args...)
		if token != "" {
			args = append(args, "-rpc-header", "authorization: Bearer "+token)
		}
		return run(probe, args...)
	}
	t.Run("grpc-health-probe", func(t *testing.T) {
		for _, service := range []string{"", "taskhub.v1.TaskService", "taskhub.v1.WorkerService"} {
			out, code := probeAs(workerToken, "-service", service)
			require.Zero(t, code, out)
			require.Contains(t, out, "status: SERVING")
		}
		out, code := probeAs(workerToken, "-service", "no.such.Service")
		require.Equal(t, 3, code, "an RPC failure: %s", out)
		require.Contains(t, out, "NotFound")
		out, code = probeAs("")
		require.Equal(t, 3, code, "an RPC failure: %s", out)
		require.Contains(t, out, "Unauthenticated")

		ns.Shutdown()
		ns.WaitForShutdown()
		// A write notices the outage at once; readiness (and health) follow within a probe.
		_, err := b.tasks.CreateTask(t.Context(), as(&taskhubv1.CreateTaskRequest{Prompt: "during", Mode: "render"}, aliceToken))
		require.Equal(t, connect.CodeUnavailable, connect.CodeOf(err), err)
		require.EventuallyWithT(t, func(c *assert.CollectT) {
			out, code := probeAs(aliceToken)
			require.Equal(c, 4, code, "unhealthy: %s", out)
			require.Contains(c, out, "NOT_SERVING")
		}, 20*time.Second, 100*time.Millisecond)
		ns = startNATS()
		require.EventuallyWithT(t, func(c *assert.CollectT) {
			out, code := probeAs(aliceToken)
			require.Zero(c, code, out)
		}, 60*time.Second, 200*time.Millisecond)
	})
}
