package main

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// push is a push of publisher p's k-th message, published at t, as Centrifugo sends it: the
// data as the publishers wrote it.
func push(p int, k, t int64) string {
	body := string(appendPublication([]byte(`{"channel":"c","data":{"p":`), p, k, t))
	data := body[len(`{"channel":"c","data":`) : len(body)-1]
	return fmt.Sprintf(`{"push":{"channel":"c","pub":{"data":%s}}}`, data)
}

func TestParsePublication(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		line    string
		p, k, t int64
		ok      bool
	}{
		{"as published", push(3, 41, 1_700_000_000_123_456_789), 3, 41, 1_700_000_000_123_456_789, true},
		{"with an offset", `{"push":{"channel":"c","pub":{"data":{"p":0,"k":0,"t":5},"offset":9}}}`, 0, 0, 5, true},
		{"a reply", `{"id":2,"subscribe":{}}`, 0, 0, 0, false},
		{"a join", `{"push":{"channel":"c","join":{"info":{"client":"x"}}}}`, 0, 0, 0, false},
		{"other data", `{"push":{"channel":"c","pub":{"data":{"x":1}}}}`, 0, 0, 0, false},
		{"keys in another order", `{"push":{"channel":"c","pub":{"data":{"k":1,"p":0,"t":5}}}}`, 0, 0, 0, false},
		{"a negative number", `{"push":{"channel":"c","pub":{"data":{"p":-1,"k":1,"t":5}}}}`, 0, 0, 0, false},
		{"more data", `{"push":{"channel":"c","pub":{"data":{"p":0,"k":1,"t":5,"x":1}}}}`, 0, 0, 0, false},
		{"cut short", `{"push":{"channel":"c","pub":{"data":{"p":0,"k":1,"t":`, 0, 0, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p, k, ts, ok := parsePublication([]byte(tc.line))
			require.Equal(t, tc.ok, ok)
			require.Equal(t, [3]int64{tc.p, tc.k, tc.t}, [3]int64{p, k, ts})
		})
	}
}

// TestCentrifugoWatcher_Message: a WebSocket message holds replies a line each; pings are
// counted and returned for answering, publications counted with their latency, and a
// publisher's message repeated or out of order, an unknown publisher or anything else are
// problems. Gaps are not: a failed publish leaves one, and the tally counts what is missing.
func TestCentrifugoWatcher_Message(t *testing.T) {
	t.Parallel()
	now := time.Now()
	at := now.Add(-3 * time.Millisecond).UnixNano()
	w := newCentrifugoWatcher(7, 2)
	msg := push(0, 0, at) + "\n{}\n" + push(1, 0, at) + "\n" + push(0, 1, at) + "\n" + push(0, 3, at)
	require.Equal(t, 1, w.message([]byte(msg), now))
	require.Equal(t, 0, w.message([]byte(push(1, 1, at)), now))
	require.Zero(t, w.problems.n, w.problems.list)
	require.EqualValues(t, 5, w.received)
	require.EqualValues(t, 5, w.got.Load())
	require.EqualValues(t, 1, w.pings)
	require.Equal(t, []int64{4, 2}, w.next)
	require.Len(t, w.latency, 5)
	for _, l := range w.latency {
		require.Equal(t, 3*time.Millisecond, l)
	}

	msg = push(0, 3, at) + "\n" + push(1, 0, at) + "\n" + push(2, 0, at) + "\n" + `{"id":3,"error":{"code":100}}` + "\n{}\n{}\n"
	require.Equal(t, 2, w.message([]byte(msg), now))
	require.Equal(t, []string{
		"watcher 7: publisher 0's message 3 after its message 3: repeated or out of order",
		"watcher 7: publisher 1's message 0 after its message 1: repeated or out of order",
		"watcher 7: a message of publisher 2, of 2",
		`watcher 7: an unexpected message "{\"id\":3,\"error\":{\"code\":100}}"`,
	}, w.problems.list)
	require.EqualValues(t, 7, w.received)
	require.EqualValues(t, 3, w.pings)
}
