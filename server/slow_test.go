package server_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/stretchr/testify/require"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/taskhub/taskhub/actors"
	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"

	"github.com/taskhub/taskhub/server"
)

// slowWatch is a WatchTasks stream whose client can stop reading, as a stuck one does.
type slowWatch interface {
	// next returns the next message.
	next() (*taskhubv1.WatchTasksResponse, error)
	// stop stops the client from taking more than it has taken; resume takes again.
	stop()
	resume() error
	close()
}

// h1Watch is a WatchTasks stream with JSON on an HTTP/1.1 connection of its own whose socket
// takes little (SO_RCVBUF 4 KiB): while the test does not call next, the server's writes
// wait for it in the kernel.
type h1Watch struct {
	conn net.Conn
	body io.Reader // the response's body, its chunks decoded
}

// smallDialer dials connections whose socket takes 4 KiB (SO_RCVBUF): a client that stops
// reading fills it at once.
var smallDialer = net.Dialer{Timeout: 5 * time.Second, Control: func(_, _ string, c syscall.RawConn) error {
	return c.Control(func(fd uintptr) { _ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
}}

func openH1Watch(t *testing.T, addr string) *h1Watch {
	t.Helper()
	conn, err := smallDialer.Dial("tcp", addr)
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	_, err = fmt.Fprintf(conn, "POST /taskhub.v1.TaskService/WatchTasks HTTP/1.1\r\nHost: %s\r\nContent-Type: application/connect+json\r\nContent-Length: 7\r\n\r\n\x00\x00\x00\x00\x02{}", addr)
	require.NoError(t, err)
	res, err := http.ReadResponse(bufio.NewReader(conn), nil)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, res.StatusCode)
	return &h1Watch{conn: conn, body: res.Body}
}

func (w *h1Watch) next() (*taskhubv1.WatchTasksResponse, error) {
	var head [5]byte
	if _, err := io.ReadFull(w.body, head[:]); err != nil {
		return nil, err
	}
	data := make([]byte, binary.BigEndian.Uint32(head[1:]))
	if _, err := io.ReadFull(w.body, data); err != nil {
		return nil, err
	}
	if head[0]&2 != 0 {
		return nil, fmt.Errorf("end of stream: %s", data)
	}
	m := &taskhubv1.WatchTasksResponse{}
	return m, protojson.Unmarshal(data, m)
}

func (w *h1Watch) stop()         {}
func (w *h1Watch) resume() error { return nil }
func (w *h1Watch) close()        { w.conn.Close() }

// h2Watch is a WatchTasks stream over HTTP/2 spoken by hand, so that it can stop reading the
// way a stuck client does: it grants the server a 16 KiB window and no more until it resumes,
// so the server's writes to it block in HTTP/2 flow control, not in kernel buffers. Its socket
// takes 4 KiB (SO_RCVBUF), as h1Watch's.
type h2Watch struct {
	conn    net.Conn
	fr      *http2.Framer
	pending []byte // DATA received and not yet parsed into messages
	stopped bool   // not granting window updates
}

func openH2Watch(t *testing.T, base string) *h2Watch {
	t.Helper()
	addr := strings.TrimPrefix(base, "http://")
	conn, err := smallDialer.Dial("tcp", addr)
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	_, err = io.WriteString(conn, http2.ClientPreface)
	require.NoError(t, err)
	w := &h2Watch{conn: conn, fr: http2.NewFramer(conn, conn)}
	require.NoError(t, w.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 16 << 10}))
	var hdr bytes.Buffer
	enc := hpack.NewEncoder(&hdr)
	for _, f := range [][2]string{{":method", "POST"}, {":scheme", "http"}, {":authority", addr},
		{":path", "/taskhub.v1.TaskService/WatchTasks"}, {"content-type", "application/connect+json"}} {
		require.NoError(t, enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]}))
	}
	require.NoError(t, w.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hdr.Bytes(), EndHeaders: true}))
	require.NoError(t, w.fr.WriteData(1, true, []byte{0, 0, 0, 0, 2, '{', '}'}))
	return w
}

