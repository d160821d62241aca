package actors

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"
)

const (
	created   = taskhubv1.EventKind_EVENT_KIND_CREATED
	started   = taskhubv1.EventKind_EVENT_KIND_STARTED
	progress  = taskhubv1.EventKind_EVENT_KIND_PROGRESS
	completed = taskhubv1.EventKind_EVENT_KIND_COMPLETED
	failed    = taskhubv1.EventKind_EVENT_KIND_FAILED
	cancelled = taskhubv1.EventKind_EVENT_KIND_CANCELLED
	requeued  = taskhubv1.EventKind_EVENT_KIND_REQUEUED
)

// The outbox never looks at msg, so these items have none.
func ev(seq uint64, task string, kind taskhubv1.EventKind) *item {
	return &item{seq: seq, taskID: task, kind: kind}
}

func snap(seq uint64) *item { return &item{seq: seq, snap: &snapshot{seq: seq}} }

func seqs(items []*item) []uint64 {
	out := []uint64{}
	for _, it := range items {
		if it != nil {
			out = append(out, it.seq)
		}
	}
	return out
}

func (s deliveryState) String() string {
	return [...]string{"starting", "replaying", "live", "behind"}[s]
}

// startingAt is an outbox attached at pos, its first message not yet queued.
func startingAt(limit int, pos uint64) *outbox {
	o := &outbox{}
	o.init(limit)
	o.attach(pos)
	return o
}

// replayingFrom is an outbox attached at pos whose client resumed after after and has taken
// its recovered snapshot: (after, pos] is owed.
func replayingFrom(t *testing.T, limit int, after, pos uint64) *outbox {
	o := startingAt(limit, pos)
	o.begin(snap(after), after)
	got, work, err := o.take(nil)
	require.NoError(t, err)
	require.Nil(t, work)
	require.Equal(t, []uint64{after}, seqs(got))
	return o
}

// liveAt is a fresh outbox attached at pos whose client has taken its snapshot.
func liveAt(t *testing.T, limit int, pos uint64) *outbox {
	o := replayingFrom(t, limit, pos, pos)
	_, work, err := o.take(nil)
	require.NoError(t, err)
	require.Equal(t, &replayWork{from: pos + 1, next: pos + 1, to: pos}, work, "a fresh watch owes nothing")
	o.replayDone()
	require.Equal(t, live, o.state)
	return o
}

// behindAt is a live outbox (attached at 0) with 1..limit queued and limit+1 dropped.
func behindAt(t *testing.T, limit int) *outbox {
	o := liveAt(t, limit, 0)
	for seq := uint64(1); seq <= uint64(limit)+1; seq++ {
		o.offer(ev(seq, "a", created))
	}
	require.Equal(t, behind, o.state)
	return o
}

func takeAll(t *testing.T, o *outbox) []uint64 {
	t.Helper()
	got, _, err := o.take(nil)
	require.NoError(t, err)
	return seqs(got)
}

