package freeport

import (
	"net"
	"strconv"
	"testing"
)

// TestAddr: ports are handed out once each, below the range the kernel picks outgoing
// connections' local ports from, and are free to listen on.
func TestAddr(t *testing.T) {
	low := ephemeralLow()
	seen := map[string]bool{}
	for range 200 {
		addr := Addr(t)
		if seen[addr] {
			t.Fatalf("%s handed out twice", addr)
		}
		seen[addr] = true
		_, p, err := net.SplitHostPort(addr)
		if err != nil {
			t.Fatal(err)
		}
		port, _ := strconv.Atoi(p)
		if low > minPort+1000 && (port < minPort || port >= low) {
			t.Fatalf("port %d is outside [%d, %d)", port, minPort, low)
		}
	}
	ln, err := net.Listen("tcp", Addr(t))
	if err != nil {
		t.Fatalf("listen on a port Addr gave: %v", err)
	}
	ln.Close()
}
