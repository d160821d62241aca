package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"runtime"
	"strings"
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
