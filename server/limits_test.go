package server_test

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/stretchr/testify/require"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/taskhub/taskhub/actors"
	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"
	"github.com/taskhub/taskhub/gen/taskhub/v1/taskhubv1connect"

	"github.com/taskhub/taskhub/server"
)

// dialFrom opens a TCP connection to the server from local address ip (any 127.x.y.z is this
// machine), so that tests can be several clients.
func dialFrom(t *testing.T, ip, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", addr)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

// clientFrom is an HTTP client whose connections come from local address ip.
func clientFrom(ip string, protocols *http.Protocols) *http.Client {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	return &http.Client{Transport: &http.Transport{DialContext: d.DialContext, Protocols: protocols}}
}

func hostOf(b *bundle) string { return strings.TrimPrefix(b.srv.URL(), "http://") }

// closedWithin reports whether the server closes c (or answers and closes) within d.
func closedWithin(c net.Conn, d time.Duration) bool {
	_ = c.SetReadDeadline(time.Now().Add(d))
	_, err := io.Copy(io.Discard, c)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		return false
	}
	return true
}

// TestLimits_SlowBodiesAreCut: a request body has BodyTimeout to arrive in full, however it
// trickles: over HTTP/1.1 the connection is closed, over HTTP/2 the stream is ended. A request
// without valid credentials is refused from its headers alone, before its body.
func TestLimits_SlowBodiesAreCut(t *testing.T) {
	t.Parallel()
	b := setup(t, server.Config{AuthFile: writeAuthFile(t), Limits: server.Limits{BodyTimeout: 500 * time.Millisecond}})
	path := "/" + taskhubv1connect.TaskServiceName + "/CreateTask"

	t.Run("no token, HTTP/1.1: refused before the body", func(t *testing.T) {
		c := dialFrom(t, "127.0.0.1", hostOf(b))
		fmt.Fprintf(c, "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{", path, hostOf(b))
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		res, err := http.ReadResponse(bufio.NewReader(c), nil)
		require.NoError(t, err)
		body, _ := io.ReadAll(res.Body)
		require.Equal(t, http.StatusUnauthorized, res.StatusCode, "%s", body)
		require.Contains(t, string(body), "unauthenticated")
		require.True(t, res.Close, "the connection is not kept for the rest of the body")
	})

	t.Run("with a token, HTTP/1.1: cut at the body timeout", func(t *testing.T) {
		c := dialFrom(t, "127.0.0.1", hostOf(b))
		fmt.Fprintf(c, "POST %s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{", path, hostOf(b), aliceToken)
		start := time.Now()
		stop := make(chan struct{})
		defer close(stop)
		go func() { // a byte every 100ms: every single read is quick
			for {
				select {
				case <-stop:
					return
				case <-time.After(100 * time.Millisecond):
					if _, err := c.Write([]byte(" ")); err != nil {
						return
					}
				}
			}
		}()
		require.True(t, closedWithin(c, 10*time.Second), "the trickling request was never cut")
		require.Less(t, time.Since(start), 5*time.Second)
	})

	t.Run("with a token, h2c: the stream ends at the body timeout", func(t *testing.T) {
		c := dialFrom(t, "127.0.0.1", hostOf(b))
		fr := h2cStart(t, c)
		h2cHeaders(t, fr, 1, path, hostOf(b), aliceToken, false)
		require.NoError(t, fr.WriteData(1, false, []byte("{")))
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		start := time.Now()
		for {
			f, err := fr.ReadFrame()
			require.NoError(t, err, "the stream was never ended")
			if f.Header().StreamID == 1 && (f.Header().Flags.Has(http2.FlagDataEndStream) || f.Header().Type == http2.FrameRSTStream) {
				break
			}
		}
		require.Less(t, time.Since(start), 5*time.Second)
	})

	t.Run("a watch lives on past the body timeout", func(t *testing.T) {
		w := watch(t, b.tasks, &taskhubv1.WatchTasksRequest{}, aliceToken)
		w.wait(0)
		time.Sleep(time.Second)
		_, err := b.tasks.CreateTask(t.Context(), as(&taskhubv1.CreateTaskRequest{Prompt: "after the body timeout", Mode: "render"}, aliceToken))
		require.NoError(t, err)
		w.wait(1)
		w.mu.Lock()
		defer w.mu.Unlock()
		require.NoError(t, w.err)
	})
}

// h2cStart speaks the HTTP/2 preface on c and returns a framer.
func h2cStart(t *testing.T, c net.Conn) *http2.Framer {
	t.Helper()
	_, err := c.Write([]byte(http2.ClientPreface))
	require.NoError(t, err)
	fr := http2.NewFramer(c, c)
	require.NoError(t, fr.WriteSettings())
	return fr
}

func h2cHeaders(t *testing.T, fr *http2.Framer, stream uint32, path, host, token string, end bool) {
	t.Helper()
	var buf bytes.Buffer
	enc := hpack.NewEncoder(&buf)
	for _, f := range [][2]string{{":method", "POST"}, {":scheme", "http"}, {":authority", host}, {":path", path},
		{"content-type", "application/json"}} {
		require.NoError(t, enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]}))
	}
	if token != "" {
		require.NoError(t, enc.WriteField(hpack.HeaderField{Name: "authorization", Value: "Bearer " + token}))
	}
	require.NoError(t, fr.WriteHeaders(http2.HeadersFrameParam{StreamID: stream, BlockFragment: buf.Bytes(), EndHeaders: true, EndStream: end}))
}

