// Package ts_test runs the TypeScript client package in Node against a real server: it builds
// the package with the pinned tsc, installs it into a temporary node_modules as an app would,
// and runs testdata/watch.mjs, a watcher written on watchTasks, across dropped connections, a
// restart of the server and a new event log.
//
// It needs node and the packages `make` installs in tools/npm (`npm ci --prefix tools/npm`):
// without them it fails rather than skip, so that CI cannot pass without running it.
// TASKHUB_SKIP_NODE=1 skips it.
package ts_test

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/taskhub/taskhub/internal/natstest"

	"connectrpc.com/connect"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"
	"github.com/taskhub/taskhub/gen/taskhub/v1/taskhubv1connect"
	"github.com/taskhub/taskhub/server"
)

func TestMain(m *testing.M) {
	// protoactor's dead-letter log throttle is a one-second timer goroutine that ends on its own.
	goleak.VerifyTestMain(m, natstest.LeakOptions()...)
}

// npmModules is where make installs the pinned npm packages.
const npmModules = "../../tools/npm/node_modules"

// install builds the package with tsc into dir/node_modules/@taskhub/client, beside links to
// the packages it and watch.mjs import, and copies watch.mjs into dir. It returns node's path.
func install(t *testing.T, dir string) string {
	t.Helper()
	if os.Getenv("TASKHUB_SKIP_NODE") != "" {
		t.Skip("TASKHUB_SKIP_NODE is set")
	}
	node, err := exec.LookPath("node")
	require.NoError(t, err, "node is not installed: the TypeScript client is tested with it (TASKHUB_SKIP_NODE=1 skips this test)")
	modules, err := filepath.Abs(npmModules)
	require.NoError(t, err)
	tsc := filepath.Join(modules, ".bin", "tsc")
	_, err = os.Stat(filepath.Join(modules, "@connectrpc", "connect-node"))
	require.NoError(t, err, "the npm packages are not installed: run make test, or npm ci --prefix tools/npm")

	pkg := filepath.Join(dir, "node_modules", "@taskhub", "client")
	build := exec.Command(tsc, "-p", ".", "--outDir", filepath.Join(pkg, "dist"))
	out, err := build.CombinedOutput()
	require.NoError(t, err, "tsc: %s", out)
	for _, f := range []struct{ from, to string }{
		{"package.json", filepath.Join(pkg, "package.json")},
		{filepath.Join("testdata", "watch.mjs"), filepath.Join(dir, "watch.mjs")},
	} {
		data, err := os.ReadFile(f.from)
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(f.to, data, 0o644))
	}
	for _, scope := range []string{"@bufbuild", "@connectrpc"} {
		require.NoError(t, os.Symlink(filepath.Join(modules, scope), filepath.Join(dir, "node_modules", scope)))
	}
	return node
}

// line is one line watch.mjs prints.
type line struct {
	Kind string `json:"kind"` // snapshot, event, heartbeat, retry, end

	Epoch     string   `json:"epoch"`
	Seq       uint64   `json:"seq,string"`
	Recovered bool     `json:"recovered"`
	More      bool     `json:"more"`
	Tasks     []string `json:"tasks"`

	Event    string  `json:"event"` // as the TypeScript enum names it: CREATED, ...
	Task     string  `json:"task"`
	Progress float64 `json:"progress"`

	Attempt int    `json:"attempt"`
	Code    string `json:"code"`
	Error   string `json:"error"`
}

// watcher is watch.mjs running.
type watcher struct {
	t     *testing.T
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan line
	all   []line // every line next has read
}

func startWatcher(t *testing.T, node, dir, url string) *watcher {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	cmd := exec.CommandContext(ctx, node, "watch.mjs", url)
	cmd.Dir = dir
	cmd.Stderr = testWriter{t}
	stdin, err := cmd.StdinPipe()
	require.NoError(t, err)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	w := &watcher{t: t, cmd: cmd, stdin: stdin, lines: make(chan line, 1000)}
	go func() {
		defer close(w.lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var l line
			if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
				t.Errorf("watch.mjs printed %q: %v", sc.Text(), err)
				continue
			}
			w.lines <- l
		}
	}()
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	return w
}

