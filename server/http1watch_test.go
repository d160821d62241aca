package server_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime/pprof"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/stretchr/testify/require"

	"github.com/taskhub/taskhub"
	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"
	"github.com/taskhub/taskhub/gen/taskhub/v1/taskhubv1connect"
	"github.com/taskhub/taskhub/server"
)

// serveGoroutines counts net/http's connection goroutines in this process (the server's: the
// clients' connections have none by that name).
func serveGoroutines(t *testing.T) int {
	var buf bytes.Buffer
	require.NoError(t, pprof.Lookup("goroutine").WriteTo(&buf, 2))
	return bytes.Count(buf.Bytes(), []byte("net/http.(*conn).serve("))
}

// TestHTTP1Watch_OwnsItsConnection: a WatchTasks stream on an HTTP/1.1 connection of its own
// (Connect's protocol, binary or JSON, as browsers and curl watch) is served without net/http's
// connection goroutine while it idles, and keeps every promise of a stream: its messages in
// both codecs, its place under the requests an address may have, giving it back when the
// client leaves, and an unavailable end when the server shuts down.
func TestHTTP1Watch_OwnsItsConnection(t *testing.T) {
	b := setup(t, server.Config{Limits: server.Limits{MaxRequestsPerIP: 3}})
	hc := clientFrom("127.0.0.5", nil)
	t.Cleanup(hc.CloseIdleConnections)
	binary := taskhubv1connect.NewTaskServiceClient(hc, b.srv.URL())
	json := taskhubv1connect.NewTaskServiceClient(hc, b.srv.URL(), connect.WithProtoJSON())

	before := serveGoroutines(t)
	streams := []*stream{
		watch(t, binary, &taskhubv1.WatchTasksRequest{}, ""),
		watch(t, json, &taskhubv1.WatchTasksRequest{}, ""),
		watch(t, binary, &taskhubv1.WatchTasksRequest{}, ""),
	}
	for _, s := range streams {
		s.wait(0)
	}
	require.LessOrEqual(t, serveGoroutines(t), before, "an idle HTTP/1.1 watcher holds no net/http connection goroutine")

	task := createTask(t, b.tasks, "a lighthouse at dawn", "render")
	_, err := b.tasks.CancelTask(t.Context(), connect.NewRequest(&taskhubv1.CancelTaskRequest{Id: task.Id}))
	require.NoError(t, err)
	var want []eventKey
	for i, s := range streams {
		events := s.waitFor(func(e []*taskhubv1.TaskEvent) bool { return len(e) >= 2 })
		require.Len(t, events, 2)
		if i == 0 {
			want = keys(events)
			require.Equal(t, taskhubv1.EventKind_EVENT_KIND_CREATED, events[0].Kind)
			require.Equal(t, taskhubv1.EventKind_EVENT_KIND_CANCELLED, events[1].Kind)
			require.Equal(t, "a lighthouse at dawn", events[0].Task.Prompt)
		}
		require.Equal(t, want, keys(events), "stream %d", i)
	}

	// The three streams are the address's share of requests, though no handler runs for them.
	_, err = binary.ListTasks(t.Context(), connect.NewRequest(&taskhubv1.ListTasksRequest{}))
	requireCode(t, err, connect.CodeResourceExhausted, "requests under way")

	// A client that leaves gives its place back.
	streams[0].cancel()
	require.ErrorIs(t, streams[0].end(), context.Canceled)
	require.Eventually(t, func() bool {
		_, err := binary.ListTasks(t.Context(), connect.NewRequest(&taskhubv1.ListTasksRequest{}))
		return err == nil
	}, 5*time.Second, 20*time.Millisecond, "the stream's place was not given back when its client left")

	// Shutting down ends the others with unavailable: resume elsewhere.
	b.stop()
	for _, s := range streams[1:] {
		requireCode(t, s.end(), connect.CodeUnavailable, "shutting down")
	}
}

// TestHTTP1Watch_ShutdownCutsAClientThatStoppedReading: a watcher on its own HTTP/1.1
// connection that stopped reading holds its stream in a write; when the server shuts down, that
// write is cut within a second, so no stream outlives the server, whatever its client does.
func TestHTTP1Watch_ShutdownCutsAClientThatStoppedReading(t *testing.T) {
	b := setup(t, server.Config{})
	prompt := strings.Repeat("a lighthouse at dawn ", taskhub.MaxPromptBytes/25)
	for range 600 { // a snapshot of about 8 MB: more than the socket buffers take
		createTask(t, b.tasks, prompt, "render")
	}
	d := net.Dialer{Timeout: 5 * time.Second, Control: func(_, _ string, c syscall.RawConn) error {
		return c.Control(func(fd uintptr) { _ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
	}}
	c, err := d.Dial("tcp", hostOf(b))
	require.NoError(t, err)
	defer c.Close()
	_, err = fmt.Fprintf(c, "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/connect+proto\r\nContent-Length: 5\r\n\r\n\x00\x00\x00\x00\x00",
		taskhubv1connect.TaskServiceWatchTasksProcedure, hostOf(b))
	require.NoError(t, err)
	require.Eventually(t, func() bool { return sendingStreams(t) == 1 }, 5*time.Second, 10*time.Millisecond,
		"the stream blocks in a write to the client that does not read")

	b.stop()
	require.Zero(t, sendingStreams(t), "the server's shutdown cut the stream's write before it returned")
}

// TestHTTP1Watch_HTTP10: an HTTP/1.0 client, which cannot read a chunked body, is not handed
// off: net/http answers it with a body that ends when the connection closes.
func TestHTTP1Watch_HTTP10(t *testing.T) {
	b := setup(t, server.Config{})
	c := dialFrom(t, "127.0.0.1", hostOf(b))
	_, err := fmt.Fprintf(c, "POST %s HTTP/1.0\r\nHost: %s\r\nContent-Type: application/connect+json\r\nContent-Length: 7\r\n\r\n\x00\x00\x00\x00\x02{}",
		taskhubv1connect.TaskServiceWatchTasksProcedure, hostOf(b))
	require.NoError(t, err)
	require.NoError(t, c.SetReadDeadline(time.Now().Add(5*time.Second)))
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	require.NoError(t, err)
	defer res.Body.Close()
	require.Equal(t, http.StatusOK, res.StatusCode)
	require.Empty(t, res.TransferEncoding, "no chunked body for HTTP/1.0")
	head := make([]byte, 5)
	_, err = io.ReadFull(res.Body, head)
	require.NoError(t, err)
	require.Zero(t, head[0], "an enveloped message: the snapshot")
}

// sendingStreams counts the handed-off streams that wait in a write to their clients (what
// the socket did not take at once: see rpc's http1Stream.send).
func sendingStreams(t *testing.T) int {
	var buf bytes.Buffer
	require.NoError(t, pprof.Lookup("goroutine").WriteTo(&buf, 2))
	return bytes.Count(buf.Bytes(), []byte("rpc.(*http1Stream).flush("))
}