// TestLimits_PerAddress: one client address cannot hold more than its share of connections or
// requests; other addresses are not affected.
func TestLimits_PerAddress(t *testing.T) {
	t.Parallel()
	b := setup(t, server.Config{Limits: server.Limits{MaxConnsPerIP: 5, MaxRequestsPerIP: 3}})

	var held []net.Conn
	for range 5 {
		c := dialFrom(t, "127.0.0.2", hostOf(b))
		held = append(held, c)
	}
	extra := dialFrom(t, "127.0.0.2", hostOf(b))
	require.True(t, closedWithin(extra, 5*time.Second), "a sixth connection from one address was kept")
	for _, c := range held[:2] {
		require.False(t, closedWithin(c, 50*time.Millisecond), "connections within the limit are kept")
	}
	// Another address still gets in.
	other := taskhubv1connect.NewTaskServiceClient(clientFrom("127.0.0.3", nil), b.srv.URL())
	_, err := other.ListTasks(t.Context(), connect.NewRequest(&taskhubv1.ListTasksRequest{}))
	require.NoError(t, err)

	// Three watches from one address (over h2c, one connection) are its share of requests.
	h2 := taskhubv1connect.NewTaskServiceClient(clientFrom("127.0.0.4", h2cOnly()), b.srv.URL())
	for range 3 {
		watch(t, h2, &taskhubv1.WatchTasksRequest{}, "").wait(0)
	}
	_, err = h2.ListTasks(t.Context(), connect.NewRequest(&taskhubv1.ListTasksRequest{}))
	requireCode(t, err, connect.CodeResourceExhausted, "requests under way")
	_, err = other.ListTasks(t.Context(), connect.NewRequest(&taskhubv1.ListTasksRequest{}))
	require.NoError(t, err)
}

// TestLimits_MalformedRequests: bodies that break the framing of enveloped messages are the
// client's fault (invalid_argument), in every protocol; a compressed message that inflates past
// the size limit is refused as soon as it does.
func TestLimits_MalformedRequests(t *testing.T) {
	t.Parallel()
	b := setup(t, server.Config{})
	envelope := func(flags byte, size uint32, data string) []byte {
		out := []byte{flags, 0, 0, 0, 0}
		binary.BigEndian.PutUint32(out[1:], size)
		return append(out, data...)
	}
	bodies := map[string][]byte{
		"truncated message":                   envelope(0, 100, "{}"),
		"truncated prefix":                    {0, 0},
		"unknown flags":                       envelope(0x07, 2, "{}"),
		"compressed flag without an encoding": envelope(1, 2, "{}"),
	}
	protocols := map[string]struct {
		contentType string
		client      *http.Client
		path        string
	}{
		"connect stream": {"application/connect+json", b.http, "/" + taskhubv1connect.TaskServiceName + "/WatchTasks"},
		"gRPC":           {"application/grpc+json", b.h2c, "/" + taskhubv1connect.TaskServiceName + "/GetTask"},
		"gRPC-Web":       {"application/grpc-web+json", b.http, "/" + taskhubv1connect.TaskServiceName + "/GetTask"},
	}
	for pname, p := range protocols {
		for bname, body := range bodies {
			t.Run(pname+", "+bname, func(t *testing.T) {
				req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, b.srv.URL()+p.path, bytes.NewReader(body))
				require.NoError(t, err)
				req.Header.Set("Content-Type", p.contentType)
				req.Header.Set("TE", "trailers")
				res, err := p.client.Do(req)
				require.NoError(t, err)
				defer res.Body.Close()
				all, _ := io.ReadAll(res.Body)
				status := res.Trailer.Get("Grpc-Status") + res.Header.Get("Grpc-Status")
				if strings.HasPrefix(p.contentType, "application/grpc") {
					if status == "" { // gRPC-Web puts its trailers in the body
						status = grpcWebStatus(all)
					}
					require.Equal(t, "3", status, "gRPC status INVALID_ARGUMENT: %q", all)
				} else {
					require.Contains(t, string(all), `"code":"invalid_argument"`)
				}
			})
		}
	}

	t.Run("gzip bomb", func(t *testing.T) {
		var zipped bytes.Buffer
		zw, _ := gzip.NewWriterLevel(&zipped, gzip.BestCompression)
		_, err := io.CopyN(zw, zeros{}, 200<<20) // 200 MiB of zeros in 200 KiB
		require.NoError(t, err)
		require.NoError(t, zw.Close())
		req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, b.srv.URL()+"/"+taskhubv1connect.TaskServiceName+"/GetTask", &zipped)
		require.NoError(t, err)
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Content-Encoding", "gzip")
		res, err := b.http.Do(req)
		require.NoError(t, err)
		defer res.Body.Close()
		all, _ := io.ReadAll(res.Body)
		require.Contains(t, string(all), `"code":"resource_exhausted"`)
		require.Contains(t, string(all), "inflates to more than", "refused as soon as it passed the limit, not inflated in full")
	})
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// grpcWebStatus finds grpc-status in the trailer frame of a gRPC-Web response body.
func grpcWebStatus(body []byte) string {
	for len(body) >= 5 {
		size := binary.BigEndian.Uint32(body[1:5])
		if int(size) > len(body)-5 {
			return ""
		}
		if body[0]&0x80 != 0 {
			for _, line := range strings.Split(string(body[5:5+size]), "\r\n") {
				if k, v, ok := strings.Cut(line, ":"); ok && strings.EqualFold(k, "grpc-status") {
					return strings.TrimSpace(v)
				}
			}
		}
		body = body[5+size:]
	}
	return ""
}

