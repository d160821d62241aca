package rpc

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"math/bits"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"connectrpc.com/connect"

	"github.com/taskhub/taskhub"
	"github.com/taskhub/taskhub/gen/taskhub/v1/taskhubv1connect"
	"github.com/taskhub/taskhub/internal/sockwrite"
)

// A WatchTasks stream on an HTTP/1.1 connection of its own (a browser's page without TLS, curl,
// most scripts) is handed the connection once connect has read and checked its request: the
// stream then writes its messages to the socket itself, in writes of at most maxWrite bytes
// (a larger message alone), each one write(2), and holds no goroutine while it is idle. Served
// by net/http and connect, such a stream held two goroutines for its life (the connection's,
// whose stack runs through every handler and interceptor, and its background reader) and
// net/http's buffers: 37 KB of server memory per idle watcher, over half of it stacks
// (docs/benchmarks.md). Handed off, it holds its connection, a goroutine blocked in a one-byte
// read that notices the client leave, and its watch; a goroutine runs only while there is
// something to send (taskhub.Watch.Deliver).
//
// Only the Connect protocol is handed off (application/connect+proto and +json, which is what
// browsers, curl and the clients here speak over HTTP/1.1); gRPC-Web and HTTP/2 streams stay
// with connect. The response is the one connect would send: the same headers, the same
// enveloped messages, the same end-of-stream message, then the connection is closed (the
// response says so: "Connection: close"), since net/http cannot take a connection back.

// handOff takes the connection of the WatchTasks call whose context is ctx when the call is
// Connect's protocol over HTTP/1.1, writes the response's head, and returns the stream that now
// owns it; nil when the call stays with connect. The stream's context keeps ctx's deadline,
// neither its cancellation (net/http cancels it when the handler returns) nor its values: they
// lead to the call's request and response, and so to net/http's buffers and the headers, which
// the stream needs none of once serve has the caller's identity.
func handOff(ctx context.Context) *http1Stream {
	b := batchOf(ctx)
	if b == nil || !b.http1 {
		return nil
	}
	ct := b.Header().Get("Content-Type")
	if !strings.HasPrefix(ct, "application/connect+") {
		return nil
	}
	conn, _, err := http.NewResponseController(b.ResponseWriter).Hijack()
	if err != nil {
		return nil
	}
	b.handedOff = true
	s := &http1Stream{conn: conn, w: conn, observe: b.observe, log: b.log, began: time.Now(), release: keepSlot(ctx), streams: b.streams}
	if d, ok := conn.(interface{ DirectConn() net.Conn }); ok {
		s.w = d.DirectConn() // nothing is queued above it: net/http wrote its last byte
	}
	s.raw = sockwrite.Of(s.w)
	s.codec = messageCodec{binaryCodec{}, false}
	if strings.HasPrefix(ct, "application/connect+json") {
		s.codec = messageCodec{strictJSON{"json"}, true}
	}
	base := context.Background()
	if d, ok := ctx.Deadline(); ok { // Connect-Timeout-Ms
		s.ctx, s.cancel = context.WithDeadline(base, d)
	} else {
		s.ctx, s.cancel = context.WithCancel(base)
	}
	head := s.head(b.Header())
	_, s.headErr = s.w.Write(head)
	putBuffer(head)
	return s
}

// http1Stream is a handed-off WatchTasks stream (see handOff).
type http1Stream struct {
	conn    net.Conn          // closed at the end
	w       net.Conn          // written to: conn, or the connection beneath its write coalescing
	raw     *sockwrite.Socket // w's socket, for writes that do not wait; nil: none (TLS)
	pending []byte            // a pooled buffer whose bytes from off on send kept, for flush
	off     int
	times   []time.Time // with pending: its events' times in the log, for delivered

	delivered func(lag time.Duration) // Options.ObserveDelivered; may be nil
	streams   *Streams                // nil: not tracked
	ctx       context.Context         // ends with the stream
	cancel    context.CancelFunc
	id        identity
	codec     messageCodec
	watch     taskhub.Watch
	gone      atomic.Bool // the client closed its side, or sent more than its request
	cut       atomic.Bool // a write failed, maybe part-way: nothing more may follow it
	headErr   error       // the head could not be written: the client is gone
	began     time.Time
	observe   observer
	log       callLog
	release   func() // the request's place under the limit per address
}

// serve runs the watch q for the caller id until it ends; it returns at once.
func (s *http1Stream) serve(hub taskhub.TaskService, q taskhub.WatchQuery, id identity, delivered func(time.Duration)) {
	s.id, s.delivered = id, delivered
	var cancel context.CancelFunc
	s.ctx, cancel = id.streamContext(s.ctx)
	parent := s.cancel
	s.cancel = func() { cancel(); parent() }
	if s.headErr != nil {
		s.end(s.headErr)
		return
	}
	w, err := hub.Watch(s.ctx, q)
	if err != nil {
		s.end(err)
		return
	}
	s.watch = w
	s.streams.add(s)
	go s.read()
	w.Deliver(s.ctx, taskhub.Sink{Send: s.send, Flush: s.flush, Done: s.end})
}

