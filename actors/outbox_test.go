package actors

import (
	"context"
	"errors"
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

func newOutbox(limit int) *outbox {
	o := &outbox{}
	o.init(limit)
	return o
}

// The outbox never looks at resp, so these items have none.
func ev(seq uint64, task string, kind taskhubv1.EventKind) *item {
	return &item{seq: seq, taskID: task, kind: kind}
}

func seqs(items []*item) []uint64 {
	out := []uint64{}
	for _, it := range items {
		out = append(out, it.seq)
	}
	return out
}

func requireIncreasing(t *testing.T, items []*item) {
	t.Helper()
	for i := 1; i < len(items); i++ {
		require.Less(t, items[i-1].seq, items[i].seq, "seq order goes backwards at %d: %v", i, seqs(items))
	}
}

func TestOutbox_PushTake(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		pushes []*item
		want   []uint64
	}{
		{
			name:   "in push order",
			pushes: []*item{ev(1, "a", created), ev(2, "b", created), ev(3, "a", started), ev(4, "a", completed)},
			want:   []uint64{1, 2, 3, 4},
		},
		{
			name:   "progress replaces the queued progress of its task and moves to the tail",
			pushes: []*item{ev(1, "a", progress), ev(2, "b", started), ev(3, "a", progress)},
			want:   []uint64{2, 3},
		},
		{
			name:   "progress of different tasks is kept",
			pushes: []*item{ev(1, "a", progress), ev(2, "b", progress), ev(3, "c", progress)},
			want:   []uint64{1, 2, 3},
		},
		{
			name: "only the latest progress of each task is kept",
			pushes: []*item{
				ev(1, "a", progress), ev(2, "b", progress), ev(3, "a", progress),
				ev(4, "b", progress), ev(5, "a", progress), ev(6, "c", created),
			},
			want: []uint64{4, 5, 6},
		},
		{
			name: "progress does not replace other kinds of its task",
			pushes: []*item{
				ev(1, "a", created), ev(2, "a", started), ev(3, "a", progress),
				ev(4, "a", progress), ev(5, "a", completed),
			},
			want: []uint64{1, 2, 4, 5},
		},
		{
			name: "a progress after a requeue replaces the one of the earlier attempt",
			pushes: []*item{
				ev(1, "a", started), ev(2, "a", progress), ev(3, "a", requeued),
				ev(4, "a", started), ev(5, "a", progress),
			},
			want: []uint64{1, 3, 4, 5},
		},
		{
			name: "non-progress kinds of one task are never coalesced",
			pushes: []*item{
				ev(1, "a", created), ev(2, "a", started), ev(3, "a", requeued), ev(4, "a", started),
				ev(5, "a", failed), ev(6, "a", completed), ev(7, "a", cancelled), ev(8, "a", cancelled),
			},
			want: []uint64{1, 2, 3, 4, 5, 6, 7, 8},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			o := newOutbox(16)
			for _, it := range tc.pushes {
				require.True(t, o.push(it), "push %d", it.seq)
			}
			got, err := o.take(nil)
			require.NoError(t, err)
			require.Equal(t, tc.want, seqs(got))
			requireIncreasing(t, got)
			require.Equal(t, tc.want[len(tc.want)-1], o.delivered)

			// Taking empties it.
			got, err = o.take(got)
			require.NoError(t, err)
			require.Empty(t, got)
		})
	}
}

func TestOutbox_FullRefusesButNeverDrops(t *testing.T) {
	t.Parallel()
	for _, kind := range []taskhubv1.EventKind{created, started, completed, failed, cancelled, requeued} {
		t.Run(kind.String(), func(t *testing.T) {
			t.Parallel()
			o := newOutbox(3)
			queued := []*item{ev(1, "a", kind), ev(2, "a", kind), ev(3, "b", kind)}
			for _, it := range queued {
				require.True(t, o.push(it))
			}
			require.False(t, o.push(ev(4, "a", kind)), "a full outbox must refuse")
			require.False(t, o.push(ev(5, "c", progress)), "a full outbox must refuse progress of a task with none queued")

			got, err := o.take(nil)
			require.NoError(t, err)
			require.Equal(t, queued, got, "the refused pushes must not displace what was queued")

			require.True(t, o.push(ev(4, "a", kind)), "taking makes room")
		})
	}

	t.Run("progress of a task with progress queued is taken when full", func(t *testing.T) {
		t.Parallel()
		o := newOutbox(2)
		require.True(t, o.push(ev(1, "a", progress)))
		require.True(t, o.push(ev(2, "b", started)))
		require.True(t, o.push(ev(3, "a", progress)))
		got, err := o.take(nil)
		require.NoError(t, err)
		require.Equal(t, []uint64{2, 3}, seqs(got))
	})
}

func TestOutbox_LimitCountsLiveItems(t *testing.T) {
	t.Parallel()
	o := newOutbox(3)
	for seq := uint64(1); seq <= 10; seq++ {
		require.True(t, o.push(ev(seq, "a", progress)), "a coalesced progress takes no room")
	}
	require.True(t, o.push(ev(11, "b", created)))
	require.True(t, o.push(ev(12, "c", created)))
	require.False(t, o.push(ev(13, "d", created)), "three live items fill a limit of 3")
	got, err := o.take(nil)
	require.NoError(t, err)
	require.Equal(t, []uint64{10, 11, 12}, seqs(got))
}