// TestLimits_Forms: the pages' forms have a size limit, and sign-in attempts a rate per address.
func TestLimits_Forms(t *testing.T) {
	t.Parallel()
	b := setup(t, server.Config{AuthFile: writeAuthFile(t)})
	post := func(c *http.Client, path, contentType string, body io.Reader) *http.Response {
		req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, b.srv.URL()+path, body)
		require.NoError(t, err)
		req.Header.Set("Content-Type", contentType)
		req.Header.Set("Authorization", "Bearer "+aliceToken)
		noFollow := *c
		noFollow.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
		res, err := noFollow.Do(req)
		require.NoError(t, err)
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
		return res
	}
	big := url.Values{"prompt": {strings.Repeat("x", 300<<10)}, "mode": {"render"}}.Encode()
	res := post(b.http, "/tasks", "application/x-www-form-urlencoded", strings.NewReader(big))
	require.Equal(t, http.StatusRequestEntityTooLarge, res.StatusCode)
	res = post(b.http, "/tasks", "multipart/form-data; boundary=x", io.MultiReader(
		strings.NewReader("--x\r\nContent-Disposition: form-data; name=\"prompt\"; filename=\"f\"\r\n\r\n"), io.LimitReader(zeros{}, 50<<20)))
	require.Equal(t, http.StatusRequestEntityTooLarge, res.StatusCode)
	require.Empty(t, listTasks(t, b.tasks, aliceToken), "nothing created")

	signIn := func(c *http.Client) *http.Response {
		return post(c, "/signin", "application/x-www-form-urlencoded", strings.NewReader("token=wrong-token-0123456789"))
	}
	attacker := clientFrom("127.0.0.5", nil)
	for i := range 10 {
		require.Equal(t, http.StatusUnauthorized, signIn(attacker).StatusCode, "attempt %d", i+1)
	}
	res = signIn(attacker)
	require.Equal(t, http.StatusTooManyRequests, res.StatusCode)
	require.NotEmpty(t, res.Header.Get("Retry-After"))
	// The right token from that address waits too; from another address it signs in.
	res = post(attacker, "/signin", "application/x-www-form-urlencoded", strings.NewReader("token="+aliceToken))
	require.Equal(t, http.StatusTooManyRequests, res.StatusCode)
	res = post(clientFrom("127.0.0.6", nil), "/signin", "application/x-www-form-urlencoded", strings.NewReader("token="+aliceToken))
	require.Equal(t, http.StatusSeeOther, res.StatusCode)
}

// TestLimits_Health: /healthz says the process lives, /readyz that it takes writes.
func TestLimits_Health(t *testing.T) {
	t.Parallel()
	b := setup(t, server.Config{})
	for path, want := range map[string]string{"/healthz": "ok", "/readyz": "ready"} {
		res, err := b.http.Get(b.srv.URL() + path)
		require.NoError(t, err)
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		require.Equal(t, http.StatusOK, res.StatusCode)
		require.Equal(t, want, strings.TrimSpace(string(body)))
	}
}
func TestLimits_WatchStreams(t *testing.T) {
	t.Parallel()
	b := setup(t, server.Config{Options: actors.Options{MaxWatchesPerUser: 2}})
	first := watch(t, b.tasks, &taskhubv1.WatchTasksRequest{}, "")
	first.wait(0)
	second := watch(t, b.grpcTasks(), &taskhubv1.WatchTasksRequest{}, "")
	second.wait(0)

	third := watch(t, b.tasks, &taskhubv1.WatchTasksRequest{}, "")
	err := third.end()
	require.Equal(t, connect.CodeResourceExhausted, connect.CodeOf(err), err)
	require.Contains(t, err.Error(), "open watches")

	// Closing a stream gives its place back.
	first.cancel()
	first.end()
	require.Eventually(t, func() bool {
		again := watch(t, b.tasks, &taskhubv1.WatchTasksRequest{}, "")
		defer again.cancel()
		for range 200 {
			again.mu.Lock()
			snap, err := again.snap, again.err
			again.mu.Unlock()
			if snap != nil || err != nil {
				return snap != nil
			}
			time.Sleep(5 * time.Millisecond)
		}
		return false
	}, 5*time.Second, 50*time.Millisecond, "a closed stream did not give its place back")
}
