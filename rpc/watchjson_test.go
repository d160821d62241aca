package rpc

import (
	"bytes"
	"encoding/json"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"
)

// TestWatchJSON: appendWatchJSON writes what protojson writes, byte for byte (less protojson's
// random spaces), for events, snapshots and heartbeats whose every field, at any depth, is
// filled at random from the messages' descriptors: a field added to the messages and not to
// appendWatchJSON fails it.
func TestWatchJSON(t *testing.T) {
	t.Parallel()
	// The response holds nothing but its oneof: appendWatchJSON writes only its message.
	resp := (&taskhubv1.WatchTasksResponse{}).ProtoReflect().Descriptor().Fields()
	for i := range resp.Len() {
		require.NotNil(t, resp.Get(i).ContainingOneof(), "WatchTasksResponse.%s is outside its oneof: appendWatchJSON would drop it", resp.Get(i).Name())
	}

	r := rand.New(rand.NewPCG(1, 2))
	seen := map[protoreflect.FullName]bool{}
	messages := map[protoreflect.FullName]protoreflect.MessageDescriptor{}
	for i := range 3000 {
		var w *taskhubv1.WatchTasksResponse
		switch i % 3 {
		case 0:
			ev := &taskhubv1.TaskEvent{}
			fill(t, r, ev.ProtoReflect(), seen, messages)
			w = &taskhubv1.WatchTasksResponse{Message: &taskhubv1.WatchTasksResponse_Event{Event: ev}}
		case 1:
			s := &taskhubv1.Snapshot{}
			fill(t, r, s.ProtoReflect(), seen, messages)
			w = &taskhubv1.WatchTasksResponse{Message: &taskhubv1.WatchTasksResponse_Snapshot{Snapshot: s}}
		case 2:
			h := &taskhubv1.Heartbeat{}
			fill(t, r, h.ProtoReflect(), seen, messages)
			w = &taskhubv1.WatchTasksResponse{Message: &taskhubv1.WatchTasksResponse_Heartbeat{Heartbeat: h}}
		}
		requireSameWatchJSON(t, w, i)
	}
	for i := range resp.Len() { // every kind of message the response holds was filled
		require.Contains(t, messages, resp.Get(i).Message().FullName())
	}
	for _, md := range messages {
		for i := range md.Fields().Len() {
			require.True(t, seen[md.Fields().Get(i).FullName()], "field %s was never filled", md.Fields().Get(i).FullName())
		}
	}

	// The values at the edges of their forms.
	for _, p := range []float64{0.1, 1e-6, 1e-7, 99.99999999999999, 100, 1e21, 1e22, math.SmallestNonzeroFloat64, math.Copysign(0, -1), math.NaN(), math.Inf(1)} {
		requireSameJSON(t, &taskhubv1.TaskEvent{Task: &taskhubv1.Task{Progress: p}}, p)
	}
	for _, nanos := range []int32{0, 1, 999, 1000, 1_000_000, 120_000_000, 999_999_999} {
		ts := &timestamppb.Timestamp{Seconds: 1_795_000_000, Nanos: nanos}
		requireSameJSON(t, &taskhubv1.TaskEvent{Time: ts, Task: &taskhubv1.Task{CreatedAt: &timestamppb.Timestamp{Seconds: -62135596800}}}, nanos)
	}
	requireSameJSON(t, &taskhubv1.TaskEvent{Task: &taskhubv1.Task{Message: "\"\\\b\f\n\r\t\x00\x1f\x7f<>&\u2028\u2029é🦊"}}, "escapes")
	requireSameJSON(t, &taskhubv1.TaskEvent{Kind: 42, Task: &taskhubv1.Task{State: 9, Webhook: &taskhubv1.Webhook{Events: []taskhubv1.EventKind{0, 3, 77}}}}, "unknown enum values")
	requireSameJSON(t, &taskhubv1.TaskEvent{}, "empty")
	requireSameWatchJSON(t, &taskhubv1.WatchTasksResponse{Message: &taskhubv1.WatchTasksResponse_Snapshot{Snapshot: &taskhubv1.Snapshot{}}}, "an empty snapshot")
	requireSameWatchJSON(t, &taskhubv1.WatchTasksResponse{Message: &taskhubv1.WatchTasksResponse_Snapshot{Snapshot: &taskhubv1.Snapshot{
		Tasks: []*taskhubv1.Task{{}, {Id: "b"}, {}}}}}, "a snapshot of empty tasks")

	// What protojson refuses, or has no message to write, it leaves to protojson.
	event := func(e *taskhubv1.TaskEvent) *taskhubv1.WatchTasksResponse {
		return &taskhubv1.WatchTasksResponse{Message: &taskhubv1.WatchTasksResponse_Event{Event: e}}
	}
	for name, w := range map[string]*taskhubv1.WatchTasksResponse{
		"not UTF-8":                   event(&taskhubv1.TaskEvent{Task: &taskhubv1.Task{Message: "\xff"}}),
		"past year 9999":              event(&taskhubv1.TaskEvent{Time: &timestamppb.Timestamp{Seconds: 253402300800}}),
		"negative nanos":              event(&taskhubv1.TaskEvent{Time: &timestamppb.Timestamp{Nanos: -1}}),
		"a snapshot's task not UTF-8": {Message: &taskhubv1.WatchTasksResponse_Snapshot{Snapshot: &taskhubv1.Snapshot{Tasks: []*taskhubv1.Task{{Prompt: "\xc0"}}}}},
		"no message":                  {},
		"a nil event":                 event(nil),
	} {
		_, ok := appendWatchJSON(nil, w)
		require.False(t, ok, name)
	}
}

