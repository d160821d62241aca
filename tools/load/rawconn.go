package main

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/protobuf/proto"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"
)

// rawConn is one HTTP/2 cleartext connection carrying WatchTasks streams, spoken with
// x/net/http2's Framer rather than through net/http and connect-go. One goroutine, its reader,
// reads every frame of the connection, parses the Connect envelopes out of the DATA payloads
// itself, decodes each message into one reused WatchTasksResponse and hands it to its
// watcher, all without a copy through a pipe or a goroutine switch per message: the tool must
// stay far from saturating its core, or its own queueing shows up as the server's latency.
//
// Flow control: each stream gets cfg.window (SETTINGS_INITIAL_WINDOW_SIZE) and the connection
// connWindow. The reader gives back what it consumed once a stream or the connection has
// consumed a threshold, in one write after it has processed every frame it had buffered. A
// slow watcher stops consuming: what arrives for it is held, and neither its stream's window
// nor the connection's is given back, as Go's transport does for a body nobody reads, until
// its stop is over. The connection window is far larger than what stopped streams can hold, so
// a stopped stream holds up only itself.
//
// Its reader owns the watchers of its streams from the stream's opening until it calls
// watcher.finish.
type rawConn struct {
	cfg *rawConfig

	mu      sync.Mutex // guards the fields up to exited, and every write to the connection
	conn    net.Conn   // nil until the first watch dials
	bw      *bufio.Writer
	fr      *http2.Framer
	henc    *hpack.Encoder
	hbuf    bytes.Buffer
	nextID  uint32
	added   []*rawStream  // opened, not yet taken by the reader
	resumed []*rawStream  // slow streams whose stop is over, not yet taken by the reader
	ended   bool          // the reader is done: no more streams
	err     error         // why the connection ended
	exited  chan struct{} // closed when the reader returned

	// Set before the reader starts.
	ctx context.Context // of the first watch; its end closes the connection
	br  *bufio.Reader

	// The reader's own.
	streams     []*rawStream // by (id-1)/2; nil once ended
	grants      []*rawStream // streams whose window update is due
	connUnacked uint32       // bytes the connection consumed and has not given back
	control     bool         // a control frame (ack, reset) waits in bw
	maxStreams  uint32       // the server's SETTINGS_MAX_CONCURRENT_STREAMS, if saidMax
	saidMax     bool
	msg         *taskhubv1.WatchTasksResponse
	gz          *gzip.Reader
	gzbuf       bytes.Buffer
}

// rawConfig is what every rawConn of a pool shares.
type rawConfig struct {
	addr      string // host:port to dial
	authority string
	gzip      bool   // accept gzip-compressed messages
	window    uint32 // each stream's receive window
	dial      func(ctx context.Context, network, addr string) (net.Conn, error)
}

// rawStream is one WatchTasks stream of a rawConn; only the reader touches it once it is added.
type rawStream struct {
	w          *watcher
	id         uint32
	pending    []byte // received, not parsed: part of an envelope, or all since a stop
	held       uint32 // bytes received while stopped, not given back
	unacked    uint32 // bytes consumed and not given back
	due        bool   // in the reader's grants
	gotHeaders bool
	gzip       bool // the server compresses with gzip
	stopped    bool // a slow watcher, not reading
	stoppedAt  time.Time
	timer      *time.Timer // ends the stop
	peerEnded  bool        // END_STREAM arrived while stopped
	ended      bool
}

const (
	// connWindow is the connection's receive window, as large as Go's transport gives.
	connWindow = 1 << 30
	// maxGrantBatch is the most a stream or the connection consumes before its window is given
	// back (a quarter of a smaller stream window).
	maxGrantBatch = 64 << 10
	// maxMessage bounds one message, compressed or not.
	maxMessage = 16 << 20
	// Connect streaming envelope flags.
	flagCompressed = 0x01
	flagEndStream  = 0x02
)

// wakePing is the payload of the PING that wakes the reader when a stop is over.
var wakePing = [8]byte{'r', 'e', 's', 'u', 'm', 'e'}

