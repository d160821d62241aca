package eventlog_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"

	"github.com/taskhub/taskhub/eventlog"
	"github.com/taskhub/taskhub/internal/freeport"
	"github.com/taskhub/taskhub/internal/natstest"
	"github.com/taskhub/taskhub/internal/testcert"
)

// openCluster starts a cluster of n embedded nodes on loopback, each with its own data
// directory, and waits until every node has the streams.
func openCluster(t *testing.T, n int, opts ...func(*eventlog.Config)) ([]*eventlog.Log, []eventlog.Config) {
	t.Helper()
	peers := make([]string, n)
	for i := range peers {
		peers[i] = freeport.Addr(t)
	}
	cfgs := make([]eventlog.Config, n)
	logs := make([]*eventlog.Log, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		cfgs[i] = eventlog.Config{DataDir: t.TempDir(), AckWait: time.Second, ProbeInterval: time.Hour,
			Timeout: 2 * time.Second, Cluster: eventlog.Cluster{Addr: peers[i], Peers: peers}}
		for _, o := range opts {
			o(&cfgs[i])
		}
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
			defer cancel()
			logs[i], errs[i] = eventlog.Open(ctx, cfgs[i])
		})
	}
	wg.Wait()
	t.Cleanup(func() {
		for _, l := range logs {
			if l != nil {
				l.Close()
			}
		}
	})
	require.NoError(t, errors.Join(errs...))
	return logs, cfgs
}

// TestCluster_ReplicatesAndOutlivesANode: three embedded nodes form one cluster with one epoch;
// a write on any node is read on every other at once (reads go to the stream's leader); when
// the node of the stream's leader stops, the other two elect a new one and take writes again,
// and the stopped node catches up when it comes back.
func TestCluster_ReplicatesAndOutlivesANode(t *testing.T) {
	t.Parallel()
	logs, cfgs := openCluster(t, 3)
	ctx := t.Context()
	for _, l := range logs[1:] {
		require.Equal(t, logs[0].Epoch(), l.Epoch(), "one epoch for the cluster")
	}

	last := map[string]uint64{}
	appendOn := func(l *eventlog.Log, id string, kind taskhubv1.EventKind) error {
		seq, err := l.Append(ctx, record(id, kind, taskhubv1.TaskState_TASK_STATE_QUEUED), last[id])
		if err == nil {
			last[id] = seq
		}
		return err
	}
	for i, l := range logs {
		id := fmt.Sprintf("T%d", i)
		require.NoError(t, appendOn(l, id, taskhubv1.EventKind_EVENT_KIND_CREATED))
		for _, other := range logs {
			e, err := other.Last(ctx, "alice", id)
			require.NoError(t, err, "a write on one node is read on every node")
			require.Equal(t, last[id], e.Seq)
		}
	}
	// A stale writer on another node is fenced, whichever node it writes through.
	_, err := logs[2].Append(ctx, record("T0", taskhubv1.EventKind_EVENT_KIND_CREATED, taskhubv1.TaskState_TASK_STATE_QUEUED), 0)
	require.ErrorIs(t, err, eventlog.ErrConflict)

	name := logs[0].Leaders(ctx)[eventlog.EventStream]
	leader := slices.IndexFunc(logs, func(l *eventlog.Log) bool { return l.Node() == name })
	require.NotEqual(t, -1, leader, "the leader is one of the nodes")
	logs[leader].Close()
	rest := append(append([]*eventlog.Log{}, logs[:leader]...), logs[leader+1:]...)

	start := time.Now()
	require.Eventually(t, func() bool {
		return appendOn(rest[0], "T0", taskhubv1.EventKind_EVENT_KIND_PROGRESS) == nil
	}, 30*time.Second, 50*time.Millisecond, "the two nodes left take writes")
	t.Logf("writes resumed %v after the leader's node stopped", time.Since(start).Round(time.Millisecond))
	require.NoError(t, appendOn(rest[1], "T1", taskhubv1.EventKind_EVENT_KIND_PROGRESS))

	back, err := eventlog.Open(ctx, cfgs[leader])
	require.NoError(t, err)
	t.Cleanup(func() { back.Close() })
	require.Eventually(t, func() bool {
		e, err := back.Last(ctx, "alice", "T1")
		return err == nil && e.Seq == last["T1"]
	}, 30*time.Second, 50*time.Millisecond, "the node that came back has the writes it missed")
}

