package main

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/stretchr/testify/require"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"
	"github.com/taskhub/taskhub/gen/taskhub/v1/taskhubv1connect"
	"github.com/taskhub/taskhub/internal/freeport"

	"github.com/taskhub/taskhub"
	"github.com/taskhub/taskhub/eventlog"
)

// The hostile-client suite runs taskhub as a child process with 1024 file descriptors (ulimit
// -n 1024), built as it ships (without the race detector, which would make it the attack's
// bottleneck rather than what it measures), and attacks it the way cheap attacks broke it before: requests whose bodies never
// finish, over HTTP/1.1 and h2c, idle connections, floods of made-up modes, of tasks, of
// decompression bombs and of sign-ins. During each attack a legitimate user (alice, from
// another address) must get answers to GetTask and CreateTask within a second; after each, a
// task goes from create to complete with a watcher seeing it, and the server is ready. Every
// attack comes from an address of its own (127.0.0.x is this machine), as separate clients do.
const (
	hostileNoFile  = 1024
	hostileAlice   = "alice-token-0123456789"
	hostileBob     = "bob-token-0123456789ab"
	hostileCarol   = "carol-token-0123456789"
	hostileWorker  = "worker-token-0123456789"
	hostileTimeout = 2 * time.Second // --body-timeout, --header-timeout and --write-timeout of the child
	hostileQuota   = 50              // --max-active-tasks-per-user of the child
	hostileMaxRSS  = 1 << 30         // the child's resident memory at most, under any attack
)

type hostile struct {
	t      *testing.T
	c      *child
	host   string
	http   *http.Client
	tasks  taskhubv1connect.TaskServiceClient
	work   taskhubv1connect.WorkerServiceClient
	attack int // attacks that hold connections run this many holders: twice the child's limit of one address
}

// attack runs until its context ends and returns what it did, in a few words.
type attack struct {
	name string
	for_ time.Duration
	run  func(ctx context.Context, h *hostile) string
}

func TestHostile(t *testing.T) {
	if testing.Short() {
		t.Skip("attacks a child server for about two minutes")
	}
	dir := t.TempDir()
	authFile := filepath.Join(dir, "auth.json")
	require.NoError(t, os.WriteFile(authFile, []byte(`{"users":[{"name":"alice","token":"`+hostileAlice+`"},{"name":"bob","token":"`+hostileBob+`"},{"name":"carol","token":"`+hostileCarol+`"}],`+
		`"workers":[{"name":"gpu-1","token":"`+hostileWorker+`"}]}`), 0o600))
	bin := filepath.Join(dir, "taskhub")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Stderr = os.Stderr
	require.NoError(t, build.Run(), "build taskhub")
	addr := freeport.Addr(t)
	c := &child{t: t, url: "http://" + addr, bin: bin, nofile: hostileNoFile,
		args: fmt.Sprintf("serve --addr %s --data-dir %s --demo-workers 0 --log-level error --auth-file %s "+
			"--body-timeout %s --header-timeout %s --write-timeout %s --idle-timeout 30s --max-active-tasks-per-user %d",
			addr, filepath.Join(dir, "data"), authFile, hostileTimeout, hostileTimeout, hostileTimeout, hostileQuota)}
	c.start()
	t.Cleanup(c.kill)

	var rl syscall.Rlimit
	require.NoError(t, syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl))
	hc := &http.Client{Transport: &http.Transport{}}
	defer hc.CloseIdleConnections()
	h := &hostile{t: t, c: c, host: addr, http: hc,
		tasks:  taskhubv1connect.NewTaskServiceClient(hc, c.url),
		work:   taskhubv1connect.NewWorkerServiceClient(hc, c.url),
		attack: 800}
	require.Greater(t, int(rl.Cur)-500, h.attack, "this test process needs more file descriptors than its attacks hold")
	bomb()
	h.endToEnd(t, "before")

	for _, a := range []attack{
		{"slow bodies without a token (HTTP/1.1)", 5 * time.Second, slowBodies("127.0.0.2", "")},
		{"slow bodies with a user token (HTTP/1.1)", 6 * time.Second, slowBodies("127.0.0.3", hostileBob)},
		{"never-ending h2c streams without a token", 5 * time.Second, h2cStreams("127.0.0.4", "")},
		{"never-ending h2c streams with a user token", 6 * time.Second, h2cStreams("127.0.0.5", hostileBob)},
		{"idle connections", 6 * time.Second, idleConns("127.0.0.6")},
		{"made-up modes in claims", 5 * time.Second, modeFlood},
		{"made-up task ids in batched reports", 5 * time.Second, idFlood},
		{"a user's task flood", 5 * time.Second, quotaFlood},
		{"gzip bombs", 5 * time.Second, gzipBombs},
		{"sign-in brute force", 4 * time.Second, signInFlood("127.0.0.7")},
		// Longer than the rest: a stream is cut only once its buffers fill and then its write
		// waits --write-timeout, and a CI run with other packages' tests beside it reported too
		// slowly to see one cut within 15 s.
		{"watchers that never read", 25 * time.Second, stuckWatchers("127.0.0.8")},
	} {
		t.Run(a.name, func(t *testing.T) { h.under(t, a) })
	}

	// Nothing durable was made for the modes claims made up: only modes tasks used have a
	// queue consumer, after a restart too.
	start := time.Now()
	c.stop()
	t.Logf("stopped in %v", time.Since(start).Round(time.Millisecond))
	l, err := eventlog.Open(t.Context(), eventlog.Config{DataDir: filepath.Join(dir, "data")})
	require.NoError(t, err)
	defer l.Close()
	modes, err := l.QueueModes(t.Context())
	require.NoError(t, err)
	for _, m := range modes {
		require.NotContains(t, m, "made-up", "a mode only a claim named has a queue consumer")
	}
}

