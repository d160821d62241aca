package actors

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// TestHistory: the index finds each owner's next event by sequence, covers nothing before its
// start, and when full lets its older half go, moving its floor up to where the newer began.
func TestHistory(t *testing.T) {
	var h history
	h.add("alice", 5) // before start: the feed is not ready
	_, covered := h.next("alice", 1)
	require.False(t, covered)

	h.start(10)
	for seq := uint64(10); seq < 20; seq++ {
		h.add([]string{"alice", "bob"}[seq%2], seq)
	}
	for _, c := range []struct {
		owner       string
		seq, want   uint64
		wantCovered bool
	}{
		{"alice", 9, 0, false},
		{"alice", 10, 10, true},
		{"alice", 11, 12, true},
		{"bob", 10, 11, true},
		{"bob", 19, 19, true},
		{"alice", 19, 0, true}, // none yet
		{"carol", 10, 0, true},
	} {
		got, covered := h.next(c.owner, c.seq)
		require.Equal(t, c.wantCovered, covered, "%s from %d", c.owner, c.seq)
		require.Equal(t, c.want, got, "%s from %d", c.owner, c.seq)
	}

	// Fill the generation: the next event starts another, and the first is kept beside it.
	fill := func(from, to uint64) {
		for seq := from; seq < to; seq++ {
			h.add("bob", seq)
		}
	}
	turn1 := uint64(10 + maxHistory/2)
	fill(20, turn1)
	h.add("alice", turn1)
	got, covered := h.next("alice", 10)
	require.True(t, covered, "the first generation went with the second")
	require.Equal(t, uint64(10), got)
	got, _ = h.next("alice", 19)
	require.Equal(t, turn1, got, "the newer generation is searched after the older")

	// Fill the second: the third starts, and the first goes.
	turn2 := turn1 + maxHistory/2
	fill(turn1+1, turn2)
	h.add("alice", turn2)
	_, covered = h.next("alice", 10)
	require.False(t, covered, "the first generation is still there")
	got, covered = h.next("alice", turn1)
	require.True(t, covered)
	require.Equal(t, turn1, got)
	got, _ = h.next("alice", turn1+1)
	require.Equal(t, turn2, got)
	got, _ = h.next("bob", turn2-1)
	require.Equal(t, turn2-1, got)
	got, _ = h.next("bob", turn2)
	require.Zero(t, got)
	held := 0
	for _, g := range []map[string][]uint64{h.old, h.cur} {
		for _, seqs := range g {
			held += len(seqs)
		}
	}
	require.LessOrEqual(t, held, maxHistory)
}
