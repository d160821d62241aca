//go:build unix

// The benchmarks read the process's CPU time with getrusage(2), which only Unix systems have.

package server_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protowire"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"
	"github.com/taskhub/taskhub/gen/taskhub/v1/taskhubv1connect"

	"github.com/taskhub/taskhub/server"
)

const (
	// benchMode is the mode of the benchmarks' tasks.
	benchMode = "bench"
	// benchReporters is how many workers report at once in BenchmarkServer_ReportProgress.
	benchReporters = 64
	// benchPublishers is how many tasks report in BenchmarkServer_DeliveryOneConnection.
	benchPublishers = 4
	// benchWatchers is how many watchers BenchmarkServer_DeliveryOneConnection delivers to.
	benchWatchers = 200
	// benchCallTimeout bounds each call a benchmark makes.
	benchCallTimeout = 10 * time.Second
	// benchDrain bounds the wait for the watchers to receive the last event.
	benchDrain = 30 * time.Second
)

// BenchmarkServer_ReportProgress is the write path through the RPC, against the real server on
// 127.0.0.1: 64 workers report progress at once, each on a task it claimed, with the generated
// client. Every report is stored in the embedded event log before it is answered. One watcher of
// all events is connected, so the fan-out is included; after the loop the benchmark waits until
// the watcher has the last event, and fails if it does not come. HTTP2/proto: the workers share
// one h2c connection, as one Go program's workers do. HTTP1/json: each worker keeps an HTTP/1.1
// connection and speaks JSON, as curl and scripts do. The watcher speaks the same codec.
//
// events/s is the reports answered per second. cpu-µs/event is the process's CPU time (user and
// system) from the start of the loop until the watcher has the last event, per report: the
// clients run in the same process as the server, so it includes their CPU too. coalesced-% is
// the share of the events the watcher did not receive because its queue replaced them with a
// later progress of their task (the server's contract for a watcher that falls behind).
func BenchmarkServer_ReportProgress(b *testing.B) {
	benchWritePath(b, benchReporters, benchReporters, func(b *testing.B, work taskhubv1connect.WorkerServiceClient, claims []*taskhubv1.ClaimTaskResponse) []int {
		return reportAll(b, work, claims, b.N)
	})
}

// BenchmarkServer_BatchReportProgress is the write path through the RPC with batched reports,
// as workers that run many tasks send them: 1000 claimed tasks, 10 workers of 100 tasks each,
// each sending one BatchReportProgress after another with a report for each of its tasks, one
// watcher of all events (taskhub-load's `--batch-workers 10`, in process). The transports,
// codecs and metrics are BenchmarkServer_ReportProgress's; an op is one report.
func BenchmarkServer_BatchReportProgress(b *testing.B) {
	const tasks, workers = 1000, 10
	benchWritePath(b, tasks, workers, func(b *testing.B, work taskhubv1connect.WorkerServiceClient, claims []*taskhubv1.ClaimTaskResponse) []int {
		return reportBatches(b, work, claims, workers, b.N)
	})
}