// under runs an attack while alice works, then checks that the server works end to end. Alice
// is a process of her own (legitimateUser), as a user is: in this one, her calls would wait
// behind the attack's hundreds of goroutines, and measure this process rather than the server.
func (h *hostile) under(t *testing.T, a attack) {
	task := h.create(t, "a task of alice's")
	ctx, cancel := context.WithTimeout(t.Context(), a.for_)
	defer cancel()
	result := make(chan string, 1)
	go func() { result <- a.run(ctx, h) }()

	alice := exec.Command(os.Args[0], "-test.run=^$")
	alice.Env = append(os.Environ(), childAliceEnv+"="+h.c.url, aliceTaskEnv+"="+task.Id, aliceForEnv+"="+a.for_.String())
	alice.Stderr = os.Stderr
	out, err := alice.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, alice.Start())
	peakFDs, peakRSS := 0, 0
	for ctx.Err() == nil {
		fds, rss := h.usage()
		peakFDs, peakRSS = max(peakFDs, fds), max(peakRSS, rss)
		time.Sleep(100 * time.Millisecond)
	}
	var saw legitimateResult
	require.NoError(t, json.NewDecoder(out).Decode(&saw), "alice's report")
	require.NoError(t, alice.Wait())
	what := <-result
	t.Logf("%s; alice made %d GetTask and %d CreateTask calls, the slowest answered in %v; the server held at most %d file descriptors (limit %d) and %d MiB",
		what, saw.Calls, saw.Calls, saw.Slowest.Round(time.Millisecond), peakFDs, hostileNoFile, peakRSS>>20)
	require.Empty(t, saw.Err, "alice's calls during the attack")
	require.Positive(t, saw.Calls)
	require.Less(t, peakFDs, hostileNoFile)
	require.Less(t, peakRSS, hostileMaxRSS, "the server's memory")
	_, err = h.tasks.CancelTask(t.Context(), bearer(connect.NewRequest(&taskhubv1.CancelTaskRequest{Id: task.Id}), hostileAlice))
	require.NoError(t, err)
	h.endToEnd(t, "after")
}

// The legitimate user's process: TestMain runs legitimateUser when childAliceEnv is set.
const (
	childAliceEnv = "TASKHUB_TEST_ALICE"      // the server's URL
	aliceTaskEnv  = "TASKHUB_TEST_ALICE_TASK" // a task of hers to get
	aliceForEnv   = "TASKHUB_TEST_ALICE_FOR"  // how long to go on
)

// legitimateResult is what alice's process reports on its stdout, as JSON.
type legitimateResult struct {
	Calls   int           // GetTask calls, and as many CreateTask calls
	Slowest time.Duration // the slowest of them
	Err     string        // the first call that failed or took over a second, if one did
}

