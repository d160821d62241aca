package client

import (
	"context"
	"errors"
	"sync"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"
	"github.com/taskhub/taskhub/gen/taskhub/v1/taskhubv1connect"
)

// Reporter sends the progress reports of the tasks one worker process runs: a report goes at
// once when no other is on its way, and those that come while one is wait for its answer and
// then go together, in one BatchReportProgress call. A worker running a few tasks sends what
// it sent before, a call per report; one running hundreds sends a call per round trip instead
// of one per report. With a BatchDelay, a batch also waits that long after its first report
// for others to join it. A Worker uses one for its jobs; the zero value is not usable: make one
// with Client.Reporter.
type Reporter struct {
	work  taskhubv1connect.WorkerServiceClient
	delay time.Duration // BatchDelay

	mu      sync.Mutex
	sending bool          // a goroutine is sending
	queue   []*pending    // what came while it was
	queued  int           // the size of queue's reports in a batch, bytes
	single  bool          // the server has no BatchReportProgress: a call per report, at once
	wake    chan struct{} // ends the sending goroutine's wait for the delay (see look); holds one
}

// pending is a report waiting for its answer.
type pending struct {
	ctx  context.Context
	at   time.Time // when Report was called
	req  *taskhubv1.ReportProgressRequest
	size int // of req in a batch, with its field's tag and length
	res  *taskhubv1.ReportProgressResponse
	err  error
	done chan struct{}
}

// Reporter returns a Reporter sending through c.
func (c *Client) Reporter(opts ...ReporterOption) *Reporter {
	r := &Reporter{work: c.work, wake: make(chan struct{}, 1)}
	for _, o := range opts {
		o(r)
	}
	return r
}

// A ReporterOption configures a Reporter.
type ReporterOption func(*Reporter)

// BatchDelay makes a batch wait until d after its first report came, for more reports to join
// it, or until it holds the most a batch may (1000 reports, or 512 KiB). Each report is then up
// to d later (Report returns with its answer, so a caller that reports in a loop makes one
// report per d at most), and a worker of hundreds of tasks sends fewer, larger batches: with
// 5000 tasks reporting 7,000 times a second through 10 workers, a delay of 20 ms took 18 % off
// the server's CPU a report (docs/benchmarks.md). Zero, the default, sends a report at once
// when no batch is on its way. Against a server without BatchReportProgress it does nothing.
func BatchDelay(d time.Duration) ReporterOption { return func(r *Reporter) { r.delay = max(d, 0) } }

// maxBatch is the server's limit on the reports of one BatchReportProgress call; maxBatchBytes
// keeps a batch well below its limit on a request (1 MiB), which 1000 reports of long messages
// would pass.
const (
	maxBatch      = 1000
	maxBatchBytes = 512 << 10
)

// batchTimeout bounds a batch call: it carries the reports of many callers, none of whose
// contexts may end it for the others.
const batchTimeout = 30 * time.Second

// Report is ReportProgress: it records progress on a task the worker holds the lease of, and
// answers as ReportProgress does (a report refused in a batch fails with the code it would
// have had alone). When ctx ends before the answer, it returns ctx's error, and the report
// may or may not have been recorded.
func (r *Reporter) Report(ctx context.Context, req *taskhubv1.ReportProgressRequest) (*taskhubv1.ReportProgressResponse, error) {
	p := &pending{ctx: ctx, at: time.Now(), req: req, size: proto.Size(req) + 8, done: make(chan struct{})}
	r.mu.Lock()
	if r.single {
		r.mu.Unlock()
		r.sendOne(p)
		return p.res, p.err
	}
	r.queue = append(r.queue, p)
	r.queued += p.size
	switch {
	case !r.sending:
		r.sending = true
		go r.send()
	case r.fullLocked():
		r.look()
	}
	r.mu.Unlock()
	select {
	case <-p.done:
		return p.res, p.err
	case <-ctx.Done():
		r.look() // the report may be all the wait is for
		return nil, ctx.Err()
	}
}

