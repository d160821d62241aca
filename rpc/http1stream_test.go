package rpc

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/taskhub/taskhub"
	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"
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
	s, _, _ := handOffOver(t, outer, streams, &net.Dialer{})
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

// handOffOver serves h, whose WatchTasks handler sends the stream it handed off on streams,
// makes a WatchTasks call over HTTP/1.1 with dial, and returns the stream, the client's
// connection and the call's response, whose body is the stream's.
func handOffOver(t *testing.T, h http.Handler, streams <-chan *http1Stream, dial *net.Dialer) (*http1Stream, net.Conn, *http.Response) {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	conn, err := dial.Dial("tcp", srv.Listener.Addr().String())
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
	return s, conn, res
}

// TestHTTP1Stream_BoundsAWrite: what a handed-off stream holds of its client's messages while
// the client does not read is one write of at most maxWrite bytes, however many messages are
// queued and however large (its queue holds messages shared with other watchers), or one
// message whole when it alone is larger. Every message still arrives, in order.
func TestHTTP1Stream_BoundsAWrite(t *testing.T) {
	streams := make(chan *http1Stream, 1)
	h := batches(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/connect+json")
		streams <- handOff(r.Context())
	}), nil, callLog{slog.New(slog.DiscardHandler)}, nil)
	// A client whose socket takes little, and which reads nothing until told.
	small := &net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		return c.Control(func(fd uintptr) { _ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
	}}
	s, _, res := handOffOver(t, h, streams, small)
	require.NoError(t, s.w.(*net.TCPConn).SetWriteBuffer(4096)) // and the server's side too

	// 41 events of a task with a prompt of 16 KiB (17 KiB each in JSON), the middle one with
	// a result of 100 KiB, larger than a write.
	var msgs []*taskhub.Message
	for i := range 41 {
		r := eventResponse(float64(i))
		r.GetEvent().Seq = uint64(i + 1)
		r.GetEvent().Task.Prompt = strings.Repeat("p", 16<<10)
		if i == 20 {
			r.GetEvent().Task.Result = strings.Repeat("r", 100<<10)
		}
		msgs = append(msgs, taskhub.NewMessage(r))
	}
	size := func(msgs []*taskhub.Message) int {
		n := 0
		for _, m := range msgs {
			b, err := m.Encoded(true, s.codec.encode)
			require.NoError(t, err)
			n += 5 + len(b)
		}
		return n
	}
	got := make(chan []uint64, 1)
	read := make(chan struct{})
	go func() {
		<-read
		var seqs []uint64
		var head [5]byte
		for {
			if _, err := io.ReadFull(res.Body, head[:]); err != nil || head[0] == connectEndStream {
				break
			}
			b := make([]byte, binary.BigEndian.Uint32(head[1:]))
			if _, err := io.ReadFull(res.Body, b); err != nil {
				break
			}
			var m taskhubv1.WatchTasksResponse
			if protojson.Unmarshal(b, &m) == nil {
				seqs = append(seqs, m.GetEvent().GetSeq())
			}
		}
		got <- seqs
	}()

	waited := false
	for rest := msgs; len(rest) > 0; {
		sent, pending, err := s.send(rest)
		require.NoError(t, err)
		require.GreaterOrEqual(t, sent, 1)
		n := size(rest[:sent])
		if sent > 1 {
			require.LessOrEqual(t, chunkBytes(n), maxWrite, "a write of %d messages", sent)
		}
		if sent < len(rest) {
			require.Greater(t, chunkBytes(size(rest[:sent+1])), maxWrite, "a write of %d messages, where %d fit", sent, sent+1)
		}
		if pending {
			require.LessOrEqual(t, len(s.pending)-s.off, max(maxWrite, chunkBytes(n)), "what the stream holds for its client")
			if !waited {
				waited = true
				close(read) // the client reads from now on
			}
			require.NoError(t, s.flush())
		}
		rest = rest[sent:]
	}
	require.True(t, waited, "the client's socket took 800 KiB without reading")
	s.end(nil)
	want := make([]uint64, 41)
	for i := range want {
		want[i] = uint64(i + 1)
	}
	select {
	case seqs := <-got:
		require.Equal(t, want, seqs, "every message, in order")
	case <-time.After(10 * time.Second):
		t.Fatal("the client did not read to the end")
	}
}

// TestHTTP1Stream_AFailedWriteIsTheClients: a handed-off stream whose write fails (its client
// reset the connection, or took nothing for the write timeout) ends as canceled, as one whose
// client left does, and is not logged as an internal error: stuck clients must not fill the
// server's log with errors that are theirs.
func TestHTTP1Stream_AFailedWriteIsTheClients(t *testing.T) {
	streams := make(chan *http1Stream, 1)
	var logged strings.Builder
	codes := make(chan connect.Code, 1)
	h := batches(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/connect+json")
		streams <- handOff(r.Context())
	}), func(_ string, code connect.Code) { codes <- code }, callLog{slog.New(slog.NewTextHandler(&logged, nil))}, nil)
	dial := &net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		return c.Control(func(fd uintptr) { // close with a reset
			_ = syscall.SetsockoptLinger(int(fd), syscall.SOL_SOCKET, syscall.SO_LINGER, &syscall.Linger{Onoff: 1, Linger: 0})
		})
	}}
	s, client, _ := handOffOver(t, h, streams, dial)
	require.NoError(t, client.Close())
	// The client is gone: the stream's writes fail once the reset is in.
	var err error
	msgs := []*taskhub.Message{taskhub.NewMessage(eventResponse(1))}
	for i := 0; i < 100 && err == nil; i++ {
		if _, _, err = s.send(msgs); err == nil {
			time.Sleep(10 * time.Millisecond)
		}
	}
	require.Error(t, err, "a write to a client that reset its connection")
	s.end(err)
	require.Equal(t, connect.CodeCanceled, <-codes)
	require.NotContains(t, logged.String(), "level=ERROR")
}