// legitimateUser gets a task and creates one (and cancels it), in a loop, each call within a
// second, for as long as aliceForEnv says, then reports.
func legitimateUser(url string) int {
	hc := &http.Client{Transport: &http.Transport{}}
	tasks := taskhubv1connect.NewTaskServiceClient(hc, url)
	d, _ := time.ParseDuration(os.Getenv(aliceForEnv))
	end := time.Now().Add(d)
	var r legitimateResult
	timed := func(name string, call func(ctx context.Context) error) bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		start := time.Now()
		if err := call(ctx); err != nil {
			r.Err = fmt.Sprintf("%s after %v: %v", name, time.Since(start).Round(time.Millisecond), err)
			return false
		}
		r.Slowest = max(r.Slowest, time.Since(start))
		return true
	}
	for time.Now().Before(end) && r.Err == "" {
		var created string
		ok := timed("GetTask", func(ctx context.Context) error {
			_, err := tasks.GetTask(ctx, bearer(connect.NewRequest(&taskhubv1.GetTaskRequest{Id: os.Getenv(aliceTaskEnv)}), hostileAlice))
			return err
		}) && timed("CreateTask", func(ctx context.Context) error {
			res, err := tasks.CreateTask(ctx, bearer(connect.NewRequest(&taskhubv1.CreateTaskRequest{Prompt: "during", Mode: "legit"}), hostileAlice))
			if err == nil {
				created = res.Msg.Task.Id
			}
			return err
		})
		if !ok {
			break
		}
		r.Calls++
		if _, err := tasks.CancelTask(context.Background(), bearer(connect.NewRequest(&taskhubv1.CancelTaskRequest{Id: created}), hostileAlice)); err != nil {
			r.Err = "CancelTask: " + err.Error()
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := json.NewEncoder(os.Stdout).Encode(r); err != nil {
		return 1
	}
	return 0
}

// usage returns the child's open file descriptors and resident memory in bytes.
func (h *hostile) usage() (fds, rss int) {
	pid := h.c.cmd.Process.Pid
	if ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid)); err == nil {
		fds = len(ents)
	}
	if status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid)); err == nil {
		for _, line := range strings.Split(string(status), "\n") {
			if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
				kb, _ := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
				rss = kb << 10
			}
		}
	}
	return fds, rss
}

func (h *hostile) create(t *testing.T, prompt string) *taskhubv1.Task {
	t.Helper()
	res, err := h.tasks.CreateTask(t.Context(), bearer(connect.NewRequest(&taskhubv1.CreateTaskRequest{Prompt: prompt, Mode: "legit"}), hostileAlice))
	require.NoError(t, err)
	return res.Msg.Task
}

// endToEnd: a task goes from create through claim and progress to complete, a watcher sees all
// of it, and the server says it is ready.
func (h *hostile) endToEnd(t *testing.T, when string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	stream, err := h.tasks.WatchTasks(ctx, bearer(connect.NewRequest(&taskhubv1.WatchTasksRequest{}), hostileAlice))
	require.NoError(t, err)
	defer stream.Close()
	require.True(t, stream.Receive(), "no snapshot %s: %v", when, stream.Err())

	res, err := h.tasks.CreateTask(ctx, bearer(connect.NewRequest(&taskhubv1.CreateTaskRequest{Prompt: "end to end " + when, Mode: "e2e"}), hostileAlice))
	require.NoError(t, err)
	id := res.Msg.Task.Id
	claim, err := h.work.ClaimTask(ctx, bearer(connect.NewRequest(&taskhubv1.ClaimTaskRequest{WorkerId: "w", Modes: []string{"e2e"}, WaitSeconds: 10}), hostileWorker))
	require.NoError(t, err)
	require.Equal(t, id, claim.Msg.GetTask().GetId())
	_, err = h.work.ReportProgress(ctx, bearer(connect.NewRequest(&taskhubv1.ReportProgressRequest{TaskId: id, LeaseToken: claim.Msg.LeaseToken, Progress: 50}), hostileWorker))
	require.NoError(t, err)
	_, err = h.work.CompleteTask(ctx, bearer(connect.NewRequest(&taskhubv1.CompleteTaskRequest{TaskId: id, LeaseToken: claim.Msg.LeaseToken, Result: "done"}), hostileWorker))
	require.NoError(t, err)

	var kinds []taskhubv1.EventKind
	for len(kinds) < 4 && stream.Receive() {
		if e := stream.Msg().GetEvent(); e.GetTask().GetId() == id {
			kinds = append(kinds, e.Kind)
		}
	}
	require.Equal(t, []taskhubv1.EventKind{taskhubv1.EventKind_EVENT_KIND_CREATED, taskhubv1.EventKind_EVENT_KIND_STARTED,
		taskhubv1.EventKind_EVENT_KIND_PROGRESS, taskhubv1.EventKind_EVENT_KIND_COMPLETED}, kinds, "the watcher %s: %v", when, stream.Err())

	res2, err := h.http.Get(h.c.url + "/readyz")
	require.NoError(t, err)
	res2.Body.Close()
	require.Equal(t, http.StatusOK, res2.StatusCode, "ready %s", when)
}