// benchWritePath runs report (which makes b.N reports on claims and returns how many each task
// made) over HTTP/2 with proto and over HTTP/1.1 with JSON, with tasks claimed tasks, conns
// callers at once and one watcher, and reports events/s, cpu-µs/event and coalesced-%.
func benchWritePath(b *testing.B, tasks, conns int, report func(*testing.B, taskhubv1connect.WorkerServiceClient, []*taskhubv1.ClaimTaskResponse) []int) {
	for _, tc := range []struct {
		name  string
		http1 bool
		codec string
	}{
		{name: "HTTP2/proto", http1: false, codec: "proto"},
		{name: "HTTP1/json", http1: true, codec: "json"},
	} {
		b.Run(tc.name, func(b *testing.B) {
			bd := setup(b, server.Config{})
			hc, opts := bd.h2c, []connect.ClientOption(nil)
			if tc.http1 {
				// A call waits for its answer, so each caller keeps one connection.
				tr := &http.Transport{Protocols: http1Only(), MaxIdleConnsPerHost: conns + 1}
				b.Cleanup(tr.CloseIdleConnections)
				hc, opts = &http.Client{Transport: tr}, []connect.ClientOption{connect.WithProtoJSON()}
			}
			work := taskhubv1connect.NewWorkerServiceClient(hc, bd.srv.URL(), opts...)
			claims := claimBenchTasks(b, bd, tasks)
			watches := openWatches(b, bd.srv.URL(), tc.codec, 1)

			cpu := processCPU(b)
			b.ReportAllocs()
			b.ResetTimer()
			made := report(b, work, claims)
			b.StopTimer()
			elapsed := b.Elapsed()
			watches.await(b, lastSeq(b, bd, claims, made))
			cpu = processCPU(b) - cpu

			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "events/s")
			b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/event")
			b.ReportMetric(watches.coalesced(b, b.N), "coalesced-%")
		})
	}
}

// reportBatches has workers report n times in all on claims, each worker on its share of them,
// a batch with a report for each of its tasks at a time; it returns how many reports each task
// made.
func reportBatches(b *testing.B, work taskhubv1connect.WorkerServiceClient, claims []*taskhubv1.ClaimTaskResponse, workers, n int) []int {
	b.Helper()
	made := make([]int, len(claims))
	var left atomic.Int64
	left.Store(int64(n))
	var failed atomic.Bool
	var wg sync.WaitGroup
	per := len(claims) / workers
	for w := range workers {
		mine := claims[w*per : (w+1)*per]
		wg.Go(func() {
			for k := 1; !failed.Load(); k++ {
				take := min(int64(len(mine)), left.Add(-int64(len(mine)))+int64(len(mine)))
				if take <= 0 {
					return
				}
				req := &taskhubv1.BatchReportProgressRequest{}
				for _, c := range mine[:take] {
					req.Reports = append(req.Reports, &taskhubv1.ReportProgressRequest{
						TaskId: c.Task.Id, LeaseToken: c.LeaseToken, Progress: progressAt(k), Message: "step"})
				}
				ctx, cancel := context.WithTimeout(b.Context(), benchCallTimeout)
				res, err := work.BatchReportProgress(ctx, connect.NewRequest(req))
				cancel()
				if err == nil {
					for _, r := range res.Msg.Results {
						if r.Error != nil {
							err = errors.New(r.Error.Message)
							break
						}
					}
				}
				if err != nil {
					failed.Store(true)
					b.Errorf("batch %d of worker %d: %v", k, w, err)
					return
				}
				for i := range mine[:take] {
					made[w*per+i] = k
				}
			}
		})
	}
	wg.Wait()
	if failed.Load() {
		b.FailNow()
	}
	return made
}

// BenchmarkServer_DeliveryOneConnection is the fan-out to watchers that each hold their own
// HTTP/1.1 connection, as a page in a browser without TLS or curl does: 200 watchers, in the
// protobuf or the JSON codec, and progress reports on 4 claimed tasks, one worker per task over a
// shared h2c connection. An op is one report; the timer stops once every watcher has the last
// event (b.N rather than b.Loop, whose timer stops when the loop does), and so also covers the
// GetTask calls, one per task, that tell which event is the last.
//
// deliveries/s and ns/delivery count every event once per watcher. cpu-µs/delivery is the
// process's CPU time (user and system) over the same span, per delivery: the watchers and the
// workers run in the same process as the server, so it includes their CPU too. coalesced-% is
// the share of the deliveries that never had to be sent because a watcher's queue replaced a
// progress event with a later one of its task: the server's contract for a watcher that falls
// behind, here because the workers report faster than the server can send to 200 connections.
func BenchmarkServer_DeliveryOneConnection(b *testing.B) {
	for _, codec := range []string{"proto", "json"} {
		b.Run(codec, func(b *testing.B) {
			bd := setup(b, server.Config{})
			work := taskhubv1connect.NewWorkerServiceClient(bd.h2c, bd.srv.URL())
			claims := claimBenchTasks(b, bd, benchPublishers)
			watches := openWatches(b, bd.srv.URL(), codec, benchWatchers)

			cpu := processCPU(b)
			b.ReportAllocs()
			b.ResetTimer()
			made := reportAll(b, work, claims, b.N)
			watches.await(b, lastSeq(b, bd, claims, made))
			b.StopTimer()
			cpu = processCPU(b) - cpu

			deliveries := float64(b.N) * benchWatchers
			b.ReportMetric(deliveries/b.Elapsed().Seconds(), "deliveries/s")
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/deliveries, "ns/delivery")
			b.ReportMetric(float64(cpu.Microseconds())/deliveries, "cpu-µs/delivery")
			b.ReportMetric(watches.coalesced(b, b.N), "coalesced-%")
		})
	}
}