// TestOutbox_Transitions has one case for each row of the table in outbox's doc, in its order.
func TestOutbox_Transitions(t *testing.T) {
	t.Parallel()
	type want struct {
		state      deliveryState
		cursor     uint64
		queued     []uint64
		held       []uint64
		lost       bool
		work       *replayWork // what the input's take returned
		replayTo   uint64      // checked when not 0
		replayFrom uint64      // checked when not 0
	}
	for _, tc := range []struct {
		row   string
		from  func(t *testing.T) *outbox
		input func(o *outbox) *replayWork
		want  want
	}{
		{
			row:   "starting attach",
			from:  func(*testing.T) *outbox { o := &outbox{}; o.init(4); return o },
			input: func(o *outbox) *replayWork { o.attach(5); return nil },
			want:  want{state: starting, cursor: 5, replayTo: 5},
		},
		{
			row:   "starting begin: a recovered snapshot, the events after it owed",
			from:  func(*testing.T) *outbox { return startingAt(4, 5) },
			input: func(o *outbox) *replayWork { o.begin(snap(3), 3); return nil },
			want:  want{state: replaying, cursor: 3, queued: []uint64{3}, replayTo: 5, replayFrom: 4},
		},
		{
			row: "starting begin: whatever the limit",
			from: func(*testing.T) *outbox {
				o := startingAt(1, 5)
				o.offer(ev(6, "a", created))
				return o
			},
			input: func(o *outbox) *replayWork { o.begin(snap(5), 5); return nil },
			want:  want{state: replaying, cursor: 5, queued: []uint64{5}, held: []uint64{6}},
		},
		{
			row: "starting take",
			from: func(*testing.T) *outbox {
				o := startingAt(4, 5)
				o.offer(ev(6, "a", created))
				return o
			},
			input: func(o *outbox) *replayWork { _, w, _ := o.take(nil); return w },
			want:  want{state: starting, cursor: 5, held: []uint64{6}},
		},
		{
			row: "replaying offer, owed",
			from: func(t *testing.T) *outbox {
				o := behindAt(t, 2) // seen 3
				takeAll(t, o)
				return o
			},
			input: func(o *outbox) *replayWork { o.offer(ev(3, "a", started)); return nil },
			want:  want{state: replaying, cursor: 2, replayTo: 3},
		},
		{
			row:   "replaying offer, held has room",
			from:  func(t *testing.T) *outbox { return replayingFrom(t, 2, 2, 5) },
			input: func(o *outbox) *replayWork { o.offer(ev(6, "a", created)); o.offer(ev(7, "b", created)); return nil },
			want:  want{state: replaying, cursor: 2, held: []uint64{6, 7}},
		},
		{
			row: "replaying offer, held is full",
			from: func(t *testing.T) *outbox {
				o := replayingFrom(t, 2, 2, 5)
				o.offer(ev(6, "a", created))
				o.offer(ev(7, "b", created))
				return o
			},
			input: func(o *outbox) *replayWork { o.offer(ev(8, "c", created)); o.offer(ev(9, "c", started)); return nil },
			want:  want{state: replaying, cursor: 2, lost: true},
		},
		{
			row:   "replaying take, nothing queued",
			from:  func(t *testing.T) *outbox { return replayingFrom(t, 2, 2, 5) },
			input: func(o *outbox) *replayWork { _, w, _ := o.take(nil); return w },
			want:  want{state: replaying, cursor: 2, work: &replayWork{from: 3, next: 3, to: 5}},
		},
		{
			row:   "replaying replayed, the queue has room",
			from:  func(t *testing.T) *outbox { return replayingFrom(t, 2, 2, 5) },
			input: func(o *outbox) *replayWork { o.replayed(ev(4, "a", created), 0); return nil },
			want:  want{state: replaying, cursor: 4, queued: []uint64{4}},
		},
		{
			row: "replaying replayed, the queue is full",
			from: func(t *testing.T) *outbox {
				o := replayingFrom(t, 1, 2, 5)
				require.True(t, o.replayed(ev(3, "a", created), 0))
				return o
			},
			input: func(o *outbox) *replayWork {
				if o.replayed(ev(4, "a", started), 0) {
					panic("a full queue accepted a replayed event")
				}
				o.take(nil) // then the client takes 3, and the read resumes at 4
				_, w, _ := o.take(nil)
				return w
			},
			want: want{state: replaying, cursor: 3, work: &replayWork{from: 3, next: 4, to: 5}},
		},
		{
			row: "replaying replayed, maxReplayBytes queued",
			from: func(t *testing.T) *outbox {
				o := replayingFrom(t, 5, 2, 5)
				require.True(t, o.replayed(ev(3, "a", created), maxReplayBytes), "one event, however large")
				return o
			},
			input: func(o *outbox) *replayWork {
				if o.replayed(ev(4, "a", started), 1) {
					panic("a replayed event past maxReplayBytes accepted")
				}
				o.take(nil) // then the client takes 3, and the read resumes at 4
				if !o.replayed(ev(4, "a", started), maxReplayBytes/2) || !o.replayed(ev(5, "a", completed), maxReplayBytes/2) {
					panic("maxReplayBytes of replayed events refused")
				}
				return nil
			},
			want: want{state: replaying, cursor: 5, queued: []uint64{4, 5}},
		},
		{
			row: "replaying done, nothing lost, held fit",
			from: func(t *testing.T) *outbox {
				o := replayingFrom(t, 2, 2, 5)
				o.offer(ev(6, "a", created))
				o.offer(ev(7, "a", started))
				return o
			},
			input: func(o *outbox) *replayWork { o.replayDone(); return nil },
			want:  want{state: live, cursor: 7, queued: []uint64{6, 7}},
		},
		{
			row: "replaying done, lost",
			from: func(t *testing.T) *outbox {
				o := replayingFrom(t, 1, 2, 5)
				o.offer(ev(6, "a", created))
				o.offer(ev(7, "a", started))
				return o
			},
			input: func(o *outbox) *replayWork { o.replayDone(); return nil },
			want:  want{state: behind, cursor: 5},
		},
		{
			row: "replaying done, held overflowed the queue",
			from: func(t *testing.T) *outbox {
				o := replayingFrom(t, 2, 2, 5)
				require.True(t, o.replayed(ev(4, "a", created), 0))
				o.offer(ev(6, "b", created))
				o.offer(ev(7, "b", started))
				return o
			},
			input: func(o *outbox) *replayWork { o.replayDone(); return nil },
			want:  want{state: behind, cursor: 6, queued: []uint64{4, 6}},
		},
		{
			row:   "live offer, the queue has room",
			from:  func(t *testing.T) *outbox { return liveAt(t, 2, 5) },
			input: func(o *outbox) *replayWork { o.offer(ev(6, "a", created)); return nil },
			want:  want{state: live, cursor: 6, queued: []uint64{6}},
		},
		{
			row: "live offer, the queue is full",
			from: func(t *testing.T) *outbox {
				o := liveAt(t, 1, 5)
				o.offer(ev(6, "a", created))
				return o
			},
			input: func(o *outbox) *replayWork { o.offer(ev(7, "a", started)); return nil },
			want:  want{state: behind, cursor: 6, queued: []uint64{6}},
		},
		{
			row:   "live tick, idle for the interval",
			from:  func(t *testing.T) *outbox { return liveAt(t, 2, 5) },
			input: func(o *outbox) *replayWork { o.tick(time.Now().Add(time.Minute), time.Second); return nil },
			want:  want{state: live, cursor: 5, queued: []uint64{5}},
		},
		{
			row:   "behind offer",
			from:  func(t *testing.T) *outbox { return behindAt(t, 2) },
			input: func(o *outbox) *replayWork { o.offer(ev(4, "b", created)); return nil },
			want:  want{state: behind, cursor: 2, queued: []uint64{1, 2}},
		},
		{
			row: "behind take",
			from: func(t *testing.T) *outbox {
				o := behindAt(t, 2)
				o.offer(ev(4, "b", created))
				return o
			},
			input: func(o *outbox) *replayWork {
				got, w, _ := o.take(nil)
				if len(got) != 2 || w != nil {
					panic(fmt.Sprintf("take of a behind outbox: %v items, work %v", len(got), w))
				}
				_, w, _ = o.take(nil)
				return w
			},
			want: want{state: replaying, cursor: 2, replayTo: 4, replayFrom: 3, work: &replayWork{from: 3, next: 3, to: 4}},
		},
	} {
		t.Run(tc.row, func(t *testing.T) {
			t.Parallel()
			o := tc.from(t)
			work := tc.input(o)
			require.Equal(t, tc.want.work, work, "work")
			o.mu.Lock()
			defer o.mu.Unlock()
			require.Equal(t, tc.want.state, o.state, "state")
			require.Equal(t, tc.want.cursor, o.cursor, "cursor")
			require.Equal(t, append([]uint64{}, tc.want.queued...), seqs(o.items), "queued")
			require.Equal(t, append([]uint64{}, tc.want.held...), seqs(o.held), "held")
			require.Equal(t, tc.want.lost, o.lost, "lost")
			if tc.want.replayTo != 0 {
				require.Equal(t, tc.want.replayTo, o.replayTo, "replayTo")
			}
			if tc.want.replayFrom != 0 {
				require.Equal(t, tc.want.replayFrom, o.replayFrom, "replayFrom")
			}
		})
	}
}

