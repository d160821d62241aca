package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protojson"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"
	"github.com/taskhub/taskhub/gen/taskhub/v1/taskhubv1connect"
	"github.com/taskhub/taskhub/internal/freeport"
	"github.com/taskhub/taskhub/server"
	"github.com/taskhub/taskhub/webhook"
)

// cliProcess is a `taskhub <command>` process (this test binary, see TestMain).
type cliProcess struct {
	cmd *exec.Cmd
	mu  sync.Mutex
	out bytes.Buffer
}

func (p *cliProcess) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.Write(b)
}

func (p *cliProcess) stdout() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

func startCLI(t *testing.T, args ...string) *cliProcess {
	t.Helper()
	b, err := json.Marshal(args)
	require.NoError(t, err)
	p := &cliProcess{cmd: exec.Command(os.Args[0], "-test.run=^$")}
	p.cmd.Env = append(os.Environ(), childArgsJSONEnv+"="+string(b))
	p.cmd.Stdout, p.cmd.Stderr = p, testLog{t}
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	require.NoError(t, p.cmd.Start())
	t.Cleanup(func() { _ = p.cmd.Process.Kill(); _ = p.cmd.Wait() })
	return p
}

// exit waits for the process and returns its exit code.
func (p *cliProcess) exit(t *testing.T) int {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- p.cmd.Wait() }()
	select {
	case err := <-done:
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			return exit.ExitCode()
		}
		require.NoError(t, err)
		return 0
	case <-time.After(60 * time.Second):
		t.Fatal("the command did not exit")
		return -1
	}
}

// TestCLI_CreateWait: create --wait follows the task to its end; its exit code says how it
// ended (0 completed, 3 failed, 4 cancelled) and its last line shows the result or error.
func TestCLI_CreateWait(t *testing.T) {
	t.Parallel()
	e := newWorkerEnv(t, server.Config{})
	e.worker("cli", `
		case "$TASKHUB_PROMPT" in
		fail) echo "no such file" >&2; exit 100;;
		hang) echo "progress 10 waiting"; sleep 30;;
		esac
		echo "progress 50 half"; echo "result made $TASKHUB_PARAM_WHAT"`, "--concurrency", "3")

	done := startCLI(t, "create", "works", "--server", e.url, "--mode", "cli", "--param", "what=a fox", "--wait")
	require.Equal(t, 0, done.exit(t))
	lines := strings.Split(strings.TrimSpace(done.stdout()), "\n")
	require.Contains(t, lines[len(lines)-1], "completed")
	require.Contains(t, lines[len(lines)-1], "result: made a fox")

	failed := startCLI(t, "create", "fail", "--server", e.url, "--mode", "cli", "--wait")
	require.Equal(t, exitFailed, failed.exit(t))
	require.Contains(t, failed.stdout(), "error: ")
	require.Contains(t, failed.stdout(), "no such file")

	hung := startCLI(t, "create", "hang", "--server", e.url, "--mode", "cli", "--wait", "--json")
	var id string
	require.Eventually(t, func() bool {
		sc := bufio.NewScanner(strings.NewReader(hung.stdout()))
		for sc.Scan() {
			var ev taskhubv1.TaskEvent
			if protojson.Unmarshal(sc.Bytes(), &ev) == nil && ev.Task.Progress == 10 {
				id = ev.Task.Id
				return true
			}
		}
		return false
	}, 30*time.Second, 20*time.Millisecond, "the JSON watch shows the task's progress")
	cancelled := startCLI(t, "cancel", id, "--server", e.url)
	require.Equal(t, 0, cancelled.exit(t))
	require.Contains(t, cancelled.stdout(), "cancelled")
	require.Equal(t, exitCancelled, hung.exit(t))
}

// TestCLI_GetAndList: get and list print a task a line, or JSON; list --limit N the newest N.
func TestCLI_GetAndList(t *testing.T) {
	t.Parallel()
	e := newWorkerEnv(t, server.Config{})
	id := e.create("cli-list", "a queued one", nil)
	var out bytes.Buffer
	require.NoError(t, run(t.Context(), []string{"get", id, "--server", e.url, "--json"}, &out, io.Discard))
	var task taskhubv1.Task
	require.NoError(t, protojson.Unmarshal(out.Bytes(), &task))
	require.Equal(t, "a queued one", task.Prompt)

	out.Reset()
	require.NoError(t, run(t.Context(), []string{"list", "--server", e.url, "--state", "queued"}, &out, io.Discard))
	require.Contains(t, out.String(), id)
	require.Contains(t, out.String(), "queued")
	out.Reset()
	require.NoError(t, run(t.Context(), []string{"list", "--server", e.url, "--state", "completed"}, &out, io.Discard))
	require.Empty(t, out.String())
	require.ErrorContains(t, run(t.Context(), []string{"list", "--server", e.url, "--state", "sleeping"}, &out, io.Discard), "want queued")

	// --limit: the newest N.
	newer := e.create("cli-list", "a newer one", nil)
	out.Reset()
	require.NoError(t, run(t.Context(), []string{"list", "--server", e.url, "--limit", "1"}, &out, io.Discard))
	require.Equal(t, 1, strings.Count(out.String(), "\n"), "output: %s", out.String())
	require.Contains(t, out.String(), newer)
	out.Reset()
	require.NoError(t, run(t.Context(), []string{"list", "--server", e.url, "--limit", "0"}, &out, io.Discard))
	require.Equal(t, 2, strings.Count(out.String(), "\n"), "output: %s", out.String())
	require.Equal(t, connect.CodeNotFound, connect.CodeOf(run(t.Context(), []string{"get", "01JAAAAAAAAAAAAAAAAAAAAAAA", "--server", e.url}, &out, io.Discard)))
}

