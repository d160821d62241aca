package server

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"os"
	"sync"
	"time"
)

const (
	// maxPending bounds what one connection queues ahead of its socket, besides the batch being
	// written. A writer beyond it waits, as it would have waited on a full socket buffer, so a
	// peer that stops reading still holds its writers back.
	maxPending = 256 << 10
	// closeFlushTimeout bounds how long Close spends handing what is queued (a GOAWAY, the last
	// frames) to a peer that may not be reading.
	closeFlushTimeout = time.Second
)

// coalescingListener gives every accepted connection write coalescing (see coalescingConn).
type coalescingListener struct{ net.Listener }

func (l coalescingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return newCoalescingConn(c), nil
}

// directHTTP1 makes the connection of an HTTP/1.1 request write on the writer's goroutine:
// such a connection carries one request at a time, so a flusher goroutine has nothing to
// gather (coalescingConn.writeDirectly). HTTP/2 connections keep coalescing.
func directHTTP1(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor == 1 {
			if c, ok := r.Context().Value(connKey{}).(*coalescingConn); ok {
				c.writeDirectly()
			}
		}
		next.ServeHTTP(w, r)
	})
}

// connKey is the context key of a request's coalescingConn (withConn).
type connKey struct{}

// withConn is the server's ConnContext: it keeps a connection's coalescingConn, beneath TLS if
// any, in the context of its requests.
func withConn(ctx context.Context, c net.Conn) context.Context {
	if t, ok := c.(*tls.Conn); ok {
		c = t.NetConn()
	}
	if cc, ok := c.(*coalescingConn); ok {
		return context.WithValue(ctx, connKey{}, cc)
	}
	return ctx
}

// coalescingConn turns a connection's writes into fewer system calls. net/http's HTTP/2 server
// writes each frame into its buffer and flushes it to the socket as soon as it has nothing else
// queued; when an event fans out to many watch streams that share a connection, their frames
// reach it one after another, so nearly every frame is its own write(2), and that system call is
// the largest single cost of a delivery. Here Write only queues the bytes and starts a flusher
// goroutine if none is running; the flusher writes everything queued by the time it runs, so the
// frames that the connection's streams produced meanwhile leave in one system call. No timer is
// involved: on an idle server the flusher runs at once, under load it runs after the goroutines
// already waiting for the CPU, which are the ones producing the frames to batch. The same
// technique as Netty's flush consolidation and gRPC's one writer per connection.
//
// Write deadlines apply to Write, not to the bytes it already accepted, which are written as a
// kernel would write what is in its socket buffer: crypto/tls sets a deadline of now right after
// queuing its close alert. Close bounds how long a peer that does not read can hold them.
//
// A connection with a single stream gains nothing from a flusher goroutine and would pay its
// start on every flush. An HTTP/1.1 connection carries one request at a time, so once it is
// known to be one (writeDirectly), Write flushes on the writer's own goroutine, as an unwrapped
// connection would.
type coalescingConn struct {
	net.Conn
	mu       sync.Mutex
	room     sync.Cond // pending shrank, the flusher stopped, or the connection failed
	pending  *[]byte   // nil when nothing is queued: an idle connection holds no buffer
	flushing bool
	direct   bool        // Write flushes on its own goroutine (writeDirectly)
	closing  bool        // Close came while flushing: the flusher closes the connection when done
	deadline time.Time   // Write fails from then on (SetWriteDeadline)
	timer    *time.Timer // wakes writers waiting for room at the deadline
	err      error       // the first write error, or net.ErrClosed; every later Write returns it
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 4<<10); return &b }}

func newCoalescingConn(c net.Conn) *coalescingConn {
	cc := &coalescingConn{Conn: c}
	cc.room.L = &cc.mu
	return cc
}

// Write queues p. It fails when an earlier write failed, the connection is closed or the write
// deadline has passed: a failure of this write is reported by a later one, as a kernel's
// buffered write would.
func (c *coalescingConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for {
		if c.err != nil {
			return 0, c.err
		}
		if !c.deadline.IsZero() && !time.Now().Before(c.deadline) {
			return 0, os.ErrDeadlineExceeded
		}
		if c.pending == nil || len(*c.pending)+len(p) <= maxPending {
			break
		}
		c.room.Wait()
	}
	if c.pending == nil {
		c.pending = bufPool.Get().(*[]byte)
	}
	*c.pending = append(*c.pending, p...)
	if !c.flushing {
		c.flushing = true
		if !c.direct {
			go c.flush()
			return len(p), nil
		}
		if err := c.flushLocked(); err != nil {
			return 0, err // p may be partly written: the connection is of no more use
		}
	}
	return len(p), nil
}