// TestOutbox_Close is the last row: in any state, what is queued can still be taken, then the
// first close error; nothing is queued, held or owed after it.
func TestOutbox_Close(t *testing.T) {
	t.Parallel()
	closeErr := errors.New("gone")
	for name, from := range map[string]func(t *testing.T) *outbox{
		"starting":  func(*testing.T) *outbox { return startingAt(4, 5) },
		"replaying": func(t *testing.T) *outbox { return replayingFrom(t, 4, 2, 5) },
		"live":      func(t *testing.T) *outbox { return liveAt(t, 4, 5) },
		"behind":    func(t *testing.T) *outbox { return behindAt(t, 4) },
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			o := from(t)
			o.mu.Lock()
			queued := seqs(o.items)
			o.mu.Unlock()
			select {
			case <-o.signal: // drain: close must set it again
			default:
			}
			o.close(closeErr)
			o.close(errors.New("a second close"))
			select {
			case <-o.signal:
			default:
				t.Fatal("close must wake the send loop")
			}
			o.offer(ev(100, "z", created))
			require.False(t, o.replayed(ev(100, "z", created), 0), "a closed outbox stops the reader")
			o.begin(snap(5), 5)
			o.tick(time.Now().Add(time.Minute), time.Second)

			got, work, err := o.take(nil)
			require.Nil(t, work)
			if len(queued) > 0 {
				require.NoError(t, err, "what was queued is taken first")
				require.Equal(t, queued, seqs(got))
				got, work, err = o.take(got)
				require.Nil(t, work)
			}
			require.ErrorIs(t, err, closeErr, "then the first close error")
			require.Empty(t, got)
		})
	}
}

