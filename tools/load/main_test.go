package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"
	"github.com/taskhub/taskhub/internal/testcert"

	"github.com/taskhub/taskhub/server"
)

func TestMain(m *testing.M) {
	// protoactor's dead-letter log throttle is a one-second timer goroutine that ends on its own.
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("github.com/asynkron/protoactor-go/actor.NewDeadLetter.NewThrottle.func4.1"))
}

// setup starts a real server on 127.0.0.1 with its data in a temp dir and no demo workers.
func setup(t *testing.T) *server.Server {
	t.Helper()
	srv, err := server.Open(t.Context(), server.Config{
		Addr: "127.0.0.1:0", DataDir: t.TempDir(), DemoWorkers: -1,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, srv.Close()) })
	return srv
}

// runLoad runs the tool with args and --json, and returns its report.
func runLoad(t *testing.T, args ...string) *report {
	t.Helper()
	var stdout, stderr bytes.Buffer
	err := run(t.Context(), append(args, "--json"), &stdout, &stderr)
	require.NoError(t, err, "stdout:\n%s\nstderr:\n%s", stdout.String(), stderr.String())
	var rep report
	require.NoError(t, json.Unmarshal(stdout.Bytes(), &rep))
	require.True(t, rep.OK)
	require.Zero(t, rep.ViolationCount)
	return &rep
}

// requireEvents checks the driver's counts: each task's created, started and completed event,
// and progress reports, at most rate x duration (fewer when the server answers slowly, as it
// may with -race on a busy machine).
func requireEvents(t *testing.T, rep *report, tasks int, rate float64, d time.Duration) {
	t.Helper()
	e := rep.Events
	require.NotNil(t, e)
	require.Zero(t, e.DriverErrors)
	require.EqualValues(t, 3*tasks, e.Lifecycle)
	require.Equal(t, e.Progress+e.Lifecycle, e.Published)
	require.Positive(t, e.Progress)
	require.LessOrEqual(t, float64(e.Progress), rate*d.Seconds()+float64(tasks))
}

// clients are the values of --client; the push tests run with each.
var clients = []string{clientRaw, clientConnect}

func TestRun_Push(t *testing.T) {
	t.Parallel()
	for _, client := range clients {
		t.Run(client, func(t *testing.T) {
			t.Parallel()
			srv := setup(t)
			rep := runLoad(t, "push", "--url", srv.URL(), "--watchers", "20", "--tasks", "3", "--rate", "200", "--duration", "2s",
				"--client", client)

			require.Equal(t, client, rep.WatchClient)
			require.Equal(t, 20, rep.Connect.Connected)
			require.Zero(t, rep.Connect.Failed)
			require.EqualValues(t, 1, rep.Connect.Connections, "20 streams share one HTTP/2 connection")
			requireEvents(t, rep, 3, 200, 2*time.Second)
			d := rep.Deliveries
			require.Equal(t, 20*rep.Events.Published, d.Expected)
			require.Equal(t, d.Expected, d.Received+d.Coalesced)
			require.GreaterOrEqual(t, d.Received, 20*rep.Events.Lifecycle, "no lifecycle event is coalesced")
			require.Equal(t, d.Received, int64(rep.Latency.Count), "one latency per delivery")
			require.Positive(t, d.BytesIn)
			require.Positive(t, rep.Latency.P50)
			require.LessOrEqual(t, rep.Latency.P50, rep.Latency.P99)
			require.Nil(t, rep.Slow)

			// The server runs in this process, which the tool finds listening on the port.
			require.NotNil(t, rep.Server)
			require.Equal(t, os.Getpid(), rep.Server.PID)
			require.Positive(t, rep.Server.CPUSec)
			require.Positive(t, rep.Server.PeakRSS)
			require.Positive(t, rep.Server.RSSIdle)
			e := rep.Events
			require.EqualValues(t, e.Progress, e.Calls.Count, "every accepted report's call is timed")
			require.Positive(t, e.Calls.P50)
			require.Positive(t, e.ReportCPUSec)
			require.InDelta(t, 1e6*e.ReportCPUSec/float64(e.Progress), e.CPUPerProgressUs, 0.01)
		})
	}
}

