package server

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// tcpPair returns both ends of a loopback TCP connection; the server end coalesces.
func tcpPair(t *testing.T) (srv *coalescingConn, peer net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := coalescingListener{ln}.Accept()
		accepted <- c
	}()
	peer, err = net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	t.Cleanup(func() { peer.Close() })
	c := <-accepted
	require.NotNil(t, c)
	t.Cleanup(func() { c.Close() })
	return c.(*coalescingConn), peer
}

func TestCoalescingConn_ConcurrentWritersArriveWholeAndInOrder(t *testing.T) {
	srv, peer := tcpPair(t)
	const writers, records = 8, 2000
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			rec := make([]byte, 12)
			for i := range records {
				binary.BigEndian.PutUint32(rec[0:], uint32(w))
				binary.BigEndian.PutUint32(rec[4:], uint32(i))
				binary.BigEndian.PutUint32(rec[8:], 0xC0FFEE)
				if _, err := srv.Write(rec); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	go func() { wg.Wait(); srv.Close() }()

	all, err := io.ReadAll(peer)
	require.NoError(t, err)
	require.Len(t, all, writers*records*12, "every byte written arrives before the close")
	next := make([]uint32, writers)
	for rec := range chunks(all, 12) {
		w, i := binary.BigEndian.Uint32(rec[0:]), binary.BigEndian.Uint32(rec[4:])
		require.Equal(t, uint32(0xC0FFEE), binary.BigEndian.Uint32(rec[8:]), "a record was split or interleaved")
		require.Less(t, w, uint32(writers))
		require.Equal(t, next[w], i, "writer %d's records out of order", w)
		next[w]++
	}
}

func chunks(b []byte, n int) func(func([]byte) bool) {
	return func(yield func([]byte) bool) {
		for len(b) >= n && yield(b[:n]) {
			b = b[n:]
		}
	}
}

// gatedConn holds its first Write until the gate opens, and counts the writes that reach it.
type gatedConn struct {
	net.Conn
	gate   chan struct{}
	writes atomic.Int32
}

func (g *gatedConn) Write(p []byte) (int, error) {
	if g.writes.Add(1) == 1 {
		<-g.gate
	}
	return g.Conn.Write(p)
}

func TestCoalescingConn_WritesQueuedDuringAFlushLeaveInOneSystemCall(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	g := &gatedConn{Conn: a, gate: make(chan struct{})}
	c := newCoalescingConn(g)

	queued := make(chan error, 1)
	go func() { _, err := c.Write([]byte("first;")); queued <- err }()
	select {
	case err := <-queued:
		require.NoError(t, err)
	case <-time.After(5 * time.Second):
		close(g.gate)
		t.Fatal("Write waited for the socket instead of queuing")
	}
	require.Eventually(t, func() bool { return g.writes.Load() == 1 }, 5*time.Second, time.Millisecond,
		"the flusher took the first write to the socket")
	var want bytes.Buffer
	want.WriteString("first;")
	for i := range 50 { // all queued while the first write is in the socket
		s := fmt.Sprintf("frame %d;", i)
		want.WriteString(s)
		_, err := c.Write([]byte(s))
		require.NoError(t, err)
	}
	close(g.gate)

	got := make([]byte, want.Len())
	_, err := io.ReadFull(b, got)
	require.NoError(t, err)
	require.Equal(t, want.String(), string(got))
	require.Equal(t, int32(2), g.writes.Load(), "51 writes reached the socket as 2 system calls")
}

func TestCoalescingConn_APeerThatDoesNotReadHoldsWritersBack(t *testing.T) {
	a, b := net.Pipe() // synchronous: nothing is buffered in the "kernel"
	defer b.Close()
	c := newCoalescingConn(a)

	chunk := make([]byte, 64<<10)
	var written atomic.Int64
	done := make(chan error, 1)
	go func() {
		for range 16 { // 1 MiB, four times what may queue
			if _, err := c.Write(chunk); err != nil {
				done <- err
				return
			}
			written.Add(int64(len(chunk)))
		}
		done <- nil
	}()
	// The writer gets at most maxPending queued, plus the batch in the socket's hands, then waits.
	require.Eventually(t, func() bool { return written.Load() >= maxPending }, 5*time.Second, time.Millisecond)
	time.Sleep(50 * time.Millisecond)
	require.LessOrEqual(t, written.Load(), int64(2*maxPending), "the queue is bounded")
	select {
	case err := <-done:
		t.Fatalf("the writer finished with a peer that reads nothing: %v", err)
	default:
	}

	n, err := io.CopyN(io.Discard, b, 16*int64(len(chunk)))
	require.NoError(t, err)
	require.Equal(t, 16*int64(len(chunk)), n)
	require.NoError(t, <-done)
}

func TestCoalescingConn_CloseWritesWhatIsQueued(t *testing.T) {
	srv, peer := tcpPair(t)
	msg := bytes.Repeat([]byte("goaway!"), 1000)
	_, err := srv.Write(msg)
	require.NoError(t, err)
	require.NoError(t, srv.Close())

	got, err := io.ReadAll(peer)
	require.NoError(t, err)
	require.Equal(t, msg, got)
	_, err = srv.Write([]byte("late"))
	require.ErrorIs(t, err, net.ErrClosed)
}

// TestCoalescingConn_CloseDoesNotWaitForAPeerThatDoesNotRead: net/http closes connections one
// after another at shutdown, so Close returns at once and the flusher closes the connection
// when its write ends, at the latest closeFlushTimeout later.
func TestCoalescingConn_CloseDoesNotWaitForAPeerThatDoesNotRead(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	c := newCoalescingConn(a)
	_, err := c.Write(make([]byte, 1<<10)) // the flusher blocks: nobody reads b
	require.NoError(t, err)
	require.Eventually(t, func() bool { c.mu.Lock(); defer c.mu.Unlock(); return c.flushing }, 5*time.Second, time.Millisecond)

	require.NoError(t, c.Close())
	c.mu.Lock()
	flushing := c.flushing
	c.mu.Unlock()
	require.True(t, flushing, "Close returned while the write it would have waited for was still blocked")
	_, err = c.Write([]byte("late"))
	require.ErrorIs(t, err, net.ErrClosed)

	require.Eventually(t, func() bool {
		_, err := a.Read(make([]byte, 1))
		return errors.Is(err, io.ErrClosedPipe)
	}, 10*closeFlushTimeout, 10*time.Millisecond, "the flusher closed the connection after its write timed out")
}

func TestCoalescingConn_AFailedWriteFailsTheNextOnes(t *testing.T) {
	a, b := net.Pipe()
	c := newCoalescingConn(a)
	b.Close() // the peer is gone
	_, err := c.Write([]byte("lost"))
	require.NoError(t, err, "the failure of a queued write shows later, like a kernel-buffered write")
	require.Eventually(t, func() bool {
		_, err := c.Write([]byte("x"))
		return errors.Is(err, io.ErrClosedPipe)
	}, 5*time.Second, time.Millisecond)
	require.NoError(t, c.Close())
}

// TestCoalescingConn_TLSResponseBeforeCloseArrives: crypto/tls queues its close alert, then sets
// a write deadline of now; what was queued must still reach the client. net/http does that when
// a handler answers without reading a large body: it shuts the writing side and closes.
func TestCoalescingConn_TLSResponseBeforeCloseArrives(t *testing.T) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "too large", http.StatusRequestEntityTooLarge) // the body is not read
	}))
	srv.Listener = coalescingListener{srv.Listener}
	srv.StartTLS()
	defer srv.Close()
	client := srv.Client()
	defer client.CloseIdleConnections()

	body := bytes.Repeat([]byte("x"), 2<<20)
	for range 5 {
		res, err := client.Post(srv.URL, "application/octet-stream", bytes.NewReader(body))
		require.NoError(t, err)
		got, err := io.ReadAll(res.Body)
		res.Body.Close()
		require.NoError(t, err)
		require.Equal(t, http.StatusRequestEntityTooLarge, res.StatusCode)
		require.Equal(t, "too large\n", string(got))
	}
}

