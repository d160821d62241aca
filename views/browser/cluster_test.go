package browser_test

import (
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/stretchr/testify/require"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"

	"github.com/taskhub/taskhub/eventlog"
	"github.com/taskhub/taskhub/internal/freeport"
	"github.com/taskhub/taskhub/internal/servertest"
	"github.com/taskhub/taskhub/server"
)

// balancer is a round-robin load balancer without stickiness in front of the nodes of a
// cluster: each request goes to the next node it has not been told is down.
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
	}
}

// startCluster starts n taskhub servers in this process, clustered on loopback, each with its
// own data dir and demo workers off, and waits until every one serves.
func startCluster(t *testing.T, n int) []*server.Server {
	t.Helper()
	peers := make([]string, n)
	for i := range peers {
		peers[i] = freeport.Addr(t)
	}
	cfgs := make([]server.Config, n)
	for i := range n {
		cfgs[i] = testConfig(t, server.Config{Cluster: eventlog.Cluster{Addr: peers[i], Peers: peers}})
	}
	return servertest.OpenAll(t, cfgs)
}

// TestBrowser_ClusterBehindALoadBalancer: the page, served by three nodes behind a round-robin
// balancer, stays live when the node holding its stream goes away: it resumes through the
// balancer on another node and misses nothing, while a worker's calls land on any node.
func TestBrowser_ClusterBehindALoadBalancer(t *testing.T) {
	path := needChromium(t)
	nodes := startCluster(t, 3)
	b := &balancer{down: make([]bool, len(nodes))}
	for _, n := range nodes {
		u, err := url.Parse(n.URL())
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

	// The node holding the page's stream goes away (the balancer's health check notices).
	victim := int(b.watch.Load())
	b.markDown(victim)
	require.NoError(t, nodes[victim].Close())
	t.Logf("node %d, which held the page's stream, stopped", victim+1)

	// The worker carries on through the balancer; its lease holds on the other nodes. A call may
	// fail while the event log elects a new leader: a worker retries those.
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
	time.Sleep(500 * time.Millisecond) // the progress bar's transition
	p.screenshot("cluster-node-lost")
}
