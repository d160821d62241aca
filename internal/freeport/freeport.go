// Package freeport finds free loopback ports for tests.
package freeport

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"testing"
)

// Addr returns 127.0.0.1:port with a port that was free a moment ago, for a process the test
// starts to listen on. The port is outside the kernel's range for outgoing connections' local
// ports (net.ipv4.ip_local_port_range), below it or else above it, so that none of the test's
// many connections takes it before the process listens (a cluster test once failed so: "bind:
// address already in use"), and it is never handed out twice by this process. Another process
// may still take it; on loopback in a test that is rare. Where the range leaves no room (or is
// unknown), the kernel picks the port, as for any listener on port 0.
func Addr(t testing.TB) string {
	t.Helper()
	from, n := outside()
	mu.Lock()
	defer mu.Unlock()
	for range 100 {
		port := 0
		if n > 0 {
			port = from + rand.IntN(n)
		}
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue // taken
		}
		addr := ln.Addr().String()
		ln.Close()
		if !given[addr] {
			given[addr] = true
			return addr
		}
	}
	t.Fatalf("find a free port: none of 100 tried was free")
	return ""
}

// minPort is the lowest port Addr hands out: above the well-known and most registered ones.
const minPort = 20000

var (
	mu    sync.Mutex
	given = map[string]bool{}
)

// outside returns the ports Addr picks from, from to from+n-1, outside the range of local ports
// the kernel gives outgoing connections, with room for at least 1000; n is 0 when there is none.
func outside() (from, n int) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0, 0
	}
	var low, high int
	if _, err := fmt.Sscan(string(b), &low, &high); err != nil {
		return 0, 0
	}
	switch {
	case low-minPort >= 1000:
		return minPort, low - minPort
	case 65535-high >= 1000:
		return high + 1, 65535 - high
	}
	return 0, 0
}