func TestCoalescingConn_AWriteDeadlineFailsLaterWritesOnly(t *testing.T) {
	srv, peer := tcpPair(t)
	_, err := srv.Write([]byte("accepted before the deadline;"))
	require.NoError(t, err)
	require.NoError(t, srv.SetWriteDeadline(time.Now()))
	_, err = srv.Write([]byte("after"))
	require.ErrorIs(t, err, os.ErrDeadlineExceeded)

	got := make([]byte, len("accepted before the deadline;"))
	_, err = io.ReadFull(peer, got)
	require.NoError(t, err)
	require.Equal(t, "accepted before the deadline;", string(got))

	require.NoError(t, srv.SetWriteDeadline(time.Time{}))
	_, err = srv.Write([]byte("again"))
	require.NoError(t, err, "a cleared deadline lets writes through again")
}

func TestCoalescingConn_CloseWakesAWriterWaitingForRoom(t *testing.T) {
	a, b := net.Pipe() // nobody reads b
	defer b.Close()
	c := newCoalescingConn(a)
	done := make(chan error, 1)
	go func() {
		chunk := make([]byte, 64<<10)
		for {
			if _, err := c.Write(chunk); err != nil {
				done <- err
				return
			}
		}
	}()
	require.Eventually(t, func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.pending != nil && len(*c.pending) == maxPending
	}, 5*time.Second, time.Millisecond, "the writer fills the queue and waits")

	require.NoError(t, c.Close())
	c.SetWriteDeadline(time.Time{}) // as net/http does; it must not lift Close's bound
	select {
	case err := <-done:
		require.ErrorIs(t, err, net.ErrClosed)
	case <-time.After(closeFlushTimeout / 2):
		t.Fatal("Close did not wake the writer waiting for room")
	}
	require.Eventually(t, func() bool {
		_, err := a.Read(make([]byte, 1))
		return errors.Is(err, io.ErrClosedPipe)
	}, 10*closeFlushTimeout, 10*time.Millisecond, "the connection is closed within Close's bound")
}

