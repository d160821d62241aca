package client

import (
	"context"
	"errors"
	"sync"
	"time"

	"connectrpc.com/connect"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"
	"github.com/taskhub/taskhub/gen/taskhub/v1/taskhubv1connect"
)

// Reporter sends the progress reports of the tasks one worker process runs: a report goes at
// once when no other is on its way, and those that come while one is go together, in one
// BatchReportProgress call, when it returns. A worker running a few tasks sends what it sent
// before, a call per report; one running hundreds sends a call per round trip instead of one
// per report, with no delay added. A Worker uses one for its jobs; the zero value is not
// usable: make one with Client.Reporter.
type Reporter struct {
	work taskhubv1connect.WorkerServiceClient

	mu      sync.Mutex
	sending bool       // a goroutine is sending
	queue   []*pending // what came while it was
	single  bool       // the server has no BatchReportProgress: a call per report
}

// pending is a report waiting for its answer.
type pending struct {
	ctx  context.Context
	req  *taskhubv1.ReportProgressRequest
	res  *taskhubv1.ReportProgressResponse
	err  error
	done chan struct{}
}

// Reporter returns a Reporter sending through c.
func (c *Client) Reporter() *Reporter { return &Reporter{work: c.work} }

// maxBatch is the server's limit on the reports of one BatchReportProgress call.
const maxBatch = 1000

// batchTimeout bounds a batch call: it carries the reports of many callers, none of whose
// contexts may end it for the others.
const batchTimeout = 30 * time.Second

// Report is ReportProgress: it records progress on a task the worker holds the lease of, and
// answers as ReportProgress does (a report refused in a batch fails with the code it would
// have had alone). When ctx ends before the answer, it returns ctx's error, and the report
// may or may not have been recorded.
func (r *Reporter) Report(ctx context.Context, req *taskhubv1.ReportProgressRequest) (*taskhubv1.ReportProgressResponse, error) {
	p := &pending{ctx: ctx, req: req, done: make(chan struct{})}
	r.mu.Lock()
	r.queue = append(r.queue, p)
	if !r.sending {
		r.sending = true
		go r.send()
	}
	r.mu.Unlock()
	select {
	case <-p.done:
		return p.res, p.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// send sends what is queued until nothing is.
func (r *Reporter) send() {
	for {
		r.mu.Lock()
		batch := r.queue[:min(len(r.queue), maxBatch)]
		r.queue = r.queue[len(batch):]
		if len(r.queue) == 0 {
			r.queue = nil // let the array go
		}
		if len(batch) == 0 {
			r.sending = false
			r.mu.Unlock()
			return
		}
		single := r.single
		r.mu.Unlock()

		// Those whose callers left before it went are not sent.
		live := batch[:0:0]
		for _, p := range batch {
			if p.ctx.Err() == nil {
				live = append(live, p)
			}
		}
		switch {
		case len(live) == 0:
		case len(live) == 1 || single:
			r.sendEach(live)
		default:
			r.sendBatch(live)
		}
	}
}

// sendEach sends each report in a call of its own.
func (r *Reporter) sendEach(ps []*pending) {
	for _, p := range ps {
		res, err := r.work.ReportProgress(p.ctx, connect.NewRequest(p.req))
		if err == nil {
			p.res = res.Msg
		}
		p.err = err
		close(p.done)
	}
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
		// An older server: a call per report, from now on.
		r.mu.Lock()
		r.single = true
		r.mu.Unlock()
		r.sendEach(ps)
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
