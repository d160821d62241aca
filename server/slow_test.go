package server_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
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

// h2Watch is a WatchTasks stream over HTTP/2 spoken by hand, so that it can stop reading the
// way a stuck client does: it grants the server a 16 KiB window and no more until it resumes,
// so the server's writes to it block in HTTP/2 flow control, not in kernel buffers.
type h2Watch struct {
	conn    net.Conn
	fr      *http2.Framer
	pending []byte // DATA received and not yet parsed into messages
	stopped bool   // not granting window updates
}

func openH2Watch(t *testing.T, base string) *h2Watch {
	t.Helper()
	addr := strings.TrimPrefix(base, "http://")
	conn, err := net.Dial("tcp", addr)
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

// resume grants the window of everything received while stopped, and goes on granting.
func (w *h2Watch) resume() error {
	w.stopped = false
	return w.grant(16 << 10)
}

// TestSlowWatcher_NeitherBlocksOthersNorLosesAnything: a client that stops reading while tasks
// churn does not hold anybody up (a keeping-up watcher gets every event as it happens, and the
// workers' calls return), and when it reads again it gets every event but intermediate progress,
// in order, ending in the same final states.
func TestSlowWatcher_NeitherBlocksOthersNorLosesAnything(t *testing.T) {
	t.Parallel()
	b := setup(t, server.Config{Options: actors.Options{WatchBuffer: 32}})
	ctx := t.Context()

	slow := openH2Watch(t, b.srv.URL())
	first, err := slow.next()
	require.NoError(t, err)
	require.NotNil(t, first.GetSnapshot())
	slow.stopped = true
	steady := watch(t, b.tasks, &taskhubv1.WatchTasksRequest{}, "")
	steady.wait(0)

	// The slow client grants no more window from here on, while 8 workers push 60 reports
	// each: more than its window (16 KiB) and its queue on the server (32 events) hold.
	const tasks, reports = 8, 60
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
					TaskId: c.Task.Id, LeaseToken: c.LeaseToken, Progress: float64(p) * 100 / reports,
					Message: strings.Repeat("x", 200) + fmt.Sprint(p),
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
	const total = tasks * (1 + 1 + reports + 1) // created, started, reports, completed

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
	go func() { <-ctx2.Done(); slow.conn.Close() }()
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