func bearer[T any](req *connect.Request[T], token string) *connect.Request[T] {
	req.Header().Set("Authorization", "Bearer "+token)
	return req
}

func dialer(ip string) *net.Dialer {
	return &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 2 * time.Second}
}

// holders runs n goroutines of fn until ctx ends, each starting again when it returns, after
// backoff if it returned within half a second. An attack that holds connections waits before it
// tries again where the server refused one at once (closed it as it accepted it, or answered
// it): the attack is to hold connections, not to flood the server with new ones, which no limit
// per address stops (see the README's threat model).
func holders(ctx context.Context, n int, backoff time.Duration, fn func(ctx context.Context)) {
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			// Ramp up over half a second, as a crowd of clients would arrive.
			select {
			case <-ctx.Done():
			case <-time.After(time.Duration(i) * 500 * time.Millisecond / time.Duration(n)):
			}
			for ctx.Err() == nil {
				start := time.Now()
				fn(ctx)
				if backoff > 0 && time.Since(start) < 500*time.Millisecond {
					select {
					case <-ctx.Done():
					case <-time.After(backoff):
					}
				}
			}
		})
	}
	wg.Wait()
}

// raise makes m at least v.
func raise(m *atomic.Int64, v int64) {
	for old := m.Load(); v > old && !m.CompareAndSwap(old, v); old = m.Load() {
	}
}

// call is the context of one call an attack makes: not tied to the attack's end, so that a call
// under way when it ends finishes rather than failing in an unrelated way.
func call() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 10*time.Second)
}

// slowBodies opens as many connections as it can from ip, each sending a CreateTask's headers,
// a Content-Length of 1000 and then a byte every 200ms.
func slowBodies(ip, token string) func(ctx context.Context, h *hostile) string {
	return func(ctx context.Context, h *hostile) string {
		var dialed, refused, answered, cut atomic.Int64
		var held, longest atomic.Int64 // time the server kept the connections it answered or cut, in ms
		holders(ctx, h.attack, 200*time.Millisecond, func(ctx context.Context) {
			c, err := dialer(ip).DialContext(ctx, "tcp", h.host)
			if err != nil {
				return
			}
			defer c.Close()
			dialed.Add(1)
			auth := ""
			if token != "" {
				auth = "Authorization: Bearer " + token + "\r\n"
			}
			start := time.Now()
			if _, err := fmt.Fprintf(c, "POST /taskhub.v1.TaskService/CreateTask HTTP/1.1\r\nHost: %s\r\n%sContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{", h.host, auth); err != nil {
				refused.Add(1)
				return
			}
			got := make(chan error, 1)
			go func() {
				_, err := http.ReadResponse(bufio.NewReader(c), nil)
				got <- err
			}()
			for {
				select {
				case err := <-got:
					switch {
					case err == nil:
						answered.Add(1) // refused with an answer (unauthenticated, or the body ran out of time)
					case time.Since(start) < 100*time.Millisecond:
						refused.Add(1) // closed as it was accepted: over the connection limits
						return
					default:
						cut.Add(1)
					}
					ms := time.Since(start).Milliseconds()
					held.Add(ms)
					raise(&longest, ms)
					return
				case <-ctx.Done():
					return
				case <-time.After(200 * time.Millisecond):
					_, _ = c.Write([]byte(" "))
				}
			}
		})
		require.Less(h.t, longest.Load(), (hostileTimeout + 2*time.Second).Milliseconds(), "a slow body was kept past the body timeout")
		return fmt.Sprintf("%d connections: %d closed as accepted (over the limits), %d answered and closed after %d ms on average (at most %d ms), %d of them cut",
			dialed.Load(), refused.Load(), answered.Load()+cut.Load(), held.Load()/max(answered.Load()+cut.Load(), 1), longest.Load(), cut.Load())
	}
}

