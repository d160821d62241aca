//go:build !unix

package rpc

import (
	"net"
	"syscall"
)

// rawConn returns nil: a stream's writes go through its connection (see writeNow).
func rawConn(net.Conn) syscall.RawConn { return nil }

// writeNow is not called without a raw connection.
func writeNow(syscall.RawConn, []byte) (int, error) { return 0, nil }
