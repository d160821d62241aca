package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"connectrpc.com/connect"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"
	"github.com/taskhub/taskhub/gen/taskhub/v1/taskhubv1connect"
)

// watcher is one WatchTasks stream and what it received. Its fields belong to its goroutine
// until exited is closed.
type watcher struct {
	id     int
	client taskhubv1connect.TaskServiceClient
	spec   *watchSpec
	slow   bool // stops reading for spec.slowFor when spec.started closes

	ready  chan struct{} // closed when the snapshot came or the stream failed
	done   chan struct{} // closed when every load task was seen COMPLETED or the stream ended
	exited chan struct{}

	connectTime time.Duration
	err         error // the stream failed or ended before it was cancelled
	snapshot    bool
	lastSeq     uint64
	heartbeats  int64
	ids         map[string]int // task id -> load task index; -1 for others' tasks
	tasks       []watchedTask  // per load task
	completed   int            // load tasks seen COMPLETED
	progress    int64          // PROGRESS deliveries of load tasks
	lifecycle   int64          // other deliveries of load tasks
	latency     []time.Duration
	stoppedFor  time.Duration
	problems    problems
}

// watchSpec is what every watcher of a run shares.
type watchSpec struct {
	mode    string
	prefix  string
	tasks   int
	started chan struct{} // closed when the load starts
	slowFor time.Duration
}

// watchedTask is what one watcher saw of one load task.
type watchedTask struct {
	created, started, progress, completed int // deliveries of each kind
	lastSeq                               uint64
	final                                 *taskhubv1.Task // of the COMPLETED event
}

func newWatcher(id int, client taskhubv1connect.TaskServiceClient, spec *watchSpec, slow bool) *watcher {
	return &watcher{
		id: id, client: client, spec: spec, slow: slow,
		ready: make(chan struct{}), done: make(chan struct{}), exited: make(chan struct{}),
		ids:   map[string]int{},
		tasks: make([]watchedTask, spec.tasks),
	}
}

// run reads the stream until ctx ends.
func (w *watcher) run(ctx context.Context) {
	defer close(w.exited)
	readyOpen, doneOpen := true, true
	markReady := func() {
		if readyOpen {
			readyOpen = false
			close(w.ready)
		}
	}
	markDone := func() {
		if doneOpen {
			doneOpen = false
			close(w.done)
		}
	}
	defer markDone()
	defer markReady()
	if w.spec.tasks == 0 {
		markDone()
	}

	start := time.Now()
	stream, err := w.client.WatchTasks(ctx, connect.NewRequest(&taskhubv1.WatchTasksRequest{}))
	if err != nil {
		w.err = err
		return
	}
	defer stream.Close()
	for stream.Receive() {
		now := time.Now()
		switch m := stream.Msg().Message.(type) {
		case *taskhubv1.WatchTasksResponse_Snapshot:
			if w.snapshot {
				w.problems.addf("watcher %d: a second snapshot (seq %d) after seq %d", w.id, m.Snapshot.Seq, w.lastSeq)
				continue
			}
			w.snapshot, w.lastSeq = true, m.Snapshot.Seq
			w.connectTime = now.Sub(start)
			markReady()
		case *taskhubv1.WatchTasksResponse_Event:
			if w.event(m.Event, now) {
				markDone()
			}
		case *taskhubv1.WatchTasksResponse_Heartbeat:
			w.heartbeats++
		}
		if w.slow && w.stoppedFor == 0 {
			select {
			case <-w.spec.started:
				// Stop reading: the stream's HTTP/2 window fills and the server must hold or
				// drop what it has for this watcher.
				t := time.NewTimer(w.spec.slowFor)
				select {
				case <-t.C:
				case <-ctx.Done():
					t.Stop()
				}
				w.stoppedFor = time.Since(now)
			default:
			}
		}
	}
	if ctx.Err() == nil {
		w.err = stream.Err()
		if w.err == nil {
			w.err = errors.New("the server ended the stream")
		}
	}
}

// event checks and counts one event; it reports true when the last load task completed.
func (w *watcher) event(e *taskhubv1.TaskEvent, now time.Time) bool {
	switch {
	case !w.snapshot:
		w.problems.addf("watcher %d: event seq %d before the snapshot", w.id, e.Seq)
	case e.Seq == w.lastSeq:
		w.problems.addf("watcher %d: seq %d twice", w.id, e.Seq)
	case e.Seq < w.lastSeq:
		w.problems.addf("watcher %d: seq went back from %d to %d", w.id, w.lastSeq, e.Seq)
	}
	w.lastSeq = max(w.lastSeq, e.Seq)

	j, ok := w.ids[e.Task.GetId()]
	if !ok {
		j = -1
		if i, mine := taskIndex(e.Task, w.spec.mode, w.spec.prefix, w.spec.tasks); mine {
			j = i
		}
		w.ids[e.Task.GetId()] = j
	}
	if j < 0 {
		return false
	}
	w.latency = append(w.latency, now.Sub(e.Time.AsTime()))
	t := &w.tasks[j]
	if e.Seq <= t.lastSeq {
		w.problems.addf("watcher %d: task %d: seq %d after %d", w.id, j, e.Seq, t.lastSeq)
	}
	t.lastSeq = max(t.lastSeq, e.Seq)
	switch e.Kind {
	case taskhubv1.EventKind_EVENT_KIND_PROGRESS:
		w.progress++
		t.progress++
		return false
	case taskhubv1.EventKind_EVENT_KIND_CREATED:
		w.lifecycle++
		t.created++
		return false
	case taskhubv1.EventKind_EVENT_KIND_STARTED:
		w.lifecycle++
		t.started++
		return false
	case taskhubv1.EventKind_EVENT_KIND_COMPLETED:
		w.lifecycle++
		t.completed++
		t.final = e.Task
		if t.completed == 1 {
			w.completed++
			return w.completed == w.spec.tasks
		}
		return false
	default:
		// The driver causes no other kind: a requeue (a lost lease) or a stall is news.
		w.lifecycle++
		w.problems.addf("watcher %d: task %d: an unexpected %v event (seq %d)", w.id, j, e.Kind, e.Seq)
		return false
	}
}

// problems collects violations, keeping the first few messages.
type problems struct {
	n    int
	list []string
}

const keptProblems = 20

func (p *problems) addf(format string, args ...any) {
	p.n++
	if len(p.list) < keptProblems {
		p.list = append(p.list, fmt.Sprintf(format, args...))
	}
}

func (p *problems) merge(q *problems) {
	p.n += q.n
	for _, s := range q.list {
		if len(p.list) < keptProblems {
			p.list = append(p.list, s)
		}
	}
}