// TestMessageCodec_EventJSON: the JSON codec sends an event as appendWatchJSON writes it, and
// leaves to protojson what appendWatchJSON does not write, with protojson's error.
func TestMessageCodec_EventJSON(t *testing.T) {
	t.Parallel()
	c := messageCodec{strictJSON{"json"}, true}
	r := eventResponse(50)
	got, err := c.encode(r)
	require.NoError(t, err)
	want, _ := appendWatchJSON(nil, r)
	require.Equal(t, string(want), string(got))

	bad := eventResponse(50)
	bad.GetEvent().Task.Message = "\xff"
	_, err = c.encode(bad)
	require.ErrorContains(t, err, "UTF-8")
	_, err = c.encode(&taskhubv1.WatchTasksResponse{Message: &taskhubv1.WatchTasksResponse_Event{Event: &taskhubv1.TaskEvent{Time: &timestamppb.Timestamp{Seconds: 253402300800}}}})
	require.Error(t, err)
}

// requireSameJSON checks that appendWatchJSON writes the JSON protojson writes for the event.
func requireSameJSON(t *testing.T, ev *taskhubv1.TaskEvent, name any) {
	t.Helper()
	requireSameWatchJSON(t, &taskhubv1.WatchTasksResponse{Message: &taskhubv1.WatchTasksResponse_Event{Event: ev}}, name)
}

// requireSameWatchJSON checks that appendWatchJSON writes the JSON protojson writes for w.
func requireSameWatchJSON(t *testing.T, w *taskhubv1.WatchTasksResponse, name any) {
	t.Helper()
	want, err := protojson.Marshal(w)
	require.NoError(t, err, "%v", name)
	got, ok := appendWatchJSON([]byte("head"), w)
	require.True(t, ok, "%v", name)
	require.True(t, bytes.HasPrefix(got, []byte("head")), "appends")
	got = got[4:]
	require.True(t, json.Valid(got), "%v: not JSON: %s", name, got)
	// protojson puts a space after some commas at random; without it, the same bytes.
	var compact bytes.Buffer
	require.NoError(t, json.Compact(&compact, want))
	require.Equal(t, compact.String(), string(got), "%v", name)
}