// read waits for the client to close the connection: a server-streaming call's request is all
// it sends, so anything it reads (EOF, an error, or bytes) ends the stream. A goroutine with a
// small stack, as net/http's background reader is.
func (s *http1Stream) read() {
	var one [1]byte
	_, _ = s.conn.Read(one[:])
	s.gone.Store(true)
	_ = s.w.SetWriteDeadline(time.Now()) // a write blocked on a client that left ends now
	s.cancel()
	s.watch.Close()
}

// send writes the first messages of msgs, as many as make a write of at most maxWrite bytes
// (at least one), as one chunk of the response's body, with one write(2) that does not wait:
// what the socket does not take at once is kept for flush.
func (s *http1Stream) send(msgs []*taskhub.Message) (sent int, pending bool, err error) {
	n := 0
	for _, m := range msgs {
		b, err := m.Encoded(s.codec.json, s.codec.encode)
		if err != nil {
			return 0, false, connect.NewError(connect.CodeInternal, err)
		}
		if sent > 0 && chunkBytes(n+5+len(b)) > maxWrite {
			break
		}
		n += 5 + len(b)
		sent++
	}
	msgs = msgs[:sent]
	buf := getBuffer()
	if need := chunkBytes(n); cap(buf) < need {
		putBuffer(buf)
		buf = make([]byte, 0, need) // exactly: up to maxWrite, it goes back to the pool
	}
	buf = appendChunkSize(buf, n)
	for _, m := range msgs {
		b, _ := m.Encoded(s.codec.json, s.codec.encode)
		buf = appendEnvelope(buf, 0, b)
	}
	buf = append(buf, "\r\n"...)
	wrote := 0
	if s.raw != nil {
		if wrote, err = s.raw.Write(buf); err != nil {
			putBuffer(buf)
			s.cut.Store(true)
			return 0, false, err
		}
	}
	if wrote == len(buf) {
		putBuffer(buf)
		observeDelivered(s.delivered, time.Now(), msgs)
		return sent, false, nil
	}
	s.pending, s.off = buf, wrote
	if s.delivered != nil {
		s.times = s.times[:0]
		for _, m := range msgs {
			if t, ok := liveEventTime(m); ok {
				s.times = append(s.times, t)
			}
		}
	}
	return sent, true, nil
}

// flush writes what send kept, waiting for the client (until the stream's write deadline, set
// when the client leaves or the server shuts down).
func (s *http1Stream) flush() error {
	buf := s.pending
	s.pending = nil
	_, err := s.w.Write(buf[s.off:])
	putBuffer(buf)
	if err != nil {
		s.cut.Store(true)
		return err
	}
	if s.delivered != nil {
		now := time.Now()
		for _, t := range s.times {
			s.delivered(now.Sub(t))
		}
	}
	return nil
}

// clientsWriteError reports whether a write failed with err because of its client: it reset
// or closed the connection, or took nothing for the write timeout (or the server's shutdown
// cut it short, see Streams.Cut).
func clientsWriteError(err error) bool {
	return errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, net.ErrClosed)
}

// endWriteTimeout bounds how long the end of a stream waits for a client that does not read.
const endWriteTimeout = 2 * time.Second

// end ends the stream with err: it sends the end-of-stream message (with the error, if any) and
// the body's last chunk, closes the connection, and reports the call.
func (s *http1Stream) end(err error) {
	gone := s.gone.Load()
	if gone || s.cut.Load() && clientsWriteError(err) {
		// The client left (its watch was closed for that), or a write to it failed because it
		// left or took nothing for the write timeout. Its doing, not the server's: not an
		// internal error, which is logged as the server's (and an attacker's stuck streams
		// would fill the log with them).
		err = context.Canceled
	}
	err = s.id.streamEnd(s.ctx, err)
	if !gone && !s.cut.Load() && s.headErr == nil {
		buf := appendEndStream(getBuffer(), err)
		buf = append(buf, "0\r\n\r\n"...)
		_ = s.w.SetWriteDeadline(time.Now().Add(endWriteTimeout))
		_, _ = s.w.Write(buf)
		putBuffer(buf)
	}
	_ = s.conn.Close()
	s.cancel()
	s.release()
	s.streams.remove(s)
	if s.observe != nil {
		s.observe(taskhubv1connect.TaskServiceWatchTasksProcedure, codeOf(err))
	}
	s.log.log(s.ctx, taskhubv1connect.TaskServiceWatchTasksProcedure, s.conn.RemoteAddr().String(), s.began, err)
}

