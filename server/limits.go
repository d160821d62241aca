package server

import (
	"cmp"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"connectrpc.com/connect"

	"github.com/taskhub/taskhub/gen/taskhub/v1/taskhubv1connect"
	"github.com/taskhub/taskhub/internal/clientaddr"
	"github.com/taskhub/taskhub/internal/sockwrite"
	"github.com/taskhub/taskhub/rpc"
)

// Defaults of Limits.
const (
	// DefaultMaxConnsPerIP is how many connections one client address may hold.
	DefaultMaxConnsPerIP = 1000
	// DefaultMaxRequestsPerIP is how many requests one client address may have under way
	// (watch streams included).
	DefaultMaxRequestsPerIP = 1000
	// DefaultHeaderTimeout bounds the wait for a request's headers, a new connection's first
	// request among them (and its TLS handshake).
	DefaultHeaderTimeout = 10 * time.Second
	// DefaultBodyTimeout bounds the reading of a request's whole body.
	DefaultBodyTimeout = 30 * time.Second
	// DefaultIdleTimeout is how long a connection with no request under way is kept.
	DefaultIdleTimeout = 2 * time.Minute
	// DefaultWriteTimeout is how long a client may take none of what the server writes to it.
	DefaultWriteTimeout = 30 * time.Second
	// MaxHeaderBytes bounds a request's headers.
	MaxHeaderBytes = 64 << 10
	// reservedFDs are the file descriptors kept from connections for the event log's files and
	// everything else the process opens: connections never take the last of them.
	reservedFDs = 256
)

// Limits bound what clients may hold of the server, so that none of them, authenticated or not,
// can take it down: every connection and request has a time budget, and every client address a
// share (an IPv6 client's share is its /64's). Zero values take the defaults; for the per-address
// limits a negative value means none (behind a load balancer or proxy every request comes from
// its address).
type Limits struct {
	// MaxConns bounds the open connections [the process's file descriptor limit less 256].
	// Connections over it are closed as they are accepted. It is never more than that.
	MaxConns int
	// MaxConnsPerIP bounds the connections of one client address [DefaultMaxConnsPerIP, and at
	// most half of MaxConns].
	MaxConnsPerIP int
	// MaxRequestsPerIP bounds the requests one client address has under way, watch streams
	// included [DefaultMaxRequestsPerIP]; over it, calls fail with resource_exhausted.
	MaxRequestsPerIP int
	// HeaderTimeout bounds the wait for a request's headers [DefaultHeaderTimeout].
	HeaderTimeout time.Duration
	// BodyTimeout bounds the reading of a request's whole body, however it trickles in
	// [DefaultBodyTimeout]. A watch stream is not limited once its request has arrived.
	BodyTimeout time.Duration
	// IdleTimeout is how long an idle connection is kept [DefaultIdleTimeout].
	IdleTimeout time.Duration
	// WriteTimeout is how long a client may take none of what the server writes to it
	// [DefaultWriteTimeout]. A client that stops reading (a watcher that never reads, a proxy
	// that stopped) then loses its connection, instead of holding the connection, its writer
	// and megabytes of socket buffers for as long as its stream lasts; it resumes after the
	// last seq it read. However slowly a client reads, each byte it takes gives it more time.
	WriteTimeout time.Duration
}

// withDefaults fills in the defaults; fdLimit is the process's file descriptor limit (0 when
// unknown).
func (l Limits) withDefaults(fdLimit int) Limits {
	maxConns := max(fdLimit-reservedFDs, 64)
	if fdLimit == 0 {
		maxConns = 100000
	}
	if l.MaxConns <= 0 || l.MaxConns > maxConns {
		l.MaxConns = maxConns
	}
	if l.MaxConnsPerIP == 0 {
		l.MaxConnsPerIP = DefaultMaxConnsPerIP
	}
	if l.MaxConnsPerIP > 0 {
		l.MaxConnsPerIP = min(l.MaxConnsPerIP, max(l.MaxConns/2, 1))
	}
	l.MaxRequestsPerIP = cmp.Or(l.MaxRequestsPerIP, DefaultMaxRequestsPerIP)
	l.HeaderTimeout = cmp.Or(l.HeaderTimeout, DefaultHeaderTimeout)
	l.BodyTimeout = cmp.Or(l.BodyTimeout, DefaultBodyTimeout)
	l.IdleTimeout = cmp.Or(l.IdleTimeout, DefaultIdleTimeout)
	l.WriteTimeout = cmp.Or(l.WriteTimeout, DefaultWriteTimeout)
	return l
}