// TestOutbox_StartOverflowReplays: more events than the buffer holds come while a fresh watch
// starts. It sends its snapshot, then replays them from the log rather than falling silent
// (the race f678983 fixed, which this state machine cannot have: the end of a start is the end
// of a replay).
func TestOutbox_StartOverflowReplays(t *testing.T) {
	t.Parallel()
	o := startingAt(2, 5)
	for seq := uint64(6); seq <= 9; seq++ {
		o.offer(ev(seq, "a", created))
	}
	o.begin(snap(5), 5)
	require.Equal(t, []uint64{5}, takeAll(t, o))
	_, work, err := o.take(nil)
	require.NoError(t, err)
	require.Equal(t, &replayWork{from: 6, next: 6, to: 5}, work)
	o.replayDone()
	_, work, err = o.take(nil)
	require.NoError(t, err)
	require.Equal(t, &replayWork{from: 6, next: 6, to: 9}, work, "what came during the start is owed")
}

// TestOutbox_Coalescing: a live outbox keeps only the latest progress of each task, at the tail,
// and every other event; what it queues is in seq order.
func TestOutbox_Coalescing(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		offers []*item
		want   []uint64
	}{
		{
			name:   "in offer order",
			offers: []*item{ev(1, "a", created), ev(2, "b", created), ev(3, "a", started), ev(4, "a", completed)},
			want:   []uint64{1, 2, 3, 4},
		},
		{
			name:   "progress replaces the queued progress of its task and moves to the tail",
			offers: []*item{ev(1, "a", progress), ev(2, "b", started), ev(3, "a", progress)},
			want:   []uint64{2, 3},
		},
		{
			name:   "progress of different tasks is kept",
			offers: []*item{ev(1, "a", progress), ev(2, "b", progress), ev(3, "c", progress)},
			want:   []uint64{1, 2, 3},
		},
		{
			name: "only the latest progress of each task is kept",
			offers: []*item{
				ev(1, "a", progress), ev(2, "b", progress), ev(3, "a", progress),
				ev(4, "b", progress), ev(5, "a", progress), ev(6, "c", created),
			},
			want: []uint64{4, 5, 6},
		},
		{
			name: "progress does not replace other kinds of its task",
			offers: []*item{
				ev(1, "a", created), ev(2, "a", started), ev(3, "a", progress),
				ev(4, "a", progress), ev(5, "a", completed),
			},
			want: []uint64{1, 2, 4, 5},
		},
		{
			name: "a progress after a requeue replaces the one of the earlier attempt",
			offers: []*item{
				ev(1, "a", started), ev(2, "a", progress), ev(3, "a", requeued),
				ev(4, "a", started), ev(5, "a", progress),
			},
			want: []uint64{1, 3, 4, 5},
		},
		{
			name: "non-progress kinds of one task are never coalesced",
			offers: []*item{
				ev(1, "a", created), ev(2, "a", started), ev(3, "a", requeued), ev(4, "a", started),
				ev(5, "a", failed), ev(6, "a", completed), ev(7, "a", cancelled), ev(8, "a", cancelled),
			},
			want: []uint64{1, 2, 3, 4, 5, 6, 7, 8},
		},
		{
			name: "coalesced progress takes no room",
			offers: []*item{
				ev(1, "a", progress), ev(2, "a", progress), ev(3, "a", progress), ev(4, "a", progress),
				ev(5, "a", progress), ev(6, "a", progress), ev(7, "a", progress), ev(8, "a", progress),
				ev(9, "a", progress), ev(10, "a", progress), ev(11, "a", progress), ev(12, "a", progress),
				ev(13, "a", progress), ev(14, "a", progress), ev(15, "a", progress), ev(16, "a", progress),
				ev(17, "a", progress), ev(18, "a", progress), ev(19, "b", created),
			},
			want: []uint64{18, 19},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var all []uint64
			for _, it := range tc.offers {
				all = append(all, it.seq)
			}
			for _, c := range []struct {
				name  string
				limit int
				want  []uint64
			}{
				{"with room, every event is kept", 64, all},
				{"full, only the latest progress of each task is kept", len(tc.want), tc.want},
			} {
				o := liveAt(t, c.limit, 0)
				var coalesced atomic.Uint64
				o.coalesced = &coalesced
				for _, it := range tc.offers {
					o.offer(it)
				}
				require.Equal(t, live, o.state, "%s: nothing was dropped", c.name)
				require.Equal(t, c.want, takeAll(t, o), c.name)
				require.Equal(t, uint64(len(all)-len(c.want)), coalesced.Load(), "%s: coalesced events are counted", c.name)
				require.Equal(t, c.want[len(c.want)-1], o.delivered, c.name)
				require.Empty(t, takeAll(t, o), "%s: taking empties it", c.name)
			}
		})
	}
}

