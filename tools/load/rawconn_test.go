package main

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"
)

// rawBundle is a rawConn dialing a fake HTTP/2 server that the test speaks for by hand.
type rawBundle struct {
	conn *rawConn
	spec *watchSpec
	user watchUser // its watchers watch as
	ln   net.Listener
}

func setupRaw(t *testing.T, cfg rawConfig, tasks int) *rawBundle {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	var d net.Dialer
	cfg.addr, cfg.authority, cfg.dial = ln.Addr().String(), ln.Addr().String(), d.DialContext
	c := newRawConn(&cfg)
	t.Cleanup(c.close)
	spec := &watchSpec{mode: "m", prefix: "p ", tasks: tasks, users: 1, started: make(chan struct{}), slowFor: time.Second}
	return &rawBundle{conn: c, spec: spec, ln: ln}
}

// watch opens n watchers' streams (ids 1, 3, ...) and returns them with the server's side.
func (b *rawBundle) watch(t *testing.T, n int, slow bool) ([]*watcher, *fakeH2) {
	t.Helper()
	ws := make([]*watcher, n)
	for i := range ws {
		ws[i] = newRawWatcher(i, b.conn, b.spec, b.user, slow)
		ws[i].run(t.Context())
	}
	conn, err := b.ln.Accept()
	require.NoError(t, err)
	return ws, newFakeH2(t, conn)
}

// fakeH2 is the server's side of one HTTP/2 connection: it records what the client sends and
// answers its PINGs; the test writes the rest.
type fakeH2 struct {
	conn net.Conn
	fr   *http2.Framer
	mu   sync.Mutex // guards writes
	hbuf bytes.Buffer
	henc *hpack.Encoder
	got  chan clientFrame
	done chan struct{}
}

// clientFrame is a frame the client sent.
type clientFrame struct {
	typ    http2.FrameType
	stream uint32
	flags  http2.Flags
	data   []byte // DATA payload, PING data
	fields []hpack.HeaderField
	set    map[http2.SettingID]uint32
	incr   uint32 // WINDOW_UPDATE
	code   http2.ErrCode
}

func newFakeH2(t *testing.T, conn net.Conn) *fakeH2 {
	f := &fakeH2{conn: conn, fr: http2.NewFramer(conn, conn), got: make(chan clientFrame, 10000), done: make(chan struct{})}
	f.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	f.henc = hpack.NewEncoder(&f.hbuf)
	t.Cleanup(func() {
		conn.Close()
		<-f.done
	})
	preface := make([]byte, len(http2.ClientPreface))
	_, err := io.ReadFull(conn, preface)
	require.NoError(t, err)
	require.Equal(t, http2.ClientPreface, string(preface))
	go f.read()
	return f
}

func (f *fakeH2) read() {
	defer close(f.done)
	for {
		fr, err := f.fr.ReadFrame()
		if err != nil {
			return
		}
		h := fr.Header()
		cf := clientFrame{typ: h.Type, stream: h.StreamID, flags: h.Flags}
		switch fr := fr.(type) {
		case *http2.DataFrame:
			cf.data = bytes.Clone(fr.Data())
		case *http2.MetaHeadersFrame:
			cf.fields = slices.Clone(fr.Fields)
		case *http2.SettingsFrame:
			cf.set = map[http2.SettingID]uint32{}
			fr.ForeachSetting(func(s http2.Setting) error { cf.set[s.ID] = s.Val; return nil })
		case *http2.WindowUpdateFrame:
			cf.incr = fr.Increment
		case *http2.RSTStreamFrame:
			cf.code = fr.ErrCode
		case *http2.PingFrame:
			cf.data = bytes.Clone(fr.Data[:])
			if !fr.IsAck() {
				f.write(func() error { return f.fr.WritePing(true, fr.Data) })
			}
		}
		f.got <- cf
	}
}

func (f *fakeH2) write(w func() error) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return w()
}