// writeDirectly makes Write flush on the writer's goroutine, for a connection that carries one
// stream at a time (HTTP/1.1).
func (c *coalescingConn) writeDirectly() {
	c.mu.Lock()
	c.direct = true
	c.mu.Unlock()
}

// DirectConn is the connection beneath, for a writer that owns the connection (an HTTP/1.1
// watch stream that took it over, see rpc.handOff): its writes skip the copy into the queue,
// and its deadlines hold for a write(2) that blocks.
func (c *coalescingConn) DirectConn() net.Conn { return c.Conn }

// SetWriteDeadline makes Write fail from t on (never, if t is zero), and a Write waiting for
// room give up at t. What Write accepted before is still written. On a connection that writes
// on the writer's goroutine (writeDirectly), t bounds the write(2) too.
func (c *coalescingConn) SetWriteDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.direct {
		if err := c.Conn.SetWriteDeadline(t); err != nil {
			return err
		}
	}
	c.deadline = t
	if c.timer != nil {
		c.timer.Stop()
		c.timer = nil
	}
	if !t.IsZero() {
		c.timer = time.AfterFunc(time.Until(t), func() {
			c.mu.Lock()
			c.room.Broadcast()
			c.mu.Unlock()
		})
	}
	c.room.Broadcast()
	return nil
}

// SetDeadline sets the read deadline of the connection and the write deadline of Write.
func (c *coalescingConn) SetDeadline(t time.Time) error {
	if err := c.Conn.SetReadDeadline(t); err != nil {
		return err
	}
	return c.SetWriteDeadline(t)
}

// flush writes what is queued until nothing is. The lock is not held across the system call.
func (c *coalescingConn) flush() {
	c.mu.Lock()
	defer c.mu.Unlock()
	_ = c.flushLocked() // a later Write reports it
}

// flushLocked is flush with c.mu held, and released across each system call. It returns the
// error of a write that failed.
func (c *coalescingConn) flushLocked() (err error) {
	for c.pending != nil {
		b := c.pending
		c.pending = nil
		c.room.Broadcast() // room to queue behind this write
		c.mu.Unlock()
		_, err = c.Conn.Write(*b)
		c.mu.Lock()
		recycle(b)
		if err != nil {
			if c.err == nil {
				c.err = err
			}
			if c.pending != nil { // queued behind a failed write: it cannot be written either
				recycle(c.pending)
				c.pending = nil
			}
			c.room.Broadcast() // waiting writers fail now
		}
	}
	c.flushing = false
	c.room.Broadcast()
	if c.closing {
		c.Conn.Close()
	}
	return err
}

func recycle(b *[]byte) {
	if cap(*b) <= maxPending { // an outsized buffer goes to the collector, not the pool
		*b = (*b)[:0]
		bufPool.Put(b)
	}
}

// Close closes the connection once what is queued (a GOAWAY, the last frames) is written, or
// after closeFlushTimeout if the peer does not read. It does not wait for that: net/http closes
// connections one after another when it shuts down.
func (c *coalescingConn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stopWrites()
	if c.flushing {
		c.closing = true
		return nil
	}
	return c.Conn.Close()
}

// CloseWrite writes what is queued, waiting at most closeFlushTimeout, then shuts down the
// writing side, as net/http does before closing an HTTP/1.1 connection (on that connection's
// own goroutine).
func (c *coalescingConn) CloseWrite() error {
	c.mu.Lock()
	c.stopWrites()
	for c.flushing {
		c.room.Wait()
	}
	c.mu.Unlock()
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// stopWrites makes every later Write fail, wakes the writers waiting for room, and gives the
// flusher closeFlushTimeout to write what is queued. No caller can move that deadline: the
// connection's write deadline is this type's own.
func (c *coalescingConn) stopWrites() {
	if c.err == nil {
		c.err = net.ErrClosed
	}
	if c.timer != nil {
		c.timer.Stop()
		c.timer = nil
	}
	c.room.Broadcast()
	if c.flushing {
		c.Conn.SetWriteDeadline(time.Now().Add(closeFlushTimeout))
	}
}
