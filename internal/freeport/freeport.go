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
// starts to listen on. The port is below the kernel's range for outgoing connections' local
// ports (net.ipv4.ip_local_port_range), so that none of the test's many connections takes it
// before the process listens (a cluster test once failed so: "bind: address already in use"),
// and it is never handed out twice by this process. Another process may still take it; on
// loopback in a test that is rare.
func Addr(t testing.TB) string {
	t.Helper()
	low := ephemeralLow()
	mu.Lock()
	defer mu.Unlock()
	for range 100 {
		port := 0 // the kernel's choice, when there is no room below the range
		if low > minPort+1000 {
			port = minPort + rand.IntN(low-minPort)
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

// ephemeralLow is the lowest local port the kernel gives outgoing connections (0: unknown).
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0
	}
	var low, high int
	if _, err := fmt.Sscan(string(b), &low, &high); err != nil {
		return 0
	}
	return low
}
