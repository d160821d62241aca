package rpc

import (
	"math"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/types/known/timestamppb"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"
)

// appendWatchJSON appends the JSON of a watch's message ({"event":...}, {"snapshot":...} or
// {"heartbeat":...}) as protojson writes it in proto3's JSON mapping (lowerCamelCase names,
// 64-bit integers as strings, enums by name, RFC 3339 timestamps, default values left out),
// without protojson's reflection: these are the messages a JSON watcher gets, and protojson
// took 9.5 µs to write an event and as much for each task of a snapshot, the most of any one
// part of an event's cost on the write path with a JSON watcher. It reports false for what it
// does not write as protojson would (a string that is not UTF-8, a timestamp out of range, an
// empty response), which protojson then writes or refuses. TestWatchJSON checks it against
// protojson, byte for byte, with every field filled at random from the messages' descriptors,
// so that a field added to the messages without being added here fails the test.
func appendWatchJSON(dst []byte, r *taskhubv1.WatchTasksResponse) ([]byte, bool) {
	w := jsonWriter{b: dst, ok: true}
	w.open()
	switch m := r.GetMessage().(type) {
	case *taskhubv1.WatchTasksResponse_Event:
		if m.Event == nil {
			return dst, false
		}
		w.name("event")
		w.event(m.Event)
	case *taskhubv1.WatchTasksResponse_Snapshot:
		if m.Snapshot == nil {
			return dst, false
		}
		w.name("snapshot")
		w.snapshot(m.Snapshot)
	case *taskhubv1.WatchTasksResponse_Heartbeat:
		if m.Heartbeat == nil {
			return dst, false
		}
		w.name("heartbeat")
		w.open()
		w.uint64("seq", m.Heartbeat.Seq)
		w.close()
	default:
		return dst, false
	}
	w.close()
	return w.b, w.ok
}

// jsonWriter appends an object's fields, a comma before all but the first.
type jsonWriter struct {
	b     []byte
	first bool
	ok    bool
}

func (w *jsonWriter) open()  { w.b, w.first = append(w.b, '{'), true }
func (w *jsonWriter) close() { w.b, w.first = append(w.b, '}'), false }

// name begins a field whose name needs no escaping.
func (w *jsonWriter) name(n string) {
	w.comma()
	w.b = append(w.b, '"')
	w.b = append(w.b, n...)
	w.b = append(w.b, '"', ':')
}

// key begins a map's entry.
func (w *jsonWriter) key(k string) {
	w.comma()
	w.quote(k)
	w.b = append(w.b, ':')
}

func (w *jsonWriter) comma() {
	if !w.first {
		w.b = append(w.b, ',')
	}
	w.first = false
}

func (w *jsonWriter) str(n, v string) {
	if v != "" {
		w.name(n)
		w.quote(v)
	}
}

func (w *jsonWriter) uint64(n string, v uint64) {
	if v != 0 {
		w.name(n)
		w.b = append(w.b, '"')
		w.b = strconv.AppendUint(w.b, v, 10)
		w.b = append(w.b, '"')
	}
}

func (w *jsonWriter) uint32(n string, v uint32) {
	if v != 0 {
		w.name(n)
		w.b = strconv.AppendUint(w.b, uint64(v), 10)
	}
}

func (w *jsonWriter) bool(n string, v bool) {
	if v {
		w.name(n)
		w.b = append(w.b, "true"...)
	}
}

// enum writes a value by its name, or by its number when it has none, as protojson does.
func (w *jsonWriter) enum(n string, v int32, names map[int32]string) {
	if v != 0 {
		w.name(n)
		w.enumValue(v, names)
	}
}

func (w *jsonWriter) enumValue(v int32, names map[int32]string) {
	if s, ok := names[v]; ok {
		w.quote(s)
		return
	}
	w.b = strconv.AppendInt(w.b, int64(v), 10)
}