// counter counts what each client address holds, against a limit per address (0: none) and
// one in all (0: none).
type counter struct {
	max, perIP int
	mu         sync.Mutex
	total      int
	byIP       map[netip.Addr]int
}

func (c *counter) take(ip netip.Addr) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.max > 0 && c.total >= c.max || c.perIP > 0 && c.byIP[ip] >= c.perIP {
		return false
	}
	c.total++
	c.byIP[ip]++
	return true
}

func (c *counter) give(ip netip.Addr) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.total--
	if c.byIP[ip]--; c.byIP[ip] <= 0 {
		delete(c.byIP, ip)
	}
}

// limitedListener closes the connections over its limits as it accepts them: no number of
// connections can take the file descriptors the event log needs.
type limitedListener struct {
	net.Listener
	conns        counter
	writeTimeout time.Duration // Limits.WriteTimeout
	refused      atomic.Int64
	stalled      atomic.Int64 // writes failed for their client taking nothing for writeTimeout
	logger       *slog.Logger
	warned       atomic.Int64 // when it last logged a refusal, in UnixNano
}

func newLimitedListener(ln net.Listener, l Limits, logger *slog.Logger) *limitedListener {
	perIP := max(l.MaxConnsPerIP, 0)
	return &limitedListener{Listener: ln, logger: logger, writeTimeout: l.WriteTimeout,
		conns: counter{max: l.MaxConns, perIP: perIP, byIP: map[netip.Addr]int{}}}
}

func (l *limitedListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		ip := clientaddr.Of(c.RemoteAddr().String())
		if l.conns.take(ip) {
			return &limitedConn{Conn: c, l: l, ip: ip, raw: sockwrite.Of(c)}, nil
		}
		c.Close()
		n := l.refused.Add(1)
		if now := time.Now().UnixNano(); now-l.warned.Load() > int64(10*time.Second) {
			l.warned.Store(now)
			l.logger.Warn("refusing connections over the limits", "client", ip, "refused_so_far", n,
				"max_conns", l.conns.max, "max_conns_per_ip", l.conns.perIP)
		}
	}
}

// limitedConn gives its place back when it closes, and fails a write its client takes nothing of
// for the listener's writeTimeout. It is the connection beneath TLS and write coalescing, so
// every protocol's writes meet that bound: an HTTP/1.1 response or watch stream, an HTTP/2
// connection's frames (all its streams then end), a TLS record.
type limitedConn struct {
	net.Conn
	l      *limitedListener
	ip     netip.Addr
	raw    *sockwrite.Socket // the socket, for a first write that does not wait; nil: none
	closed atomic.Bool

	writing  sync.Mutex // held by a Write throughout, so that writes never interleave
	wmu      sync.Mutex
	deadline time.Time // the write deadline set by SetWriteDeadline (zero: none)
	waiting  bool      // a Write waits for the client, with the socket's deadline at limit
	limit    time.Time // while waiting: when the client must have taken more
}

// Write writes p with one write(2) if the socket has room, the common case, which sets no
// deadline. Otherwise it waits for the client to read, for at most the listener's writeTimeout
// at a time: each wait in which the client takes some of p starts another, one in which it takes
// nothing fails the write (os.ErrDeadlineExceeded, as a deadline would). The deadline set by
// SetWriteDeadline holds throughout.
func (c *limitedConn) Write(p []byte) (int, error) {
	if c.l.writeTimeout <= 0 {
		return c.Conn.Write(p)
	}
	c.writing.Lock()
	defer c.writing.Unlock()
	n := 0
	if c.raw != nil {
		m, err := c.raw.Write(p)
		if err != nil || m == len(p) {
			return m, err
		}
		n = m
	}
	for {
		c.wmu.Lock()
		c.waiting, c.limit = true, time.Now().Add(c.l.writeTimeout)
		_ = c.Conn.SetWriteDeadline(c.effective())
		c.wmu.Unlock()
		m, err := c.Conn.Write(p[n:])
		n += m
		c.wmu.Lock()
		c.waiting = false
		_ = c.Conn.SetWriteDeadline(c.deadline)
		passed := !c.deadline.IsZero() && !time.Now().Before(c.deadline)
		c.wmu.Unlock()
		if err == nil || !errors.Is(err, os.ErrDeadlineExceeded) || passed {
			return n, err
		}
		if m == 0 { // the client took nothing for writeTimeout
			c.l.stalled.Add(1)
			return n, err
		}
	}
}

