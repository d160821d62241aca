package main

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// The server's part of the latency. A push run's latency is the event's time in the log to
// this tool's read of it: the server's work, the kernel's, and this tool's own reading, which on
// a small machine may be most of it. The server counts the first part in the histogram
// taskhub_watch_delivery_seconds (from the event's time to its write to the stream), which
// this tool reads from the server's /metrics before and after the load.

// lagMetric is the histogram's name in /metrics.
const lagMetric = "taskhub_watch_delivery_seconds"

// lagHistogram is the histogram's cumulative counts by upper bound, in seconds (+Inf last).
type lagHistogram struct {
	bounds []float64
	counts []float64
}

// readLag reads the histogram from the server's /metrics, with the token of a worker or a user
// (a server with auth serves its metrics to any of its tokens).
func (l *load) readLag(ctx context.Context) (*lagHistogram, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, l.cfg.url+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	if t := cmp.Or(l.cfg.workerToken, l.cfg.token); t != "" {
		req.Header.Set("Authorization", "Bearer "+t)
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: l.cfg.tls}}
	defer hc.CloseIdleConnections()
	res, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics: %s", res.Status)
	}
	return parseLag(bufio.NewScanner(res.Body))
}

// parseLag reads the histogram's buckets from the lines of Prometheus' text format.
func parseLag(sc *bufio.Scanner) (*lagHistogram, error) {
	h := &lagHistogram{}
	prefix := lagMetric + `_bucket{le="`
	for sc.Scan() {
		line, ok := strings.CutPrefix(sc.Text(), prefix)
		if !ok {
			continue
		}
		le, value, ok := strings.Cut(line, `"} `)
		if !ok {
			return nil, fmt.Errorf("%s: a bucket line it cannot read: %q", lagMetric, sc.Text())
		}
		bound, err1 := strconv.ParseFloat(le, 64) // "+Inf" parses as +Inf
		count, err2 := strconv.ParseFloat(value, 64)
		if err := errors.Join(err1, err2); err != nil {
			return nil, fmt.Errorf("%s: %w", lagMetric, err)
		}
		h.bounds, h.counts = append(h.bounds, bound), append(h.counts, count)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(h.bounds) == 0 {
		return nil, fmt.Errorf("the server has no %s (a taskhub before it)", lagMetric)
	}
	return h, nil
}

// since is what h counted after before (a histogram read earlier from the same server).
func (h *lagHistogram) since(before *lagHistogram) *lagHistogram {
	out := &lagHistogram{bounds: h.bounds, counts: make([]float64, len(h.counts))}
	for i := range h.counts {
		out.counts[i] = h.counts[i]
		if before != nil && i < len(before.counts) {
			out.counts[i] -= before.counts[i]
		}
	}
	return out
}

// quantile estimates the q-quantile in seconds as Prometheus' histogram_quantile does: linearly
// within the bucket it falls in (the highest finite bound when it falls past the last).
func (h *lagHistogram) quantile(q float64) float64 {
	n := len(h.counts)
	if n == 0 || h.counts[n-1] == 0 {
		return 0
	}
	rank := q * h.counts[n-1]
	lower, below := 0.0, 0.0
	for i, c := range h.counts {
		if c >= rank {
			if i == n-1 && n > 1 {
				return h.bounds[n-2]
			}
			if c == below {
				return h.bounds[i]
			}
			return lower + (h.bounds[i]-lower)*(rank-below)/(c-below)
		}
		lower, below = h.bounds[i], c
	}
	return h.bounds[n-1]
}

// lagStats is the server's part of the latency, from its histogram.
type lagStats struct {
	Count float64 `json:"count"` // events written to streams during the run
	P50   float64 `json:"p50"`   // ms, interpolated within the histogram's buckets
	P90   float64 `json:"p90"`
	P99   float64 `json:"p99"`
}

func newLagStats(h *lagHistogram) *lagStats {
	ms := func(s float64) float64 { return s * 1000 }
	return &lagStats{Count: h.counts[len(h.counts)-1], P50: ms(h.quantile(0.5)), P90: ms(h.quantile(0.9)), P99: ms(h.quantile(0.99))}
}

func (s *lagStats) String() string {
	return fmt.Sprintf("p50 %s  p90 %s  p99 %s  (%.0f events; from the event's time to the server's write, %s, interpolated in its buckets; the rest of the latency is the network's and this tool's)",
		fmtMs(s.P50), fmtMs(s.P90), fmtMs(s.P99), s.Count, lagMetric)
}
