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
