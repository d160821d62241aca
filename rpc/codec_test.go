package rpc

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"

	"github.com/taskhub/taskhub"
)

func eventResponse(progress float64) *taskhubv1.WatchTasksResponse {
	return &taskhubv1.WatchTasksResponse{Message: &taskhubv1.WatchTasksResponse_Event{Event: &taskhubv1.TaskEvent{
		Seq: 7, Kind: taskhubv1.EventKind_EVENT_KIND_PROGRESS,
		Task: &taskhubv1.Task{Id: "01JCD9BTRVXTXNMFRG9EBFQXZG", Owner: "alice", Prompt: "a lighthouse at dawn", Mode: "demo",
			State: taskhubv1.TaskState_TASK_STATE_RUNNING, Progress: progress, Message: "denoising 12/50"},
	}}}
}

// TestMessageCodec_EncodesAMessageOnce: a taskhub.Message is encoded once per encoding, however
// many streams send it; each gets its own copy of the bytes; other messages encode as usual.
func TestMessageCodec_EncodesAMessageOnce(t *testing.T) {
	t.Parallel()
	for _, c := range []messageCodec{{binaryCodec{}, false}, {strictJSON{"json"}, true}} {
		r := eventResponse(24)
		m := taskhub.NewMessage(r)
		first, err := c.MarshalAppend([]byte("head:"), m)
		require.NoError(t, err)
		require.True(t, bytes.HasPrefix(first, []byte("head:")), "appends to the caller's buffer")
		back := &taskhubv1.WatchTasksResponse{}
		require.NoError(t, c.Unmarshal(first[len("head:"):], back))
		require.True(t, proto.Equal(r, back), "the encoding is the message's")

		// A message is never changed once made; if it were, a second stream would still get
		// the first encoding: proof that it is shared, not redone.
		r.GetEvent().Task.Progress = 99
		again, err := c.MarshalAppend(nil, m)
		require.NoError(t, err)
		require.Equal(t, first[len("head:"):], again)

		// What a caller gets is its own: connect recycles its buffers.
		again[0] ^= 0xff
		third, err := c.MarshalAppend(nil, m)
		require.NoError(t, err)
		require.Equal(t, first[len("head:"):], third)

		// A plain message is encoded as it is.
		plain, err := c.MarshalAppend(nil, r)
		require.NoError(t, err)
		require.NotEqual(t, third, plain)
	}
	// The two encodings of one message are each its own.
	m := taskhub.NewMessage(eventResponse(5))
	bin, err := messageCodec{binaryCodec{}, false}.Marshal(m)
	require.NoError(t, err)
	js, err := messageCodec{strictJSON{"json"}, true}.Marshal(m)
	require.NoError(t, err)
	require.NotEqual(t, bin, js)
	require.Contains(t, string(js), `"progress":5`)
}

// BenchmarkEventEncoding sends one event to 1000 streams: as a taskhub.Message, encoded once
// and copied (shared), or as the bare message, encoded per stream (fresh), as Connect's own
// codec would.
func BenchmarkEventEncoding(b *testing.B) {
	c := messageCodec{binaryCodec{}, false}
	for _, tc := range []struct {
		name string
		msg  func() any
	}{{"shared", func() any { return taskhub.NewMessage(eventResponse(50)) }}, {"fresh", func() any { return eventResponse(50) }}} {
		b.Run(tc.name, func(b *testing.B) {
			buf := make([]byte, 0, 1024)
			b.ReportAllocs()
			for range b.N {
				m := tc.msg()
				for range 1000 {
					var err error
					if buf, err = c.MarshalAppend(buf[:0], m); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/1000, "ns/stream")
		})
	}
}

// BenchmarkMessageCodec_EventJSON encodes a running task's progress event, with its times, as a
// JSON watcher's message: once per event, kept while its watchers send it.
func BenchmarkMessageCodec_EventJSON(b *testing.B) {
	c := messageCodec{strictJSON{"json"}, true}
	r := eventResponse(42)
	ev := r.GetEvent()
	now := timestamppb.Now()
	ev.Time = now
	ev.Task.CreatedAt, ev.Task.UpdatedAt, ev.Task.StartedAt, ev.Task.ProgressedAt = now, now, now, now
	ev.Task.WorkerId, ev.Task.Attempt, ev.Task.Seq = "gpu-worker-17", 1, 7
	ev.Task.Params = map[string]string{"size": "1024x1024", "steps": "50"}
	b.ReportAllocs()
	var n int
	for range b.N {
		out, err := c.encode(r)
		if err != nil {
			b.Fatal(err)
		}
		n = len(out)
	}
	b.ReportMetric(float64(n), "bytes/event")
}
