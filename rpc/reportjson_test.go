package rpc

import (
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"
)

var reportSeeds = []string{
	`{"taskId":"T1","leaseToken":"L1","progress":40,"message":"row 400 of 1000"}`,
	`{"task_id":"T1","lease_token":"L1","progress":-0.5e-3,"message":""}`,
	` { "taskId" : "T1" , "progress" : 12.5 } `,
	`{}`,
	`{"reports":[]}`,
	`{"reports":[{"taskId":"a","leaseToken":"b","progress":1},{"taskId":"c","progress":2E+2,"message":"é ✓"}]}`,
	// Left to protojson: an escape, a field twice, unknown or null, the progress as a string,
	// a number JSON does not allow, trailing bytes, invalid UTF-8.
	`{"taskId":"T\u0031","progress":1}`,
	`{"taskId":"a","task_id":"b"}`,
	`{"taskID":"a"}`,
	`{"message":null}`,
	`{"progress":"NaN"}`,
	`{"progress":01}`,
	`{"progress":1e400}`,
	`{"taskId":"a"} x`,
	"{\"message\":\"\xff\"}",
	`{"reports":[{"taskId":"a"},]}`,
	`{"reports":null}`,
}

// TestReportJSON: the plain form is read here, and as protojson reads it; anything else is
// left to protojson.
func TestReportJSON(t *testing.T) {
	var m taskhubv1.ReportProgressRequest
	require.True(t, decodeReport([]byte(reportSeeds[0]), &m))
	require.True(t, proto.Equal(&taskhubv1.ReportProgressRequest{TaskId: "T1", LeaseToken: "L1", Progress: 40, Message: "row 400 of 1000"}, &m))
	var b taskhubv1.BatchReportProgressRequest
	require.True(t, decodeBatch([]byte(reportSeeds[5]), &b))
	require.Len(t, b.Reports, 2)
	require.Equal(t, 200.0, b.Reports[1].Progress)
	require.Equal(t, "é ✓", b.Reports[1].Message)
	for _, s := range reportSeeds[6:] {
		require.False(t, decodeReport([]byte(s), &taskhubv1.ReportProgressRequest{}), "%s", s)
		require.False(t, decodeBatch([]byte(s), &taskhubv1.BatchReportProgressRequest{}), "%s", s)
	}
	for _, s := range reportSeeds {
		checkReportJSON(t, []byte(s))
	}
}

// FuzzReportJSON: whatever body the plain-form reader reads, protojson reads too, into the same
// message; and the codec answers what protojson answers.
func FuzzReportJSON(f *testing.F) {
	for _, s := range reportSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(checkReportJSON)
}

func checkReportJSON(t *testing.T, body []byte) {
	one, batch := &taskhubv1.ReportProgressRequest{}, &taskhubv1.BatchReportProgressRequest{}
	for _, c := range []struct {
		fast   func() bool
		m      proto.Message
		viaPJ  proto.Message
		viaSJ  proto.Message
		reader string
	}{
		{func() bool { return decodeReport(body, one) }, one, &taskhubv1.ReportProgressRequest{}, &taskhubv1.ReportProgressRequest{}, "decodeReport"},
		{func() bool { return decodeBatch(body, batch) }, batch, &taskhubv1.BatchReportProgressRequest{}, &taskhubv1.BatchReportProgressRequest{}, "decodeBatch"},
	} {
		pjErr := protojson.Unmarshal(body, c.viaPJ)
		if c.fast() {
			if pjErr != nil {
				t.Fatalf("%s read %q, which protojson refuses: %v", c.reader, body, pjErr)
			}
			if !proto.Equal(c.m, c.viaPJ) {
				t.Fatalf("%s read %q as %v, protojson as %v", c.reader, body, c.m, c.viaPJ)
			}
		}
		// The codec, fast path or not, answers as protojson does.
		sjErr := strictJSON{"json"}.Unmarshal(body, c.viaSJ)
		if (sjErr == nil) != (pjErr == nil) {
			t.Fatalf("%q: the codec says %v, protojson %v", body, sjErr, pjErr)
		}
		if sjErr == nil && !proto.Equal(c.viaSJ, c.viaPJ) {
			t.Fatalf("%q: the codec read %v, protojson %v", body, c.viaSJ, c.viaPJ)
		}
	}
}