// claimBenchTasks creates n tasks of benchMode and claims them all.
func claimBenchTasks(b *testing.B, bd *bundle, n int) []*taskhubv1.ClaimTaskResponse {
	b.Helper()
	ctx := b.Context()
	for i := range n {
		_, err := bd.tasks.CreateTask(ctx, connect.NewRequest(&taskhubv1.CreateTaskRequest{Prompt: fmt.Sprintf("bench %d", i), Mode: benchMode}))
		if err != nil {
			b.Fatalf("create task %d: %v", i, err)
		}
	}
	claims := make([]*taskhubv1.ClaimTaskResponse, n)
	for i := range claims {
		res, err := bd.work.ClaimTask(ctx, connect.NewRequest(&taskhubv1.ClaimTaskRequest{WorkerId: "bench", Modes: []string{benchMode}, WaitSeconds: 5}))
		if err != nil {
			b.Fatalf("claim task %d: %v", i, err)
		}
		if res.Msg.Task == nil {
			b.Fatalf("claim task %d: none came within 5s", i)
		}
		claims[i] = res.Msg
	}
	return claims
}

// progressAt is a task's progress at its k-th report (k >= 1): strictly increasing, below 100.
func progressAt(k int) float64 { return 100 * float64(k) / float64(k+1) }

// reportAll makes n progress reports on the claimed tasks, one worker per task, all at once: each
// reports on its own task, one report after the other, as a worker does. It returns how many
// reports each task made, and fails the benchmark if a report fails.
func reportAll(b *testing.B, work taskhubv1connect.WorkerServiceClient, claims []*taskhubv1.ClaimTaskResponse, n int) []int {
	b.Helper()
	made := make([]int, len(claims))
	var next atomic.Int64
	var failed atomic.Bool
	var wg sync.WaitGroup
	for i, c := range claims {
		wg.Go(func() {
			for k := 1; !failed.Load() && next.Add(1) <= int64(n); k++ {
				ctx, cancel := context.WithTimeout(b.Context(), benchCallTimeout)
				_, err := work.ReportProgress(ctx, connect.NewRequest(&taskhubv1.ReportProgressRequest{
					TaskId: c.Task.Id, LeaseToken: c.LeaseToken, Progress: progressAt(k), Message: "step",
				}))
				cancel()
				if err != nil {
					failed.Store(true)
					b.Errorf("report %d on task %d: %v", k, i, err)
					return
				}
				made[i] = k
			}
		})
	}
	wg.Wait()
	if failed.Load() {
		b.FailNow()
	}
	return made
}