// TestCluster_Config: what a cluster needs is checked before anything starts.
func TestCluster_Config(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		cluster eventlog.Cluster
		reps    int
		want    string
	}{
		{"no peers", eventlog.Cluster{Addr: "127.0.0.1:6222"}, 0, "peers"},
		{"not host:port", eventlog.Cluster{Addr: "127.0.0.1", Peers: []string{"127.0.0.1:6222"}}, 0, "host:port"},
		{"bad port", eventlog.Cluster{Addr: "127.0.0.1:0", Peers: []string{"127.0.0.1:6222"}}, 0, "port"},
		{"routes beyond loopback without a secret", eventlog.Cluster{Addr: "127.0.0.1:6222", Peers: []string{"10.0.0.2:6222"}}, 0, "secret"},
		{"a short secret", eventlog.Cluster{Addr: "10.0.0.1:6222", Peers: []string{"10.0.0.2:6222"}, Secret: "hunter2"}, 0, "at least 16"},
		{"more replicas than nodes", eventlog.Cluster{Addr: "127.0.0.1:6222", Peers: []string{"127.0.0.1:6222", "127.0.0.1:6223"}}, 3, "3 replicas need as many nodes"},
		{"a bad node name", eventlog.Cluster{Addr: "127.0.0.1:6222", Peers: []string{"127.0.0.1:6223"}, Name: "a b"}, 0, "node name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := eventlog.Open(t.Context(), eventlog.Config{DataDir: t.TempDir(), Cluster: tc.cluster, Replicas: tc.reps})
			require.ErrorContains(t, err, tc.want)
		})
	}
}

// TestCluster_PortTaken: a node whose cluster port another process holds fails at once, and
// says why, rather than waiting for a server that will never start.
func TestCluster_PortTaken(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	addr := ln.Addr().String()
	start := time.Now()
	_, err = eventlog.Open(t.Context(), eventlog.Config{DataDir: t.TempDir(), Logger: slog.New(slog.DiscardHandler),
		Cluster: eventlog.Cluster{Addr: addr, Peers: []string{addr, freeport.Addr(t)}}})
	require.ErrorContains(t, err, "address already in use")
	t.Logf("failed after %v", time.Since(start))
}

// TestCluster_RefusesASingleNodesDataDir: a single node's data dir given to a node of a cluster
// is refused, not replaced by the cluster's empty log; the single node still has its tasks.
func TestCluster_RefusesASingleNodesDataDir(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	l := open(t, dir)
	seq, err := l.Append(t.Context(), record("T1", taskhubv1.EventKind_EVENT_KIND_CREATED, taskhubv1.TaskState_TASK_STATE_QUEUED), 0)
	require.NoError(t, err)
	l.Close()

	peers := []string{freeport.Addr(t), freeport.Addr(t), freeport.Addr(t)}
	_, err = eventlog.Open(t.Context(), eventlog.Config{DataDir: dir, Cluster: eventlog.Cluster{Addr: peers[0], Peers: peers}})
	require.ErrorContains(t, err, "holds the event log of a single node")

	l = open(t, dir)
	defer l.Close()
	e, err := l.Last(t.Context(), "alice", "T1")
	require.NoError(t, err)
	require.Equal(t, seq, e.Seq)
}