// watchRequest is the enveloped WatchTasksRequest every stream sends.
var watchRequest = func() []byte {
	b, err := proto.Marshal(&taskhubv1.WatchTasksRequest{})
	if err != nil {
		panic(err)
	}
	env := make([]byte, 5, 5+len(b))
	binary.BigEndian.PutUint32(env[1:], uint32(len(b)))
	return append(env, b...)
}()

func newRawConn(cfg *rawConfig) *rawConn {
	return &rawConn{cfg: cfg, exited: make(chan struct{}), msg: &taskhubv1.WatchTasksResponse{}}
}

// watch opens w's stream, dialing the connection first if it has none. From then on the reader
// owns w; when the stream cannot be opened, w fails here.
func (c *rawConn) watch(ctx context.Context, w *watcher) {
	w.start = time.Now()
	if err := c.open(ctx, w); err != nil {
		w.err = err
		w.finish()
	}
}

// open adds a stream for w and sends its request. It returns an error only when it did not
// hand w to the reader.
func (c *rawConn) open(ctx context.Context, w *watcher) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ended {
		return c.err
	}
	if c.conn == nil {
		if err := c.dialLocked(ctx); err != nil {
			return err
		}
	}
	s := &rawStream{w: w, id: c.nextID}
	c.nextID += 2
	c.added = append(c.added, s)
	if err := c.writeRequestLocked(s); err != nil {
		// The reader's read fails too, and it fails s with the connection's other streams.
		c.conn.Close()
	}
	return nil
}

// dialLocked dials the connection, sends the preface, the settings and the connection's window,
// and starts the reader.
func (c *rawConn) dialLocked(ctx context.Context) error {
	conn, err := c.cfg.dial(ctx, "tcp", c.cfg.addr)
	if err != nil {
		return err
	}
	c.conn, c.ctx = conn, ctx
	c.bw = bufio.NewWriterSize(conn, 16<<10)
	c.br = bufio.NewReaderSize(conn, 64<<10)
	c.fr = http2.NewFramer(c.bw, c.br)
	c.fr.SetReuseFrames()
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	c.henc = hpack.NewEncoder(&c.hbuf)
	c.nextID = 1
	// Nothing is flushed until the first request follows.
	c.bw.WriteString(http2.ClientPreface)
	err = c.fr.WriteSettings(
		http2.Setting{ID: http2.SettingEnablePush, Val: 0},
		http2.Setting{ID: http2.SettingInitialWindowSize, Val: c.cfg.window},
	)
	if err == nil {
		err = c.fr.WriteWindowUpdate(0, connWindow-65535)
	}
	if err != nil {
		conn.Close()
		c.conn = nil
		return err
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	go c.read(stop)
	return nil
}

func (c *rawConn) writeRequestLocked(s *rawStream) error {
	c.hbuf.Reset()
	fields := []hpack.HeaderField{
		{Name: ":method", Value: "POST"},
		{Name: ":scheme", Value: "http"},
		{Name: ":authority", Value: c.cfg.authority},
		{Name: ":path", Value: "/taskhub.v1.TaskService/WatchTasks"},
		{Name: "content-type", Value: "application/connect+proto"},
		{Name: "connect-protocol-version", Value: "1"},
		{Name: "user-agent", Value: "taskhub-load"},
	}
	if c.cfg.gzip {
		fields = append(fields, hpack.HeaderField{Name: "connect-accept-encoding", Value: "gzip"})
	}
	if s.w.token != "" {
		fields = append(fields, hpack.HeaderField{Name: "authorization", Value: "Bearer " + s.w.token, Sensitive: true})
	}
	for _, f := range fields {
		if err := c.henc.WriteField(f); err != nil {
			return err
		}
	}
	if err := c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: s.id, BlockFragment: c.hbuf.Bytes(), EndHeaders: true}); err != nil {
		return err
	}
	if err := c.fr.WriteData(s.id, true, watchRequest); err != nil {
		return err
	}
	return c.bw.Flush()
}

// close closes the connection and waits for its reader.
func (c *rawConn) close() {
	c.mu.Lock()
	conn := c.conn
	c.mu.Unlock()
	if conn == nil {
		return
	}
	conn.Close()
	<-c.exited
}