// TestRun_PushGzip: both clients can ask for gzip. (The server compresses only messages of 4 KiB
// and more, so hardly any here; TestRawConn_StreamFailures decompresses one.)
func TestRun_PushGzip(t *testing.T) {
	t.Parallel()
	for _, client := range clients {
		t.Run(client, func(t *testing.T) {
			t.Parallel()
			srv := setup(t)
			rep := runLoad(t, "push", "--url", srv.URL(), "--watchers", "5", "--tasks", "2", "--rate", "100", "--duration", "1s",
				"--client", client, "--gzip")

			require.True(t, rep.Gzip)
			require.Equal(t, 5, rep.Connect.Connected)
			requireEvents(t, rep, 2, 100, time.Second)
			d := rep.Deliveries
			require.Equal(t, d.Expected, d.Received+d.Coalesced)
			require.GreaterOrEqual(t, d.Received, 5*rep.Events.Lifecycle)
		})
	}
}

func TestRun_PushHTTP1(t *testing.T) {
	t.Parallel()
	srv := setup(t)
	for _, client := range []string{clientRaw, clientConnect} {
		t.Run(client, func(t *testing.T) {
			rep := runLoad(t, "push", "--url", srv.URL(), "--watchers", "10", "--tasks", "2", "--rate", "100", "--duration", "1s", "--http1", "--client", client)

			require.True(t, rep.HTTP1)
			require.Equal(t, client, rep.WatchClient)
			require.Equal(t, "application/connect+proto", rep.ContentType)
			require.Equal(t, 10, rep.Connect.Connected)
			require.EqualValues(t, 10, rep.Connect.Connections, "one HTTP/1.1 connection per stream")
			d := rep.Deliveries
			require.Equal(t, 10*rep.Events.Published, d.Expected)
			require.Equal(t, d.Expected, d.Received+d.Coalesced)
			require.Positive(t, d.BytesIn)
		})
	}
}

// TestRun_PushJSON: --codec json watches as curl does, with application/connect+json: over
// HTTP/1.1, one connection each, read by the tool's lean reader; over HTTP/2 with connect-go.
// The deliveries are checked as with the binary codec.
func TestRun_PushJSON(t *testing.T) {
	t.Parallel()
	srv := setup(t)
	for _, http1 := range []bool{true, false} {
		t.Run(fmt.Sprint("http1=", http1), func(t *testing.T) {
			args := []string{"push", "--url", srv.URL(), "--watchers", "10", "--tasks", "2", "--rate", "100", "--duration", "1s", "--codec", "json"}
			client := clientConnect
			if http1 {
				args, client = append(args, "--http1"), clientRaw
			}
			rep := runLoad(t, args...)

			require.Equal(t, codecJSON, rep.Codec)
			require.Equal(t, "application/connect+json", rep.ContentType, "the server answered in JSON")
			require.Equal(t, client, rep.WatchClient)
			d := rep.Deliveries
			require.Equal(t, 10*rep.Events.Published, d.Expected)
			require.Equal(t, d.Expected, d.Received+d.Coalesced)
			require.GreaterOrEqual(t, d.Received, 10*rep.Events.Lifecycle)
			require.Positive(t, rep.Events.Progress)
		})
	}
}

// TestRun_PushTLS: with an https URL every watcher has a TLS connection of its own, HTTP/2 (or
// HTTP/1.1 with --http1), as a browser's page behind HTTPS; the workers report over TLS too.
func TestRun_PushTLS(t *testing.T) {
	t.Parallel()
	certs := testcert.Write(t)
	srv, err := server.Open(t.Context(), server.Config{
		Addr: "127.0.0.1:0", DataDir: t.TempDir(), DemoWorkers: -1, TLSCert: certs.Cert, TLSKey: certs.Key,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, srv.Close()) })
	require.True(t, strings.HasPrefix(srv.URL(), "https://"))

	for _, args := range [][]string{{"--client", clientRaw}, {"--client", clientConnect}, {"--http1"}} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			rep := runLoad(t, append([]string{"push", "--url", srv.URL(), "--tls-ca", certs.CA,
				"--watchers", "5", "--tasks", "2", "--rate", "100", "--duration", "1s"}, args...)...)

			require.True(t, rep.TLS)
			require.Equal(t, 5, rep.Connect.Connected)
			require.EqualValues(t, 5, rep.Connect.Connections, "a connection per watcher")
			requireEvents(t, rep, 2, 100, time.Second)
			d := rep.Deliveries
			require.Equal(t, 5*rep.Events.Published, d.Expected)
			require.Equal(t, d.Expected, d.Received+d.Coalesced)
		})
	}

	err = run(t.Context(), []string{"push", "--url", srv.URL()}, io.Discard, io.Discard)
	require.ErrorContains(t, err, "needs --tls-ca")
	other := testcert.Write(t) // an authority that did not sign the server's certificate
	err = run(t.Context(), []string{"push", "--url", srv.URL(), "--tls-ca", other.CA, "--watchers", "1", "--tasks", "1", "--duration", "1s"}, io.Discard, io.Discard)
	require.ErrorContains(t, err, "certificate")
}