// h2cStreams opens 20 h2c connections from ip, each with 100 CreateTask streams whose bodies
// never end, and opens as many again a second after the server has ended them: it holds
// streams, rather than flood the server with requests (which per-address limits on requests
// under way do not stop: see the README's threat model).
func h2cStreams(ip, token string) func(ctx context.Context, h *hostile) string {
	return func(ctx context.Context, h *hostile) string {
		var conns, opened, ended atomic.Int64
		holders(ctx, 20, 200*time.Millisecond, func(ctx context.Context) {
			c, err := dialer(ip).DialContext(ctx, "tcp", h.host)
			if err != nil {
				return
			}
			defer c.Close()
			conns.Add(1)
			stop := context.AfterFunc(ctx, func() { c.Close() })
			defer stop()
			if _, err := c.Write([]byte(http2.ClientPreface)); err != nil {
				return
			}
			fr := http2.NewFramer(c, c)
			if fr.WriteSettings() != nil {
				return
			}
			var buf bytes.Buffer
			enc := hpack.NewEncoder(&buf)
			next, open := uint32(1), map[uint32]bool{}
			openBatch := func() bool {
				for range 100 {
					buf.Reset()
					for _, f := range [][2]string{{":method", "POST"}, {":scheme", "http"}, {":authority", h.host},
						{":path", "/taskhub.v1.TaskService/CreateTask"}, {"content-type", "application/json"}} {
						_ = enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
					}
					if token != "" {
						_ = enc.WriteField(hpack.HeaderField{Name: "authorization", Value: "Bearer " + token})
					}
					if fr.WriteHeaders(http2.HeadersFrameParam{StreamID: next, BlockFragment: buf.Bytes(), EndHeaders: true}) != nil ||
						fr.WriteData(next, false, []byte("{")) != nil {
						return false
					}
					open[next] = true
					next += 2
					opened.Add(1)
				}
				return true
			}
			if !openBatch() {
				return
			}
			for {
				if len(open) == 0 {
					select {
					case <-ctx.Done():
						return
					case <-time.After(time.Second):
					}
					if !openBatch() {
						return
					}
				}
				f, err := fr.ReadFrame()
				if err != nil {
					return
				}
				id := f.Header().StreamID
				switch f := f.(type) {
				case *http2.HeadersFrame:
					if f.StreamEnded() && open[id] {
						delete(open, id)
						ended.Add(1)
					}
				case *http2.DataFrame:
					if f.StreamEnded() && open[id] {
						delete(open, id)
						ended.Add(1)
					}
				case *http2.RSTStreamFrame:
					if open[id] {
						delete(open, id)
						ended.Add(1)
					}
				case *http2.SettingsFrame:
					if !f.IsAck() {
						_ = fr.WriteSettingsAck()
					}
				case *http2.PingFrame:
					if !f.IsAck() {
						_ = fr.WritePing(true, f.Data)
					}
				case *http2.GoAwayFrame:
					return
				}
			}
		})
		// Every stream but those opened in the attack's last moments was ended by the server.
		require.GreaterOrEqual(h.t, ended.Load(), opened.Load()-20*100, "streams the server never ended")
		return fmt.Sprintf("%d connections opened %d streams whose bodies never end; the server ended %d of them",
			conns.Load(), opened.Load(), ended.Load())
	}
}

// idleConns holds as many connections from ip as it can, sending nothing.
func idleConns(ip string) func(ctx context.Context, h *hostile) string {
	return func(ctx context.Context, h *hostile) string {
		var dialed, closedAtOnce, closedLater, longest atomic.Int64
		holders(ctx, h.attack, 200*time.Millisecond, func(ctx context.Context) {
			c, err := dialer(ip).DialContext(ctx, "tcp", h.host)
			if err != nil {
				return
			}
			defer c.Close()
			dialed.Add(1)
			start := time.Now()
			_ = c.SetReadDeadline(time.Now().Add(hostileTimeout + 3*time.Second))
			_, err = c.Read(make([]byte, 1))
			held := time.Since(start)
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				return // still open: not closed in time (counted by longest)
			}
			if held < 100*time.Millisecond {
				closedAtOnce.Add(1)
			} else {
				closedLater.Add(1)
			}
			raise(&longest, held.Milliseconds())
		})
		require.Less(h.t, time.Duration(longest.Load())*time.Millisecond, hostileTimeout+2*time.Second, "an idle connection was kept past the header timeout")
		return fmt.Sprintf("%d idle connections: %d closed as accepted (over the limits), %d closed by the header timeout (the longest after %d ms)",
			dialed.Load(), closedAtOnce.Load(), closedLater.Load(), longest.Load())
	}
}