// read is the reader: it reads until the connection fails or closes, then ends every stream.
func (c *rawConn) read(stopClose func() bool) {
	defer close(c.exited)
	err := c.readFrames()
	c.conn.Close()
	stopClose()
	c.mu.Lock()
	c.ended, c.err = true, fmt.Errorf("the connection ended: %w", err)
	c.streams = append(c.streams, c.added...)
	c.added = nil
	c.mu.Unlock()
	for _, s := range c.streams {
		if s != nil {
			c.end(s, c.err)
		}
	}
}

func (c *rawConn) readFrames() error {
	for {
		f, err := c.fr.ReadFrame()
		if se := (http2.StreamError{}); errors.As(err, &se) {
			if s := c.stream(se.StreamID); s != nil {
				c.fail(s, se)
			}
			continue
		}
		if err != nil {
			return err
		}
		if err := c.frame(f); err != nil {
			return err
		}
		if c.br.Buffered() == 0 {
			// Every frame read so far is processed: give back windows, send acks, in one write.
			if err := c.flush(); err != nil {
				return err
			}
		}
	}
}

func (c *rawConn) frame(f http2.Frame) error {
	switch f := f.(type) {
	case *http2.DataFrame:
		c.data(f)
	case *http2.MetaHeadersFrame:
		c.headers(f)
	case *http2.RSTStreamFrame:
		if s := c.stream(f.StreamID); s != nil {
			err := fmt.Errorf("the server reset the stream: %v", f.ErrCode)
			if open := c.openStreams(); c.saidMax && open > int(c.maxStreams) {
				// This client doesn't queue streams beyond the server's limit: it says so. (Go's
				// server resets such a stream with PROTOCOL_ERROR, others with REFUSED_STREAM.)
				err = fmt.Errorf("%w: open streams on the connection: %d, the server's limit: %d; lower --streams-per-conn", err, open, c.maxStreams)
			}
			c.end(s, err)
		}
	case *http2.SettingsFrame:
		if !f.IsAck() {
			if v, ok := f.Value(http2.SettingMaxConcurrentStreams); ok {
				c.maxStreams, c.saidMax = v, true
			}
			return c.writeControl(func() error { return c.fr.WriteSettingsAck() })
		}
	case *http2.PingFrame:
		if f.IsAck() {
			if f.Data == wakePing {
				c.resume()
			}
			return nil
		}
		return c.writeControl(func() error { return c.fr.WritePing(true, f.Data) })
	case *http2.GoAwayFrame:
		return fmt.Errorf("the server sent GOAWAY (%v, last stream %d, %q)", f.ErrCode, f.LastStreamID, f.DebugData())
	case *http2.PushPromiseFrame:
		return errors.New("a PUSH_PROMISE, though push was disabled")
	}
	return nil
}

// openStreams counts the connection's open streams (the reader's view).
func (c *rawConn) openStreams() int {
	n := 0
	for _, s := range c.streams {
		if s != nil {
			n++
		}
	}
	return n
}

// stream returns the open stream id, or nil.
func (c *rawConn) stream(id uint32) *rawStream {
	if id%2 == 0 {
		return nil
	}
	i := int(id-1) / 2
	if i >= len(c.streams) {
		c.mu.Lock()
		c.streams = append(c.streams, c.added...)
		clear(c.added)
		c.added = c.added[:0]
		c.mu.Unlock()
		if i >= len(c.streams) {
			return nil
		}
	}
	return c.streams[i]
}

func (c *rawConn) threshold() uint32 { return min(maxGrantBatch, c.cfg.window/4) }

func (c *rawConn) data(f *http2.DataFrame) {
	n := f.Length // padding included: it counts against the windows too
	s := c.stream(f.StreamID)
	if s == nil {
		c.connUnacked += n // an ended stream's
		return
	}
	if s.stopped {
		s.pending = append(s.pending, f.Data()...)
		s.held += n
		if s.held > c.cfg.window {
			c.fail(s, fmt.Errorf("the server sent %d bytes into a window of %d", s.held, c.cfg.window))
			return
		}
	} else {
		c.connUnacked += n
		s.unacked += n
		if err := c.feed(s, f.Data()); err != nil {
			c.fail(s, err)
			return
		}
		c.grantLater(s)
	}
	if f.StreamEnded() {
		c.peerEnded(s)
	}
}