// next returns the next message, reading frames as needed; while not stopped it gives back the
// window of what it read.
func (w *h2Watch) next() (*taskhubv1.WatchTasksResponse, error) {
	for {
		if len(w.pending) >= 5 {
			n := int(binary.BigEndian.Uint32(w.pending[1:5]))
			if len(w.pending) >= 5+n {
				flags, data := w.pending[0], w.pending[5:5+n]
				w.pending = w.pending[5+n:]
				if flags&2 != 0 {
					return nil, fmt.Errorf("end of stream: %s", data)
				}
				m := &taskhubv1.WatchTasksResponse{}
				return m, protojson.Unmarshal(data, m)
			}
		}
		f, err := w.fr.ReadFrame()
		if err != nil {
			return nil, err
		}
		switch f := f.(type) {
		case *http2.DataFrame:
			w.pending = append(w.pending, f.Data()...)
			if n := uint32(len(f.Data())); n > 0 && !w.stopped {
				if err := w.grant(n); err != nil {
					return nil, err
				}
			}
		case *http2.SettingsFrame:
			if !f.IsAck() {
				if err := w.fr.WriteSettingsAck(); err != nil {
					return nil, err
				}
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				if err := w.fr.WritePing(true, f.Data); err != nil {
					return nil, err
				}
			}
		case *http2.GoAwayFrame:
			return nil, fmt.Errorf("goaway: %v", f.ErrCode)
		case *http2.RSTStreamFrame:
			return nil, fmt.Errorf("stream reset: %v", f.ErrCode)
		}
	}
}

func (w *h2Watch) grant(n uint32) error {
	if err := w.fr.WriteWindowUpdate(0, n); err != nil {
		return err
	}
	return w.fr.WriteWindowUpdate(1, n)
}

func (w *h2Watch) stop()  { w.stopped = true }
func (w *h2Watch) close() { w.conn.Close() }

// resume grants the window of everything received while stopped, and goes on granting.
func (w *h2Watch) resume() error {
	w.stopped = false
	return w.grant(16 << 10)
}

// TestSlowWatcher_NeitherBlocksOthersNorLosesAnything: a client that stops reading while tasks
// churn does not hold anybody up (a keeping-up watcher gets every event as it happens, and the
// workers' calls return), and when it reads again it gets every event but intermediate progress,
// in order, ending in the same final states.
//
// Over HTTP/2 the slow client stops granting flow-control window; over an HTTP/1.1 connection
// of its own (which the server writes to directly, beside the steady watcher's) it stops
// reading its socket, and the server's writes wait in the kernel.
func TestSlowWatcher_NeitherBlocksOthersNorLosesAnything(t *testing.T) {
	t.Parallel()
	for _, transport := range []string{"HTTP/2", "HTTP/1.1"} {
		t.Run(transport, func(t *testing.T) {
			t.Parallel()
			testSlowWatcher(t, transport)
		})
	}
}

