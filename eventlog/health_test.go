package eventlog_test

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	storagev1 "github.com/taskhub/taskhub/gen/taskhub/storage/v1"
	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"

	"github.com/taskhub/taskhub/eventlog"
	"github.com/taskhub/taskhub/internal/fdtest"
)

// TestLog_StoreFailureAndRecovery runs the log out of file descriptors, as a flood of
// connections did before taskhub capped them: a store fails a write and refuses every write
// after it. Readiness must be red while writes fail and green again once they work; the embedded
// server is restarted to reopen its stores; nothing acknowledged is lost, and nothing refused
// is stored. Not parallel: it takes every descriptor of the test process.
func TestLog_StoreFailureAndRecovery(t *testing.T) {
	cfg := eventlog.Config{DataDir: t.TempDir(), AckWait: time.Second,
		SyncInterval: 50 * time.Millisecond, RestartAfter: time.Second, Timeout: 2 * time.Second,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	// Stopping the log writes each stream's state file, which the periodic sync opens: once it
	// exists, a sync without descriptors fails and sets the store's write error.
	l, err := eventlog.Open(t.Context(), cfg)
	require.NoError(t, err)
	l.Close()
	l, err = eventlog.Open(t.Context(), cfg)
	require.NoError(t, err)
	defer l.Close()
	ctx := t.Context()
	require.NoError(t, l.Ready())

	acked, refused := map[string]uint64{}, map[string]bool{}
	n := 0
	appendOne := func() error {
		n++
		id := fmt.Sprintf("T%04d", n)
		seq, err := l.Append(ctx, record(id, taskhubv1.EventKind_EVENT_KIND_CREATED, taskhubv1.TaskState_TASK_STATE_QUEUED), 0)
		switch {
		case err == nil:
			acked[id] = seq
		case errors.Is(err, eventlog.ErrUnavailable):
			refused[id] = true
		default:
			require.ErrorIs(t, err, eventlog.ErrUncertain)
		}
		return err
	}
	for range 5 {
		require.NoError(t, appendOne())
	}

	release := fdtest.Exhaust(t)
	released := false
	defer func() {
		if !released {
			release()
		}
	}()
	// Writes fail within a few sync intervals; from then on readiness is red.
	deadline := time.Now().Add(20 * time.Second)
	for l.Ready() == nil {
		require.True(t, time.Now().Before(deadline), "writes never failed while the process had no file descriptors")
		_ = appendOne()
		time.Sleep(20 * time.Millisecond)
	}
	failedAt := time.Now()
	// While red, writes are refused at once, and certainly not stored.
	for range 20 {
		if err := appendOne(); err == nil {
			require.NoError(t, l.Ready(), "a write succeeded while readiness was red")
		}
		time.Sleep(20 * time.Millisecond)
	}
	release()
	released = true

	select {
	case <-l.Recovered():
	case <-time.After(60 * time.Second):
		t.Fatalf("writes did not work again within a minute of the descriptors coming back: %v", l.Ready())
	}
	t.Logf("writes failed for %v (restart after 1s, then backing off)", time.Since(failedAt).Round(time.Millisecond))
	require.Eventually(t, func() bool { return appendOne() == nil }, 10*time.Second, 50*time.Millisecond)
	require.NoError(t, l.Ready())

	for id, seq := range acked {
		e, err := l.Last(ctx, "alice", id)
		require.NoError(t, err, "acknowledged append of %s lost", id)
		require.Equal(t, seq, e.Seq)
	}
	for id := range refused {
		_, err := l.Last(ctx, "alice", id)
		require.ErrorIs(t, err, eventlog.ErrNotFound, "%s was refused but is stored", id)
	}
	t.Logf("%d appends acknowledged, %d refused", len(acked), len(refused))
}

func TestLog_ClaimKey(t *testing.T) {
	t.Parallel()
	l := setup(t)
	ctx := t.Context()
	id, err := l.ClaimKey(ctx, "alice", "k1", "T1")
	require.NoError(t, err)
	require.Equal(t, "T1", id, "the first create binds the key")
	id, err = l.ClaimKey(ctx, "alice", "k1", "T2")
	require.NoError(t, err)
	require.Equal(t, "T1", id, "a retry gets the first create's task")
	id, err = l.ClaimKey(ctx, "bob", "k1", "T3")
	require.NoError(t, err)
	require.Equal(t, "T3", id, "keys are per user")
}

func TestLog_IdleQueueConsumerGoesAwayAndComesBack(t *testing.T) {
	t.Parallel()
	l, err := eventlog.Open(t.Context(), eventlog.Config{DataDir: t.TempDir(), AckWait: time.Second, QueueIdle: 500 * time.Millisecond})
	require.NoError(t, err)
	defer l.Close()
	ctx := t.Context()
	requireEnqueued(t, l, "render", "T1")
	// Nobody claims: JetStream removes the idle consumer; the message stays.
	require.Eventually(t, func() bool {
		modes, err := l.QueueModes(ctx)
		require.NoError(t, err)
		return len(modes) == 0
	}, 10*time.Second, 50*time.Millisecond)
	_, err = l.Fetch(ctx, "render", 1, 0)
	require.ErrorIs(t, err, eventlog.ErrNoQueue)
	queued, err := l.Queued(ctx)
	require.NoError(t, err)
	require.Equal(t, map[string]bool{"T1": true}, queued)

	require.NoError(t, l.EnsureQueue(ctx, "render"))
	ds, err := l.Fetch(ctx, "render", 1, time.Second)
	require.NoError(t, err)
	require.Len(t, ds, 1)
	require.Equal(t, "T1", ds[0].TaskID)
}

func TestLog_Sessions(t *testing.T) {
	t.Parallel()
	l := setup(t)
	ctx := t.Context()
	_, err := l.Session(ctx, "cookie-1")
	require.ErrorIs(t, err, eventlog.ErrNotFound)
	require.NoError(t, l.PutSession(ctx, "cookie-1", &storagev1.Session{User: "alice", TokenSha256: []byte{1, 2}}))
	s, err := l.Session(ctx, "cookie-1")
	require.NoError(t, err)
	require.Equal(t, "alice", s.User)
	_, err = l.Session(ctx, "cookie-2")
	require.ErrorIs(t, err, eventlog.ErrNotFound)
	require.NoError(t, l.DeleteSession(ctx, "cookie-1"))
	_, err = l.Session(ctx, "cookie-1")
	require.ErrorIs(t, err, eventlog.ErrNotFound)
	require.NoError(t, l.DeleteSession(ctx, "never"))
}