// peerEnded handles END_STREAM: it ends s, unless a stop holds data that may end it.
func (c *rawConn) peerEnded(s *rawStream) {
	switch {
	case s.ended:
	case s.stopped:
		s.peerEnded = true
	default:
		c.end(s, errors.New("the stream ended without an end-of-stream message"))
	}
}

// grantLater queues s's window update if it is due.
func (c *rawConn) grantLater(s *rawStream) {
	if !s.due && !s.ended && !s.stopped && s.unacked >= c.threshold() {
		s.due = true
		c.grants = append(c.grants, s)
	}
}

// feed parses the envelopes of data, after what s has pending, and handles each message until
// the stream stops or ends; it keeps the rest pending.
func (c *rawConn) feed(s *rawStream, data []byte) error {
	buf := data
	if len(s.pending) > 0 {
		s.pending = append(s.pending, data...)
		buf = s.pending
	}
	for len(buf) >= 5 && !s.stopped && !s.ended {
		size := binary.BigEndian.Uint32(buf[1:5])
		if size > maxMessage {
			return fmt.Errorf("a message of %d bytes, above the %d allowed", size, maxMessage)
		}
		if uint32(len(buf)-5) < size {
			break
		}
		flags, msg := buf[0], buf[5:5+size]
		buf = buf[5+size:]
		if err := c.message(s, flags, msg); err != nil {
			return err
		}
	}
	s.pending = append(s.pending[:0], buf...)
	return nil
}

// message handles one envelope of s.
func (c *rawConn) message(s *rawStream, flags byte, b []byte) error {
	if flags&flagEndStream != 0 {
		c.end(s, endStreamError(b))
		return nil
	}
	if flags&flagCompressed != 0 {
		if !s.gzip {
			return errors.New("a compressed message, though the stream's responses are not compressed")
		}
		var err error
		if b, err = c.gunzip(b); err != nil {
			return err
		}
	}
	if err := proto.Unmarshal(b, c.msg); err != nil {
		return fmt.Errorf("decoding a message: %w", err)
	}
	now := time.Now()
	w := s.w
	w.receive(c.msg, now)
	if w.stopsReading() {
		c.stop(s, now)
	}
	return nil
}