func testSlowWatcher(t *testing.T, transport string) {
	b := setup(t, server.Config{Options: actors.Options{WatchBuffer: 32}})
	ctx := t.Context()

	var slow slowWatch
	if transport == "HTTP/2" {
		slow = openH2Watch(t, b.srv.URL())
	} else {
		slow = openH1Watch(t, hostOf(b))
	}
	first, err := slow.next()
	require.NoError(t, err)
	require.NotNil(t, first.GetSnapshot())
	slow.stop()
	steady := watch(t, b.tasks, &taskhubv1.WatchTasksRequest{}, "")
	steady.wait(0)

	// The slow client stops reading from here on, while 8 workers push 60 reports of about
	// 1 KB each: more than its window (16 KiB) and its queue on the server (32 events) hold.
	// Over HTTP/1.1, 600 each: about 6 MB, more than the socket buffers hold (the server's may
	// grow to 4 MiB, Linux's default tcp_wmem).
	const tasks = 8
	reports := 60
	if transport == "HTTP/1.1" {
		reports = 600
	}
	var wg sync.WaitGroup
	ids := make([]string, tasks)
	for i := range tasks {
		task := createTask(t, b.tasks, fmt.Sprintf("churn %d", i), "churn")
		ids[i] = task.Id
	}
	for range tasks {
		c := claimTask(t, b.work, "w", "churn")
		wg.Go(func() {
			for p := 1; p <= reports; p++ {
				_, err := b.work.ReportProgress(ctx, connect.NewRequest(&taskhubv1.ReportProgressRequest{
					TaskId: c.Task.Id, LeaseToken: c.LeaseToken, Progress: float64(p) * 100 / float64(reports),
					Message: strings.Repeat("x", 1000) + fmt.Sprint(p),
				}))
				if err != nil {
					t.Error(err)
					return
				}
			}
			_, err := b.work.CompleteTask(ctx, connect.NewRequest(&taskhubv1.CompleteTaskRequest{TaskId: c.Task.Id, LeaseToken: c.LeaseToken, Result: "ok"}))
			if err != nil {
				t.Error(err)
			}
		})
	}
	start := time.Now()
	wg.Wait()
	t.Logf("%d reports took %v", tasks*reports, time.Since(start))
	total := tasks * (1 + 1 + reports + 1) // created, started, reports, completed

	// The steady watcher got everything as it happened (it may coalesce progress too, when the
	// race detector slows it down; nothing else).
	all := steady.waitFor(func(events []*taskhubv1.TaskEvent) bool {
		return countKind(events, taskhubv1.EventKind_EVENT_KIND_COMPLETED) == tasks
	})
	require.Len(t, withoutProgress(all), total-tasks*reports)

	// Now the slow client reads: seq strictly increasing, every non-progress event, the final
	// states right, and fewer progress events than were sent (it really fell behind).
	ctx2, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	go func() { <-ctx2.Done(); slow.close() }()
	require.NoError(t, slow.resume())
	var got []*taskhubv1.TaskEvent
	completed := 0
	for completed < tasks {
		m, err := slow.next()
		require.NoError(t, err, "after %d events", len(got))
		if e := m.GetEvent(); e != nil {
			got = append(got, e)
			if e.Kind == taskhubv1.EventKind_EVENT_KIND_COMPLETED {
				completed++
			}
		}
	}
	for i := 1; i < len(got); i++ {
		require.Greater(t, got[i].Seq, got[i-1].Seq)
	}
	require.Equal(t, keys(withoutProgress(all)), keys(withoutProgress(got)), "no event but progress may be skipped")
	progress := len(got) - len(withoutProgress(got))
	t.Logf("the slow watcher got %d of %d events (%d of %d progress reports)", len(got), total, progress, tasks*reports)
	require.Less(t, progress, len(all)-len(withoutProgress(all)), "the slow client never fell behind: the test did not test anything")
	if transport == "HTTP/1.1" {
		require.Positive(t, scrape(t, b.srv.URL())[`taskhub_watch_sends_total{result="waited"}`], "no write waited for the slow client")
	}
	last := map[string]*taskhubv1.Task{}
	for _, e := range got {
		last[e.Task.Id] = e.Task
	}
	for _, id := range ids {
		res, err := b.tasks.GetTask(ctx, connect.NewRequest(&taskhubv1.GetTaskRequest{Id: id}))
		require.NoError(t, err)
		require.Equal(t, res.Msg.Task.Seq, last[id].Seq, "task %s", id)
		require.Equal(t, float64(100), last[id].Progress)
	}
}

func countKind(events []*taskhubv1.TaskEvent, kind taskhubv1.EventKind) int {
	n := 0
	for _, e := range events {
		if e.Kind == kind {
			n++
		}
	}
	return n
}

// TestWriteTimeout_AClientThatStopsReadingLosesItsConnection: a watcher whose client reads
// nothing more (its socket's buffers full) loses its connection after --write-timeout, instead
// of holding it, a goroutine and megabytes of socket buffers for as long as its stream lasts. A
// watcher that reads is untouched, and the cut client, reading what it was sent and then
// resuming after the last seq it got, misses no event but progress.
//
// Over HTTP/2 the client grants all the window it may and stops reading its socket: the cut
// falls on the whole connection, beneath net/http's HTTP/2 server.
func TestWriteTimeout_AClientThatStopsReadingLosesItsConnection(t *testing.T) {
	t.Parallel()
	for _, transport := range []string{"HTTP/1.1", "HTTP/2"} {
		t.Run(transport, func(t *testing.T) {
			t.Parallel()
			testWriteTimeout(t, transport)
		})
	}
}

