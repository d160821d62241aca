// Package freeport finds free loopback ports for tests.
package freeport

import (
	"net"
	"testing"
)

// Addr returns 127.0.0.1:port with a port that was free a moment ago. Another process may take
// it before the caller listens on it; on loopback in a test that is rare enough.
func Addr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("find a free port: %v", err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