// lastSeq returns the seq of the last event of the tasks that reported: the event every watcher
// must receive. It checks that each task shows its last report.
func lastSeq(b *testing.B, bd *bundle, claims []*taskhubv1.ClaimTaskResponse, made []int) uint64 {
	b.Helper()
	var last uint64
	for i, c := range claims {
		if made[i] == 0 {
			continue
		}
		ctx, cancel := context.WithTimeout(b.Context(), benchCallTimeout)
		res, err := bd.tasks.GetTask(ctx, connect.NewRequest(&taskhubv1.GetTaskRequest{Id: c.Task.Id}))
		cancel()
		if err != nil {
			b.Fatalf("get task %d: %v", i, err)
		}
		if got, want := res.Msg.Task.Progress, progressAt(made[i]); got != want {
			b.Fatalf("task %d shows progress %v, not %v of its last report", i, got, want)
		}
		last = max(last, res.Msg.Task.Seq)
	}
	if last == 0 {
		b.Fatal("no task that reported has a seq")
	}
	return last
}

// processCPU returns the CPU time, user and system, the process has used so far.
func processCPU(b *testing.B) time.Duration {
	b.Helper()
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func http1Only() *http.Protocols {
	p := new(http.Protocols)
	p.SetHTTP1(true)
	return p
}

// watchGroup is a set of WatchTasks streams, each over an HTTP/1.1 connection of its own, and
// what tells when all of them have received an event.
//
// A stream is read without connect-go: each message's envelope is read, and of the message only
// its kind and, for an event, its seq (rawWatch.read). A browser or curl decodes more, but here
// the watchers share the process with the server, and decoding every message (protojson takes
// about 10 µs for an event) would make their CPU most of the process's. The seq is enough to
// check delivery: events arrive in strictly increasing seq order, and the server promises that
// every event up to the last one received was sent or replaced by a later progress of its task.
type watchGroup struct {
	codec     string
	watches   []*rawWatch
	goal      atomic.Uint64 // the seq every watch must reach; none until await sets it
	remaining atomic.Int64  // the watches that have not reached goal
	reached   chan struct{} // closed when remaining reaches 0
	failed    chan struct{} // closed when a stream failed
	failOnce  sync.Once
	err       error // why a stream failed; set before failed is closed
}

// rawWatch is one stream of a watchGroup.
type rawWatch struct {
	last    atomic.Uint64 // the seq of the last event received
	events  atomic.Int64  // the events received
	counted atomic.Bool   // counted out of the group's remaining
}

// openWatches opens n WatchTasks streams in codec ("proto" or "json"), each over an HTTP/1.1
// connection of its own, and returns once every stream has its snapshot. They are read until the
// benchmark ends.
func openWatches(b *testing.B, url, codec string, n int) *watchGroup {
	b.Helper()
	g := &watchGroup{codec: codec, reached: make(chan struct{}), failed: make(chan struct{})}
	g.goal.Store(math.MaxUint64)
	g.remaining.Store(int64(n))
	tr := &http.Transport{Protocols: http1Only(), DisableCompression: true}
	hc := &http.Client{Transport: tr}
	ctx, cancelAll := context.WithCancel(context.Background())
	var readers sync.WaitGroup
	b.Cleanup(func() {
		cancelAll()
		readers.Wait()
		tr.CloseIdleConnections()
	})

	errs := make([]error, n)
	var opening sync.WaitGroup
	for i := range n {
		w := &rawWatch{}
		g.watches = append(g.watches, w)
		opening.Go(func() {
			stream, cancel := context.WithCancel(ctx)
			timeout := time.AfterFunc(benchCallTimeout, cancel) // until the snapshot
			r, err := g.open(stream, hc, url)
			if err == nil && !timeout.Stop() {
				r.Close()
				err = fmt.Errorf("no snapshot within %v", benchCallTimeout)
			}
			if err != nil {
				cancel()
				errs[i] = fmt.Errorf("watch %d: %w", i, err)
				return
			}
			readers.Go(func() {
				defer cancel()
				defer r.Close()
				err := g.read(w, r)
				if stream.Err() == nil {
					g.fail(fmt.Errorf("watch %d: %w", i, err))
				}
			})
		})
	}
	opening.Wait()
	if err := errors.Join(errs...); err != nil {
		b.Fatalf("open the watches: %v", err)
	}
	return g
}

// open opens a stream and reads its snapshot.
func (g *watchGroup) open(ctx context.Context, hc *http.Client, url string) (*envelopeReader, error) {
	body := []byte{0, 0, 0, 0, 0} // an empty WatchTasksRequest, enveloped
	if g.codec == "json" {
		body = []byte{0, 0, 0, 0, 2, '{', '}'}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url+taskhubv1connect.TaskServiceWatchTasksProcedure, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/connect+"+g.codec)
	req.Header.Set("Connect-Protocol-Version", "1")
	res, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	if res.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(res.Body, 1<<10))
		res.Body.Close()
		return nil, fmt.Errorf("%s: %s", res.Status, msg)
	}
	r := &envelopeReader{body: res.Body, r: bufio.NewReaderSize(res.Body, 16<<10)}
	m, err := r.next()
	if err == nil {
		var kind int
		if kind, _, err = parseMessage(g.codec, m); err == nil && kind != kindSnapshot {
			err = fmt.Errorf("the first message is of kind %d, not a snapshot", kind)
		}
	}
	if err != nil {
		r.Close()
		return nil, err
	}
	return r, nil
}