func testWriteTimeout(t *testing.T, transport string) {
	b := setup(t, server.Config{Limits: server.Limits{WriteTimeout: time.Second}, Options: actors.Options{WatchBuffer: 32}})
	ctx := t.Context()

	// The tasks exist before the watches start: the stuck client's snapshot has a seq to
	// resume after, even if it reads no event.
	const tasks, reports = 4, 600
	for i := range tasks {
		createTask(t, b.tasks, fmt.Sprintf("churn %d", i), "churn")
	}
	var stuck slowWatch
	if transport == "HTTP/2" {
		h2 := openH2Watch(t, b.srv.URL())
		require.NoError(t, h2.grant(1<<30)) // flow control never holds the server back
		stuck = h2
	} else {
		stuck = openH1Watch(t, hostOf(b))
	}
	first, err := stuck.next()
	require.NoError(t, err)
	snap := first.GetSnapshot()
	require.NotNil(t, snap)
	steady := watch(t, b.tasks, &taskhubv1.WatchTasksRequest{}, "")
	steady.wait(0)

	// 600 reports of about 1 KB each a task: 2.4 MB, more than the stuck client's socket and
	// the server's take before the server's writes wait.
	var wg sync.WaitGroup
	for range tasks {
		c := claimTask(t, b.work, "w", "churn")
		wg.Go(func() {
			for p := 1; p <= reports; p++ {
				if _, err := b.work.ReportProgress(ctx, connect.NewRequest(&taskhubv1.ReportProgressRequest{
					TaskId: c.Task.Id, LeaseToken: c.LeaseToken, Progress: float64(p) * 100 / float64(reports),
					Message: strings.Repeat("x", 1000) + fmt.Sprint(p),
				})); err != nil {
					t.Error(err)
					return
				}
			}
			if _, err := b.work.CompleteTask(ctx, connect.NewRequest(&taskhubv1.CompleteTaskRequest{TaskId: c.Task.Id, LeaseToken: c.LeaseToken, Result: "ok"})); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	all := steady.waitFor(func(events []*taskhubv1.TaskEvent) bool {
		return countKind(events, taskhubv1.EventKind_EVENT_KIND_COMPLETED) == tasks
	})

	// The server gives up on the stuck client: its watch closes, the steady one stays.
	require.Eventually(t, func() bool {
		m := scrape(t, b.srv.URL())
		return m["taskhub_write_timeouts_total"] >= 1 && m["taskhub_watches_open"] == 1
	}, 20*time.Second, 50*time.Millisecond, "the stuck client's watch is still open")

	// The stuck client reads again: what it was sent, then the end of its connection, with no
	// end-of-stream message (the server could not write one).
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			stuck.close()
		}
	}()
	var got []*taskhubv1.TaskEvent
	for {
		m, err := stuck.next()
		if err != nil {
			require.NotContains(t, err.Error(), "end of stream", "the server wrote to a client it had given up on")
			break
		}
		if e := m.GetEvent(); e != nil {
			got = append(got, e)
		}
	}
	require.Less(t, countKind(got, taskhubv1.EventKind_EVENT_KIND_COMPLETED), tasks, "the stuck client got everything: it was never stuck")
	require.Positive(t, snap.Seq)

	// It resumes after the last seq it read and misses nothing but progress.
	after := snap.Seq
	if len(got) > 0 {
		after = got[len(got)-1].Seq
	}
	resumed := watch(t, b.tasks, &taskhubv1.WatchTasksRequest{Epoch: snap.Epoch, AfterSeq: after}, "")
	rest := resumed.waitFor(func(events []*taskhubv1.TaskEvent) bool {
		return countKind(append(slices.Clone(got), events...), taskhubv1.EventKind_EVENT_KIND_COMPLETED) == tasks
	})
	require.Equal(t, keys(withoutProgress(all)), keys(withoutProgress(append(got, rest...))), "no event but progress may be missed")
	t.Logf("the stuck client got %d events before the cut, %d after resuming", len(got), len(rest))
}
