package rpc

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"
)

func eventResponse(progress float64) *taskhubv1.WatchTasksResponse {
	return &taskhubv1.WatchTasksResponse{Message: &taskhubv1.WatchTasksResponse_Event{Event: &taskhubv1.TaskEvent{
		Seq: 7, Kind: taskhubv1.EventKind_EVENT_KIND_PROGRESS,
		Task: &taskhubv1.Task{Id: "01JCD9BTRVXTXNMFRG9EBFQXZG", Owner: "alice", Prompt: "a lighthouse at dawn", Mode: "demo",
			State: taskhubv1.TaskState_TASK_STATE_RUNNING, Progress: progress, Message: "denoising 12/50"},
	}}}
}

func TestSharedEvents_EncodesAnEventOnce(t *testing.T) {
	t.Parallel()
	for _, c := range []*sharedEvents{newSharedEvents(binaryCodec{}), newSharedEvents(strictJSON{"json"})} {
		r := eventResponse(24)
		first, err := c.MarshalAppend([]byte("head:"), r)
		require.NoError(t, err)
		require.True(t, bytes.HasPrefix(first, []byte("head:")), "appends to the caller's buffer")

		// The hub never changes a shared event; if it did, a second stream would still get the
		// first encoding: proof that it is shared, not redone.
		r.GetEvent().Task.Progress = 99
		again, err := c.MarshalAppend(nil, r)
		require.NoError(t, err)
		require.Equal(t, first[len("head:"):], again)

		// What a caller gets is its own: connect recycles its buffers.
		again[0] ^= 0xff
		third, err := c.MarshalAppend(nil, r)
		require.NoError(t, err)
		require.Equal(t, first[len("head:"):], third)

		// Another message with the same content is encoded afresh; snapshots are not shared.
		other := eventResponse(99)
		got, err := c.MarshalAppend(nil, other)
		require.NoError(t, err)
		require.NotEqual(t, third, got)
		back := &taskhubv1.WatchTasksResponse{}
		require.NoError(t, c.Unmarshal(got, back))
		require.True(t, proto.Equal(other, back))

		snap := &taskhubv1.WatchTasksResponse{Message: &taskhubv1.WatchTasksResponse_Snapshot{Snapshot: &taskhubv1.Snapshot{Seq: 1}}}
		s1, err := c.MarshalAppend(nil, snap)
		require.NoError(t, err)
		snap.GetSnapshot().Seq = 2
		s2, err := c.MarshalAppend(nil, snap)
		require.NoError(t, err)
		require.NotEqual(t, s1, s2)
	}
}

// BenchmarkEventEncoding sends one event to 1000 streams: encoded once and copied (shared), or
// encoded per stream (fresh), as Connect's own codec would.
func BenchmarkEventEncoding(b *testing.B) {
	for _, tc := range []struct {
		name  string
		codec appendCodec
	}{{"shared", newSharedEvents(binaryCodec{})}, {"fresh", binaryCodec{}}} {
		b.Run(tc.name, func(b *testing.B) {
			buf := make([]byte, 0, 1024)
			b.ReportAllocs()
			for range b.N {
				r := eventResponse(50)
				for range 1000 {
					var err error
					if buf, err = tc.codec.MarshalAppend(buf[:0], r); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/1000, "ns/stream")
		})
	}
}