// next returns the next frame the client sent.
func (f *fakeH2) next(t *testing.T) clientFrame {
	t.Helper()
	select {
	case cf := <-f.got:
		return cf
	case <-time.After(5 * time.Second):
		require.FailNow(t, "the client sent nothing for 5s")
		return clientFrame{}
	}
}

// requireOpening checks what the client sends first: its settings, its connection window, and
// a request per stream.
func (f *fakeH2) requireOpening(t *testing.T, window uint32, token string, streams int) {
	t.Helper()
	cf := f.next(t)
	require.Equal(t, http2.FrameSettings, cf.typ)
	require.Equal(t, map[http2.SettingID]uint32{http2.SettingEnablePush: 0, http2.SettingInitialWindowSize: window}, cf.set)
	cf = f.next(t)
	require.Equal(t, http2.FrameWindowUpdate, cf.typ)
	require.Equal(t, clientFrame{typ: http2.FrameWindowUpdate, incr: connWindow - 65535}, cf)
	for i := range streams {
		id := uint32(2*i + 1)
		cf = f.next(t)
		require.Equal(t, http2.FrameHeaders, cf.typ)
		require.Equal(t, id, cf.stream)
		h := map[string]string{}
		for _, hf := range cf.fields {
			h[hf.Name] = hf.Value
		}
		want := map[string]string{
			":method": "POST", ":scheme": "http", ":authority": f.conn.LocalAddr().String(),
			":path": "/taskhub.v1.TaskService/WatchTasks", "content-type": "application/connect+proto",
			"connect-protocol-version": "1", "user-agent": "taskhub-load",
		}
		if token != "" {
			want["authorization"] = "Bearer " + token
		}
		require.Equal(t, want, h)
		cf = f.next(t)
		require.Equal(t, clientFrame{typ: http2.FrameData, stream: id, flags: http2.FlagDataEndStream, data: []byte{0, 0, 0, 0, 0}}, cf)
	}
}

func (f *fakeH2) headers(t *testing.T, id uint32, end bool, fields ...string) {
	t.Helper()
	require.NoError(t, f.write(func() error {
		f.hbuf.Reset()
		for i := 0; i < len(fields); i += 2 {
			if err := f.henc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]}); err != nil {
				return err
			}
		}
		return f.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: f.hbuf.Bytes(), EndHeaders: true, EndStream: end})
	}))
}

// ok sends the response headers of a Connect stream.
func (f *fakeH2) ok(t *testing.T, id uint32, fields ...string) {
	t.Helper()
	f.headers(t, id, false, append([]string{":status", "200", "content-type", "application/connect+proto"}, fields...)...)
}

func (f *fakeH2) data(t *testing.T, id uint32, b []byte, end bool, pad int) {
	t.Helper()
	require.NoError(t, f.write(func() error {
		if pad > 0 {
			return f.fr.WriteDataPadded(id, end, b, make([]byte, pad))
		}
		return f.fr.WriteData(id, end, b)
	}))
}

func envelope(flags byte, b []byte) []byte {
	env := make([]byte, 5, 5+len(b))
	env[0] = flags
	binary.BigEndian.PutUint32(env[1:], uint32(len(b)))
	return append(env, b...)
}

func message(t *testing.T, m *taskhubv1.WatchTasksResponse) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	require.NoError(t, err)
	return envelope(0, b)
}

func snapshotMsg(t *testing.T) []byte {
	return message(t, &taskhubv1.WatchTasksResponse{Message: &taskhubv1.WatchTasksResponse_Snapshot{Snapshot: &taskhubv1.Snapshot{Epoch: "e"}}})
}

