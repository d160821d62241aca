package eventlog

import (
	"testing"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
)

// ForgetLiveIndex leaves l's live index as a taskhub from before the index left it: no
// markers, and no record that the index is complete.
func ForgetLiveIndex(t *testing.T, l *Log) {
	require.NoError(t, l.meta.Purge(t.Context(), jetstream.WithPurgeSubject(livePrefix+">")))
	require.NoError(t, l.meta.Purge(t.Context(), jetstream.WithPurgeSubject(liveFilled)))
}

// StallFollowers stops the consumers of l's followers without telling them: what a pull
// consumer that asks the server for nothing more looks like to them (see followStall).
func StallFollowers(l *Log) {
	l.followers.Range(func(k, _ any) bool {
		f := k.(*follower)
		f.mu.Lock()
		f.cc.Stop()
		f.mu.Unlock()
		return true
	})
}

// OwnHeld is what l holds of its own records for its followers: the records whose append
// awaits its acknowledgement, and the bytes held in all.
func OwnHeld(l *Log) (waiting, bytes int) {
	l.own.mu.Lock()
	defer l.own.mu.Unlock()
	return len(l.own.waiting), l.own.bytes
}

// Batches tells how l's appends went in batches: how many are queued, how many batches were
// sent and how many appends in them (zeros when l sends no batches).
func Batches(l *Log) (queued int, batches, appends uint64) {
	batches, appends = l.Batches()
	if l.batch != nil {
		l.batch.mu.Lock()
		defer l.batch.mu.Unlock()
		queued = len(l.batch.queue)
	}
	return queued, batches, appends
}

// HoldBatches keeps l's appends queued, as if a batch were in flight, until release: they then
// go together, in the order they were made.
func HoldBatches(l *Log) (release func()) {
	b := l.batch
	b.mu.Lock()
	b.running = true
	b.mu.Unlock()
	return func() { go b.run() }
}

// DisallowBatches turns fast batch publishing off in l's event stream, behind l's back.
func DisallowBatches(t *testing.T, l *Log) {
	cfg := l.events.CachedInfo().Config
	cfg.AllowBatchPublish = false
	_, err := l.js.UpdateStream(t.Context(), cfg)
	require.NoError(t, err)
}