// TestRun_PushUsers: with --users the tasks spread over users, each watched by its own
// watchers, who get their user's tasks' events and nothing of the others' (a watcher that saw
// another user's task would be a violation). Over each kind of client.
func TestRun_PushUsers(t *testing.T) {
	t.Parallel()
	authFile := filepath.Join(t.TempDir(), "auth.json")
	var out bytes.Buffer
	require.NoError(t, run(t.Context(), []string{"users", "--users", "4", "--out", authFile}, &out, io.Discard))
	require.Contains(t, out.String(), "4 users")
	require.Error(t, run(t.Context(), []string{"users", "--users", "4", "--out", authFile}, io.Discard, io.Discard), "it does not overwrite")

	srv, err := server.Open(t.Context(), server.Config{
		Addr: "127.0.0.1:0", DataDir: t.TempDir(), DemoWorkers: -1, AuthFile: authFile,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, srv.Close()) })

	for _, args := range [][]string{{"--client", clientRaw}, {"--client", clientConnect}, {"--http1", "--codec", "json", "--worker-conns", "2"}, {"--batch-workers", "2"}, {"--http1", "--codec", "json", "--batch-workers", "2"}} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			rep := runLoad(t, append([]string{"push", "--url", srv.URL(), "--users", "3", "--watchers-per-user", "2", "--auth-file", authFile,
				"--tasks", "5", "--rate", "100", "--duration", "1s"}, args...)...)

			require.Equal(t, 6, rep.Watchers)
			require.Equal(t, 6, rep.Connect.Connected)
			requireEvents(t, rep, 5, 100, time.Second)
			d := rep.Deliveries
			// Users 0 and 1 own two tasks each, user 2 one; each user has two watchers.
			require.Equal(t, 2*rep.Events.Published, d.Expected)
			require.Equal(t, d.Expected, d.Received+d.Coalesced)
		})
	}

	for args, want := range map[string]string{
		"--users 3":                                                 "--users needs --auth-file",
		"--users 3 --auth-file x --token y":                         "exclude each other",
		"--users 3 --auth-file x --watchers 5":                      "is not --users x --watchers-per-user",
		"poll --users 3 --auth-file x":                              "--users is for push",
		"--users 5 --auth-file " + authFile + " --url " + srv.URL(): "has 4 users",
	} {
		err := run(t.Context(), strings.Fields(args), io.Discard, io.Discard)
		require.ErrorContains(t, err, want, args)
	}
}

// TestRun_Resume: after a push of three users' tasks, resume has each user's clients resume
// their watches at once, and every one resumes and gets its events in order.
func TestRun_Resume(t *testing.T) {
	t.Parallel()
	authFile := filepath.Join(t.TempDir(), "auth.json")
	require.NoError(t, run(t.Context(), []string{"users", "--users", "3", "--out", authFile}, io.Discard, io.Discard))
	srv, err := server.Open(t.Context(), server.Config{
		Addr: "127.0.0.1:0", DataDir: t.TempDir(), DemoWorkers: -1, AuthFile: authFile,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, srv.Close()) })
	runLoad(t, "push", "--url", srv.URL(), "--users", "3", "--watchers-per-user", "1", "--auth-file", authFile,
		"--tasks", "6", "--rate", "100", "--duration", "1s")

	var out, notes bytes.Buffer
	pid := strconv.Itoa(os.Getpid())
	require.NoError(t, run(t.Context(), []string{"resume", "--url", srv.URL(), "--auth-file", authFile, "--server-pid", pid,
		"--resumes", "6", "--users", "3", "--concurrency", "2", "--back", "30", "--quiet", "200ms"}, &out, &notes), "%s\n%s", out.String(), notes.String())
	require.Contains(t, out.String(), "6 resumed, 0 started afresh, 0 failed")
	require.Contains(t, out.String(), "result             OK")
	require.Regexp(t, `; [1-9]\d* events`, out.String())
	require.Contains(t, out.String(), "a user's streams the same events")

	for args, want := range map[string]string{
		"resume":                                                     "--auth-file is required",
		"resume --auth-file x --resumes 0":                           "--resumes must be",
		"resume --auth-file x --concurrency 0":                       "--concurrency must be",
		"resume --auth-file x --url https://127.0.0.1:1":             "--url must be http://host:port",
		"resume --auth-file x --quiet 0s":                            "--quiet must be",
		"resume --auth-file x --resumes 5 --concurrency 1 --users 6": "--users must be",
		"resume --auth-file x --timeout 1s --quiet 2s":               "--timeout must be above --quiet",
	} {
		err := run(t.Context(), strings.Fields(args), io.Discard, io.Discard)
		require.ErrorContains(t, err, want, args)
	}
}

