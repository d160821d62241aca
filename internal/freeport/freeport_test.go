package freeport

import (
	"net"
	"strconv"
	"testing"
)

// TestAddr: ports are handed out once each, outside the range the kernel picks outgoing
// connections' local ports from, and are free to listen on.
func TestAddr(t *testing.T) {
	from, n := outside()
	if n == 0 {
		t.Log("the range of local ports leaves no room: the kernel picks them")
	}
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
		if n > 0 && (port < from || port >= from+n) {
			t.Fatalf("port %d is outside [%d, %d)", port, from, from+n)
		}
	}
	ln, err := net.Listen("tcp", Addr(t))
	if err != nil {
		t.Fatalf("listen on a port Addr gave: %v", err)
	}
	ln.Close()
}
