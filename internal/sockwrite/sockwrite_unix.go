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

// A Socket is a connection's socket, written without waiting. It is for one writer at a time:
// a write keeps its state in the Socket, so that it allocates nothing (a closure for each write
// was a fiftieth of a busy node's allocations).
type Socket struct {
	rc   syscall.RawConn
	call func(fd uintptr) bool // s.write, made once

	b   []byte // the write under way
	n   int
	err error
}

// Of returns c's socket; nil when c has none (TLS, a pipe).
func Of(c net.Conn) *Socket {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	s := &Socket{rc: rc}
	s.call = s.write
	return s
}

// Write writes b with one write(2), without waiting: it returns how many bytes the socket's
// buffer took, 0 when it is full. It fails as a write to the connection would, and at once when
// the connection's write deadline has passed.
func (s *Socket) Write(b []byte) (int, error) {
	s.b = b
	err := s.rc.Write(s.call)
	n, werr := s.n, s.err
	s.b, s.n, s.err = nil, 0, nil
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

func (s *Socket) write(fd uintptr) bool {
	for {
		s.n, s.err = syscall.Write(int(fd), s.b)
		if s.err != syscall.EINTR {
			return true // done, whatever the outcome: never wait for the socket here
		}
	}
}
