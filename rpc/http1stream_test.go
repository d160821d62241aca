package rpc

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/taskhub/taskhub/gen/taskhub/v1/taskhubv1connect"
)

// TestHandOff_LetsTheCallGo: a WatchTasks stream that owns its connection keeps nothing of the
// call it came from while it lives: its context has none of the call's values, and the call's
// response writer, which leads to net/http's buffers, and its request with the headers (half an
// idle watcher's memory), are collected.
func TestHandOff_LetsTheCallGo(t *testing.T) {
	type marker struct{}
	let := make(chan struct{})
	streams := make(chan *http1Stream, 1)
	h := batches(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/connect+json") // as connect sets it
		runtime.AddCleanup(w.(*batchWriter), func(chan struct{}) { close(let) }, let)
		streams <- handOff(context.WithValue(r.Context(), marker{}, "the call's"))
	}), nil, callLog{slog.New(slog.DiscardHandler)}, nil)
	// net/http's own request, which its response and connection lead to: let go too.
	letReq := make(chan struct{})
	outer := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		runtime.AddCleanup(r, func(chan struct{}) { close(letReq) }, letReq)
		h.ServeHTTP(w, r)
	})
	srv := httptest.NewServer(outer)
	t.Cleanup(srv.Close)

	conn, err := net.Dial("tcp", srv.Listener.Addr().String())
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	_, err = fmt.Fprintf(conn, "POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/connect+json\r\nContent-Length: 7\r\n\r\n\x00\x00\x00\x00\x02{}",
		taskhubv1connect.TaskServiceWatchTasksProcedure)
	require.NoError(t, err)
	s := <-streams
	require.NotNil(t, s, "handed off")
	t.Cleanup(func() { s.cancel(); s.conn.Close() })
	res, err := http.ReadResponse(bufio.NewReader(conn), nil)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, res.StatusCode)

	require.Nil(t, s.ctx.Value(marker{}), "the call's values")
	gone := func(let chan struct{}) func() bool {
		return func() bool {
			runtime.GC()
			select {
			case <-let:
				return true
			default:
				return false
			}
		}
	}
	require.Eventually(t, gone(let), 5*time.Second, 10*time.Millisecond, "the call's response writer is still held")
	require.Eventually(t, gone(letReq), 5*time.Second, 10*time.Millisecond, "the call's request is still held")
	runtime.KeepAlive(s)
}