// endStreamError is the error of a Connect end-of-stream message: that of its error field, or
// that the server ended the stream.
func endStreamError(b []byte) error {
	var end struct {
		Error *struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if err := json.Unmarshal(b, &end); err != nil {
		return fmt.Errorf("a malformed end-of-stream message: %w", err)
	}
	if end.Error == nil {
		return errors.New("the server ended the stream")
	}
	return fmt.Errorf("%s: %s", end.Error.Code, end.Error.Message)
}

func (c *rawConn) gunzip(b []byte) ([]byte, error) {
	var err error
	if c.gz == nil {
		c.gz, err = gzip.NewReader(bytes.NewReader(b))
	} else {
		err = c.gz.Reset(bytes.NewReader(b))
	}
	if err != nil {
		return nil, fmt.Errorf("decompressing a message: %w", err)
	}
	c.gzbuf.Reset()
	n, err := c.gzbuf.ReadFrom(io.LimitReader(c.gz, maxMessage+1))
	switch {
	case err != nil:
		return nil, fmt.Errorf("decompressing a message: %w", err)
	case n > maxMessage:
		return nil, fmt.Errorf("a message decompressing to more than %d bytes", maxMessage)
	}
	return c.gzbuf.Bytes(), nil
}

func (c *rawConn) headers(f *http2.MetaHeadersFrame) {
	s := c.stream(f.StreamID)
	if s == nil {
		return
	}
	if !s.gotHeaders {
		s.gotHeaders = true
		var ct, enc string
		for _, hf := range f.RegularFields() {
			switch hf.Name {
			case "content-type":
				ct = hf.Value
			case "connect-content-encoding":
				enc = hf.Value
			}
		}
		var err error
		switch {
		case f.PseudoValue("status") != "200":
			err = fmt.Errorf("HTTP status %s (content-type %q)", f.PseudoValue("status"), ct)
		case ct != "application/connect+proto":
			err = fmt.Errorf("content-type %q, want application/connect+proto", ct)
		case enc == "gzip" && c.cfg.gzip:
			s.gzip = true
		case enc != "" && enc != "identity":
			err = fmt.Errorf("connect-content-encoding %q, which was not asked for", enc)
		}
		if err != nil {
			if f.StreamEnded() {
				c.end(s, err)
			} else {
				c.fail(s, err)
			}
			return
		}
	}
	if f.StreamEnded() {
		c.peerEnded(s)
	}
}

// stop stops reading s: a slow watcher's stop begins.
func (c *rawConn) stop(s *rawStream, now time.Time) {
	s.stopped, s.stoppedAt = true, now
	s.timer = time.AfterFunc(s.w.spec.slowFor, func() { c.wake(s) })
}

// wake runs when s's stop is over: it queues s for the reader and wakes the reader with a PING,
// whose ack the server sends at once.
func (c *rawConn) wake(s *rawStream) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ended {
		return
	}
	c.resumed = append(c.resumed, s)
	if c.fr.WritePing(false, wakePing) == nil {
		c.bw.Flush() // on failure, the reader's read fails too
	}
}

// resume ends the stops that are over: each stream parses what it held and gives back its
// window.
func (c *rawConn) resume() {
	c.mu.Lock()
	rs := c.resumed
	c.resumed = nil
	c.mu.Unlock()
	for _, s := range rs {
		if s.ended || !s.stopped {
			continue
		}
		s.stopped = false
		s.w.stoppedFor = time.Since(s.stoppedAt)
		c.connUnacked += s.held
		s.unacked += s.held
		s.held = 0
		if err := c.feed(s, nil); err != nil {
			c.fail(s, err)
			continue
		}
		if s.peerEnded {
			s.peerEnded = false
			c.peerEnded(s)
			continue
		}
		c.grantLater(s)
	}
}

// flush writes the window updates that are due, and any control frame waiting in bw.
func (c *rawConn) flush() error {
	th := c.threshold()
	if c.connUnacked < th && len(c.grants) == 0 && !c.control {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.connUnacked >= th {
		if err := c.fr.WriteWindowUpdate(0, c.connUnacked); err != nil {
			return err
		}
		c.connUnacked = 0
	}
	for _, s := range c.grants {
		s.due = false
		if s.ended || s.stopped {
			continue
		}
		if err := c.fr.WriteWindowUpdate(s.id, s.unacked); err != nil {
			return err
		}
		s.unacked = 0
	}
	clear(c.grants)
	c.grants = c.grants[:0]
	c.control = false
	return c.bw.Flush()
}

// writeControl writes a control frame into bw; the next flush sends it.
func (c *rawConn) writeControl(write func() error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.control = true
	return write()
}

// fail ends s on this side, and resets the stream.
func (c *rawConn) fail(s *rawStream, err error) {
	if s.ended {
		return
	}
	c.end(s, err)
	c.writeControl(func() error { return c.fr.WriteRSTStream(s.id, http2.ErrCodeCancel) }) // an error shows in the next read
}

// end ends s: it records err as the watcher's failure unless the run is over, and finishes the
// watcher.
func (c *rawConn) end(s *rawStream, err error) {
	if s.ended {
		return
	}
	s.ended = true
	c.connUnacked += s.held // the connection's share of what s held
	if i := int(s.id-1) / 2; i < len(c.streams) {
		c.streams[i] = nil
	}
	w := s.w
	if s.timer != nil {
		s.timer.Stop()
	}
	if s.stopped {
		w.stoppedFor = time.Since(s.stoppedAt)
	}
	if c.ctx.Err() == nil {
		w.err = err
	}
	w.finish()
}
