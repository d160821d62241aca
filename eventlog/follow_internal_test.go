package eventlog

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestFollower_Stalled: a follower is stalled only when the log has held an event it has not
// delivered for followStall, and it has delivered nothing for as long; a quiet spell before an
// append does not count.
func TestFollower_Stalled(t *testing.T) {
	t.Parallel()
	l := &Log{}
	t0 := time.Now()
	f := &follower{l: l, next: 11, last: t0}
	l.appended.Store(10) // all delivered
	require.False(t, f.stalled(t0.Add(time.Second)), "caught up, however quiet")

	l.appended.Store(11) // an append after a quiet second
	at := t0.Add(time.Second)
	require.False(t, f.stalled(at), "behind from now")
	require.False(t, f.stalled(at.Add(followStall/2)))
	require.True(t, f.stalled(at.Add(followStall)), "behind for a whole stall, nothing delivered")

	f.last, f.behind = at.Add(followStall), time.Time{} // a delivery
	require.False(t, f.stalled(at.Add(followStall)))
	require.False(t, f.stalled(at.Add(2*followStall-time.Millisecond)))
	require.True(t, f.stalled(at.Add(3*followStall)))

	f.next = 12 // it caught up
	require.False(t, f.stalled(at.Add(4*followStall)))
	require.True(t, f.behind.IsZero())
}
