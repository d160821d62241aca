package rpc

import (
	"context"
	"net/http"
)

// batchFlusher lets a WatchTasks handler send a batch of messages with one flush: Connect flushes
// after every message it sends, and each flush is a write to the connection (for HTTP/2, a hand-off
// to the connection's writer too). Only the handler's goroutine touches hold.
type batchFlusher struct {
	http.ResponseWriter
	hold bool
}

func (b *batchFlusher) Flush() {
	if !b.hold {
		_ = http.NewResponseController(b.ResponseWriter).Flush()
	}
}

// Unwrap lets http.ResponseController reach the connection's own writer.
func (b *batchFlusher) Unwrap() http.ResponseWriter { return b.ResponseWriter }

type batchKey struct{}

// batching gives the handlers under it a batchFlusher in their context.
func batching(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b := &batchFlusher{ResponseWriter: w}
		next.ServeHTTP(b, r.WithContext(context.WithValue(r.Context(), batchKey{}, b)))
	})
}

// batchFrom returns the batchFlusher batching put in ctx, or nil.
func batchFrom(ctx context.Context) *batchFlusher {
	b, _ := ctx.Value(batchKey{}).(*batchFlusher)
	return b
}

// sendBatch sends msgs with send, then flushes once; with no batchFlusher (b nil) Connect
// flushes after each message itself.
func sendBatch[M any](b *batchFlusher, msgs []M, send func(M) error) error {
	if b != nil {
		b.hold = true
		defer func() {
			b.hold = false
			b.Flush()
		}()
	}
	for _, m := range msgs {
		if err := send(m); err != nil {
			return err
		}
	}
	return nil
}