// TestOutbox_CoalescesUntilTaken: once full, the queue coalesces progress as it comes (one
// pass, then a replacement per event) until its client takes; then it keeps every event again.
func TestOutbox_CoalescesUntilTaken(t *testing.T) {
	t.Parallel()
	o := liveAt(t, 4, 0)
	o.offer(ev(1, "a", progress))
	o.offer(ev(2, "a", progress))
	o.offer(ev(3, "a", progress))
	o.offer(ev(4, "b", progress))
	o.offer(ev(5, "c", progress)) // full: 1 and 2 are coalesced away, and 5 fits
	o.offer(ev(6, "b", progress)) // replaces 4 at once, though the queue has room
	require.Equal(t, live, o.state)
	require.Equal(t, []uint64{3, 5, 6}, takeAll(t, o))
	o.offer(ev(7, "a", progress))
	o.offer(ev(8, "a", progress))
	require.Equal(t, []uint64{7, 8}, takeAll(t, o), "taken: every event is kept again")
}

// TestOutbox_FullNeverDisplaces: an event that does not fit puts the outbox behind; it never
// displaces what was queued, except a progress event its task's newer progress replaces.
func TestOutbox_FullNeverDisplaces(t *testing.T) {
	t.Parallel()
	for _, kind := range []taskhubv1.EventKind{created, started, completed, failed, cancelled, requeued} {
		t.Run(kind.String(), func(t *testing.T) {
			t.Parallel()
			o := liveAt(t, 3, 0)
			o.offer(ev(1, "a", kind))
			o.offer(ev(2, "a", kind))
			o.offer(ev(3, "b", kind))
			o.offer(ev(4, "c", progress))
			require.Equal(t, behind, o.state)
			require.Equal(t, []uint64{1, 2, 3}, takeAll(t, o))
		})
	}
	t.Run("progress of a task with progress queued fits when full", func(t *testing.T) {
		t.Parallel()
		o := liveAt(t, 2, 0)
		o.offer(ev(1, "a", progress))
		o.offer(ev(2, "b", started))
		o.offer(ev(3, "a", progress))
		require.Equal(t, live, o.state)
		require.Equal(t, []uint64{2, 3}, takeAll(t, o))
	})
}