// modeFlood claims with 16 made-up modes a call, then checks that a task of a new mode is
// still claimed.
func modeFlood(ctx context.Context, h *hostile) string {
	var calls, made atomic.Int64
	var n atomic.Int64
	holders(ctx, 20, 0, func(ctx context.Context) {
		i := n.Add(1)
		var modes []string
		for j := range 16 {
			modes = append(modes, fmt.Sprintf("made-up-%d-%d", i, j))
		}
		made.Add(16)
		wait := uint32(i % 3)
		cctx, cancel := call()
		defer cancel()
		_, err := h.work.ClaimTask(cctx, bearer(connect.NewRequest(&taskhubv1.ClaimTaskRequest{WorkerId: "flood", Modes: modes, WaitSeconds: wait}), hostileWorker))
		require.NoError(h.t, err)
		calls.Add(1)
	})
	// A task of a mode never seen before is claimed at once.
	res, err := h.tasks.CreateTask(context.Background(), bearer(connect.NewRequest(&taskhubv1.CreateTaskRequest{Prompt: "new mode", Mode: "fresh-mode"}), hostileAlice))
	require.NoError(h.t, err)
	claim, err := h.work.ClaimTask(context.Background(), bearer(connect.NewRequest(&taskhubv1.ClaimTaskRequest{WorkerId: "w", Modes: []string{"fresh-mode"}, WaitSeconds: 5}), hostileWorker))
	require.NoError(h.t, err)
	require.Equal(h.t, res.Msg.Task.Id, claim.Msg.GetTask().GetId(), "a task of a new mode was not claimed after the flood")
	_, err = h.work.CompleteTask(context.Background(), bearer(connect.NewRequest(&taskhubv1.CompleteTaskRequest{TaskId: res.Msg.Task.Id, LeaseToken: claim.Msg.LeaseToken}), hostileWorker))
	require.NoError(h.t, err)
	return fmt.Sprintf("%d claims named %d made-up modes; a task of a new mode was claimed after them", calls.Load(), made.Load())
}

// idFlood has a worker report progress on task ids nobody made, 1000 to a batch: a read of a
// task by id alone costs in proportion to the users the log holds, and the server makes at most
// 100 a second; the rest are refused unavailable.
func idFlood(ctx context.Context, h *hostile) string {
	var batches, notFound, refused atomic.Int64
	holders(ctx, 8, 0, func(ctx context.Context) {
		reports := make([]*taskhubv1.ReportProgressRequest, 1000)
		for i := range reports {
			reports[i] = &taskhubv1.ReportProgressRequest{TaskId: taskhub.NewTaskID(time.Now()), LeaseToken: "made-up", Progress: 1}
		}
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		res, err := h.work.BatchReportProgress(cctx, bearer(connect.NewRequest(&taskhubv1.BatchReportProgressRequest{Reports: reports}), hostileWorker))
		if err != nil {
			// Only its deadline, or the attack's end, may cut a batch short.
			if cctx.Err() == nil {
				h.t.Errorf("a batch of made-up task ids: %v", err)
			}
			return
		}
		batches.Add(1)
		for _, r := range res.Msg.Results {
			switch r.GetError().GetCode() {
			case "not_found":
				notFound.Add(1)
			case "unavailable":
				refused.Add(1)
			default:
				h.t.Errorf("a report on a made-up task answered %v", r)
			}
		}
	})
	return fmt.Sprintf("%d batches named %d made-up task ids: %d read and answered not_found, %d refused unavailable",
		batches.Load(), 1000*batches.Load(), notFound.Load(), refused.Load())
}