// TestCluster_TLSRoutes: with TLS, the nodes' routes require it (a plain connection to a
// route port is told so) and the cluster replicates over them; without a secret, off loopback.
func TestCluster_TLSRoutes(t *testing.T) {
	t.Parallel()
	certs := testcert.Write(t)
	logs, cfgs := openCluster(t, 3, func(c *eventlog.Config) {
		c.Cluster.TLSCert, c.Cluster.TLSKey, c.Cluster.TLSCA = certs.Cert, certs.Key, certs.CA
	})
	seq, err := logs[0].Append(t.Context(), record("T1", taskhubv1.EventKind_EVENT_KIND_CREATED, taskhubv1.TaskState_TASK_STATE_QUEUED), 0)
	require.NoError(t, err)
	e, err := logs[2].Last(t.Context(), "alice", "T1")
	require.NoError(t, err)
	require.Equal(t, seq, e.Seq)

	// A route port speaks TLS only, and refuses a peer without a certificate of the authority.
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", cfgs[1].Cluster.Addr, &tls.Config{RootCAs: certs.Pool})
	if err == nil {
		defer conn.Close()
		require.NoError(t, conn.SetReadDeadline(time.Now().Add(5*time.Second)))
		_, err = conn.Read(make([]byte, 1))
		var timeout net.Error
		require.False(t, errors.As(err, &timeout) && timeout.Timeout(), "a route without a client certificate was left open")
	}
	require.ErrorContains(t, err, "certificate", "a route without a client certificate is refused")

	// Off loopback, TLS stands in for the secret; half of it does not.
	_, err = eventlog.Open(t.Context(), eventlog.Config{DataDir: t.TempDir(), Cluster: eventlog.Cluster{
		Addr: "10.0.0.1:6222", Peers: []string{"10.0.0.2:6222"}, TLSCert: certs.Cert}})
	require.ErrorContains(t, err, "cluster TLS needs")
}

// TestCluster_WritesThroughLeaderChanges: on an external 3-node NATS cluster whose streams'
// leaders step down again and again, every append (creates included, with their live-index
// mark) is answered OK within the caller's 10 s, and each lands once: a request the old leader
// dropped unanswered is sent again, and the fence keeps a repeat from writing twice.
func TestCluster_WritesThroughLeaderChanges(t *testing.T) {
	t.Parallel()
	nss, urls := natstest.Cluster(t, 3)
	ctx := t.Context()
	open, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	l, err := eventlog.Open(open, eventlog.Config{URL: urls[0], Replicas: 3, ProbeInterval: time.Hour})
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })

	stop := make(chan struct{})
	var wg sync.WaitGroup
	stepdowns := 0
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(300 * time.Millisecond):
			}
			for _, ns := range nss {
				for _, stream := range []string{eventlog.EventStream, eventlog.MetaStream} {
					if ns.JetStreamIsStreamLeader("$G", stream) && ns.JetStreamStepdownStream("$G", stream) == nil {
						stepdowns++
					}
				}
			}
		}
	})
	last := map[string]uint64{}
	appends := 0
	for i, end := 0, time.Now().Add(6*time.Second); time.Now().Before(end); i++ {
		id := fmt.Sprintf("T%d", i%20)
		kind := taskhubv1.EventKind_EVENT_KIND_PROGRESS
		if last[id] == 0 {
			kind = taskhubv1.EventKind_EVENT_KIND_CREATED
		}
		call, cancel := context.WithTimeout(ctx, 10*time.Second)
		seq, err := l.Append(call, record(id, kind, taskhubv1.TaskState_TASK_STATE_QUEUED), last[id])
		cancel()
		require.NoError(t, err, "append %d to %s after seq %d", i, id, last[id])
		last[id], appends = seq, appends+1
	}
	close(stop)
	wg.Wait()
	t.Logf("%d appends through %d leader step-downs", appends, stepdowns)
	require.Positive(t, stepdowns)

	stored := 0
	for from := uint64(1); ; stored++ {
		e, err := l.Next(ctx, "tasks.>", from)
		if errors.Is(err, eventlog.ErrNotFound) {
			break
		}
		require.NoError(t, err)
		from = e.Seq + 1
	}
	require.Equal(t, appends, stored, "each acknowledged append is stored once")
	live, err := l.Live(ctx)
	require.NoError(t, err)
	require.Len(t, live, len(last), "every created task is in the live index")
}