// look ends the sending goroutine's wait for the delay, to look at the queue again: a batch
// filled, or a caller left. A signal sent while it does not wait makes its next wait look once
// more, and wait again.
func (r *Reporter) look() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// send sends what is queued until nothing is.
func (r *Reporter) send() {
	var delay *time.Timer
	defer func() {
		if delay != nil {
			delay.Stop()
		}
	}()
	for {
		r.mu.Lock()
		r.dropLeftLocked()
		if wait := r.delayLocked(); wait > 0 {
			if delay == nil {
				delay = time.NewTimer(wait)
			} else {
				delay.Reset(wait)
			}
			r.mu.Unlock()
			select {
			case <-delay.C:
			case <-r.wake:
			}
			continue // look again
		}
		n, size := 0, 0
		for n < len(r.queue) && n < maxBatch {
			if n > 0 && size+r.queue[n].size > maxBatchBytes {
				break
			}
			size += r.queue[n].size
			n++
		}
		r.queued -= size
		batch := r.queue[:n]
		r.queue = r.queue[n:]
		if len(r.queue) == 0 {
			r.queue = nil // let the array go
		}
		if len(batch) == 0 {
			r.sending = false
			r.mu.Unlock()
			return
		}
		r.mu.Unlock()

		// Those whose callers left before it went are not sent.
		live := batch[:0:0]
		for _, p := range batch {
			if p.ctx.Err() == nil {
				live = append(live, p)
			}
		}
		switch len(live) {
		case 0:
		case 1:
			r.sendOne(live[0])
		default:
			r.sendBatch(live)
		}
	}
}

// delayLocked is how long the next batch waits for more reports (BatchDelay): until the delay
// after its first report, unless it is full.
func (r *Reporter) delayLocked() time.Duration {
	if r.delay <= 0 || len(r.queue) == 0 || r.fullLocked() || r.single {
		return 0
	}
	return time.Until(r.queue[0].at.Add(r.delay))
}

// dropLeftLocked drops the queued reports whose callers left (their contexts ended): they are
// not sent, and a wait is not for them.
func (r *Reporter) dropLeftLocked() {
	if r.delay <= 0 {
		return // they are dropped as their batch goes
	}
	kept := r.queue[:0]
	for _, p := range r.queue {
		if p.ctx.Err() == nil {
			kept = append(kept, p)
		} else {
			r.queued -= p.size
		}
	}
	clear(r.queue[len(kept):])
	r.queue = kept
}

// fullLocked reports whether what is queued fills a batch.
func (r *Reporter) fullLocked() bool {
	return len(r.queue) >= maxBatch || r.queued >= maxBatchBytes
}

// sendOne sends a report in a call of its own, for at most batchTimeout: the reports queued
// behind it wait for it.
func (r *Reporter) sendOne(p *pending) {
	ctx, cancel := context.WithTimeout(p.ctx, batchTimeout)
	defer cancel()
	res, err := r.work.ReportProgress(ctx, connect.NewRequest(p.req))
	if err == nil {
		p.res = res.Msg
	}
	p.err = err
	close(p.done)
}

// sendBatch sends several reports in one call and hands each its result.
func (r *Reporter) sendBatch(ps []*pending) {
	ctx, cancel := context.WithTimeout(context.Background(), batchTimeout)
	defer cancel()
	reqs := make([]*taskhubv1.ReportProgressRequest, len(ps))
	for i, p := range ps {
		reqs[i] = p.req
	}
	res, err := r.work.BatchReportProgress(ctx, connect.NewRequest(&taskhubv1.BatchReportProgressRequest{Reports: reqs}))
	switch {
	case connect.CodeOf(err) == connect.CodeUnimplemented:
		// An older server: a call per report, each at once, from now on.
		r.mu.Lock()
		r.single = true
		r.mu.Unlock()
		var wg sync.WaitGroup
		for _, p := range ps {
			wg.Go(func() { r.sendOne(p) })
		}
		wg.Wait()
		return
	case err == nil && len(res.Msg.Results) != len(ps):
		err = connect.NewError(connect.CodeInternal, errors.New("the server answered a batch of reports with a different number of results"))
	}
	for i, p := range ps {
		switch {
		case err != nil:
			p.err = err
		case res.Msg.Results[i].Error != nil:
			e := res.Msg.Results[i].Error
			var code connect.Code
			if code.UnmarshalText([]byte(e.Code)) != nil {
				code = connect.CodeUnknown
			}
			p.err = connect.NewError(code, errors.New(e.Message))
		default:
			p.res = &taskhubv1.ReportProgressResponse{CancelRequested: res.Msg.Results[i].CancelRequested, LeaseExpiresAt: res.Msg.Results[i].LeaseExpiresAt}
		}
		close(p.done)
	}
}