// read reads w's stream until it ends, and returns why.
func (g *watchGroup) read(w *rawWatch, r *envelopeReader) error {
	for {
		m, err := r.next()
		if err != nil {
			return err
		}
		kind, seq, err := parseMessage(g.codec, m)
		switch {
		case err != nil:
			return err
		case kind != kindEvent:
			continue
		case seq <= w.last.Load():
			return fmt.Errorf("event %d after event %d", seq, w.last.Load())
		}
		w.events.Add(1)
		w.last.Store(seq)
		g.check(w)
	}
}

// check counts w out of the watches that have not reached the goal, if it has.
func (g *watchGroup) check(w *rawWatch) {
	if w.last.Load() >= g.goal.Load() && w.counted.CompareAndSwap(false, true) && g.remaining.Add(-1) == 0 {
		close(g.reached)
	}
}

func (g *watchGroup) fail(err error) {
	g.failOnce.Do(func() {
		g.err = err
		close(g.failed)
	})
}

// await waits until every watch has received event seq, and fails the benchmark if one failed
// or some do not have it within benchDrain.
func (g *watchGroup) await(b *testing.B, seq uint64) {
	b.Helper()
	g.goal.Store(seq)
	for _, w := range g.watches {
		g.check(w)
	}
	timer := time.NewTimer(benchDrain)
	defer timer.Stop()
	select {
	case <-g.reached:
	case <-g.failed:
		b.Fatal(g.err)
	case <-timer.C:
		behind := 0
		var lowest uint64 = math.MaxUint64
		for _, w := range g.watches {
			if last := w.last.Load(); last < seq {
				behind, lowest = behind+1, min(lowest, last)
			}
		}
		b.Fatalf("after %v, %d of %d watches lack event %d (the furthest behind is at %d)", benchDrain, behind, len(g.watches), seq, lowest)
	}
}

// coalesced returns the share, in percent, of the n events per watch that the watches did not
// receive: replaced in their queues by a later progress of their task. It fails the benchmark if
// a watch received more than n.
func (g *watchGroup) coalesced(b *testing.B, n int) float64 {
	b.Helper()
	var got int64
	for i, w := range g.watches {
		e := w.events.Load()
		if e > int64(n) {
			b.Fatalf("watch %d received %d events of %d", i, e, n)
		}
		got += e
	}
	return 100 * (1 - float64(got)/float64(n)/float64(len(g.watches)))
}

// envelopeReader reads the enveloped messages of a Connect stream's response body.
type envelopeReader struct {
	body io.ReadCloser
	r    *bufio.Reader
	head [5]byte
	buf  []byte
}

// Close closes the response body.
func (r *envelopeReader) Close() error { return r.body.Close() }