func TestOutbox_CompactsHoles(t *testing.T) {
	t.Parallel()
	const limit = 4
	o := liveAt(t, limit, 0)
	o.offer(ev(1, "x", created))
	var seq uint64 = 1
	var lastA, lastB uint64
	for range 1000 {
		seq++
		o.offer(ev(seq, "a", progress))
		lastA = seq
		seq++
		o.offer(ev(seq, "b", progress))
		lastB = seq
		o.mu.Lock()
		n, size := int(o.n), len(o.items)
		o.mu.Unlock()
		require.LessOrEqual(t, n, limit)
		require.LessOrEqual(t, size, 2*limit, "holes left by coalescing must be compacted")
	}
	seq++
	o.offer(ev(seq, "y", created)) // the full queue is coalesced once more
	require.Equal(t, []uint64{1, lastA, lastB, seq}, takeAll(t, o), "compaction must keep each task's latest progress, in seq order")
}

// TestOutbox_DeliversEverything drives outboxes the way the feed and Watch.Next do, with every
// interleaving of offers, takes and log reads a seeded random schedule makes, against a log in
// memory: what the client receives is in seq order, has every event but coalesced progress,
// and ends with the last event of every task.
func TestOutbox_DeliversEverything(t *testing.T) {
	t.Parallel()
	kinds := []taskhubv1.EventKind{created, started, progress, progress, progress, progress, completed, requeued}
	for seed := range uint64(200) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			t.Parallel()
			rng := rand.New(rand.NewPCG(seed, 7))
			var log []*item
			for seq := uint64(1); seq <= 300; seq++ {
				log = append(log, ev(seq, fmt.Sprint(rng.IntN(5)), kinds[rng.IntN(len(kinds))]))
			}
			pos := uint64(rng.IntN(50))             // where the watch attached
			after := uint64(rng.IntN(int(pos) + 1)) // what the client had seen
			o := startingAt(1+rng.IntN(6), pos)
			offered := pos
			var got []*item
			take := func() bool { // one turn of Watch.Next's loop; false when it would wait
				items, work, err := o.take(nil)
				require.NoError(t, err)
				got = append(got, items...)
				if work == nil {
					return len(items) > 0
				}
				for seq := work.next; seq <= work.to; seq++ {
					if !o.replayed(log[seq-1], 0) {
						return true
					}
				}
				o.replayDone()
				return true
			}
			begun := false
			for offered < uint64(len(log)) {
				switch r := rng.IntN(10); {
				case r < 6:
					offered++
					o.offer(log[offered-1])
				case !begun:
					o.begin(snap(after), after)
					begun = true
				default:
					take()
				}
			}
			if !begun {
				o.begin(snap(after), after)
			}
			for take() {
			}
			require.Equal(t, live, o.state, "all delivered: live again")

			require.Equal(t, after, got[0].seq, "the snapshot comes first")
			got = got[1:]
			for i := 1; i < len(got); i++ {
				require.Less(t, got[i-1].seq, got[i].seq, "seq order")
			}
			last := map[string]uint64{}
			for _, e := range log[after:] {
				last[e.taskID] = e.seq
				if e.kind != progress {
					require.True(t, slices.Contains(got, e), "event %d (%s) was not delivered", e.seq, e.kind)
				}
			}
			for task, seq := range last {
				require.True(t, slices.Contains(got, log[seq-1]), "the last event of task %s (%d) was not delivered", task, seq)
			}
			for _, e := range got {
				require.Greater(t, e.seq, after, "nothing the client had seen")
			}
		})
	}
}

