package server

import (
	"cmp"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"connectrpc.com/connect"

	"github.com/taskhub/taskhub/gen/taskhub/v1/taskhubv1connect"
	"github.com/taskhub/taskhub/internal/clientaddr"
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
	conns   counter
	refused atomic.Int64
	logger  *slog.Logger
	warned  atomic.Int64 // when it last logged a refusal, in UnixNano
}

func newLimitedListener(ln net.Listener, l Limits, logger *slog.Logger) *limitedListener {
	perIP := max(l.MaxConnsPerIP, 0)
	return &limitedListener{Listener: ln, logger: logger,
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
			return &limitedConn{Conn: c, l: l, ip: ip}, nil
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

// limitedConn gives its place back when it closes.
type limitedConn struct {
	net.Conn
	l      *limitedListener
	ip     netip.Addr
	closed atomic.Bool
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
