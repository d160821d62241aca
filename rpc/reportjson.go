package rpc

import (
	"bytes"
	"strconv"
	"unicode/utf8"

	"google.golang.org/protobuf/types/known/timestamppb"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"
)

// The JSON of a progress report, the API's most frequent request, is read here rather than
// with protojson when it is in the plain form workers send: an object of the four fields, string
// values without escapes, the progress a JSON number. protojson took a tenth of the server's CPU
// on the batched write path (BatchReportProgress over JSON), for the reflection it reads any
// message with. Anything else (an escape, a field twice or unknown, a null, the progress as a
// string, any error) is left to protojson, which then decodes it, or refuses it, exactly as
// before: this reader says only whether it read the body, never why not. FuzzReportJSON checks
// that whatever it reads, protojson reads the same.

// decodeReport reads a ReportProgressRequest in the plain form into m (reset), and reports
// whether it did.
func decodeReport(data []byte, m *taskhubv1.ReportProgressRequest) bool {
	r := jsonReader{data: data}
	return r.report(m) && r.end()
}

// decodeBatch is decodeReport for a BatchReportProgressRequest.
func decodeBatch(data []byte, m *taskhubv1.BatchReportProgressRequest) bool {
	r := jsonReader{data: data}
	if !r.byte('{') {
		return false
	}
	if r.byte('}') {
		return r.end()
	}
	key, ok := r.str()
	if !ok || string(key) != "reports" || !r.byte(':') || !r.byte('[') {
		return false
	}
	if !r.byte(']') {
		for {
			rep := &taskhubv1.ReportProgressRequest{}
			if !r.report(rep) {
				return false
			}
			m.Reports = append(m.Reports, rep)
			if r.byte(']') {
				break
			}
			if !r.byte(',') {
				return false
			}
		}
	}
	return r.byte('}') && r.end()
}

// jsonReader reads the plain form of a report's JSON from data, at i.
type jsonReader struct {
	data []byte
	i    int
}

// space skips JSON's whitespace.
func (r *jsonReader) space() {
	for r.i < len(r.data) {
		switch r.data[r.i] {
		case ' ', '\t', '\n', '\r':
			r.i++
		default:
			return
		}
	}
}

// end reports whether nothing but whitespace is left.
func (r *jsonReader) end() bool {
	r.space()
	return r.i == len(r.data)
}

// byte skips whitespace and c, if c is next.
func (r *jsonReader) byte(c byte) bool {
	r.space()
	if r.i < len(r.data) && r.data[r.i] == c {
		r.i++
		return true
	}
	return false
}

// str reads a string without escapes or control characters, in valid UTF-8.
func (r *jsonReader) str() ([]byte, bool) {
	if !r.byte('"') {
		return nil, false
	}
	start := r.i
	for ; r.i < len(r.data); r.i++ {
		switch c := r.data[r.i]; {
		case c == '"':
			s := r.data[start:r.i]
			r.i++
			return s, utf8.Valid(s)
		case c == '\\' || c < 0x20:
			return nil, false
		}
	}
	return nil, false
}

// number reads a JSON number.
func (r *jsonReader) number() (float64, bool) {
	r.space()
	start := r.i
	digits := func() int {
		n := 0
		for r.i < len(r.data) && r.data[r.i] >= '0' && r.data[r.i] <= '9' {
			r.i++
			n++
		}
		return n
	}
	if r.i < len(r.data) && r.data[r.i] == '-' {
		r.i++
	}
	if r.i < len(r.data) && r.data[r.i] == '0' {
		r.i++
	} else if digits() == 0 {
		return 0, false
	}
	if r.i < len(r.data) && r.data[r.i] == '.' {
		r.i++
		if digits() == 0 {
			return 0, false
		}
	}
	if r.i < len(r.data) && (r.data[r.i] == 'e' || r.data[r.i] == 'E') {
		r.i++
		if r.i < len(r.data) && (r.data[r.i] == '+' || r.data[r.i] == '-') {
			r.i++
		}
		if digits() == 0 {
			return 0, false
		}
	}
	f, err := strconv.ParseFloat(string(r.data[start:r.i]), 64)
	return f, err == nil
}

// report reads one report object into m, each field at most once, under its JSON name or its
// proto name.
func (r *jsonReader) report(m *taskhubv1.ReportProgressRequest) bool {
	if !r.byte('{') {
		return false
	}
	if r.byte('}') {
		return true
	}
	var seen [4]bool
	for {
		key, ok := r.str()
		if !ok || !r.byte(':') {
			return false
		}
		field := -1
		switch {
		case bytes.Equal(key, []byte("taskId")), bytes.Equal(key, []byte("task_id")):
			field = 0
		case bytes.Equal(key, []byte("leaseToken")), bytes.Equal(key, []byte("lease_token")):
			field = 1
		case bytes.Equal(key, []byte("progress")):
			field = 2
		case bytes.Equal(key, []byte("message")):
			field = 3
		}
		if field < 0 || seen[field] {
			return false
		}
		seen[field] = true
		if field == 2 {
			if m.Progress, ok = r.number(); !ok {
				return false
			}
		} else {
			s, ok := r.str()
			if !ok {
				return false
			}
			switch field {
			case 0:
				m.TaskId = string(s)
			case 1:
				m.LeaseToken = string(s)
			case 3:
				m.Message = string(s)
			}
		}
		if r.byte('}') {
			return true
		}
		if !r.byte(',') {
			return false
		}
	}
}

// appendReportJSON appends the JSON of a ReportProgressResponse or BatchReportProgressResponse
// to dst as protojson writes it, with the watch events' jsonWriter, and reports whether it did:
// not for another message, or a result with an error (left to protojson, as rare as it is), or
// a timestamp protojson refuses. protojson's encode of the batch's answer was 2 % of the server's
// CPU on the batched write path.
func appendReportJSON(dst []byte, m any) ([]byte, bool) {
	w := jsonWriter{b: dst, ok: true}
	switch m := m.(type) {
	case *taskhubv1.ReportProgressResponse:
		w.result(m.CancelRequested, m.LeaseExpiresAt)
	case *taskhubv1.BatchReportProgressResponse:
		for _, r := range m.Results {
			if r.Error != nil {
				return dst, false
			}
		}
		w.open()
		jsonArray(&w, "results", m.Results, func(r *taskhubv1.ReportProgressResult) {
			w.result(r.CancelRequested, r.LeaseExpiresAt)
		})
		w.close()
	default:
		return dst, false
	}
	if !w.ok {
		return dst, false
	}
	return w.b, true
}

// result writes a report's answer: {"cancelRequested":true,"leaseExpiresAt":"..."}, each field
// only when set.
func (w *jsonWriter) result(cancel bool, expires *timestamppb.Timestamp) {
	w.open()
	w.bool("cancelRequested", cancel)
	w.timestamp("leaseExpiresAt", expires)
	w.close()
}
