package main

import (
	"bufio"
	"strings"
	"testing"
)

// TestLagHistogram: the server's delivery histogram is read from /metrics' text, the run's
// part is what it counted after the first read, and its quantiles are interpolated within
// their buckets as Prometheus' histogram_quantile does.
func TestLagHistogram(t *testing.T) {
	read := func(text string) *lagHistogram {
		t.Helper()
		h, err := parseLag(bufio.NewScanner(strings.NewReader(text)))
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	before := read(`# HELP taskhub_watch_delivery_seconds ...
taskhub_watch_delivery_seconds_bucket{le="0.001"} 10
taskhub_watch_delivery_seconds_bucket{le="0.01"} 10
taskhub_watch_delivery_seconds_bucket{le="0.1"} 10
taskhub_watch_delivery_seconds_bucket{le="+Inf"} 10
taskhub_watch_delivery_seconds_sum 0.005
taskhub_watch_delivery_seconds_count 10
`)
	after := read(`taskhub_watch_delivery_seconds_bucket{le="0.001"} 10
taskhub_watch_delivery_seconds_bucket{le="0.01"} 60
taskhub_watch_delivery_seconds_bucket{le="0.1"} 109
taskhub_watch_delivery_seconds_bucket{le="+Inf"} 110
taskhub_watch_delivery_seconds_count 110
`)
	s := newLagStats(after.since(before))
	if s.Count != 100 {
		t.Fatalf("count %v, want 100", s.Count)
	}
	// 50 of the run's 100 fell in (1ms, 10ms]: the median is its upper bound; 49 in
	// (10ms, 100ms]: the 90th is 40/49 of the way; the 99th is at 100ms.
	for _, c := range []struct{ got, want float64 }{{s.P50, 10}, {s.P90, 10 + 90*40.0/49}, {s.P99, 100}} {
		if d := c.got - c.want; d > 1e-9 || d < -1e-9 {
			t.Errorf("got %v ms, want %v", c.got, c.want)
		}
	}
	if _, err := parseLag(bufio.NewScanner(strings.NewReader("go_goroutines 5\n"))); err == nil {
		t.Error("a server without the histogram must be said so")
	}
}
