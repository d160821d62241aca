package rpc

import (
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/require"
)

type flushCounter struct {
	*httptest.ResponseRecorder
	flushes int
}

func (f *flushCounter) Flush() { f.flushes++; f.ResponseRecorder.Flush() }

// TestBatchWriter: the flushes of a batch become one, after its last message; outside a batch
// each flush goes through.
func TestBatchWriter(t *testing.T) {
	under := &flushCounter{ResponseRecorder: httptest.NewRecorder()}
	var seen *batchWriter
	h := batches(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen = batchOf(r.Context())
		require.Same(t, seen, w, "the handler writes through the batchWriter of its context")
	}), nil, callLog{slog.Default()}, nil)
	h.ServeHTTP(under, httptest.NewRequest(http.MethodPost, "/taskhub.v1.TaskService/WatchTasks", nil))
	require.NotNil(t, seen)
	b := seen

	b.Flush()
	require.Equal(t, 1, under.flushes, "outside a batch a flush goes through")
	b.hold()
	for range 10 {
		_, _ = b.Write([]byte("message"))
		b.Flush()
	}
	require.Equal(t, 1, under.flushes, "a batch's flushes wait for its end")
	require.NoError(t, b.release())
	require.Equal(t, 2, under.flushes, "one flush for the batch")
	b.hold()
	require.NoError(t, b.release())
	require.Equal(t, 2, under.flushes, "nothing held, nothing flushed")

	var none *batchWriter
	none.hold()
	require.NoError(t, none.release())

	require.Same(t, under, b.Unwrap())

	other := batches(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		require.Nil(t, batchOf(r.Context()), "only watch streams batch")
		require.Same(t, under, w)
	}), nil, callLog{slog.Default()}, nil)
	other.ServeHTTP(under, httptest.NewRequest(http.MethodPost, "/taskhub.v1.TaskService/GetTask", nil))
}
