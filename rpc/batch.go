package rpc

import (
	"context"
	"net/http"

	"github.com/taskhub/taskhub/gen/taskhub/v1/taskhubv1connect"
)

// batchWriter lets a watch stream send the messages it has queued with one flush. Connect
// flushes after every message, and on a connection of its own each flush is a system call: a
// watcher that fell behind by ten events cost ten. Holding the flushes until the last message
// of a batch is sent costs one, and delays no message: the batch is what was already waiting.
type batchWriter struct {
	http.ResponseWriter
	holding, flushed bool // flushed: a Flush came while holding
}

// Flush flushes, unless the stream is sending a batch.
func (b *batchWriter) Flush() {
	if b.holding {
		b.flushed = true
		return
	}
	_ = http.NewResponseController(b.ResponseWriter).Flush() // a failed write fails the next Send
}

// Unwrap is for http.ResponseController.
func (b *batchWriter) Unwrap() http.ResponseWriter { return b.ResponseWriter }

// hold holds the flushes until release. A nil batchWriter holds nothing.
func (b *batchWriter) hold() {
	if b != nil {
		b.holding = true
	}
}

// release flushes what was held.
func (b *batchWriter) release() error {
	if b == nil {
		return nil
	}
	b.holding = false
	if !b.flushed {
		return nil
	}
	b.flushed = false
	return http.NewResponseController(b.ResponseWriter).Flush()
}

type batchKey struct{}

// batches gives WatchTasks streams a batchWriter, in the request's context.
func batches(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == taskhubv1connect.TaskServiceWatchTasksProcedure {
			b := &batchWriter{ResponseWriter: w}
			w, r = b, r.WithContext(context.WithValue(r.Context(), batchKey{}, b))
		}
		next.ServeHTTP(w, r)
	})
}

// batchOf is the batchWriter of a WatchTasks call's context; nil outside one.
func batchOf(ctx context.Context) *batchWriter {
	b, _ := ctx.Value(batchKey{}).(*batchWriter)
	return b
}