// next returns the next line of one of kinds, skipping others; it fails the test after 30 s.
func (w *watcher) next(kinds ...string) line {
	w.t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case l, ok := <-w.lines:
			require.True(w.t, ok, "watch.mjs exited; it printed %+v", w.all)
			w.all = append(w.all, l)
			if slices.Contains(kinds, l.Kind) {
				return l
			}
		case <-timeout:
			w.t.Fatalf("watch.mjs printed no %v line in 30 s; it printed %+v", kinds, w.all)
		}
	}
}

// event returns the next event, which must be of kind on task.
func (w *watcher) event(kind taskhubv1.EventKind, task string) line {
	w.t.Helper()
	l := w.next("event")
	require.Equal(w.t, strings.TrimPrefix(kind.String(), "EVENT_KIND_"), l.Event, "%+v", l)
	require.Equal(w.t, task, l.Task, "%+v", l)
	return l
}

// node is a taskhub server and clients that call it directly, not through the proxy.
type node struct {
	srv   *server.Server
	tasks taskhubv1connect.TaskServiceClient
	work  taskhubv1connect.WorkerServiceClient
}

func open(t *testing.T, dir string) *node {
	t.Helper()
	srv, err := server.Open(t.Context(), server.Config{
		Addr: "127.0.0.1:0", DataDir: dir, DemoWorkers: -1,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	require.NoError(t, err)
	t.Cleanup(func() { _ = srv.Close() })
	hc := &http.Client{Timeout: 30 * time.Second}
	t.Cleanup(hc.CloseIdleConnections)
	return &node{srv: srv, tasks: taskhubv1connect.NewTaskServiceClient(hc, srv.URL()), work: taskhubv1connect.NewWorkerServiceClient(hc, srv.URL())}
}

func (n *node) addr() string { return n.srv.URL()[len("http://"):] }

func (n *node) create(t *testing.T, prompt string) string {
	t.Helper()
	res, err := n.tasks.CreateTask(t.Context(), connect.NewRequest(&taskhubv1.CreateTaskRequest{Prompt: prompt, Mode: "ts-watch"}))
	require.NoError(t, err)
	return res.Msg.Task.Id
}

// TestWatchTasks_Node: a Node watcher on watchTasks sees a task's progress and end, and resumes
// across dropped connections: after a restart of the server, with what it missed and nothing
// twice; after the event log was recreated, from a fresh snapshot of the new epoch, and from
// that epoch the next time. Aborting ends it cleanly, at the last seq it saw.
func TestWatchTasks_Node(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	nodeBin := install(t, dir)

	data := t.TempDir()
	n := open(t, data)
	p := startProxy(t, n.addr())
	a := n.create(t, "a")
	w := startWatcher(t, nodeBin, dir, p.url())

	first := w.next("snapshot")
	require.False(t, first.Recovered)
	require.False(t, first.More)
	require.Equal(t, []string{a}, first.Tasks)
	epoch := first.Epoch

	claim, err := n.work.ClaimTask(t.Context(), connect.NewRequest(&taskhubv1.ClaimTaskRequest{WorkerId: "ts", Modes: []string{"ts-watch"}, WaitSeconds: 5}))
	require.NoError(t, err)
	require.Equal(t, a, claim.Msg.Task.GetId())
	lease := claim.Msg.LeaseToken
	w.event(taskhubv1.EventKind_EVENT_KIND_STARTED, a)
	_, err = n.work.ReportProgress(t.Context(), connect.NewRequest(&taskhubv1.ReportProgressRequest{TaskId: a, LeaseToken: lease, Progress: 10}))
	require.NoError(t, err)
	require.Equal(t, 10.0, w.event(taskhubv1.EventKind_EVENT_KIND_PROGRESS, a).Progress)

	t.Log("cut the connection, restart the server, and change the tasks meanwhile")
	p.cut()
	w.next("retry")
	require.NoError(t, n.srv.Close())
	n = open(t, data)
	_, err = n.work.ReportProgress(t.Context(), connect.NewRequest(&taskhubv1.ReportProgressRequest{TaskId: a, LeaseToken: lease, Progress: 50}))
	require.NoError(t, err)
	b := n.create(t, "b")
	_, err = n.work.CompleteTask(t.Context(), connect.NewRequest(&taskhubv1.CompleteTaskRequest{TaskId: a, LeaseToken: lease, Result: "done"}))
	require.NoError(t, err)
	p.restore(n.addr())

	resumed := w.next("snapshot")
	require.True(t, resumed.Recovered, "the watch resumed where it was: %+v", resumed)
	require.Equal(t, epoch, resumed.Epoch)
	require.Equal(t, 50.0, w.event(taskhubv1.EventKind_EVENT_KIND_PROGRESS, a).Progress)
	w.event(taskhubv1.EventKind_EVENT_KIND_CREATED, b)
	w.event(taskhubv1.EventKind_EVENT_KIND_COMPLETED, a)

	t.Log("cut the connection and start a server with a new event log")
	p.cut()
	w.next("retry")
	require.NoError(t, n.srv.Close())
	n = open(t, t.TempDir())
	c := n.create(t, "c")
	p.restore(n.addr())
	fresh := w.next("snapshot")
	require.False(t, fresh.Recovered, "a new event log: a fresh snapshot")
	require.NotEqual(t, epoch, fresh.Epoch)
	require.Equal(t, []string{c}, fresh.Tasks)
	epoch = fresh.Epoch

	t.Log("cut the connection once more: the watch resumes in the new epoch")
	p.cut()
	w.next("retry")
	d := n.create(t, "d")
	p.restore(n.addr())
	resumed = w.next("snapshot")
	require.True(t, resumed.Recovered, "the watch resumed in the new epoch: %+v", resumed)
	require.Equal(t, epoch, resumed.Epoch)
	last := w.event(taskhubv1.EventKind_EVENT_KIND_CREATED, d)

	t.Log("close its stdin: the watch is aborted and ends cleanly")
	require.NoError(t, w.stdin.Close())
	end := w.next("end")
	require.Equal(t, epoch, end.Epoch)
	require.Equal(t, last.Seq, end.Seq, "it ends at the last seq it saw")
	done := make(chan error, 1)
	go func() { done <- w.cmd.Wait() }()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("watch.mjs went on after its watch ended")
	}

	// Within an epoch, every event came once, in seq order.
	seen := map[uint64]bool{}
	var prev uint64
	for _, l := range w.all {
		switch l.Kind {
		case "snapshot":
			if !l.Recovered {
				seen, prev = map[uint64]bool{}, l.Seq
			}
		case "event":
			require.False(t, seen[l.Seq], "event %d came twice: %+v", l.Seq, w.all)
			require.Greater(t, l.Seq, prev, "events out of order: %+v", w.all)
			seen[l.Seq], prev = true, l.Seq
		}
	}
}

// proxy forwards TCP connections to a server. cut closes the connections and refuses new ones
// until restore, which may name another server.
type proxy struct {
	ln     net.Listener
	mu     sync.Mutex
	target string // "" while cut
	conns  map[net.Conn]bool
	wg     sync.WaitGroup
}

func startProxy(t *testing.T, target string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &proxy{ln: ln, target: target, conns: map[net.Conn]bool{}}
	p.wg.Add(1)
	go p.serve()
	t.Cleanup(func() {
		ln.Close()
		p.cut()
		p.wg.Wait()
	})
	return p
}

func (p *proxy) url() string { return "http://" + p.ln.Addr().String() }

func (p *proxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		target := p.target
		p.mu.Unlock()
		if target == "" {
			c.Close()
			continue
		}
		s, err := net.Dial("tcp", target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns[c], p.conns[s] = true, true
		p.mu.Unlock()
		p.wg.Add(2)
		go p.copy(s, c)
		go p.copy(c, s)
	}
}

func (p *proxy) copy(dst, src net.Conn) {
	defer p.wg.Done()
	_, _ = io.Copy(dst, src)
	dst.Close()
	src.Close()
}

func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.target = ""
	for c := range p.conns {
		c.Close()
	}
	clear(p.conns)
}

func (p *proxy) restore(target string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.target = target
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Logf("watch.mjs: %s", b)
	return len(b), nil
}