// head is the response's status line and headers: those connect and the handlers before it
// set, for a chunked body on a connection that closes after it.
func (s *http1Stream) head(h http.Header) []byte {
	buf := bytes.NewBuffer(getBuffer())
	buf.WriteString("HTTP/1.1 200 OK\r\n")
	_ = h.WriteSubset(buf, map[string]bool{"Content-Length": true, "Transfer-Encoding": true, "Connection": true, "Date": true})
	buf.WriteString("Date: " + time.Now().UTC().Format(http.TimeFormat) + "\r\n")
	buf.WriteString("Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
	return buf.Bytes()
}

// appendEndStream appends the chunk of Connect's end-of-stream message for err (nil: success).
func appendEndStream(dst []byte, err error) []byte {
	type wireError struct {
		Code    string `json:"code"`
		Message string `json:"message,omitempty"`
	}
	var end struct {
		Error *wireError `json:"error,omitempty"`
	}
	if err != nil {
		var ce *connect.Error
		if !errors.As(connectError(err), &ce) {
			ce = connect.NewError(connect.CodeUnknown, err)
		}
		end.Error = &wireError{Code: ce.Code().String(), Message: ce.Message()}
	}
	body, _ := json.Marshal(end)
	dst = appendEnvelope(appendChunkSize(dst, 5+len(body)), connectEndStream, body)
	return append(dst, "\r\n"...)
}

// connectEndStream flags the envelope of Connect's end-of-stream message.
const connectEndStream = 0x02

// maxWrite bounds a write to a handed-off stream's socket, in bytes, unless one message alone
// is larger: it bounds what the server holds of a client's bytes while the client does not
// read (its queue holds messages shared with the other watchers), and such writes' buffers are
// shared by the streams (buffers). Without it a stream that fell behind copied its whole queue
// for one write: a thousand messages, each up to about 50 KiB with a long prompt.
const maxWrite = 64 << 10

// chunkBytes is the size of a chunk of n bytes of a chunked body, with its size line and CRLF.
func chunkBytes(n int) int { return max((bits.Len(uint(n))+3)/4, 1) + 2 + n + 2 }

// appendChunkSize appends the line that opens a chunk of n bytes of a chunked body; the
// chunk's bytes and a CRLF follow it.
func appendChunkSize(dst []byte, n int) []byte {
	return append(strconv.AppendInt(dst, int64(n), 16), "\r\n"...)
}

// appendEnvelope appends message b in its envelope: a flags byte, its big-endian length.
func appendEnvelope(dst []byte, flags byte, b []byte) []byte {
	dst = append(dst, flags)
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(b)))
	return append(dst, b...)
}

// buffers holds the streams' write buffers between writes: an idle stream holds none.
var buffers = sync.Pool{New: func() any { b := make([]byte, 0, 4<<10); return &b }}

func getBuffer() []byte { return (*buffers.Get().(*[]byte))[:0] }

// putBuffer keeps buf for another write, unless it grew large (a snapshot's).
func putBuffer(buf []byte) {
	if cap(buf) <= maxWrite {
		buffers.Put(&buf)
	}
}

// A Slot is the place a request holds under the server's limit of requests per address while
// its handler runs. A WatchTasks stream that outlives its handler (handOff) keeps it until the
// stream ends.
type Slot struct {
	give func()
	kept bool
}

type slotKey struct{}

// WithSlot returns ctx with a slot that give frees, and the slot. The limit calls Release when
// the request's handler returns.
func WithSlot(ctx context.Context, give func()) (context.Context, *Slot) {
	s := &Slot{give: give}
	return context.WithValue(ctx, slotKey{}, s), s
}

// Release frees the slot, unless a stream kept it.
func (s *Slot) Release() {
	if !s.kept {
		s.give()
	}
}

// keepSlot keeps the slot of ctx's request past its handler's return, and returns what frees it.
func keepSlot(ctx context.Context) func() {
	s, _ := ctx.Value(slotKey{}).(*Slot)
	if s == nil {
		return func() {}
	}
	s.kept = true
	return s.give
}

// Streams are the WatchTasks streams that own their connections (handOff), for the server's
// shutdown: the hub's ends them all, except one blocked on a client that stopped reading.
type Streams struct {
	mu   sync.Mutex
	open map[*http1Stream]struct{}
}

// NewStreams returns an empty set of streams, for Options.Streams.
func NewStreams() *Streams { return &Streams{open: map[*http1Stream]struct{}{}} }

func (ss *Streams) add(s *http1Stream) {
	if ss != nil {
		ss.mu.Lock()
		ss.open[s] = struct{}{}
		ss.mu.Unlock()
	}
}

func (ss *Streams) remove(s *http1Stream) {
	if ss != nil {
		ss.mu.Lock()
		delete(ss.open, s)
		ss.mu.Unlock()
	}
}

// Cut makes every open stream's writes fail d from now: a stream that a client which stopped
// reading holds in a write then ends, and closes its connection.
func (ss *Streams) Cut(d time.Duration) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	for s := range ss.open {
		_ = s.w.SetWriteDeadline(time.Now().Add(d))
	}
}

// Wait waits until every stream has ended, for at most d, and reports whether they have.
func (ss *Streams) Wait(d time.Duration) bool {
	for deadline := time.Now().Add(d); ; time.Sleep(10 * time.Millisecond) {
		ss.mu.Lock()
		n := len(ss.open)
		ss.mu.Unlock()
		if n == 0 {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
	}
}