// next returns the next message, valid until the next call, or an error once the stream ends.
func (r *envelopeReader) next() ([]byte, error) {
	if _, err := io.ReadFull(r.r, r.head[:]); err != nil {
		return nil, err
	}
	size := binary.BigEndian.Uint32(r.head[1:])
	if size > 1<<20 {
		return nil, fmt.Errorf("a message of %d bytes", size)
	}
	if cap(r.buf) < int(size) {
		r.buf = make([]byte, size)
	}
	m := r.buf[:size]
	if _, err := io.ReadFull(r.r, m); err != nil {
		return nil, err
	}
	switch {
	case r.head[0]&0x02 != 0: // the end of the stream
		return nil, fmt.Errorf("the stream ended: %s", m)
	case r.head[0] != 0:
		return nil, fmt.Errorf("a message with flags %#x", r.head[0])
	}
	return m, nil
}

// The kinds of a WatchTasksResponse: the field numbers of its oneof.
const (
	kindSnapshot  = 1
	kindEvent     = 2
	kindHeartbeat = 3
)

// parseMessage returns the kind of a WatchTasksResponse in codec and, for an event, its seq.
func parseMessage(codec string, m []byte) (kind int, seq uint64, err error) {
	if codec == "json" {
		return parseJSONMessage(m)
	}
	num, typ, n := protowire.ConsumeTag(m)
	if n < 0 || typ != protowire.BytesType {
		return 0, 0, fmt.Errorf("not a WatchTasksResponse: %x", m)
	}
	event, n := protowire.ConsumeBytes(m[n:])
	if n < 0 {
		return 0, 0, fmt.Errorf("not a WatchTasksResponse: %x", m)
	}
	if num != kindEvent {
		return int(num), 0, nil
	}
	for len(event) > 0 {
		num, typ, n := protowire.ConsumeTag(event)
		if n < 0 {
			break
		}
		event = event[n:]
		if num == 1 && typ == protowire.VarintType { // TaskEvent.seq
			seq, n := protowire.ConsumeVarint(event)
			if n < 0 {
				break
			}
			return kindEvent, seq, nil
		}
		if n = protowire.ConsumeFieldValue(num, typ, event); n < 0 {
			break
		}
		event = event[n:]
	}
	return 0, 0, fmt.Errorf("an event without a seq: %x", m)
}

// parseJSONMessage is parseMessage for the JSON codec. protojson writes the fields of a message
// in field number order, so an event's first "seq" is its own (TaskEvent.seq is field 1), not its
// task's; it may put a space after a colon or a comma.
func parseJSONMessage(m []byte) (kind int, seq uint64, err error) {
	bad := func() (int, uint64, error) { return 0, 0, fmt.Errorf("not a WatchTasksResponse: %s", m) }
	rest, ok := bytes.CutPrefix(m, []byte("{"))
	if !ok {
		return bad()
	}
	rest = bytes.TrimLeft(rest, " ")
	switch {
	case bytes.HasPrefix(rest, []byte(`"snapshot"`)):
		return kindSnapshot, 0, nil
	case bytes.HasPrefix(rest, []byte(`"heartbeat"`)):
		return kindHeartbeat, 0, nil
	case !bytes.HasPrefix(rest, []byte(`"event"`)):
		return bad()
	}
	_, rest, ok = bytes.Cut(rest, []byte(`"seq"`))
	if !ok {
		return bad()
	}
	rest = bytes.TrimLeft(rest, " ")
	if rest, ok = bytes.CutPrefix(rest, []byte(":")); !ok {
		return bad()
	}
	rest = bytes.TrimLeft(rest, " ")
	if rest, ok = bytes.CutPrefix(rest, []byte(`"`)); !ok {
		return bad()
	}
	digits, _, ok := bytes.Cut(rest, []byte(`"`))
	if !ok {
		return bad()
	}
	seq, err = strconv.ParseUint(string(digits), 10, 64)
	if err != nil {
		return bad()
	}
	return kindEvent, seq, nil
}
