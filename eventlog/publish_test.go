package eventlog

import (
	"testing"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
)

// pubAck reads every answer JetStream gives a publish as jetstream's own decode does.
func TestPubAck(t *testing.T) {
	for _, tc := range []struct {
		data string
		seq  uint64
		code jetstream.ErrorCode // the refusal's, or 0
		err  error
	}{
		{data: `{"stream":"TASKS","seq":42}`, seq: 42},
		{data: `{"stream":"TASKS","seq":18446744073709551615}`, seq: 18446744073709551615},
		{data: `{"stream":"TASKS","domain":"hub","seq":7}`, seq: 7},
		{data: `{"stream":"TASKS","seq":9,"duplicate":true}`, seq: 9},
		{data: `{ "stream": "TASKS", "seq": 11 }`, seq: 11}, // not the server's form: read whole
		{data: `{"error":{"code":400,"err_code":10071,"description":"wrong last sequence: 5"},"stream":"TASKS","seq":0}`, code: jetstream.JSErrCodeStreamWrongLastSequence},
		{data: `{"stream":"TASKS","error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"}}`, code: 10077},
		{data: `{"stream":"TASKS","seq":1`, err: jetstream.ErrInvalidJSAck},
		{data: `{"seq":3}`, err: jetstream.ErrInvalidJSAck},
		{data: ``, err: jetstream.ErrInvalidJSAck},
	} {
		seq, err := pubAck([]byte(tc.data))
		switch {
		case tc.code != 0:
			require.True(t, hasCode(err, tc.code), "%s: %v", tc.data, err)
			require.Zero(t, seq)
		case tc.err != nil:
			require.ErrorIs(t, err, tc.err, tc.data)
		default:
			require.NoError(t, err, tc.data)
			require.Equal(t, tc.seq, seq, tc.data)
		}
	}
}

func BenchmarkPubAck(b *testing.B) {
	data := []byte(`{"stream":"TASKS","seq":1234567}`)
	for b.Loop() {
		if _, err := pubAck(data); err != nil {
			b.Fatal(err)
		}
	}
}
