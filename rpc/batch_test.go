package rpc

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/require"
)

type countingWriter struct {
	*httptest.ResponseRecorder
	flushes int
}

func (c *countingWriter) Flush() { c.flushes++ }

func TestSendBatch_FlushesOncePerBatch(t *testing.T) {
	t.Parallel()
	w := &countingWriter{ResponseRecorder: httptest.NewRecorder()}
	var ctx context.Context
	var flusher http.Flusher
	batching(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		ctx, flusher = r.Context(), rw.(http.Flusher)
	})).ServeHTTP(w, httptest.NewRequest(http.MethodPost, "/", nil))

	// What Connect does per message: write, then flush.
	send := func(m string) error {
		_, err := w.WriteString(m)
		flusher.Flush()
		return err
	}
	require.NoError(t, sendBatch(batchFrom(ctx), []string{"a", "b", "c"}, send))
	require.Equal(t, 1, w.flushes, "three messages, one flush")
	require.Equal(t, "abc", w.Body.String())

	require.NoError(t, sendBatch(batchFrom(ctx), []string{"d"}, send))
	require.Equal(t, 2, w.flushes, "a lone message is flushed as Connect does it")
}