func TestRun_PushSlowWatchers(t *testing.T) {
	t.Parallel()
	for _, client := range clients {
		t.Run(client, func(t *testing.T) {
			t.Parallel()
			srv := setup(t)
			// At 400 events/s the slow watchers' 64 KiB HTTP/2 windows fill while they do not read.
			rep := runLoad(t, "--url", srv.URL(), "--watchers", "20", "--tasks", "3", "--rate", "400", "--duration", "2s",
				"--slow", "2", "--slow-for", "1s", "--client", client)

			requireEvents(t, rep, 3, 400, 2*time.Second)
			s := rep.Slow
			require.NotNil(t, s)
			require.Equal(t, 2, s.Watchers)
			require.InDelta(t, 1, s.StoppedSec, 0.5)
			require.True(t, s.SameFinal)
			require.Equal(t, 2*rep.Events.Published, s.Received+s.Coalesced)
			require.GreaterOrEqual(t, s.Latency.Max, 500.0, "the slow watchers got some events late")
			require.Equal(t, 18*rep.Events.Published, int64(rep.Latency.Count)+rep.Deliveries.Coalesced-s.Coalesced,
				"the others' latencies are reported apart")
		})
	}
}

func TestRun_PushIdle(t *testing.T) {
	t.Parallel()
	srv := setup(t)
	rep := runLoad(t, "--url", srv.URL(), "--watchers", "30", "--tasks", "0", "--duration", "100ms", "--streams-per-conn", "10")

	require.Equal(t, 30, rep.Connect.Connected)
	require.EqualValues(t, 3, rep.Connect.Connections)
	require.Nil(t, rep.Events)
	require.NotNil(t, rep.Server)
	require.Positive(t, rep.Server.RSSIdle)
}

func TestRun_Poll(t *testing.T) {
	t.Parallel()
	srv := setup(t)
	rep := runLoad(t, "poll", "--url", srv.URL(), "--watchers", "20", "--tasks", "3", "--rate", "200", "--duration", "2s",
		"--poll-interval", "200ms")

	requireEvents(t, rep, 3, 200, 2*time.Second)
	p := rep.Poll
	require.NotNil(t, p)
	require.Zero(t, p.Failed)
	// Every client polls every 200 ms from the start until its poll shows every task completed.
	require.InDelta(t, 20/0.2*p.WindowSec, float64(p.Requests), 20*2)
	require.Positive(t, p.BytesIn)
	require.Positive(t, p.BytesOut)
	// Every client saw every change or a later one, no sooner than it happened and no later
	// than one interval (plus the time a poll takes).
	require.Equal(t, 20*int(rep.Events.Published), p.Staleness.Count)
	require.Less(t, p.Staleness.Max, 200.0+500)
	require.Positive(t, p.Staleness.Mean)
}

func TestRun_RefusesOtherHosts(t *testing.T) {
	t.Parallel()
	for _, url := range []string{
		"http://example.com:8080",
		"http://10.0.0.1:8080",
		"http://0.0.0.0:8080",
		"http://[2001:db8::1]:8080",
		"http://localhost.example.com",
		"https://127.0.0.1:8080",
	} {
		t.Run(url, func(t *testing.T) {
			err := run(t.Context(), []string{"--url", url}, io.Discard, io.Discard)
			require.Error(t, err)
		})
	}
	err := run(t.Context(), []string{"--url", "http://example.com:8080"}, io.Discard, io.Discard)
	require.ErrorContains(t, err, "not loopback")
}

