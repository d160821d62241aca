package actors

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/taskhub/taskhub/eventlog"
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

// TestHistory_KeysBound: a generation full of keys, each with one event, ends early: the index
// holds at most maxHistoryKeys keys, and the newest events stay covered.
func TestHistory_KeysBound(t *testing.T) {
	var h history
	h.start(1)
	n := uint64(maxHistoryKeys * 2)
	for seq := uint64(1); seq <= n; seq++ {
		h.add(fmt.Sprint("t", seq), seq)
	}
	require.LessOrEqual(t, len(h.old)+len(h.cur), maxHistoryKeys)
	got, covered := h.next(fmt.Sprint("t", n), n)
	require.True(t, covered)
	require.Equal(t, n, got)
	_, covered = h.next("t1", 1)
	require.False(t, covered, "the oldest keys' generation went")
	h.add(fmt.Sprint("t", n), n+1) // a key it holds does not end the generation
	got, _ = h.next(fmt.Sprint("t", n), n+1)
	require.Equal(t, n+1, got)
}

// fakeReads is a log that holds entries by sequence, for indexedRead.
type fakeReads struct {
	entries map[uint64]*eventlog.Entry
	nexts   []uint64 // the froms Next was called with
}

func (f *fakeReads) Get(_ context.Context, seq uint64) (*eventlog.Entry, error) {
	if e, ok := f.entries[seq]; ok {
		return e, nil
	}
	return nil, eventlog.ErrNotFound
}

func (f *fakeReads) Next(_ context.Context, filter string, from uint64) (*eventlog.Entry, error) {
	f.nexts = append(f.nexts, from)
	best := uint64(0)
	for seq, e := range f.entries {
		if seq >= from && strings.HasPrefix(e.Subject, strings.TrimSuffix(filter, ">")) && (best == 0 || seq < best) {
			best = seq
		}
	}
	if best == 0 {
		return nil, eventlog.ErrNotFound
	}
	return f.entries[best], nil
}

// TestIndexedRead: an indexed event is read by its sequence; one the log does not give back as
// the key's (gone, or another's) is searched for from there; an uncovered one is searched for.
func TestIndexedRead(t *testing.T) {
	entry := func(seq uint64, owner string) *eventlog.Entry {
		return &eventlog.Entry{Seq: seq, Subject: eventlog.Subject(owner, "t")}
	}
	log := &fakeReads{entries: map[uint64]*eventlog.Entry{5: entry(5, "alice"), 9: entry(9, "bob"), 12: entry(12, "alice")}}
	filter := eventlog.OwnerFilter("alice")
	mine := func(s string) bool { return strings.HasPrefix(s, "tasks.alice.") }
	read := func(index func(uint64) (uint64, bool), from, to uint64) uint64 {
		t.Helper()
		e, err := indexedRead(t.Context(), log, index, filter, mine, from, to)
		if errors.Is(err, eventlog.ErrNotFound) {
			return 0
		}
		require.NoError(t, err)
		return e.Seq
	}
	at := func(s uint64) func(uint64) (uint64, bool) { return func(uint64) (uint64, bool) { return s, true } }

	require.Equal(t, uint64(5), read(at(5), 1, 100))
	require.Empty(t, log.nexts, "read by its sequence")
	require.Zero(t, read(at(5), 1, 4), "past to")
	require.Zero(t, read(at(0), 1, 100), "none")
	require.Equal(t, uint64(12), read(at(7), 6, 100), "gone from the log: searched for from 7")
	require.Equal(t, []uint64{7}, log.nexts)
	require.Equal(t, uint64(12), read(at(9), 6, 100), "bob's: searched for from 9")
	require.Equal(t, uint64(5), read(func(uint64) (uint64, bool) { return 0, false }, 1, 100), "not covered: searched for")
	require.Equal(t, []uint64{7, 9, 1}, log.nexts)
}
