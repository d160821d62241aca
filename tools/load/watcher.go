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

// watcher is one WatchTasks stream and what it received. It reads its stream through the
// connect-go client, in a goroutine of its own, or through a rawConn, whose reader goroutine
// does the reading for every stream of its connection. Its fields belong to the goroutine that
// reads it until exited is closed.
type watcher struct {
	id     int
	client taskhubv1connect.TaskServiceClient // nil when conn reads the stream
	conn   *rawConn
	h1     *h1Config // set when the watcher reads its HTTP/1.1 stream itself
	spec   *watchSpec
	user   int    // which of the spec's users it watches as: it sees their tasks only
	token  string // that user's bearer token; empty without auth
	want   int    // the load tasks of its user
	slow   bool   // stops reading for spec.slowFor when spec.started closes

	ready  chan struct{} // closed when the snapshot came or the stream failed
	done   chan struct{} // closed when every load task was seen COMPLETED or the stream ended
	exited chan struct{}

	readyClosed, doneClosed bool

	start       time.Time // of the call
	connectTime time.Duration
	err         error  // the stream failed or ended before it was cancelled
	snapshot    bool   // the whole snapshot came
	inSnapshot  bool   // a part of it came, and more follow
	epoch       string // of the snapshot
	contentType string // of the response, as the server answered (connect-go watchers)
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
	users   int           // load task j belongs to user j % users; at least 1
	started chan struct{} // closed when the load starts
	slowFor time.Duration
}

// tasksOf is how many of the load tasks belong to user u.
func (s *watchSpec) tasksOf(u int) int {
	n := s.tasks / s.users
	if u < s.tasks%s.users {
		n++
	}
	return n
}

// watchedTask is what one watcher saw of one load task.
type watchedTask struct {
	created, started, progress, completed int // deliveries of each kind
	lastSeq                               uint64
	final                                 *taskhubv1.Task // of the COMPLETED event
}

// newWatcher makes a watcher of user's tasks that reads its stream through client.
func newWatcher(id int, client taskhubv1connect.TaskServiceClient, spec *watchSpec, user watchUser, slow bool) *watcher {
	w := &watcher{
		id: id, client: client, spec: spec, slow: slow, user: user.index, token: user.token,
		want:  spec.tasksOf(user.index),
		ready: make(chan struct{}), done: make(chan struct{}), exited: make(chan struct{}),
		ids:   map[string]int{},
		tasks: make([]watchedTask, spec.tasks),
	}
	if w.want == 0 {
		w.markDone()
	}
	return w
}

// watchUser is who a watcher watches as: the index of a user of the spec, and their token.
type watchUser struct {
	index int
	token string
}

// newRawWatcher makes a watcher that reads its stream through conn.
func newRawWatcher(id int, conn *rawConn, spec *watchSpec, user watchUser, slow bool) *watcher {
	w := newWatcher(id, nil, spec, user, slow)
	w.conn = conn
	return w
}

// run opens the stream and reads it until ctx ends. With a rawConn it returns once the stream
// is open, and the connection's reader closes exited when the stream ends.
func (w *watcher) run(ctx context.Context) {
	if w.conn != nil {
		w.conn.watch(ctx, w)
		return
	}
	if w.h1 != nil {
		w.runH1(ctx)
		return
	}
	defer w.finish()
	w.start = time.Now()
	stream, err := w.client.WatchTasks(ctx, connect.NewRequest(&taskhubv1.WatchTasksRequest{}))
	if err != nil {
		w.err = err
		return
	}
	defer stream.Close()
	for stream.Receive() {
		now := time.Now()
		if w.contentType == "" {
			w.contentType = stream.ResponseHeader().Get("Content-Type")
		}
		w.receive(stream.Msg(), now)
		if w.stopsReading() {
			// Stop reading: the stream's HTTP/2 window fills and the server must hold or
			// drop what it has for this watcher.
			t := time.NewTimer(w.spec.slowFor)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
			}
			w.stoppedFor = time.Since(now)
		}
	}
	if ctx.Err() == nil {
		w.err = stream.Err()
		if w.err == nil {
			w.err = errors.New("the server ended the stream")
		}
	}
}

// receive checks and counts one message, received at now.
func (w *watcher) receive(m *taskhubv1.WatchTasksResponse, now time.Time) {
	switch m := m.Message.(type) {
	case *taskhubv1.WatchTasksResponse_Snapshot:
		s := m.Snapshot
		switch {
		case w.snapshot:
			w.problems.addf("watcher %d: a second snapshot (seq %d) after seq %d", w.id, s.Seq, w.lastSeq)
			return
		case w.inSnapshot && (s.Seq != w.lastSeq || s.Epoch != w.epoch):
			w.problems.addf("watcher %d: a part of the snapshot at %s/%d, another at %s/%d", w.id, w.epoch, w.lastSeq, s.Epoch, s.Seq)
			return
		case s.Recovered && s.More:
			w.problems.addf("watcher %d: a recovered snapshot (seq %d) in parts", w.id, s.Seq)
		}
		w.lastSeq, w.epoch, w.inSnapshot = s.Seq, s.Epoch, s.More
		if s.More {
			return
		}
		w.snapshot = true
		w.connectTime = now.Sub(w.start)
		w.markReady()
	case *taskhubv1.WatchTasksResponse_Event:
		if w.event(m.Event, now) {
			w.markDone()
		}
	case *taskhubv1.WatchTasksResponse_Heartbeat:
		if w.inSnapshot {
			w.problems.addf("watcher %d: a heartbeat between the parts of the snapshot", w.id)
		}
		w.heartbeats++
	}
}

func (w *watcher) launch(ctx context.Context) { go w.run(ctx) }

func (w *watcher) readyCh() chan struct{} { return w.ready }

func (w *watcher) outcome() (bool, time.Duration, error) { return w.snapshot, w.connectTime, w.err }

// stopsReading reports whether w should stop reading now: it is slow, the load has started,
// and it has not stopped before.
func (w *watcher) stopsReading() bool {
	if !w.slow || w.stoppedFor != 0 {
		return false
	}
	select {
	case <-w.spec.started:
		return true
	default:
		return false
	}
}

func (w *watcher) markReady() {
	if !w.readyClosed {
		w.readyClosed = true
		close(w.ready)
	}
}

func (w *watcher) markDone() {
	if !w.doneClosed {
		w.doneClosed = true
		close(w.done)
	}
}

// finish ends the watcher: its stream has ended, and nothing touches its fields after this.
func (w *watcher) finish() {
	w.markReady()
	w.markDone()
	close(w.exited)
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
	if u := j % w.spec.users; u != w.user {
		w.problems.addf("watcher %d (user %d) got task %d, of user %d", w.id, w.user, j, u)
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
			return w.completed == w.want
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