// double writes a float as protojson does (encoding/json's form; NaN and the infinities as
// strings).
func (w *jsonWriter) double(n string, v float64) {
	if v == 0 && !math.Signbit(v) {
		return
	}
	w.name(n)
	switch {
	case math.IsNaN(v):
		w.b = append(w.b, `"NaN"`...)
		return
	case math.IsInf(v, 1):
		w.b = append(w.b, `"Infinity"`...)
		return
	case math.IsInf(v, -1):
		w.b = append(w.b, `"-Infinity"`...)
		return
	}
	format := byte('f')
	if abs := math.Abs(v); abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	w.b = strconv.AppendFloat(w.b, v, format, -1, 64)
	if format == 'e' { // e-07 -> e-7
		if n := len(w.b); n >= 4 && w.b[n-4] == 'e' && w.b[n-3] == '-' && w.b[n-2] == '0' {
			w.b[n-2] = w.b[n-1]
			w.b = w.b[:n-1]
		}
	}
}

// timestamp writes an RFC 3339 time in UTC with 0, 3, 6 or 9 digits of a second, as protojson
// does.
func (w *jsonWriter) timestamp(n string, t *timestamppb.Timestamp) {
	if t == nil {
		return
	}
	w.name(n)
	w.timestampValue(t)
}

func (w *jsonWriter) timestampValue(t *timestamppb.Timestamp) {
	var ok bool
	if w.b, ok = appendTimestamp(w.b, t); !ok {
		w.ok = false
	}
}

// appendTimestamp appends t as protojson writes a Timestamp: a JSON string in RFC 3339, UTC,
// with 0, 3, 6 or 9 digits of its fraction. It reports false, appending nothing, for a t
// protojson refuses (outside years 1 to 9999, or its nanos outside a second). Digit by digit:
// time's AppendFormat, which reads its layout each time, was 3 % of the server's CPU on the
// write path, for the times of every event a watcher gets.
func appendTimestamp(b []byte, t *timestamppb.Timestamp) ([]byte, bool) {
	const minSeconds, maxSeconds = -62135596800, 253402300799
	if t.Seconds < minSeconds || t.Seconds > maxSeconds || t.Nanos < 0 || t.Nanos >= 1e9 {
		return b, false
	}
	tm := time.Unix(t.Seconds, 0).UTC()
	year, month, day := tm.Date()
	hour, minute, second := tm.Clock()
	b = append(b, '"')
	b = appendDigits(b, year, 4)
	b = appendDigits(append(b, '-'), int(month), 2)
	b = appendDigits(append(b, '-'), day, 2)
	b = appendDigits(append(b, 'T'), hour, 2)
	b = appendDigits(append(b, ':'), minute, 2)
	b = appendDigits(append(b, ':'), second, 2)
	if n := int(t.Nanos); n != 0 {
		switch {
		case n%1e6 == 0:
			b = appendDigits(append(b, '.'), n/1e6, 3)
		case n%1e3 == 0:
			b = appendDigits(append(b, '.'), n/1e3, 6)
		default:
			b = appendDigits(append(b, '.'), n, 9)
		}
	}
	return append(b, 'Z', '"'), true
}

// appendDigits appends n (0 <= n) in width decimal digits, zeros first.
func appendDigits(b []byte, n, width int) []byte {
	var d [9]byte
	for i := width - 1; i >= 0; i-- {
		d[i] = byte('0' + n%10)
		n /= 10
	}
	return append(b, d[:width]...)
}

