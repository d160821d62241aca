//go:build unix

// Package sockwrite writes to a socket without waiting for it: one write(2) that takes what the
// socket's buffer has room for. A writer that owns many connections (one per watcher) then never
// blocks on a client that reads slowly, and a connection's writes wait only when they must.
package sockwrite

import (
	"errors"
	"net"
	"syscall"
)

// Raw returns c's socket, for Now; nil when c has none (TLS, a pipe).
func Raw(c net.Conn) syscall.RawConn {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return rc
}

// Now writes b to the socket rc with one write(2), without waiting: it returns how many bytes
// the socket's buffer took, 0 when it is full. It fails as a write to the connection would, and
// at once when the connection's write deadline has passed.
func Now(rc syscall.RawConn, b []byte) (int, error) {
	var n int
	var werr error
	err := rc.Write(func(fd uintptr) bool {
		for {
			n, werr = syscall.Write(int(fd), b)
			if werr != syscall.EINTR {
				return true // done, whatever the outcome: never wait for the socket here
			}
		}
	})
	switch {
	case err != nil:
		return 0, err
	case errors.Is(werr, syscall.EAGAIN):
		return 0, nil
	case werr != nil:
		return 0, &net.OpError{Op: "write", Net: "tcp", Err: werr}
	}
	return n, nil
}
