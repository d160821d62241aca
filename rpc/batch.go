package rpc

import (
	"context"
	"net/http"

	"github.com/taskhub/taskhub/gen/taskhub/v1/taskhubv1connect"
)

// batchWriter is a WatchTasks stream's response writer. It lets the stream send the messages
// it has queued with one flush: Connect flushes after every message, and on a connection of its
// own each flush is a system call, so a watcher that fell behind by ten events cost ten.
// Holding the flushes until the last message of a batch is sent costs one, and delays no
// message: the batch is what was already waiting. On HTTP/1.1 it can also hand the whole
// connection to the stream (handOff), after which what connect writes is dropped.
type batchWriter struct {
	http.ResponseWriter
	http1            bool
	holding, flushed bool // flushed: a Flush came while holding
	handedOff        bool
	observe          observer // nil: none
	log              callLog
	streams          *Streams // nil: none
}

// Write writes, unless the connection was handed off.
func (b *batchWriter) Write(p []byte) (int, error) {
	if b.handedOff {
		return len(p), nil // connect's end of a stream that goes on without it
	}
	return b.ResponseWriter.Write(p)
}

// WriteHeader writes the header, unless the connection was handed off.
func (b *batchWriter) WriteHeader(code int) {
	if !b.handedOff {
		b.ResponseWriter.WriteHeader(code)
	}
}

// Flush flushes, unless the stream is sending a batch or the connection was handed off.
func (b *batchWriter) Flush() {
	switch {
	case b.handedOff:
	case b.holding:
		b.flushed = true
	default:
		_ = http.NewResponseController(b.ResponseWriter).Flush() // a failed write fails the next Send
	}
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

// batches gives WatchTasks streams a batchWriter, in the request's context. observe and log are
// told of the end of a stream that was handed off, which the interceptors no longer see.
func batches(next http.Handler, observe observer, log callLog, streams *Streams) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == taskhubv1connect.TaskServiceWatchTasksProcedure {
			// Only HTTP/1.1 is handed off: an HTTP/1.0 client cannot read the chunked body.
			http1 := r.ProtoMajor == 1 && r.ProtoMinor >= 1
			b := &batchWriter{ResponseWriter: w, http1: http1, observe: observe, log: log, streams: streams}
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

// handedOff reports whether ctx is a WatchTasks call's whose connection was handed off: its
// stream goes on after the handler returned, and reports its own end.
func handedOff(ctx context.Context) bool {
	b := batchOf(ctx)
	return b != nil && b.handedOff
}