// eventMsg is an event of load task j (of another mode when j < 0) with a message of size bytes.
func eventMsg(t *testing.T, seq uint64, kind taskhubv1.EventKind, j, size int) []byte {
	mode := "m"
	if j < 0 {
		mode = "other"
	}
	return message(t, &taskhubv1.WatchTasksResponse{Message: &taskhubv1.WatchTasksResponse_Event{Event: &taskhubv1.TaskEvent{
		Seq: seq, Kind: kind, Time: timestamppb.Now(),
		Task: &taskhubv1.Task{Id: fmt.Sprint("task", j), Mode: mode, Prompt: fmt.Sprint("p ", j), Seq: seq, Message: strings.Repeat("x", size)},
	}}})
}

// loadEvents is what a watcher of tasks load tasks gets from seq 1 on: each task created,
// started, progress reports, completed, interleaved, with an event of another mode's task and a
// heartbeat among them. It returns the messages and the last seq.
func loadEvents(t *testing.T, tasks, reports, size int) ([]byte, uint64) {
	var b []byte
	seq := uint64(0)
	add := func(kind taskhubv1.EventKind, j int) {
		seq++
		b = append(b, eventMsg(t, seq, kind, j, size)...)
	}
	for j := range tasks {
		add(taskhubv1.EventKind_EVENT_KIND_CREATED, j)
		add(taskhubv1.EventKind_EVENT_KIND_STARTED, j)
	}
	add(taskhubv1.EventKind_EVENT_KIND_CREATED, -1)
	for i := range reports {
		for j := range tasks {
			add(taskhubv1.EventKind_EVENT_KIND_PROGRESS, j)
		}
		if i == reports/2 {
			b = append(b, message(t, &taskhubv1.WatchTasksResponse{Message: &taskhubv1.WatchTasksResponse_Heartbeat{Heartbeat: &taskhubv1.Heartbeat{Seq: seq}}})...)
		}
	}
	for j := range tasks {
		add(taskhubv1.EventKind_EVENT_KIND_COMPLETED, j)
	}
	return b, seq
}

func waitClosed(t *testing.T, ch chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(5 * time.Second):
		require.FailNow(t, what+" not closed within 5s")
	}
}

// requireGot checks that w got every event of loadEvents, in order, and nothing else.
func requireGot(t *testing.T, w *watcher, tasks, reports int, last uint64) {
	t.Helper()
	require.Zero(t, w.problems.n, w.problems.list)
	require.True(t, w.snapshot)
	require.Equal(t, last, w.lastSeq)
	require.EqualValues(t, tasks*reports, w.progress)
	require.EqualValues(t, 3*tasks, w.lifecycle)
	require.Equal(t, tasks, w.completed)
	require.EqualValues(t, 1, w.heartbeats)
	require.Len(t, w.latency, tasks*(reports+3))
	for j, wt := range w.tasks {
		require.Equal(t, watchedTask{created: 1, started: 1, progress: reports, completed: 1, lastSeq: last - uint64(tasks-1-j), final: wt.final}, wt)
		require.Equal(t, fmt.Sprint("task", j), wt.final.GetId())
	}
}