// TestCoalescingConn_DirectWritesOnTheWritersGoroutine: a connection known to carry one stream
// (HTTP/1.1) writes in Write itself: Write returns once the peer took the bytes, and a failed
// write fails that Write.
func TestCoalescingConn_DirectWritesOnTheWritersGoroutine(t *testing.T) {
	a, b := net.Pipe() // a write returns once the other end has read it
	c := newCoalescingConn(a)
	c.writeDirectly()
	wrote := make(chan error, 1)
	go func() {
		_, err := c.Write([]byte("hello"))
		wrote <- err
	}()
	select {
	case err := <-wrote:
		t.Fatalf("Write returned (%v) before the peer read: it queued instead of writing", err)
	case <-time.After(50 * time.Millisecond):
	}
	got := make([]byte, 5)
	_, err := io.ReadFull(b, got)
	require.NoError(t, err)
	require.Equal(t, "hello", string(got))
	require.NoError(t, <-wrote)

	b.Close()
	_, err = c.Write([]byte("lost"))
	require.ErrorIs(t, err, io.ErrClosedPipe, "a direct write reports its own failure")
	_, err = c.Write([]byte("x"))
	require.ErrorIs(t, err, io.ErrClosedPipe)
}

// TestCoalescingConn_CloseEndsADirectWriteToAPeerThatDoesNotRead: the writer blocked on the
// peer gets an error within closeFlushTimeout of Close, and the connection is closed.
func TestCoalescingConn_CloseEndsADirectWriteToAPeerThatDoesNotRead(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	c := newCoalescingConn(a)
	c.writeDirectly()
	wrote := make(chan error, 1)
	go func() {
		_, err := c.Write(make([]byte, 1<<10))
		wrote <- err
	}()
	require.Eventually(t, func() bool { c.mu.Lock(); defer c.mu.Unlock(); return c.flushing }, 5*time.Second, time.Millisecond)
	start := time.Now()
	require.NoError(t, c.Close())
	select {
	case err := <-wrote:
		require.Error(t, err)
		require.Less(t, time.Since(start), 5*closeFlushTimeout)
	case <-time.After(10 * closeFlushTimeout):
		t.Fatal("the direct write was still blocked long after Close")
	}
	_, err := a.Read(make([]byte, 1))
	require.ErrorIs(t, err, io.ErrClosedPipe, "the connection was closed")
}

// TestDirectHTTP1: the server's HTTP/1.1 connections write directly, its HTTP/2 ones coalesce.
func TestDirectHTTP1(t *testing.T) {
	srv := httptest.NewUnstartedServer(directHTTP1(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c := r.Context().Value(connKey{}).(*coalescingConn)
		c.mu.Lock()
		defer c.mu.Unlock()
		fmt.Fprintf(w, "%s direct=%v", r.Proto, c.direct)
	})))
	srv.Listener = coalescingListener{srv.Listener}
	srv.Config.ConnContext = withConn
	srv.EnableHTTP2 = true
	srv.StartTLS()
	defer srv.Close()

	get := func(client *http.Client) string {
		res, err := client.Get(srv.URL)
		require.NoError(t, err)
		defer res.Body.Close()
		b, err := io.ReadAll(res.Body)
		require.NoError(t, err)
		return string(b)
	}
	require.Equal(t, "HTTP/2.0 direct=false", get(srv.Client()))
	h1 := srv.Client().Transport.(*http.Transport).Clone()
	h1.Protocols = new(http.Protocols)
	h1.Protocols.SetHTTP1(true)
	h1.TLSClientConfig.NextProtos = []string{"http/1.1"}
	require.Equal(t, "HTTP/1.1 direct=true", get(&http.Client{Transport: h1}))
}
