package server

import (
	"net"
	"sync"
	"time"
)

const (
	// maxPending bounds what one connection queues ahead of its socket, besides the batch being
	// written. A writer beyond it waits, as it would have waited on a full socket buffer, so a peer that stops reading
	// still holds its writers back.
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

// coalescingConn turns a connection's writes into fewer system calls. net/http's HTTP/2 server
// flushes once per frame: when an event fans out to many watch streams that share a connection,
// each stream's frame is its own write(2), and that system call is the largest single cost of a
// delivery. Here Write only queues the bytes and starts a flusher goroutine if none is running;
// the flusher writes everything queued by the time it runs, so the frames that the connection's
// streams produced meanwhile leave in one system call. No timer is involved: on an idle server
// the flusher runs at once, under load it runs after the goroutines already waiting for the CPU,
// which are the ones producing the frames to batch. The same technique as Netty's flush
// consolidation and gRPC's one writer per connection.
//
// A connection with a single stream gains nothing and pays a goroutine start per flush (about
// 1 µs); the README's Benchmarks section has both figures.
type coalescingConn struct {
	net.Conn
	mu       sync.Mutex
	room     sync.Cond // pending shrank, the flusher stopped, or the connection failed
	pending  *[]byte   // nil when nothing is queued: an idle connection holds no buffer
	flushing bool
	closing  bool  // Close came while flushing: the flusher closes the connection when done
	err      error // the first write error, or net.ErrClosed; every later Write returns it
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 4<<10); return &b }}

func newCoalescingConn(c net.Conn) *coalescingConn {
	cc := &coalescingConn{Conn: c}
	cc.room.L = &cc.mu
	return cc
}

// Write queues p. It returns an error only when an earlier write failed or the connection is
// closed: a failure of this write is reported by a later one, as a kernel's buffered write would.
func (c *coalescingConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.err == nil && c.pending != nil && len(*c.pending)+len(p) > maxPending {
		c.room.Wait()
	}
	if c.err != nil {
		return 0, c.err
	}
	if c.pending == nil {
		c.pending = bufPool.Get().(*[]byte)
	}
	*c.pending = append(*c.pending, p...)
	if !c.flushing {
		c.flushing = true
		go c.flush()
	}
	return len(p), nil
}

// flush writes what is queued until nothing is. The lock is not held across the system call.
func (c *coalescingConn) flush() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.pending != nil {
		b := c.pending
		c.pending = nil
		c.mu.Unlock()
		_, err := c.Conn.Write(*b)
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
		}
		c.room.Broadcast()
	}
	c.flushing = false
	c.room.Broadcast()
	if c.closing {
		c.Conn.Close()
	}
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
	if c.err == nil {
		c.err = net.ErrClosed
	}
	if c.flushing {
		c.closing = true
		c.Conn.SetWriteDeadline(time.Now().Add(closeFlushTimeout))
		return nil
	}
	return c.Conn.Close()
}

// CloseWrite writes what is queued, waiting at most closeFlushTimeout, then shuts down the
// writing side, as net/http does before closing an HTTP/1.1 connection (on that connection's
// own goroutine).
func (c *coalescingConn) CloseWrite() error {
	c.mu.Lock()
	if c.err == nil {
		c.err = net.ErrClosed
	}
	if c.flushing {
		c.Conn.SetWriteDeadline(time.Now().Add(closeFlushTimeout))
		for c.flushing {
			c.room.Wait()
		}
	}
	c.mu.Unlock()
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