// TestRawConn_DeliversEverythingInOrder: two streams on a connection, their messages split
// across DATA frames at every kind of boundary (inside the 5-byte prefix, inside a message,
// several in a frame), interleaved and padded: each watcher gets every message once, in order,
// and the client answers SETTINGS and PING and gives the windows back.
func TestRawConn_DeliversEverythingInOrder(t *testing.T) {
	t.Parallel()
	const tasks, reports = 2, 100
	b := setupRaw(t, rawConfig{window: defaultStreamWindow}, tasks)
	b.user = watchUser{token: "tok"}
	ws, f := b.watch(t, 2, false)
	f.requireOpening(t, defaultStreamWindow, "tok", 2)

	require.NoError(t, f.write(func() error {
		return f.fr.WriteSettings(http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: 250})
	}))
	require.NoError(t, f.write(func() error { return f.fr.WritePing(false, [8]byte{1, 2, 3}) }))
	f.ok(t, 1)
	f.ok(t, 3)
	events, last := loadEvents(t, tasks, reports, 1000)
	body := append(snapshotMsg(t), events...)
	require.Greater(t, len(body), 3*maxGrantBatch)
	sizes := []int{1, 4, 5, 6, 9, 700, 3000, 16384, 2, 1100, 5000}
	var sent [2]int
	for i, off := 0, [2]int{}; off[0] < len(body) || off[1] < len(body); i++ {
		k := i % 2
		n := min(sizes[(i/2)%len(sizes)], len(body)-off[k])
		if n == 0 {
			continue
		}
		pad := 0
		if i%3 == 0 && n < 16000 {
			pad = 7
		}
		f.data(t, uint32(2*k+1), body[off[k]:off[k]+n], false, pad)
		off[k] += n
		sent[k] += n
		if pad > 0 {
			sent[k] += pad + 1
		}
	}

	// The client acked the settings and the ping, and gave back all but less than a batch of
	// each window.
	var settingsAck, pingAck bool
	grants := map[uint32]int{}
	deadline := time.After(5 * time.Second)
	for !settingsAck || !pingAck || grants[0] <= sent[0]+sent[1]-maxGrantBatch ||
		grants[1] <= sent[0]-maxGrantBatch || grants[3] <= sent[1]-maxGrantBatch {
		select {
		case cf := <-f.got:
			switch cf.typ {
			case http2.FrameSettings:
				settingsAck = settingsAck || cf.flags.Has(http2.FlagSettingsAck)
			case http2.FramePing:
				pingAck = pingAck || (cf.flags.Has(http2.FlagPingAck) && bytes.Equal(cf.data, []byte{1, 2, 3, 0, 0, 0, 0, 0}))
			case http2.FrameWindowUpdate:
				grants[cf.stream] += int(cf.incr)
			case http2.FrameRSTStream:
				require.FailNow(t, "the client reset a stream")
			}
		case <-deadline:
			require.FailNow(t, "missing acks or window updates", "settings ack %v, ping ack %v, grants %v, sent %v", settingsAck, pingAck, grants, sent)
		}
	}
	require.LessOrEqual(t, grants[0], sent[0]+sent[1])
	require.LessOrEqual(t, grants[1], sent[0])
	require.LessOrEqual(t, grants[3], sent[1])

	// The end-of-stream message, split too.
	end := envelope(flagEndStream, []byte("{}"))
	f.data(t, 1, end[:3], false, 0)
	f.data(t, 1, end[3:], true, 0)
	f.data(t, 3, end, false, 0)
	f.data(t, 3, nil, true, 0)
	for _, w := range ws {
		waitClosed(t, w.exited, "exited")
		waitClosed(t, w.done, "done")
		require.EqualError(t, w.err, "the server ended the stream")
		requireGot(t, w, tasks, reports, last)
	}
}

