package main

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/taskhub/taskhub/internal/freeport"
)

func TestServeDebug(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:0", ":0", "192.0.2.1:6060", "no-port"} {
		if stop, err := serveDebug(addr); err == nil {
			stop()
			t.Errorf("serveDebug(%q) served; want it refused: profiles are for this machine only", addr)
		}
	}

	addr := freeport.Addr(t)
	stop, err := serveDebug(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	hc := &http.Client{Timeout: 5 * time.Second}
	res, err := hc.Get("http://" + addr + "/debug/pprof/goroutine?debug=1")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	if res.StatusCode != http.StatusOK || !strings.Contains(string(body), "goroutine profile:") {
		t.Fatalf("GET /debug/pprof/goroutine: %s\n%.200s", res.Status, body)
	}
}