func BenchmarkReportJSON(b *testing.B) {
	body := []byte(`{"reports":[` + reportSeeds[0] + `,` + reportSeeds[0] + `,` + reportSeeds[0] + `]}`)
	b.Run("plain", func(b *testing.B) {
		for b.Loop() {
			var m taskhubv1.BatchReportProgressRequest
			if !decodeBatch(body, &m) {
				b.Fatal("not read")
			}
		}
	})
	b.Run("protojson", func(b *testing.B) {
		for b.Loop() {
			var m taskhubv1.BatchReportProgressRequest
			if err := protojson.Unmarshal(body, &m); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// FuzzReportResponseJSON: the answers to reports written by hand are what protojson reads back
// as the same message; what the hand cannot write (an error's text, a timestamp out of range)
// is left to protojson.
func FuzzReportResponseJSON(f *testing.F) {
	f.Add(false, int64(1796630425), int32(0), uint8(3), false)
	f.Add(true, int64(1796630425), int32(123000000), uint8(1), false)
	f.Add(false, int64(1796630425), int32(123456000), uint8(0), false)
	f.Add(true, int64(-62135596800), int32(1), uint8(2), true)
	f.Add(false, int64(253402300800), int32(0), uint8(1), false)
	f.Add(false, int64(0), int32(-1), uint8(1), false)
	f.Fuzz(func(t *testing.T, cancel bool, secs int64, nanos int32, n uint8, withErr bool) {
		ts := &timestamppb.Timestamp{Seconds: secs, Nanos: nanos}
		one := &taskhubv1.ReportProgressResponse{CancelRequested: cancel, LeaseExpiresAt: ts}
		batch := &taskhubv1.BatchReportProgressResponse{}
		for i := range int(n % 8) {
			r := &taskhubv1.ReportProgressResult{CancelRequested: cancel && i%2 == 0}
			if i%3 != 2 {
				r.LeaseExpiresAt = ts
			}
			if withErr && i == 1 {
				r.Error = &taskhubv1.ReportError{Code: "not_found", Message: `task "x" \\ é`}
			}
			batch.Results = append(batch.Results, r)
		}
		for _, m := range []proto.Message{one, batch, &taskhubv1.ReportProgressResponse{}} {
			_, pjErr := protojson.Marshal(m)
			b, ok := appendReportJSON([]byte("prefix"), m)
			if !ok {
				continue
			}
			require.NoError(t, pjErr, "written by hand, refused by protojson: %v", m)
			require.Equal(t, "prefix", string(b[:6]))
			back := m.ProtoReflect().New().Interface()
			require.NoError(t, protojson.Unmarshal(b[6:], back), "%s", b[6:])
			require.True(t, proto.Equal(m, back), "%v written as %s", m, b[6:])
		}
		if withErr && len(batch.Results) > 1 {
			_, ok := appendReportJSON(nil, batch)
			require.False(t, ok, "an error's text is protojson's to write")
		}
	})
}

func BenchmarkReportResponseJSON(b *testing.B) {
	ts := timestamppb.Now()
	m := &taskhubv1.BatchReportProgressResponse{Results: []*taskhubv1.ReportProgressResult{{LeaseExpiresAt: ts}, {LeaseExpiresAt: ts}, {LeaseExpiresAt: ts}}}
	b.Run("plain", func(b *testing.B) {
		for b.Loop() {
			if _, ok := appendReportJSON(nil, m); !ok {
				b.Fatal("not written")
			}
		}
	})
	b.Run("protojson", func(b *testing.B) {
		for b.Loop() {
			if _, err := protojson.Marshal(m); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// FuzzTimestampJSON: a timestamp is written as protojson writes it, byte for byte, and refused
// where protojson refuses it.
func FuzzTimestampJSON(f *testing.F) {
	f.Add(int64(1796630425), int32(0))
	f.Add(int64(1796630425), int32(120000000))
	f.Add(int64(1796630425), int32(123450000))
	f.Add(int64(1796630425), int32(123456789))
	f.Add(int64(-62135596800), int32(1))
	f.Add(int64(253402300799), int32(999999999))
	f.Add(int64(253402300800), int32(0))
	f.Add(int64(0), int32(1000000000))
	f.Fuzz(func(t *testing.T, secs int64, nanos int32) {
		ts := &timestamppb.Timestamp{Seconds: secs, Nanos: nanos}
		want, err := protojson.Marshal(ts)
		got, ok := appendTimestamp([]byte("x"), ts)
		if err != nil {
			require.False(t, ok, "%v: written, but protojson refuses it: %v", ts, err)
			require.Equal(t, "x", string(got))
			return
		}
		require.True(t, ok, "%v: refused, but protojson writes %s", ts, want)
		require.Equal(t, string(want), string(got[1:]))
	})
}
