package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/taskhub/taskhub/internal/freeport"
)

func TestRun_Version(t *testing.T) {
	var out bytes.Buffer
	require.NoError(t, run(t.Context(), []string{"--version"}, &out, io.Discard))
	require.True(t, strings.HasPrefix(out.String(), "taskhub "), out.String())
	require.Contains(t, out.String(), runtime.Version())
}

// TestRun_FlagsFromEnvironment: every flag may come from TASKHUB_<NAME>; the command line wins.
func TestRun_FlagsFromEnvironment(t *testing.T) {
	t.Setenv("TASKHUB_LEASE_TIMEOUT", "soon")
	err := run(t.Context(), nil, io.Discard, io.Discard)
	require.ErrorContains(t, err, `TASKHUB_LEASE_TIMEOUT="soon"`)

	serves := func(addr string, args ...string) {
		t.Helper()
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- run(ctx, args, io.Discard, io.Discard) }()
		defer func() {
			cancel()
			require.NoError(t, <-done)
		}()
		hc := &http.Client{Timeout: 2 * time.Second}
		require.Eventually(t, func() bool {
			res, err := hc.Get("http://" + addr + "/healthz")
			if err != nil {
				return false
			}
			res.Body.Close()
			return res.StatusCode == http.StatusOK
		}, 30*time.Second, 20*time.Millisecond, "no server on %s", addr)
	}
	t.Setenv("TASKHUB_LEASE_TIMEOUT", "45s")
	t.Setenv("TASKHUB_DEMO_WORKERS", "0")
	t.Setenv("TASKHUB_LOG_LEVEL", "error")
	t.Setenv("TASKHUB_DATA_DIR", t.TempDir())
	fromEnv := freeport.Addr(t)
	t.Setenv("TASKHUB_ADDR", fromEnv)
	serves(fromEnv)
	fromFlag := freeport.Addr(t)
	serves(fromFlag, "--addr", fromFlag)
}

// TestRun_LogFormatJSON: --log-format json writes one JSON object a line, the start among them.
func TestRun_LogFormatJSON(t *testing.T) {
	t.Parallel()
	require.ErrorContains(t, run(t.Context(), []string{"--log-format", "xml"}, io.Discard, io.Discard), "--log-format must be text or json")

	addr := freeport.Addr(t)
	var logs syncBuffer
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--addr", addr, "--data-dir", t.TempDir(), "--demo-workers", "0", "--log-format", "json"}, io.Discard, &logs)
	}()
	require.Eventually(t, func() bool { return strings.Contains(logs.String(), "taskhub serving") }, 30*time.Second, 10*time.Millisecond)
	cancel()
	require.NoError(t, <-done)
	for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		var entry map[string]any
		require.NoError(t, json.Unmarshal([]byte(line), &entry), line)
		if entry["msg"] == "taskhub serving" {
			require.Equal(t, "http://"+addr, entry["url"])
			require.Equal(t, "INFO", entry["level"])
		}
	}
}

// syncBuffer is a bytes.Buffer for one writer and one reader at a time.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