// TestRawConn_StreamFailures: whatever ends a stream is the watcher's error, and the other
// streams of the connection go on.
func TestRawConn_StreamFailures(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		gzip     bool
		server   func(t *testing.T, f *fakeH2)
		err      string
		snapshot bool // the watcher got its snapshot first
		reset    bool // the client resets the stream
	}{{
		name: "an end-of-stream error",
		server: func(t *testing.T, f *fakeH2) {
			f.ok(t, 1)
			f.data(t, 1, snapshotMsg(t), false, 0)
			f.data(t, 1, envelope(flagEndStream, []byte(`{"error":{"code":"resource_exhausted","message":"too many watches"}}`)), true, 0)
		},
		err:      "resource_exhausted: too many watches",
		snapshot: true,
	}, {
		name: "a reset",
		server: func(t *testing.T, f *fakeH2) {
			f.ok(t, 1)
			f.write(func() error { return f.fr.WriteRSTStream(1, http2.ErrCodeRefusedStream) })
		},
		err: "the server reset the stream: REFUSED_STREAM",
	}, {
		name: "a stream over the server's limit",
		server: func(t *testing.T, f *fakeH2) {
			f.write(func() error {
				return f.fr.WriteSettings(http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: 0})
			})
			f.write(func() error { return f.fr.WriteRSTStream(1, http2.ErrCodeRefusedStream) })
		},
		err: "the server reset the stream: REFUSED_STREAM: open streams on the connection: 1, the server's limit: 0; lower --streams-per-conn",
	}, {
		name: "a GOAWAY",
		server: func(t *testing.T, f *fakeH2) {
			f.write(func() error { return f.fr.WriteGoAway(0, http2.ErrCodeNo, []byte("bye")) })
		},
		err: `the connection ended: the server sent GOAWAY (NO_ERROR, last stream 0, "bye")`,
	}, {
		name:   "an HTTP error",
		server: func(t *testing.T, f *fakeH2) { f.headers(t, 1, true, ":status", "404", "content-type", "text/plain") },
		err:    `HTTP status 404 (content-type "text/plain")`,
	}, {
		name: "another content-type",
		server: func(t *testing.T, f *fakeH2) {
			f.headers(t, 1, false, ":status", "200", "content-type", "application/connect+json")
		},
		err:   `content-type "application/connect+json", want application/connect+proto`,
		reset: true,
	}, {
		name:     "no end-of-stream message",
		server:   func(t *testing.T, f *fakeH2) { f.ok(t, 1); f.data(t, 1, snapshotMsg(t), true, 0) },
		err:      "the stream ended without an end-of-stream message",
		snapshot: true,
	}, {
		name:   "a message that does not decode",
		server: func(t *testing.T, f *fakeH2) { f.ok(t, 1); f.data(t, 1, envelope(0, []byte{0xff, 0xff}), false, 0) },
		err:    "decoding a message",
		reset:  true,
	}, {
		name: "a compressed message not asked for",
		server: func(t *testing.T, f *fakeH2) {
			f.ok(t, 1)
			f.data(t, 1, envelope(flagCompressed, gzipped(t, snapshotMsg(t)[5:])), false, 0)
		},
		err:   "a compressed message, though the stream's responses are not compressed",
		reset: true,
	}, {
		name: "a message too large",
		server: func(t *testing.T, f *fakeH2) {
			f.ok(t, 1)
			f.data(t, 1, []byte{0, 0xff, 0, 0, 0}, false, 0)
		},
		err:   "a message of 4278190080 bytes, above the 16777216 allowed",
		reset: true,
	}, {
		name: "gzip, when asked for",
		gzip: true,
		server: func(t *testing.T, f *fakeH2) {
			f.ok(t, 1, "connect-content-encoding", "gzip")
			f.data(t, 1, envelope(flagCompressed, gzipped(t, snapshotMsg(t)[5:])), false, 0)
			f.data(t, 1, envelope(flagEndStream, []byte("{}")), true, 0)
		},
		err:      "the server ended the stream",
		snapshot: true,
	}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setupRaw(t, rawConfig{window: defaultStreamWindow, gzip: tc.gzip}, 1)
			ws, f := b.watch(t, 1, false)
			tc.server(t, f)
			w := ws[0]
			waitClosed(t, w.exited, "exited")
			require.ErrorContains(t, w.err, tc.err)
			require.Equal(t, tc.snapshot, w.snapshot)
			if !tc.reset {
				return
			}
			for {
				if cf := f.next(t); cf.typ == http2.FrameRSTStream {
					require.Equal(t, clientFrame{typ: http2.FrameRSTStream, stream: 1, code: http2.ErrCodeCancel}, cf)
					return
				}
			}
		})
	}
}

func gzipped(t *testing.T, b []byte) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	_, err := zw.Write(b)
	require.NoError(t, err)
	require.NoError(t, zw.Close())
	return buf.Bytes()
}

