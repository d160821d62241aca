package main

import (
	"context"
	"time"

	"connectrpc.com/connect"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"
	"github.com/taskhub/taskhub/gen/taskhub/v1/taskhubv1connect"
)

// poller is one client polling ListTasks at a fixed interval, and what each poll showed of the
// load tasks. Its fields belong to its goroutine until exited is closed.
type poller struct {
	id       int
	client   taskhubv1connect.TaskServiceClient
	spec     *watchSpec
	interval time.Duration
	phase    time.Duration // before the first poll, so that the clients' polls are spread evenly

	done   chan struct{} // closed when a poll showed every load task COMPLETED
	exited chan struct{}

	polls, failures int64
	firstErr        error
	seen            []sighting
}

// sighting is one load task as one poll showed it.
type sighting struct {
	at       time.Time // when the response came
	task     int
	state    taskhubv1.TaskState
	progress float64
}

func newPoller(id int, client taskhubv1connect.TaskServiceClient, spec *watchSpec, interval, phase time.Duration) *poller {
	return &poller{
		id: id, client: client, spec: spec, interval: interval, phase: phase,
		done: make(chan struct{}), exited: make(chan struct{}),
	}
}

// run polls until ctx ends.
func (p *poller) run(ctx context.Context) {
	defer close(p.exited)
	doneOpen := true
	defer func() {
		if doneOpen {
			close(p.done)
		}
	}()
	req := &taskhubv1.ListTasksRequest{PageSize: int32(max(50, p.spec.tasks))}
	next := time.Now().Add(p.phase)
	timer := time.NewTimer(p.phase)
	defer timer.Stop()
	for {
		select {
		case <-timer.C:
		case <-ctx.Done():
			return
		}
		res, err := p.client.ListTasks(ctx, connect.NewRequest(req))
		at := time.Now()
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			if p.failures == 0 {
				p.firstErr = err
			}
			p.failures++
		default:
			completed := 0
			for _, t := range res.Msg.Tasks {
				j, ok := taskIndex(t, p.spec.mode, p.spec.prefix, p.spec.tasks)
				if !ok {
					continue
				}
				p.seen = append(p.seen, sighting{at: at, task: j, state: t.State, progress: t.Progress})
				if t.State == taskhubv1.TaskState_TASK_STATE_COMPLETED {
					completed++
				}
			}
			if completed == p.spec.tasks && doneOpen {
				doneOpen = false
				close(p.done)
			}
		}
		p.polls++
		// A fixed cadence: a poll that took long is followed by the next one at once.
		next = next.Add(p.interval)
		timer.Reset(time.Until(next))
	}
}

// staleness appends to out, for every change the driver made to every load task, how long
// after it this client first showed it or a later change; it reports what does not add up.
func (p *poller) staleness(d *driver, out []time.Duration, pr *problems) []time.Duration {
	shown := make([]int, len(d.ids)) // per task, the latest change shown so far; -1: none
	for j := range shown {
		shown[j] = -1
	}
	for _, s := range p.seen {
		v, ok := d.version(s.task, s.state, s.progress)
		switch {
		case !ok:
			pr.addf("client %d: task %d shown %v at progress %v, which the driver never set", p.id, s.task, s.state, s.progress)
			continue
		case v < shown[s.task]:
			pr.addf("client %d: task %d went back from change %d to %d", p.id, s.task, shown[s.task], v)
			continue
		}
		for c := shown[s.task] + 1; c <= v; c++ {
			out = append(out, max(0, s.at.Sub(d.changes[s.task][c].at)))
		}
		shown[s.task] = v
	}
	for j, v := range shown {
		if v != len(d.changes[j])-1 {
			pr.addf("client %d: task %d: its last poll showed change %d of %d", p.id, j, v+1, len(d.changes[j]))
		}
	}
	return out
}
