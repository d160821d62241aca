//go:build unix

package rpc

import (
	"errors"
	"net"
	"syscall"
)

// rawConn returns c's socket, for writeNow; nil when c has none (TLS).
func rawConn(c net.Conn) syscall.RawConn {
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

// writeNow writes b to the socket rc with one write(2), without waiting: it returns how many
// bytes the socket's buffer took, 0 when it is full. It fails as a write to the connection
// would, and at once when the connection's write deadline has passed.
func writeNow(rc syscall.RawConn, b []byte) (int, error) {
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