// quote writes s as a JSON string, escaping what JSON requires (protojson escapes no more).
func (w *jsonWriter) quote(s string) {
	if !utf8.ValidString(s) {
		w.ok = false
		return
	}
	const hex = "0123456789abcdef"
	w.b = append(w.b, '"')
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= ' ' && c != '"' && c != '\\' {
			continue
		}
		w.b = append(w.b, s[start:i]...)
		switch c {
		case '"', '\\':
			w.b = append(w.b, '\\', c)
		case '\b':
			w.b = append(w.b, '\\', 'b')
		case '\f':
			w.b = append(w.b, '\\', 'f')
		case '\n':
			w.b = append(w.b, '\\', 'n')
		case '\r':
			w.b = append(w.b, '\\', 'r')
		case '\t':
			w.b = append(w.b, '\\', 't')
		default:
			w.b = append(w.b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		}
		start = i + 1
	}
	w.b = append(w.b, s[start:]...)
	w.b = append(w.b, '"')
}

// jsonArray writes a repeated field, each item by each; an empty one is left out.
func jsonArray[T any](w *jsonWriter, name string, items []T, each func(T)) {
	if len(items) == 0 {
		return
	}
	w.name(name)
	w.b = append(w.b, '[')
	for i, it := range items {
		if i > 0 {
			w.b = append(w.b, ',')
		}
		each(it)
	}
	w.b = append(w.b, ']')
}

func (w *jsonWriter) snapshot(s *taskhubv1.Snapshot) {
	w.open()
	w.str("epoch", s.Epoch)
	w.uint64("seq", s.Seq)
	w.bool("recovered", s.Recovered)
	jsonArray(w, "tasks", s.Tasks, w.task)
	w.bool("more", s.More)
	w.close()
}

func (w *jsonWriter) event(e *taskhubv1.TaskEvent) {
	w.open()
	w.uint64("seq", e.Seq)
	w.enum("kind", int32(e.Kind), taskhubv1.EventKind_name)
	if e.Task != nil {
		w.name("task")
		w.task(e.Task)
	}
	w.timestamp("time", e.Time)
	w.str("actedBy", e.ActedBy)
	w.close()
}

func (w *jsonWriter) task(t *taskhubv1.Task) {
	w.open()
	w.str("id", t.Id)
	w.str("owner", t.Owner)
	w.str("prompt", t.Prompt)
	w.str("mode", t.Mode)
	if len(t.Params) > 0 {
		w.name("params")
		w.open()
		keys := make([]string, 0, len(t.Params))
		for k := range t.Params {
			keys = append(keys, k)
		}
		slices.Sort(keys) // as protojson orders them
		for _, k := range keys {
			w.key(k)
			w.quote(t.Params[k])
		}
		w.close()
	}
	w.enum("state", int32(t.State), taskhubv1.TaskState_name)
	w.double("progress", t.Progress)
	w.str("message", t.Message)
	w.str("result", t.Result)
	w.str("error", t.Error)
	w.uint32("attempt", t.Attempt)
	w.timestamp("createdAt", t.CreatedAt)
	w.timestamp("updatedAt", t.UpdatedAt)
	w.timestamp("startedAt", t.StartedAt)
	w.timestamp("finishedAt", t.FinishedAt)
	w.str("workerId", t.WorkerId)
	w.uint64("seq", t.Seq)
	w.bool("stalled", t.Stalled)
	w.timestamp("progressedAt", t.ProgressedAt)
	if h := t.Webhook; h != nil {
		w.name("webhook")
		w.open()
		w.str("url", h.Url)
		jsonArray(w, "events", h.Events, func(k taskhubv1.EventKind) { w.enumValue(int32(k), taskhubv1.EventKind_name) })
		w.uint32("progressIntervalSeconds", h.ProgressIntervalSeconds)
		w.close()
	}
	if s := t.WebhookStatus; s != nil {
		w.name("webhookStatus")
		w.open()
		w.uint64("deliveredSeq", s.DeliveredSeq)
		w.uint32("failedAttempts", s.FailedAttempts)
		w.str("lastError", s.LastError)
		w.timestamp("failingSince", s.FailingSince)
		w.bool("gaveUp", s.GaveUp)
		w.bool("done", s.Done)
		w.close()
	}
	w.close()
}
