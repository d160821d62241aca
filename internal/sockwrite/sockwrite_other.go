//go:build !unix

// Package sockwrite writes to a socket without waiting for it; without unix sockets it has
// none to write to, and writers go through their connections.
package sockwrite

import (
	"net"
	"syscall"
)

// Raw returns nil: writes go through the connection.
func Raw(net.Conn) syscall.RawConn { return nil }

// Now is not called without a raw connection.
func Now(syscall.RawConn, []byte) (int, error) { return 0, nil }