func TestOutbox_CompactsHoles(t *testing.T) {
	t.Parallel()
	const limit = 4
	o := newOutbox(limit)
	require.True(t, o.push(ev(1, "x", created)))
	var seq uint64 = 1
	var lastA, lastB uint64
	for range 1000 {
		seq++
		require.True(t, o.push(ev(seq, "a", progress)))
		lastA = seq
		seq++
		require.True(t, o.push(ev(seq, "b", progress)))
		lastB = seq
		o.mu.Lock()
		n, size := int(o.n), len(o.items)
		o.mu.Unlock()
		require.Equal(t, 3, n)
		require.LessOrEqual(t, size, 2*limit, "holes left by coalescing must be compacted")
	}
	got, err := o.take(nil)
	require.NoError(t, err)
	require.Equal(t, []uint64{1, lastA, lastB}, seqs(got), "compaction must keep each task's latest progress, in seq order")
}

func TestOutbox_PushWait(t *testing.T) {
	t.Parallel()

	t.Run("waits for a take to make room", func(t *testing.T) {
		t.Parallel()
		o := newOutbox(1)
		require.True(t, o.push(ev(1, "a", created)))
		done := make(chan error, 1)
		go func() { done <- o.pushWait(context.Background(), ev(2, "b", created)) }()
		select {
		case err := <-done:
			t.Fatalf("pushWait returned %v on a full outbox", err)
		case <-time.After(50 * time.Millisecond):
		}

		got, err := o.take(nil)
		require.NoError(t, err)
		require.Equal(t, []uint64{1}, seqs(got))
		select {
		case err := <-done:
			require.NoError(t, err)
		case <-time.After(2 * time.Second):
			t.Fatal("pushWait did not return after a take made room")
		}
		got, err = o.take(got)
		require.NoError(t, err)
		require.Equal(t, []uint64{2}, seqs(got))
	})

	t.Run("returns the close error when closed while waiting", func(t *testing.T) {
		t.Parallel()
		o := newOutbox(1)
		require.True(t, o.push(ev(1, "a", created)))
		done := make(chan error, 1)
		go func() { done <- o.pushWait(context.Background(), ev(2, "b", created)) }()
		time.Sleep(10 * time.Millisecond)
		closeErr := errors.New("gone")
		o.close(closeErr)
		select {
		case err := <-done:
			require.ErrorIs(t, err, closeErr)
		case <-time.After(2 * time.Second):
			t.Fatal("pushWait did not return after close")
		}
		require.ErrorIs(t, o.pushWait(context.Background(), ev(3, "c", created)), closeErr)
	})

	t.Run("returns when its context ends", func(t *testing.T) {
		t.Parallel()
		o := newOutbox(1)
		require.True(t, o.push(ev(1, "a", created)))
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		defer cancel()
		require.ErrorIs(t, o.pushWait(ctx, ev(2, "b", created)), context.DeadlineExceeded)
		got, err := o.take(nil)
		require.NoError(t, err)
		require.Equal(t, []uint64{1}, seqs(got))
	})
}

func TestOutbox_FallsBehindThenAsksForAReplayOnce(t *testing.T) {
	t.Parallel()
	o := newOutbox(2)
	calls := 0
	o.behind = func() { calls++ }
	o.offer(ev(1, "a", created))
	o.offer(ev(2, "a", started))
	o.offer(ev(3, "a", completed)) // full: the outbox falls behind, and drops what follows
	o.offer(ev(4, "b", created))
	require.Zero(t, calls, "not before the client has taken what is queued")

	got, err := o.take(nil)
	require.NoError(t, err)
	require.Equal(t, []uint64{1, 2}, seqs(got))
	require.Equal(t, 1, calls, "the take that empties it asks for the replay")

	from, to, ok := o.startReplay(false, 0)
	require.True(t, ok)
	require.Equal(t, uint64(3), from, "from just after what was queued")
	require.Equal(t, uint64(4), to, "to the last event offered")
	o.offer(ev(5, "b", started)) // held while replaying
	require.False(t, o.finishReplay())
	got, err = o.take(got)
	require.NoError(t, err)
	require.Equal(t, []uint64{5}, seqs(got), "the held event follows the replay")
	require.Equal(t, 1, calls, "asked once")
}

func TestOutbox_Close(t *testing.T) {
	t.Parallel()
	o := newOutbox(4)
	require.True(t, o.push(ev(1, "a", created)))
	require.True(t, o.push(ev(2, "a", progress)))
	closeErr := errors.New("gone")
	o.close(closeErr)
	o.close(errors.New("a second close"))
	select {
	case <-o.signal:
	default:
		t.Fatal("close must wake the send loop")
	}
	require.True(t, o.push(ev(3, "a", completed)), "a push after close is dropped, not refused")

	got, err := o.take(nil)
	require.NoError(t, err, "what was queued is taken first")
	require.Equal(t, []uint64{1, 2}, seqs(got))

	got, err = o.take(got)
	require.ErrorIs(t, err, closeErr, "then the first close error")
	require.Empty(t, got)
}