// fill sets each field of m, each at random, from its descriptor, and records which it set
// and the messages it met.
func fill(t *testing.T, r *rand.Rand, m protoreflect.Message, seen map[protoreflect.FullName]bool, messages map[protoreflect.FullName]protoreflect.MessageDescriptor) {
	messages[m.Descriptor().FullName()] = m.Descriptor()
	fields := m.Descriptor().Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		if r.IntN(3) == 0 {
			continue
		}
		defer func() { seen[fd.FullName()] = m.Has(fd) || seen[fd.FullName()] }()
		switch {
		case fd.IsMap():
			require.Equal(t, protoreflect.StringKind, fd.MapKey().Kind(), "a map not of strings: extend fill")
			mp := m.Mutable(fd).Map()
			for range 1 + r.IntN(4) {
				mp.Set(protoreflect.ValueOfString(randString(r)).MapKey(), scalar(t, r, fd.MapValue()))
			}
		case fd.IsList() && fd.Message() != nil:
			l := m.Mutable(fd).List()
			for range 1 + r.IntN(3) {
				e := l.NewElement()
				fill(t, r, e.Message(), seen, messages)
				l.Append(e)
			}
		case fd.IsList():
			l := m.Mutable(fd).List()
			for range 1 + r.IntN(3) {
				l.Append(scalar(t, r, fd))
			}
		case fd.Message() != nil && fd.Message().FullName() == "google.protobuf.Timestamp":
			ts := &timestamppb.Timestamp{Seconds: r.Int64N(4_000_000_000), Nanos: []int32{0, 5_000_000, 123_456_000, int32(r.IntN(1e9))}[r.IntN(4)]}
			m.Set(fd, protoreflect.ValueOfMessage(ts.ProtoReflect()))
		case fd.Message() != nil:
			fill(t, r, m.Mutable(fd).Message(), seen, messages)
		default:
			m.Set(fd, scalar(t, r, fd))
		}
	}
}

func scalar(t *testing.T, r *rand.Rand, fd protoreflect.FieldDescriptor) protoreflect.Value {
	switch fd.Kind() {
	case protoreflect.StringKind:
		return protoreflect.ValueOfString(randString(r))
	case protoreflect.Uint64Kind:
		return protoreflect.ValueOfUint64(r.Uint64() >> r.IntN(64))
	case protoreflect.Uint32Kind:
		return protoreflect.ValueOfUint32(r.Uint32() >> r.IntN(32))
	case protoreflect.BoolKind:
		return protoreflect.ValueOfBool(r.IntN(2) == 0)
	case protoreflect.DoubleKind:
		return protoreflect.ValueOfFloat64([]float64{0, r.Float64() * 100, float64(r.IntN(101)), 1e-7 * r.Float64(), 0.1}[r.IntN(5)])
	case protoreflect.EnumKind:
		values := fd.Enum().Values()
		if r.IntN(10) == 0 {
			return protoreflect.ValueOfEnum(protoreflect.EnumNumber(100 + r.IntN(10))) // unknown to this schema
		}
		return protoreflect.ValueOfEnum(values.Get(r.IntN(values.Len())).Number())
	}
	t.Fatalf("field %s of kind %s: extend fill and appendWatchJSON", fd.FullName(), fd.Kind())
	return protoreflect.Value{}
}

func randString(r *rand.Rand) string {
	const pieces = "aZ09 _-.:/\"\\\b\f\n\r\t\x00\x01\x1f\x7f<>&é"
	var b strings.Builder
	for range r.IntN(12) {
		switch r.IntN(8) {
		case 0:
			b.WriteString("\u2028🦊日本")
		default:
			b.WriteByte(pieces[r.IntN(len(pieces)-2)]) // the ASCII part
		}
	}
	return b.String()
}

// BenchmarkEventJSON is an event's JSON, written by appendWatchJSON or by protojson.
func BenchmarkEventJSON(b *testing.B) {
	r := eventResponse(50)
	ev := r.GetEvent()
	now := timestamppb.Now()
	ev.Time, ev.Task.CreatedAt, ev.Task.UpdatedAt, ev.Task.StartedAt, ev.Task.ProgressedAt = now, now, now, now, now
	ev.Task.Attempt, ev.Task.WorkerId, ev.Task.Seq, ev.Task.Params = 1, "w1", 7, map[string]string{"steps": "50"}
	b.Run("appendWatchJSON", func(b *testing.B) {
		b.ReportAllocs()
		buf := make([]byte, 0, 1024)
		for b.Loop() {
			buf, _ = appendWatchJSON(buf[:0], r)
		}
	})
	b.Run("protojson", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := protojson.Marshal(r); err != nil {
				b.Fatal(err)
			}
		}
	})
}