// quotaFlood has bob create tasks, with idempotency keys, until the limit refuses them; a retry
// of his first create still gets its task.
func quotaFlood(ctx context.Context, h *hostile) string {
	var ok, exhausted atomic.Int64
	var n atomic.Int64
	prompt := strings.Repeat("p", 16<<10)
	var first atomic.Value
	holders(ctx, 8, 0, func(ctx context.Context) {
		i := n.Add(1)
		cctx, cancel := call()
		defer cancel()
		res, err := h.tasks.CreateTask(cctx, bearer(connect.NewRequest(&taskhubv1.CreateTaskRequest{Prompt: prompt, Mode: "flood", IdempotencyKey: fmt.Sprint(i)}), hostileBob))
		switch {
		case err == nil:
			ok.Add(1)
			if i == 1 {
				first.Store(res.Msg.Task.Id)
			}
		case connect.CodeOf(err) == connect.CodeResourceExhausted:
			exhausted.Add(1)
		default:
			require.NoError(h.t, err)
		}
	})
	require.Equal(h.t, int64(hostileQuota), ok.Load(), "bob's active tasks")
	res, err := h.tasks.CreateTask(context.Background(), bearer(connect.NewRequest(&taskhubv1.CreateTaskRequest{Prompt: prompt, Mode: "flood", IdempotencyKey: "1"}), hostileBob))
	require.NoError(h.t, err, "a retry of a create that succeeded")
	require.Equal(h.t, first.Load(), res.Msg.Task.Id)
	return fmt.Sprintf("bob's creates: %d created, %d refused (resource_exhausted)", ok.Load(), exhausted.Load())
}

// bomb is 200 MiB of zeros, gzipped into 200 KiB.
var bomb = sync.OnceValue(func() []byte {
	var zipped bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&zipped, gzip.BestCompression)
	_, _ = io.CopyN(zw, zeroReader{}, 200<<20)
	_ = zw.Close()
	return zipped.Bytes()
})