// TestCLI_WatchJSONResumesAcrossARestart: watch --json goes on across a restart of the server,
// missing nothing and repeating nothing.
func TestCLI_WatchJSONResumesAcrossARestart(t *testing.T) {
	t.Parallel()
	addr, dir := freeport.Addr(t), t.TempDir()
	open := func() *server.Server {
		srv, err := server.Open(context.Background(), server.Config{Addr: addr, DataDir: dir, DemoWorkers: -1,
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		require.NoError(t, err)
		return srv
	}
	srv := open()
	url := srv.URL()
	hc := &http.Client{Timeout: 10 * time.Second}
	tasks := taskhubv1connect.NewTaskServiceClient(hc, url)
	create := func(prompt string) string {
		res, err := tasks.CreateTask(t.Context(), connect.NewRequest(&taskhubv1.CreateTaskRequest{Prompt: prompt, Mode: "cli-watch"}))
		require.NoError(t, err)
		return res.Msg.Task.Id
	}
	events := func(p *cliProcess) []*taskhubv1.TaskEvent {
		var got []*taskhubv1.TaskEvent
		sc := bufio.NewScanner(strings.NewReader(p.stdout()))
		for sc.Scan() {
			ev := &taskhubv1.TaskEvent{}
			require.NoError(t, protojson.Unmarshal(sc.Bytes(), ev), sc.Text())
			got = append(got, ev)
		}
		return got
	}
	w := startCLI(t, "watch", "--server", url, "--json")
	time.Sleep(500 * time.Millisecond) // its snapshot
	first := create("before the restart")
	require.Eventually(t, func() bool { return len(events(w)) == 1 }, 30*time.Second, 20*time.Millisecond)

	require.NoError(t, srv.Close())
	hc.CloseIdleConnections()
	srv = open()
	defer srv.Close()
	second := create("after the restart")
	require.Eventually(t, func() bool { return len(events(w)) == 2 }, 60*time.Second, 50*time.Millisecond, "the watch resumed: %s", w.stdout())
	got := events(w)
	require.Equal(t, first, got[0].Task.Id)
	require.Equal(t, second, got[1].Task.Id)
	require.Equal(t, taskhubv1.EventKind_EVENT_KIND_CREATED, got[1].Kind)
	require.Less(t, got[0].Seq, got[1].Seq)
	time.Sleep(300 * time.Millisecond)
	require.Len(t, events(w), 2, "nothing repeated")
}

// TestCLI_CreateWithWebhook: create --webhook gives the task a webhook with the kinds of event
// --webhook-events names; an unknown kind, or a host the server does not allow, is refused.
func TestCLI_CreateWithWebhook(t *testing.T) {
	t.Parallel()
	secret := filepath.Join(t.TempDir(), "secret")
	require.NoError(t, os.WriteFile(secret, []byte("whsec_"+"C2FVsBQIhrscChlQIMV+b5sSYspob7oD"), 0o600))
	e := newWorkerEnv(t, server.Config{WebhookSecretFile: secret, Webhooks: webhook.Config{Allow: []string{"hooks.example:8443"}}})
	var out bytes.Buffer
	require.NoError(t, run(t.Context(), []string{"create", "hooked", "--mode", "cli-hook", "--server", e.url, "--json",
		"--webhook", "https://hooks.example:8443/taskhub", "--webhook-events", "started, completed"}, &out, io.Discard))
	var task taskhubv1.Task
	require.NoError(t, protojson.Unmarshal(out.Bytes(), &task))
	require.Equal(t, "https://hooks.example:8443/taskhub", task.Webhook.GetUrl())
	require.Equal(t, []taskhubv1.EventKind{taskhubv1.EventKind_EVENT_KIND_STARTED, taskhubv1.EventKind_EVENT_KIND_COMPLETED}, task.Webhook.Events)

	require.ErrorContains(t, run(t.Context(), []string{"create", "p", "--server", e.url, "--webhook", "https://hooks.example:8443/", "--webhook-events", "done"}, &out, io.Discard), `"done" is not a kind of event`)
	require.Equal(t, connect.CodeInvalidArgument, connect.CodeOf(run(t.Context(), []string{"create", "p", "--server", e.url, "--webhook", "https://other.example/"}, &out, io.Discard)))
}