// TestOutbox_Hold: an event queued within the watch interval of a delivering watch's last take
// waits for the rest of it (its writer sends it with what comes meanwhile), never longer, even
// if the clock was set back; one queued later is sent at once; with no interval, none waits.
func TestOutbox_Hold(t *testing.T) {
	t.Parallel()
	o := liveAt(t, 100, 0)

	const ms = int64(time.Millisecond)
	every := 20 * time.Millisecond
	o.every = int64(every)
	o.lastTaken = 1000 * ms
	require.Equal(t, every, o.holdAt(1000*ms), "just taken: the whole of it")
	require.Equal(t, every/4, o.holdAt(1000*ms+15*ms), "the rest of it")
	require.Zero(t, o.holdAt(1000*ms+20*ms), "taken the interval ago")
	require.Zero(t, o.holdAt(5000*ms))
	require.Equal(t, every, o.holdAt(10*ms), "the clock was set back: no more than the interval")
	o.every = 0
	require.Zero(t, o.holdAt(1000*ms), "no interval: no hold")

	// The taker is woken (notify, as Watch.kick, under the lock) at once for a queue taken long
	// ago; when the hold ends for one taken just now (its time set ahead, so that a slow machine
	// cannot make it old); and at once when the queue is half full.
	var wokenN atomic.Int32
	o.notify = func() { wokenN.Add(1) }
	woken := func() int { return int(wokenN.Load()) }
	hold := func() bool { o.mu.Lock(); defer o.mu.Unlock(); return o.holding }
	o.every = int64(time.Second)
	o.lastTaken = time.Now().Add(-time.Hour).UnixNano()
	o.offer(ev(1, "a", progress))
	require.Equal(t, 1, woken(), "taken long ago: woken at once")
	require.False(t, hold())

	_, _, err := o.take(nil)
	require.NoError(t, err)
	o.lastTaken = time.Now().Add(time.Hour).UnixNano()
	o.offer(ev(2, "a", progress))
	o.offer(ev(3, "a", progress))
	require.Equal(t, 1, woken(), "taken just now: held")
	require.True(t, hold())
	require.Eventually(t, func() bool { return woken() == 2 }, 10*time.Second, time.Millisecond, "woken when the hold ends")
	require.False(t, hold())
	require.Equal(t, []uint64{2, 3}, takeAll(t, o), "both went together")

	o.every = int64(time.Hour)
	o.lastTaken = time.Now().Add(time.Hour).UnixNano()
	for seq := range uint64(49) {
		o.offer(ev(4+seq, "a", progress))
	}
	require.Equal(t, 2, woken(), "49 of 100 queued: held")
	require.True(t, hold())
	o.offer(ev(53, "a", progress))
	require.Equal(t, 3, woken(), "50 of 100 queued: woken at once")
	require.False(t, hold(), "and the hold's timer stopped")

	// A heartbeat, queued after the heartbeat interval of quiet, is not held.
	takeAll(t, o)
	o.every = int64(time.Second)
	o.lastTaken = time.Now().Add(-time.Minute).UnixNano()
	o.tick(time.Now(), time.Second)
	require.Equal(t, 4, woken(), "the heartbeat: woken at once")
	require.False(t, hold())
}