// effective is the socket's write deadline while a Write waits: the sooner of the set deadline
// and the write's limit. c.wmu is held.
func (c *limitedConn) effective() time.Time {
	if !c.deadline.IsZero() && c.deadline.Before(c.limit) {
		return c.deadline
	}
	return c.limit
}

// SetWriteDeadline makes writes fail from t on (never, if t is zero); a Write waiting for the
// client meanwhile keeps its own limit too.
func (c *limitedConn) SetWriteDeadline(t time.Time) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.deadline = t
	if c.waiting {
		return c.Conn.SetWriteDeadline(c.effective())
	}
	return c.Conn.SetWriteDeadline(t)
}

// SetDeadline sets the read deadline, and the write deadline as SetWriteDeadline does.
func (c *limitedConn) SetDeadline(t time.Time) error {
	if err := c.Conn.SetReadDeadline(t); err != nil {
		return err
	}
	return c.SetWriteDeadline(t)
}

func (c *limitedConn) Close() error {
	if c.closed.CompareAndSwap(false, true) {
		c.l.conns.give(c.ip)
	}
	return c.Conn.Close()
}

// SyscallConn is the socket's, for a stream that writes to it without waiting (rpc's HTTP/1.1
// watch streams); embedding net.Conn alone would hide it.
func (c *limitedConn) SyscallConn() (syscall.RawConn, error) {
	if sc, ok := c.Conn.(syscall.Conn); ok {
		return sc.SyscallConn()
	}
	return nil, errors.ErrUnsupported
}

// CloseWrite half-closes the connection, as net/http does before closing one it answered
// without reading the whole request: the client then reads the answer before the close.
func (c *limitedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// limitRequests bounds the requests each client address has under way, and gives each request
// body its time budget. A Connect call over a limit gets resource_exhausted in its protocol; any
// other request 429.
func limitRequests(next http.Handler, l Limits, errs *connect.ErrorWriter) http.Handler {
	reqs := &counter{perIP: max(l.MaxRequestsPerIP, 0), byIP: map[netip.Addr]int{}}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ip := clientaddr.Of(r.RemoteAddr)
		if !reqs.take(ip) {
			if r.ProtoMajor == 1 {
				w.Header().Set("Connection", "close") // do not wait for its body
			}
			msg := "your address has " + strconv.Itoa(reqs.perIP) + " requests under way, the most one address may have: wait for some to finish"
			if errs.IsSupported(r) {
				_ = errs.Write(w, r, connect.NewError(connect.CodeResourceExhausted, errorString(msg)))
			} else {
				http.Error(w, msg, http.StatusTooManyRequests)
			}
			return
		}
		if r.ProtoMajor == 1 && r.URL.Path == taskhubv1connect.TaskServiceWatchTasksProcedure {
			// The stream may outlive the handler, keeping its place (rpc.Slot).
			ctx, slot := rpc.WithSlot(r.Context(), func() { reqs.give(ip) })
			defer slot.Release()
			r = r.WithContext(ctx)
		} else {
			defer reqs.give(ip)
		}
		if r.Body != nil && r.Body != http.NoBody {
			// For the whole body, not per read: a trickle does not keep it alive. Reading the
			// body to its end clears the deadline (net/http does for HTTP/1.1; on HTTP/2 it
			// only affects the body), so a watch stream lives on after its request.
			_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(l.BodyTimeout))
		}
		next.ServeHTTP(w, r)
	})
}

type errorString string

func (e errorString) Error() string { return string(e) }