// TestRawConn_SlowWatcherStops: once the load starts, a slow watcher stops consuming for
// slowFor: it gives back no window, of its stream or of the connection, for what arrives
// meanwhile; then it reads all it held, in order, and gives the window back.
func TestRawConn_SlowWatcherStops(t *testing.T) {
	t.Parallel()
	const tasks, reports = 1, 45
	b := setupRaw(t, rawConfig{window: slowStreamWindow}, tasks)
	b.spec.slowFor = 300 * time.Millisecond
	ws, f := b.watch(t, 1, true)
	w := ws[0]
	f.requireOpening(t, slowStreamWindow, "", 1)
	f.ok(t, 1)
	f.data(t, 1, snapshotMsg(t), false, 0)
	waitClosed(t, w.ready, "ready")
	close(b.spec.started)

	// The first event stops it; the others, 50 KiB in all, it holds.
	events, last := loadEvents(t, tasks, reports, 1000)
	require.Less(t, len(events), slowStreamWindow)
	require.Greater(t, len(events), slowStreamWindow/2)
	sentAt := time.Now()
	for off := 0; off < len(events); off += 3000 {
		f.data(t, 1, events[off:min(off+3000, len(events))], false, 0)
	}
	var granted int
	for granted < len(events)-slowStreamWindow/4 {
		cf := f.next(t)
		if cf.typ == http2.FrameWindowUpdate {
			require.GreaterOrEqual(t, time.Since(sentAt), 250*time.Millisecond, "a window update before the stop was over")
			if cf.stream == 1 {
				granted += int(cf.incr)
			}
		}
	}
	f.data(t, 1, envelope(flagEndStream, []byte("{}")), true, 0)
	waitClosed(t, w.exited, "exited")
	require.EqualError(t, w.err, "the server ended the stream")
	requireGot(t, w, tasks, reports, last)
	require.GreaterOrEqual(t, w.stoppedFor, 300*time.Millisecond)
	require.Less(t, w.stoppedFor, 2*time.Second)
	require.GreaterOrEqual(t, w.latency[len(w.latency)-1], 250*time.Millisecond, "what it held, it got late")
}

// TestRawConn_OverTheServersLimit: against Go's own HTTP/2 server, which resets a stream over
// its MAX_CONCURRENT_STREAMS with PROTOCOL_ERROR, the watcher's error names the limit and the
// flag that sets how many streams share a connection.
func TestRawConn_OverTheServersLimit(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	protocols := new(http.Protocols)
	protocols.SetUnencryptedHTTP2(true)
	block := make(chan struct{})
	srv := &http.Server{Protocols: protocols, HTTP2: &http.HTTP2Config{MaxConcurrentStreams: 2},
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("content-type", "application/connect+proto")
			w.WriteHeader(http.StatusOK)
			w.(http.Flusher).Flush()
			select {
			case <-block:
			case <-r.Context().Done():
			}
		})}
	go srv.Serve(ln)
	defer srv.Close()
	defer close(block)

	var d net.Dialer
	cfg := rawConfig{addr: ln.Addr().String(), authority: ln.Addr().String(), dial: d.DialContext, window: defaultStreamWindow}
	c := newRawConn(&cfg)
	defer c.close()
	spec := &watchSpec{mode: "m", prefix: "p ", tasks: 1, users: 1, started: make(chan struct{}), slowFor: time.Second}
	ws := make([]*watcher, 3)
	for i := range ws {
		ws[i] = newRawWatcher(i, c, spec, watchUser{}, false)
		ws[i].run(t.Context())
	}
	waitClosed(t, ws[2].exited, "the third stream's end")
	require.ErrorContains(t, ws[2].err, "the server reset the stream")
	require.ErrorContains(t, ws[2].err, "open streams on the connection: 3, the server's limit: 2; lower --streams-per-conn")
	for _, w := range ws[:2] {
		require.False(t, isClosed(w.exited), "the streams under the limit go on")
	}
}
