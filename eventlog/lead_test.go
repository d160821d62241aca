package eventlog_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/taskhub/taskhub/eventlog"
)

// TestLead: of the nodes sharing a log, one leads, and keeps the lead while it renews it; once
// it stops (here: it stops calling, then goes away), another takes the lead over after the lead
// timeout, and only one.
func TestLead(t *testing.T) {
	t.Parallel()
	const timeout = 500 * time.Millisecond
	logs, _ := openCluster(t, 3, func(c *eventlog.Config) { c.LeadTimeout = timeout })
	// A node that cannot read the record does not lead: while a stream elects a leader, say.
	leaders := func(among []*eventlog.Log) []int {
		var out []int
		for i, l := range among {
			if leads, err := l.Lead(t.Context()); err == nil && leads {
				out = append(out, i)
			}
		}
		return out
	}
	var first []int
	require.Eventually(t, func() bool { first = leaders(logs); return len(first) > 0 }, 10*time.Second, 10*time.Millisecond)
	require.Len(t, first, 1, "one node leads")
	var renewing time.Time // when the leader's last renewal began
	for range 5 {
		time.Sleep(timeout / 5)
		renewing = time.Now()
		require.Equal(t, first, leaders(logs), "the leader keeps the lead while it renews it")
	}

	// The leader goes away; the others call on, as their compactors do.
	logs[first[0]].Close()
	rest := append(logs[:first[0]:first[0]], logs[first[0]+1:]...)
	start := time.Now()
	var next []int
	for time.Since(start) < 30*time.Second && len(next) == 0 {
		next = leaders(rest)
		time.Sleep(timeout / 10)
	}
	require.Len(t, next, 1, "one of the others takes the lead over")
	require.GreaterOrEqual(t, time.Since(renewing), timeout, "not before the lead timeout")
	for range 3 {
		time.Sleep(timeout / 5)
		require.Equal(t, next, leaders(rest), "and keeps it")
	}
}

// TestGatherLeaders: the streams, buckets and queue consumers of a replicated log elect their
// leaders apart; GatherLeaders brings them all to the event stream leader's node, and again
// after that node is gone and the rest elected new ones wherever they did.
func TestGatherLeaders(t *testing.T) {
	t.Parallel()
	logs, _ := openCluster(t, 3)
	require.NoError(t, logs[0].EnsureQueue(t.Context(), "paint"))
	require.NoError(t, logs[0].EnsureQueue(t.Context(), "render"))
	gathered := func(l *eventlog.Log) bool {
		_ = l.GatherLeaders(t.Context()) // may fail while a group elects: tried again
		leaders := l.Leaders(t.Context())
		if len(leaders) < 7 { // five streams, two consumers
			return false
		}
		for _, leader := range leaders {
			if leader != leaders[eventlog.EventStream] {
				t.Logf("not yet together: %v", leaders)
				return false
			}
		}
		return true
	}
	require.Eventually(t, func() bool { return gathered(logs[0]) }, 30*time.Second, 200*time.Millisecond)

	// Their node goes; the others elect leaders, each group on its own.
	leader := logs[0].Leaders(t.Context())[eventlog.EventStream]
	gone := -1
	for i, l := range logs {
		if l.Node() == leader {
			gone = i
		}
	}
	require.NotEqual(t, -1, gone, "the leader %s is one of the nodes", leader)
	logs[gone].Close()
	rest := logs[(gone+1)%3]
	require.Eventually(t, func() bool { return gathered(rest) }, 60*time.Second, 200*time.Millisecond)
	require.NotEqual(t, leader, rest.Leaders(t.Context())[eventlog.EventStream])
}