func TestRun_RefusesBadClients(t *testing.T) {
	t.Parallel()
	for args, want := range map[string]string{
		"--client grpc":               "--client must be raw or connect",
		"poll --client connect":       "--client is for push",
		"--codec xml":                 "--codec must be proto or json",
		"--client raw --codec json":   "--client raw over HTTP/2 decodes proto only",
		"--client raw --http1 --gzip": "does not decompress",
		"--worker-conns 5":            "--worker-conns is for --http1",
		"--batch-workers -1":          "--batch-workers must be",
		"--batch-delay 5ms":           "--batch-delay is for --batch-workers",
	} {
		t.Run(args, func(t *testing.T) {
			err := run(t.Context(), strings.Fields(args), io.Discard, io.Discard)
			require.ErrorContains(t, err, want)
		})
	}
}

func TestLoopbackURL(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"http://127.0.0.1:8080/": "http://127.0.0.1:8080",
		"http://localhost":       "http://localhost",
		"http://[::1]:9000":      "http://[::1]:9000",
		"http://127.1.2.3:1":     "http://127.1.2.3:1",
	} {
		got, _, err := loopbackURL(in)
		require.NoError(t, err, in)
		require.Equal(t, want, got)
	}
}

func TestPoller_Staleness(t *testing.T) {
	t.Parallel()
	t0 := time.Now()
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	running := taskhubv1.TaskState_TASK_STATE_RUNNING
	d := &driver{
		ids:  []string{"a"},
		done: []bool{true},
		changes: [][]change{{
			{at: at(0), state: taskhubv1.TaskState_TASK_STATE_QUEUED},
			{at: at(10), state: running},
			{at: at(20), state: running, progress: 10},
			{at: at(30), state: running, progress: 20},
			{at: at(40), state: taskhubv1.TaskState_TASK_STATE_COMPLETED, progress: 20},
		}},
	}
	p := &poller{seen: []sighting{
		{at: at(5), task: 0, state: taskhubv1.TaskState_TASK_STATE_QUEUED},
		{at: at(25), task: 0, state: running, progress: 10}, // shows changes 1 and 2
		{at: at(35), task: 0, state: running, progress: 20},
		{at: at(45), task: 0, state: taskhubv1.TaskState_TASK_STATE_COMPLETED, progress: 20},
	}}
	var pr problems
	got := p.staleness(d, nil, &pr)
	require.Zero(t, pr.n, pr.list)
	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }
	require.Equal(t, []time.Duration{ms(5), ms(15), ms(5), ms(5), ms(5)}, got)

	// A poll that goes back, or shows progress nobody reported, is a violation.
	p.seen = append(p.seen, sighting{at: at(50), task: 0, state: running, progress: 10},
		sighting{at: at(55), task: 0, state: running, progress: 15})
	p.staleness(d, nil, &pr)
	require.Equal(t, 2, pr.n)
}

// TestProc_Cores: the cores a process may run on, as a taskset leaves them, are the ones Go
// sees for this process.
func TestProc_Cores(t *testing.T) {
	require.Equal(t, runtime.NumCPU(), proc{os.Getpid()}.cores())
	require.Zero(t, proc{-1}.cores())
}

// TestReport_SaysWhenTheToolIsTheBottleneck: a run in which the tool used all its cores says so,
// and does not blame the server for a rate below what was asked.
func TestReport_SaysWhenTheToolIsTheBottleneck(t *testing.T) {
	rep := &report{Command: "push", Rate: 100, Watchers: 1000, Tasks: 10, OK: true, Bottleneck: "tool",
		Events:  &eventStats{Published: 618, Progress: 588, Lifecycle: 30, ProgressPerSec: 58},
		Client:  clientStats{CPUSec: 10.9, WindowSec: 11, Cores: 1, CPUShare: 0.99},
		Latency: &dist{Count: 1, P99: 350}}
	var out bytes.Buffer
	require.NoError(t, rep.writeText(&out))
	require.Contains(t, out.String(), "THIS TOOL: it used 99% of its 1 cores")
	require.Contains(t, out.String(), "this tool could not ask faster")
	require.NotContains(t, out.String(), "the server answered too slowly")
}
