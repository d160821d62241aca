package browser_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/stretchr/testify/require"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"

	"github.com/taskhub/taskhub/eventlog"
	"github.com/taskhub/taskhub/internal/freeport"
	"github.com/taskhub/taskhub/server"
)

// balancer is a round-robin load balancer without stickiness in front of the nodes of a
// cluster: each request goes to the next node its health check has not found down. A dead
// node's turn answers 502 until then.
type balancer struct {
	mu    sync.Mutex
	nodes []*url.URL
	down  []bool
	next  int
	watch atomic.Int64 // the node the last WatchTasks stream went to
}

func (b *balancer) pick() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	for range b.nodes {
		i := b.next % len(b.nodes)
		b.next++
		if !b.down[i] {
			return i
		}
	}
	return 0
}

func (b *balancer) markDown(i int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.down[i] = true
}

func (b *balancer) handler() http.Handler {
	return &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			i := b.pick()
			if strings.HasSuffix(r.In.URL.Path, "/WatchTasks") {
				b.watch.Store(int64(i))
			}
			r.SetURL(b.nodes[i])
		},
		FlushInterval: -1, // streams go through as they are written
		ErrorLog:      log.New(io.Discard, "", 0),
		ErrorHandler: func(w http.ResponseWriter, _ *http.Request, _ error) {
			w.WriteHeader(http.StatusBadGateway)
		},
	}
}

// nodeEnv, in the environment of a child process of this test binary, holds the JSON of the
// server.Config it serves (see TestMain): a cluster node in a process of its own, which a test
// can kill.
const nodeEnv = "TASKHUB_BROWSER_NODE"

// runNode serves the config in JSON until SIGTERM, as a cluster node started by startNodes.
func runNode(cfgJSON string) int {
	var cfg server.Config
	if err := json.Unmarshal([]byte(cfgJSON), &cfg); err != nil {
		fmt.Fprintln(os.Stderr, "node config:", err)
		return 2
	}
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	srv, err := server.Open(ctx, cfg)
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, os.Interrupt)
	<-stop
	_ = srv.Close()
	return 0
}

// node is a taskhub server in a child process.
type node struct {
	url string
	cmd *exec.Cmd
}

// startNodes starts n taskhub servers as child processes, clustered on loopback, each with its
// own data dir and demo workers off, and waits until every one serves. Their logs go to a file
// that a failure to start prints.
func startNodes(t *testing.T, n int) []*node {
	t.Helper()
	peers := make([]string, n)
	for i := range peers {
		peers[i] = freeport.Addr(t)
	}
	nodes := make([]*node, n)
	logs := make([]string, n)
	for i := range nodes {
		cfg := testConfig(t, server.Config{Cluster: eventlog.Cluster{Addr: peers[i], Peers: peers}})
		cfg.Addr, cfg.Logger = freeport.Addr(t), nil
		data, err := json.Marshal(cfg)
		require.NoError(t, err)
		logs[i] = filepath.Join(t.TempDir(), "node.log")
		out, err := os.Create(logs[i])
		require.NoError(t, err)
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), nodeEnv+"="+string(data))
		cmd.Stdout, cmd.Stderr = out, out
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // dies with the test
		require.NoError(t, cmd.Start())
		out.Close()
		nodes[i] = &node{url: "http://" + cfg.Addr, cmd: cmd}
		t.Cleanup(func() {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			_ = cmd.Wait()
		})
	}
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i, nd := range nodes {
		wg.Go(func() {
			deadline := time.Now().Add(time.Minute)
			hc := &http.Client{Timeout: 2 * time.Second} // a node listens before it serves
			for {
				res, err := hc.Get(nd.url + "/healthz")
				if err == nil {
					res.Body.Close()
					if res.StatusCode == http.StatusOK {
						return
					}
				}
				if time.Now().After(deadline) {
					log, _ := os.ReadFile(logs[i])
					errs[i] = fmt.Errorf("node %d did not come up: %v; its log:\n%s", i+1, err, log)
					return
				}
				time.Sleep(50 * time.Millisecond)
			}
		})
	}
	wg.Wait()
	require.NoError(t, errors.Join(errs...))
	return nodes
}

// TestBrowser_ClusterBehindALoadBalancer: the page, served by three nodes behind a round-robin
// balancer, stays live when the node holding its stream is killed (SIGKILL: its NATS server
// dies with it): it resumes through the balancer on another node and misses nothing, while a
// worker's calls land on any node.
func TestBrowser_ClusterBehindALoadBalancer(t *testing.T) {
	path := needChromium(t)
	nodes := startNodes(t, 3)
	b := &balancer{down: make([]bool, len(nodes))}
	for _, n := range nodes {
		u, err := url.Parse(n.url)
		require.NoError(t, err)
		b.nodes = append(b.nodes, u)
	}
	lb := httptest.NewServer(b.handler())
	t.Cleanup(lb.Close)
	e := &env{t: t}
	e.connect(lb.URL)
	t.Cleanup(e.http.CloseIdleConnections)
	e.browser = startBrowser(t, path)

	p := e.tab()
	p.open(e.url("/"))
	p.waitLive()

	// Created as curl would, through the balancer; claimed and reported on whichever nodes.
	id, claim := e.renderAt30(p)

	// The node holding the page's stream is killed. The balancer's health check notices a
	// second later; until then that node's turns answer 502.
	victim := int(b.watch.Load())
	require.NoError(t, nodes[victim].cmd.Process.Kill())
	_ = nodes[victim].cmd.Wait()
	t.Logf("node %d, which held the page's stream, was killed", victim+1)
	time.AfterFunc(time.Second, func() { b.markDown(victim) })

	// The worker carries on through the balancer; its lease holds on the other nodes. A call may
	// fail while the event log elects a new leader, or on the dead node's turn: a worker
	// retries those.
	report := func(what string, call func() error) {
		require.Eventually(t, func() bool {
			err := call()
			if err != nil && connect.CodeOf(err) != connect.CodeUnavailable && connect.CodeOf(err) != connect.CodeDeadlineExceeded {
				require.NoError(t, err, what)
			}
			return err == nil
		}, 30*time.Second, 100*time.Millisecond, what)
	}
	report("progress 60", func() error {
		_, err := e.work.ReportProgress(t.Context(), connect.NewRequest(&taskhubv1.ReportProgressRequest{TaskId: id, LeaseToken: claim.LeaseToken, Progress: 60, Message: "frame 60 of 100"}))
		return err
	})
	report("complete", func() error {
		_, err := e.work.CompleteTask(t.Context(), connect.NewRequest(&taskhubv1.CompleteTaskRequest{TaskId: id, LeaseToken: claim.LeaseToken, Result: "logo.svg, 12 KB"}))
		return err
	})

	c := p.waitCard(id, completed)
	p.waitLive()
	require.Equal(t, "100", c.Progress)
	require.Equal(t, []float64{0, 30, 60, 100}, p.seen(id), "nothing missed, nothing out of order")
	require.NotEqual(t, int64(victim), b.watch.Load(), "the page resumed on another node")
	p.waitToast("nothing was missed", "the recovery toast")
	time.Sleep(500 * time.Millisecond) // the progress bar's transition
	p.screenshot("cluster-node-lost")
}
