package eventlog

import (
	"testing"

	"github.com/stretchr/testify/require"

	storagev1 "github.com/taskhub/taskhub/gen/taskhub/storage/v1"
)

// TestOwn: a follower takes the record appended as a sequence, once; what it passes without
// taking is let go, and an append it has passed is not held; a slot still wanted is not
// overwritten by an append a whole ring ahead.
func TestOwn(t *testing.T) {
	t.Parallel()
	var o own
	rec := func() *storagev1.Record { return &storagev1.Record{} }
	held := func() (n int) {
		for _, r := range o.recs {
			if r != nil {
				n++
			}
		}
		return n
	}

	r1, r3 := rec(), rec()
	o.keep(1, r1, 1)
	o.keep(3, r3, 1)
	o.keep(2+ownSlots, rec(), 1) // 2's slot: a follower ownSlots behind
	require.Same(t, r1, o.take(1))
	require.Nil(t, o.take(1), "taken once")
	require.Same(t, r3, o.take(3), "2 passed: another process's")
	require.Equal(t, 1, held(), "2+ownSlots is still wanted")

	o.keep(3, rec(), 1)
	require.Equal(t, 1, held(), "3 is passed: never taken again, so not held")

	// A follower that starts with the last event of each task skips some appends: they are let go.
	r10 := rec()
	for s := uint64(4); s <= 10; s++ {
		o.keep(s, map[bool]*storagev1.Record{true: r10, false: rec()}[s == 10], 1)
	}
	require.Same(t, r10, o.take(10))
	require.Equal(t, 1, held())

	// A slot still wanted keeps its record against an append a whole ring later.
	r20 := rec()
	o.keep(20, r20, 1)
	o.keep(20+ownSlots, rec(), 1)
	require.Same(t, r20, o.take(20))

	// A jump of more than the ring lets everything before it go, and keeps what is after.
	r := rec()
	o.keep(5*ownSlots+1, r, 1)
	require.Nil(t, o.take(5*ownSlots))
	require.Equal(t, 1, held())
	require.Same(t, r, o.take(5*ownSlots+1))
	require.Zero(t, held())
	require.Zero(t, o.bytes)

	// What is held is bounded in bytes too: a large record that does not fit is not kept.
	base := uint64(10 * ownSlots)
	o.keep(base+1, rec(), ownBytes-10)
	o.keep(base+2, rec(), 11)
	o.keep(base+3, rec(), 10)
	require.Equal(t, 2, held())
	require.Equal(t, ownBytes, o.bytes)
	require.NotNil(t, o.take(base+1))
	require.Nil(t, o.take(base+2))
	require.NotNil(t, o.take(base+3))
	require.Zero(t, o.bytes)
}
