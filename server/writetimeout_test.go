package server

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// limitedPair returns both ends of a loopback TCP connection whose buffers are small (4 KiB
// each way), so that a peer that stops reading blocks the server's writes at once; the server
// end is a limitedConn with the given write timeout.
func limitedPair(t *testing.T, writeTimeout time.Duration) (*limitedConn, *limitedListener, net.Conn) {
	t.Helper()
	small := func(opt int) func(_, _ string, c syscall.RawConn) error {
		return func(_, _ string, c syscall.RawConn) error {
			return c.Control(func(fd uintptr) { _ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, opt, 4096) })
		}
	}
	lc := net.ListenConfig{Control: small(syscall.SO_SNDBUF)}
	ln, err := lc.Listen(t.Context(), "tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	ll := newLimitedListener(ln, Limits{WriteTimeout: writeTimeout}, slog.Default())
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ll.Accept()
		accepted <- c
	}()
	d := net.Dialer{Control: small(syscall.SO_RCVBUF)}
	peer, err := d.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	t.Cleanup(func() { peer.Close() })
	c := <-accepted
	require.NotNil(t, c)
	t.Cleanup(func() { c.Close() })
	return c.(*limitedConn), ll, peer
}

func TestLimitedConn_APeerThatTakesNothingFailsTheWrite(t *testing.T) {
	t.Parallel()
	c, ll, _ := limitedPair(t, 300*time.Millisecond)
	type result struct {
		n   int
		err error
	}
	done := make(chan result, 1)
	start := time.Now()
	go func() {
		n, err := c.Write(make([]byte, 8<<20))
		done <- result{n, err}
	}()
	var r result
	select {
	case r = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("a write to a peer that reads nothing still waits after 10 s")
	}
	n, err, took := r.n, r.err, time.Since(start)
	require.ErrorIs(t, err, os.ErrDeadlineExceeded)
	require.Less(t, n, 8<<20)
	require.GreaterOrEqual(t, took, 300*time.Millisecond, "it gave up before the peer had the write timeout to read")
	require.EqualValues(t, 1, ll.stalled.Load())
	t.Logf("the socket took %d bytes; the write failed after %v", n, took.Round(time.Millisecond))
}

// A peer that reads slowly but steadily, each read well within the write timeout, gets
// everything however long the whole write takes.
func TestLimitedConn_APeerThatReadsSlowlyGetsEverything(t *testing.T) {
	t.Parallel()
	const timeout = 300 * time.Millisecond
	c, ll, peer := limitedPair(t, timeout)
	want := bytes.Repeat([]byte("0123456789abcdef"), 8<<10) // 128 KiB
	got := make(chan []byte, 1)
	go func() {
		var b bytes.Buffer
		buf := make([]byte, 16<<10)
		for b.Len() < len(want) {
			time.Sleep(30 * time.Millisecond)
			n, err := peer.Read(buf)
			b.Write(buf[:n])
			if err != nil {
				break
			}
		}
		got <- b.Bytes()
	}()
	start := time.Now()
	n, err := c.Write(want)
	require.NoError(t, err)
	require.Equal(t, len(want), n)
	require.Equal(t, want, <-got)
	require.Greater(t, time.Since(start), timeout, "the write never waited: the test tested nothing")
	require.Zero(t, ll.stalled.Load())
}

// A deadline set by the connection's user (net/http, TLS, a stream ending) holds while a write
// waits for the peer, and is the connection's again after it.
func TestLimitedConn_TheUsersDeadlineHolds(t *testing.T) {
	t.Parallel()
	c, ll, peer := limitedPair(t, time.Minute)
	done := make(chan error, 1)
	go func() {
		_, err := c.Write(make([]byte, 8<<20))
		done <- err
	}()
	time.Sleep(100 * time.Millisecond) // the write waits for the peer by now
	require.NoError(t, c.SetWriteDeadline(time.Now().Add(100*time.Millisecond)))
	select {
	case err := <-done:
		require.ErrorIs(t, err, os.ErrDeadlineExceeded)
	case <-time.After(10 * time.Second):
		t.Fatal("the deadline set while the write waited did not end it")
	}
	require.Zero(t, ll.stalled.Load(), "the user's deadline is not the client's stall")
	_, err := c.Write([]byte("x"))
	require.ErrorIs(t, err, os.ErrDeadlineExceeded, "the deadline stays the connection's")

	// Cleared, writes work again (the socket has room once the peer reads).
	require.NoError(t, c.SetWriteDeadline(time.Time{}))
	go func() { _, _ = io.Copy(io.Discard, peer) }()
	_, err = c.Write([]byte("x"))
	require.False(t, errors.Is(err, os.ErrDeadlineExceeded), "%v", err)
}