// gzipBombs sends CreateTasks whose bodies inflate to 200 MiB each.
func gzipBombs(ctx context.Context, h *hostile) string {
	bomb := bomb()
	var sent, refused atomic.Int64
	cpuBefore := h.cpu()
	holders(ctx, 4, 0, func(context.Context) {
		cctx, cancel := call()
		defer cancel()
		req, _ := http.NewRequestWithContext(cctx, http.MethodPost, h.c.url+"/taskhub.v1.TaskService/CreateTask", bytes.NewReader(bomb))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Content-Encoding", "gzip")
		req.Header.Set("Authorization", "Bearer "+hostileBob)
		res, err := h.http.Do(req)
		if err != nil {
			return
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		sent.Add(1)
		if strings.Contains(string(body), "resource_exhausted") && strings.Contains(string(body), "inflates to more than") {
			refused.Add(1)
		}
	})
	require.Equal(h.t, sent.Load(), refused.Load(), "every bomb is refused as it passes the size limit")
	return fmt.Sprintf("%d bombs of %d KiB (200 MiB inflated), all refused; server CPU %.1f ms a bomb",
		sent.Load(), len(bomb)>>10, float64(h.cpu()-cpuBefore)/float64(max(sent.Load(), 1))/float64(time.Millisecond))
}

// cpu is the child's CPU time so far.
func (h *hostile) cpu() time.Duration {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", h.c.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	fields := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+2:]))
	utime, _ := strconv.Atoi(fields[11])
	stime, _ := strconv.Atoi(fields[12])
	return time.Duration(utime+stime) * 10 * time.Millisecond // USER_HZ is 100 on Linux
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// signInFlood tries tokens at /signin from ip; alice signs in from her own address meanwhile.
func signInFlood(ip string) func(ctx context.Context, h *hostile) string {
	return func(ctx context.Context, h *hostile) string {
		client := &http.Client{Transport: &http.Transport{DialContext: dialer(ip).DialContext},
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
		defer client.CloseIdleConnections()
		statuses := map[int]int{}
		var mu sync.Mutex
		var n atomic.Int64
		holders(ctx, 8, 0, func(ctx context.Context) {
			i := n.Add(1)
			res, err := client.PostForm(h.c.url+"/signin", url.Values{"token": {fmt.Sprintf("guess-%020d", i)}})
			if err != nil {
				return
			}
			res.Body.Close()
			mu.Lock()
			statuses[res.StatusCode]++
			mu.Unlock()
		})
		noFollow := &http.Client{Transport: h.http.Transport, CheckRedirect: client.CheckRedirect}
		res, err := noFollow.PostForm(h.c.url+"/signin", url.Values{"token": {hostileAlice}})
		require.NoError(h.t, err)
		res.Body.Close()
		require.Equal(h.t, http.StatusSeeOther, res.StatusCode, "alice signs in from her address")
		require.LessOrEqual(h.t, statuses[http.StatusUnauthorized], 10+int(4*time.Second/(6*time.Second))+1, "guesses let through")
		return fmt.Sprintf("%d guesses: %d tried (401), %d refused (429)", n.Load(), statuses[http.StatusUnauthorized], statuses[http.StatusTooManyRequests])
	}
}

// stuckWatchers opens as many WatchTasks streams as it can from ip, as carol, over HTTP/1.1
// connections whose sockets take 4 KiB and which never read, while a worker reports progress
// on a task of carol's with a message of 1000 bytes as fast as it can: every stream's socket
// buffers fill, and the server's writes to it wait. At the end each holder reads what it can:
// the server had closed its connection (--write-timeout), or it is still open.
func stuckWatchers(ip string) func(ctx context.Context, h *hostile) string {
	return func(ctx context.Context, h *hostile) string {
		var opened, refused, cut, open, reports atomic.Int64
		cctx, cancel := call()
		defer cancel()
		res, err := h.tasks.CreateTask(cctx, bearer(connect.NewRequest(&taskhubv1.CreateTaskRequest{Prompt: "watched by the stuck", Mode: "stuck"}), hostileCarol))
		if err != nil {
			h.t.Errorf("carol's task: %v", err)
			return "no task"
		}
		claim, err := h.work.ClaimTask(cctx, bearer(connect.NewRequest(&taskhubv1.ClaimTaskRequest{WorkerId: "w", Modes: []string{"stuck"}, WaitSeconds: 10}), hostileWorker))
		if err != nil || claim.Msg.GetTask().GetId() != res.Msg.Task.Id {
			h.t.Errorf("the claim of carol's task: %v", err)
			return "no claim"
		}
		message := strings.Repeat("m", 1000)
		var wg sync.WaitGroup
		wg.Go(func() {
			for p := 0; ctx.Err() == nil; p++ {
				cctx, cancel := call()
				_, err := h.work.ReportProgress(cctx, bearer(connect.NewRequest(&taskhubv1.ReportProgressRequest{
					TaskId: res.Msg.Task.Id, LeaseToken: claim.Msg.LeaseToken, Progress: float64(p % 100), Message: message}), hostileWorker))
				cancel()
				if err != nil {
					h.t.Errorf("a report on carol's task: %v", err)
					return
				}
				reports.Add(1)
			}
		})
		small := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 2 * time.Second,
			Control: func(_, _ string, c syscall.RawConn) error {
				return c.Control(func(fd uintptr) { _ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
			}}
		holders(ctx, h.attack, 200*time.Millisecond, func(ctx context.Context) {
			c, err := small.DialContext(ctx, "tcp", h.host)
			if err != nil {
				return
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(2 * time.Second))
			if _, err := fmt.Fprintf(c, "POST /taskhub.v1.TaskService/WatchTasks HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n"+
				"Content-Type: application/connect+json\r\nContent-Length: 7\r\n\r\n\x00\x00\x00\x00\x02{}", h.host, hostileCarol); err != nil {
				refused.Add(1)
				return
			}
			r := bufio.NewReaderSize(c, 512)
			if res, err := http.ReadResponse(r, nil); err != nil || res.StatusCode != http.StatusOK {
				refused.Add(1) // closed as accepted, over the connection limits, or answered an error
				return
			}
			opened.Add(1)
			<-ctx.Done() // read nothing more while the attack lasts
			_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
			if _, err := io.Copy(io.Discard, r); err != nil {
				if ne, ok := err.(net.Error); ok && ne.Timeout() {
					open.Add(1) // the server still writes to it
					return
				}
			}
			cut.Add(1)
		})
		wg.Wait()
		if cut.Load() == 0 {
			h.t.Errorf("the server closed none of the %d connections that read nothing (%d reports, %d still open)", opened.Load(), reports.Load(), open.Load())
		}
		return fmt.Sprintf("%d reports of 1000 bytes; %d streams opened and never read (as many at once as the address may hold connections), %d connections refused at once; "+
			"by the end the server had closed %d of those streams' connections, the rest were younger or their buffers not yet full (%d)",
			reports.Load(), opened.Load(), refused.Load(), cut.Load(), open.Load())
	}
}
