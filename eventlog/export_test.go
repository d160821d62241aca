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
