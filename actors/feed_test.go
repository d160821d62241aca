package actors

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestFeed_AwaitLeavesNothingBehind: a wait that ends before the feed gets there takes its
// entry out of the feed's list, so that writes refused while the feed is stuck do not pile up
// there; one that is met runs once.
func TestFeed_AwaitLeavesNothingBehind(t *testing.T) {
	t.Parallel()
	f := &feed{pos: 10}
	f.applied.Store(10)
	require.True(t, f.await(t.Context(), 10, time.Second), "a seq applied already")
	for range 100 {
		require.False(t, f.await(t.Context(), 20, time.Millisecond))
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	require.False(t, f.await(ctx, 30, time.Minute))
	require.Zero(t, f.after.Len(), "what the waits left")

	ran := 0
	f.when(15, func() { ran++ })
	f.when(12, func() { ran++ })
	gone := f.when(14, func() { ran += 100 })
	f.cancel(gone)
	f.mu.Lock()
	due := f.after.due(15)
	f.mu.Unlock()
	for _, fn := range due {
		fn()
	}
	require.Equal(t, 2, ran, "each due once, the cancelled one not")
	f.cancel(gone) // twice: nothing
	require.Zero(t, f.after.Len())
}

// TestFeed_ForgetsTheOwnersOfTasksLongFinished: the feed keeps the owner of a finished task
// for endedKept, and of the newest maxEnded at most; the active tasks' stay.
func TestFeed_ForgetsTheOwnersOfTasksLongFinished(t *testing.T) {
	t.Parallel()
	start := time.Now()
	f := &feed{owners: map[string]string{"active": "alice"}}
	for i := range maxEnded + 10 {
		id := fmt.Sprint(i)
		f.owners[id] = "bob"
		f.gone = append(f.gone, endedTask{id: id, at: start.Add(time.Duration(i) * time.Millisecond)})
	}
	f.forget(start)
	require.Equal(t, "", f.owner("10"), "beyond the newest maxEnded")
	require.Equal(t, "bob", f.owner("11"))
	require.Len(t, f.owners, maxEnded)

	f.forget(start.Add(endedKept + 50*time.Millisecond))
	require.Equal(t, "", f.owner("49"))
	require.Equal(t, "bob", f.owner("51"))
	f.forget(start.Add(time.Hour))
	require.Equal(t, map[string]string{"active": "alice"}, f.owners)
	require.Empty(t, f.gone[f.goneHead:])
	require.Less(t, cap(f.gone), maxEnded, "the dropped head is let go")
}
