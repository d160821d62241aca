package actors_test

import (
	"context"
	"errors"
	"fmt"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"

	"github.com/taskhub/taskhub"
	"github.com/taskhub/taskhub/actors"
	"github.com/taskhub/taskhub/eventlog"
)

// key is what a watcher compares: which event, of what kind, of which task.
type key struct {
	seq  uint64
	kind taskhubv1.EventKind
	id   string
}

func (k key) String() string { return fmt.Sprintf("%d:%s:%s", k.seq, k.kind, k.id) }

func keysOf(events []*taskhubv1.TaskEvent) []key {
	out := []key{}
	for _, e := range events {
		out = append(out, key{e.Seq, e.Kind, e.Task.Id})
	}
	return out
}

// logEvents reads owner's events with seq > after straight from the event log: what a watcher
// must get.
func logEvents(t *testing.T, l *eventlog.Log, owner string, after uint64) []*taskhubv1.TaskEvent {
	t.Helper()
	var out []*taskhubv1.TaskEvent
	for seq := after + 1; ; {
		e, err := l.Next(t.Context(), eventlog.OwnerFilter(owner), seq)
		if errors.Is(err, eventlog.ErrNotFound) {
			return out
		}
		require.NoError(t, err)
		out = append(out, e.Record.Event)
		seq = e.Seq + 1
	}
}

func terminalKind(k taskhubv1.EventKind) bool {
	return k == taskhubv1.EventKind_EVENT_KIND_COMPLETED || k == taskhubv1.EventKind_EVENT_KIND_FAILED ||
		k == taskhubv1.EventKind_EVENT_KIND_CANCELLED
}

// legalNext says which kinds may follow an event of a kind in one task's life (UNSPECIFIED: the
// task has had no event yet).
var legalNext = map[taskhubv1.EventKind][]taskhubv1.EventKind{
	taskhubv1.EventKind_EVENT_KIND_UNSPECIFIED: {taskhubv1.EventKind_EVENT_KIND_CREATED},
	taskhubv1.EventKind_EVENT_KIND_CREATED:     {taskhubv1.EventKind_EVENT_KIND_STARTED, taskhubv1.EventKind_EVENT_KIND_CANCELLED},
	taskhubv1.EventKind_EVENT_KIND_REQUEUED:    {taskhubv1.EventKind_EVENT_KIND_STARTED, taskhubv1.EventKind_EVENT_KIND_CANCELLED},
	taskhubv1.EventKind_EVENT_KIND_STARTED:     running,
	taskhubv1.EventKind_EVENT_KIND_PROGRESS:    running,
}

var running = []taskhubv1.EventKind{
	taskhubv1.EventKind_EVENT_KIND_PROGRESS, taskhubv1.EventKind_EVENT_KIND_COMPLETED, taskhubv1.EventKind_EVENT_KIND_FAILED,
	taskhubv1.EventKind_EVENT_KIND_CANCELLED, taskhubv1.EventKind_EVENT_KIND_REQUEUED,
}

// requireLegalStream checks what a watcher got after a snapshot at seq from: seq strictly
// increasing, and each task's events in an order its life allows, starting with CREATED.
func requireLegalStream(t *testing.T, from uint64, events []*taskhubv1.TaskEvent) {
	t.Helper()
	last := from
	prev := map[string]taskhubv1.EventKind{}
	for _, e := range events {
		require.Greater(t, e.Seq, last, "seq must strictly increase: %v", keysOf(events))
		last = e.Seq
		p := prev[e.Task.Id]
		require.Contains(t, legalNext[p], e.Kind, "task %s: %s after %s", e.Task.Id, e.Kind, p)
		prev[e.Task.Id] = e.Kind
	}
}

// nonProgress drops the progress events, which a slow watcher may get coalesced.
func nonProgress(events []*taskhubv1.TaskEvent) []*taskhubv1.TaskEvent {
	return slices.DeleteFunc(slices.Clone(events), func(e *taskhubv1.TaskEvent) bool {
		return e.Kind == taskhubv1.EventKind_EVENT_KIND_PROGRESS
	})
}

// reader reads a watch's events on a goroutine, pausing between reads to play a slow client,
// until enough.
type reader struct {
	mu     sync.Mutex
	events []*taskhubv1.TaskEvent
	err    error
	done   chan struct{}
}

func read(ctx context.Context, w taskhub.Watch, pause time.Duration, enough func([]*taskhubv1.TaskEvent) bool) *reader {
	r := &reader{done: make(chan struct{})}
	go func() {
		defer close(r.done)
		for {
			msgs, err := w.Next(ctx)
			r.mu.Lock()
			if err != nil {
				r.err = err
				r.mu.Unlock()
				return
			}
			for _, m := range msgs {
				if e := m.GetEvent(); e != nil {
					r.events = append(r.events, e)
				}
			}
			stop := enough(r.events)
			r.mu.Unlock()
			if stop {
				return
			}
			time.Sleep(pause)
		}
	}()
	return r
}

// result waits for the reader to end and returns what it read.
func (r *reader) result(t *testing.T) []*taskhubv1.TaskEvent {
	t.Helper()
	<-r.done
	r.mu.Lock()
	defer r.mu.Unlock()
	require.NoError(t, r.err, "read %d events", len(r.events))
	return r.events
}

func countTerminal(n int) func([]*taskhubv1.TaskEvent) bool {
	return func(events []*taskhubv1.TaskEvent) bool {
		seen := 0
		for _, e := range events {
			if terminalKind(e.Kind) {
				seen++
			}
		}
		return seen >= n
	}
}

func TestHub_WatchSlowWatcher(t *testing.T) {
	t.Parallel()
	// A watcher whose outbox (8) overflows many times over: it is refilled from the log, with
	// only progress coalesced, and ends exactly where the log does.
	t.Run("not reading until every task finished", func(t *testing.T) {
		t.Parallel()
		slowWatcher(t, false)
	})
	t.Run("reading slowly while tasks change", func(t *testing.T) {
		t.Parallel()
		slowWatcher(t, true)
	})
}

func slowWatcher(t *testing.T, readWhileWriting bool) {
	b := setup(t, options{outbox: 8, lease: 10 * time.Second})
	h := b.hub
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()

	w, err := h.Watch(ctx, taskhub.WatchQuery{Owner: "alice", Epoch: "", AfterSeq: 0})
	require.NoError(t, err)
	defer w.Close()
	// Take only the snapshot, so every event of the test comes after it.
	msgs, err := w.Next(ctx)
	require.NoError(t, err)
	require.Len(t, msgs, 1)
	snap := msgs[0].GetSnapshot()
	require.NotNil(t, snap)
	require.Zero(t, snap.Seq)
	require.Empty(t, snap.Tasks)

	const tasks, reports = 5, 50
	var r *reader
	if readWhileWriting {
		r = read(ctx, w, time.Millisecond, countTerminal(tasks))
	}

	var ids []string
	for i := range tasks {
		ids = append(ids, create(t, h, "alice", fmt.Sprintf("task %d", i), "paint").Id)
	}
	// The last one is cancelled while queued; the others are claimed.
	_, err = h.CancelTask(ctx, "alice", ids[tasks-1])
	require.NoError(t, err)
	var claimed []*taskhub.Claim
	for range tasks - 1 {
		claimed = append(claimed, claim(t, h, "paint"))
	}
	for i := 1; i <= reports; i++ {
		for _, c := range claimed {
			_, err := h.ReportProgress(ctx, taskhub.Report{Lease: taskhub.Lease{TaskID: c.Task.Id, Token: c.LeaseToken}, Progress: float64(i), Message: fmt.Sprintf("step %d", i)})
			require.NoError(t, err)
		}
	}
	for _, c := range claimed[:len(claimed)-1] {
		_, err := h.CompleteTask(ctx, taskhub.Lease{TaskID: c.Task.Id, Token: c.LeaseToken}, "done "+c.Task.Id)
		require.NoError(t, err)
	}
	last := claimed[len(claimed)-1]
	_, err = h.FailTask(ctx, taskhub.Lease{TaskID: last.Task.Id, Token: last.LeaseToken}, taskhub.Failure{Error: "out of paint"})
	require.NoError(t, err)

	if !readWhileWriting {
		r = read(ctx, w, 0, countTerminal(tasks))
	}
	got := r.result(t)
	want := logEvents(t, b.log, "alice", 0)
	t.Logf("the log has %d events; the watcher got %d", len(want), len(got))

	requireLegalStream(t, snap.Seq, got)
	require.Equal(t, keysOf(nonProgress(want)), keysOf(nonProgress(got)), "every event but progress must arrive")
	require.Equal(t, want[len(want)-1].Seq, got[len(got)-1].Seq, "the watcher must end where the log does")

	// What arrived is what the log holds, not a copy that drifted.
	bySeq := map[uint64]*taskhubv1.TaskEvent{}
	for _, e := range want {
		bySeq[e.Seq] = e
	}
	for _, e := range got {
		require.True(t, proto.Equal(bySeq[e.Seq], e), "event %d differs from the log", e.Seq)
	}

	// Coalescing keeps the latest progress: the last one a task got before finishing is the
	// last one reported.
	lastProgress := map[string]*taskhubv1.TaskEvent{}
	lastEvent := map[string]*taskhubv1.TaskEvent{}
	for _, e := range got {
		if e.Kind == taskhubv1.EventKind_EVENT_KIND_PROGRESS {
			lastProgress[e.Task.Id] = e
		}
		lastEvent[e.Task.Id] = e
	}
	for _, c := range claimed {
		p := lastProgress[c.Task.Id]
		require.NotNil(t, p, "task %s: no progress at all", c.Task.Id)
		require.Equal(t, float64(reports), p.Task.Progress, "task %s", c.Task.Id)
		require.Equal(t, fmt.Sprintf("step %d", reports), p.Task.Message, "task %s", c.Task.Id)
	}
	// And each task's last event is its final state.
	require.Len(t, lastEvent, tasks)
	for _, id := range ids {
		task, err := h.GetTask(ctx, "alice", id)
		require.NoError(t, err)
		require.True(t, proto.Equal(task, lastEvent[id].Task), "task %s: the watcher's last state differs from GetTask", id)
		require.True(t, terminalKind(lastEvent[id].Kind), "task %s ended with %s", id, lastEvent[id].Kind)
	}
	require.Equal(t, taskhubv1.TaskState_TASK_STATE_CANCELLED, lastEvent[ids[tasks-1]].Task.State)
	require.Equal(t, taskhubv1.TaskState_TASK_STATE_FAILED, lastEvent[last.Task.Id].Task.State)
	require.Equal(t, float64(reports), lastEvent[last.Task.Id].Task.Progress)
}

func TestHub_WatchResume(t *testing.T) {
	t.Parallel()
	b := setup(t, options{lease: 10 * time.Second})
	h, ctx := b.hub, t.Context()

	// stayed keeps up the whole time (each step waits for it), so it gets every event.
	stayed := watch(t, h, "alice", "", 0)
	stayed.wait(0)
	n := 0
	step := func(do func()) {
		t.Helper()
		do()
		n++
		stayed.wait(n)
	}

	left := watch(t, h, "alice", "", 0)
	var t1, t2 *taskhubv1.Task
	var c1, c2 *taskhub.Claim
	step(func() { t1 = create(t, h, "alice", "one", "paint") })
	step(func() { t2 = create(t, h, "alice", "two", "paint") })
	step(func() { c1 = claim(t, h, "paint") })
	require.Equal(t, t1.Id, c1.Task.Id)
	step(func() { report(t, h, c1, 10) })
	_, seen := left.wait(4)
	after := seen[3].Seq
	left.stop()

	// While it is away, at most one progress per task: a watcher coalesces queued progress,
	// so two would make the lists differ by design.
	step(func() { c2 = claim(t, h, "paint") })
	require.Equal(t, t2.Id, c2.Task.Id)
	create(t, h, "bob", "not alice's", "paint")
	step(func() { report(t, h, c1, 20) })
	step(func() { report(t, h, c2, 30) })
	step(func() { complete(t, h, c1) })
	var t3 *taskhubv1.Task
	step(func() { t3 = create(t, h, "alice", "three", "paint") })
	step(func() { _, err := h.CancelTask(ctx, "alice", t3.Id); require.NoError(t, err) })
	step(func() {
		_, err := h.FailTask(ctx, taskhub.Lease{TaskID: c2.Task.Id, Token: c2.LeaseToken}, taskhub.Failure{Error: "broken"})
		require.NoError(t, err)
	})

	back := watch(t, h, "alice", h.Epoch(), after)
	snap, _ := back.wait(0)
	require.True(t, snap.Recovered)
	require.Equal(t, after, snap.Seq)
	require.Equal(t, h.Epoch(), snap.Epoch)
	require.Empty(t, snap.Tasks, "a recovered snapshot carries no tasks")

	// Live again: new events reach both.
	var t4, t5 *taskhubv1.Task
	step(func() { t4 = create(t, h, "alice", "four", "paint") })
	step(func() { t5 = create(t, h, "alice", "five", "paint") })
	back.wait(n - 4)
	time.Sleep(50 * time.Millisecond) // a duplicate would arrive by now
	_, resumed := back.wait(0)
	_, all := stayed.wait(0)
	require.Len(t, all, n)
	require.Equal(t, keysOf(all[:4]), keysOf(seen[:4]))
	require.Equal(t, keysOf(all[4:]), keysOf(resumed), "the resumed watch must get exactly the events after %d", after)
	require.Equal(t, keysOf(logEvents(t, b.log, "alice", after)), keysOf(resumed))

	last := all[len(all)-1].Seq
	_, pos, err := b.log.Bounds(ctx)
	require.NoError(t, err)
	active := []string{t5.Id, t4.Id} // newest first

	t.Run("another epoch", func(t *testing.T) {
		w := watch(t, h, "alice", "TASKS.1", after)
		snap, _ := w.wait(0)
		require.False(t, snap.Recovered)
		require.Equal(t, h.Epoch(), snap.Epoch)
		require.Equal(t, pos, snap.Seq)
		require.Equal(t, active, taskIDs(snap.Tasks))
	})
	t.Run("after_seq beyond the log", func(t *testing.T) {
		w := watch(t, h, "alice", h.Epoch(), pos+1)
		snap, _ := w.wait(0)
		require.False(t, snap.Recovered)
		require.Equal(t, pos, snap.Seq)
		require.Equal(t, active, taskIDs(snap.Tasks))
	})
	t.Run("after_seq at the end of the log", func(t *testing.T) {
		w := watch(t, h, "alice", h.Epoch(), last)
		snap, events := w.wait(0)
		require.True(t, snap.Recovered)
		require.Equal(t, last, snap.Seq)
		require.Empty(t, events)
	})
}

// secondHub opens another hub on log, which a bundle's hub also writes: a second node of a
// cluster, as far as the hub can tell (Shared). It closes before the log: cleanups run last
// first.
func secondHub(t *testing.T, log actors.Log) *actors.Hub {
	t.Helper()
	h, err := actors.Open(t.Context(), actors.Config{Log: log, Shared: true, Logger: quiet(), Options: actors.Options{LeaseTimeout: 10 * time.Second}})
	require.NoError(t, err)
	t.Cleanup(func() { h.Close() })
	return h
}

// followGate holds back, while shut, the entries its Follow passes on from seq from on: the
// follower of a node that lags the log (its consumer's node died, say).
type followGate struct {
	actors.Log
	mu   sync.Mutex
	from uint64 // 0: open
	held []func()
}

func (g *followGate) Follow(ctx context.Context, fn func(e *eventlog.Entry, pending uint64)) (func(), error) {
	return g.Log.Follow(ctx, func(e *eventlog.Entry, pending uint64) {
		g.mu.Lock()
		defer g.mu.Unlock()
		if (g.from != 0 && e.Seq >= g.from) || len(g.held) > 0 {
			g.held = append(g.held, func() { fn(e, pending) })
			return
		}
		fn(e, pending)
	})
}

func (g *followGate) shut(from uint64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.from = from
}

// open passes on what was held, in order, and what comes from then on.
func (g *followGate) open() {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, fn := range g.held {
		fn()
	}
	g.held, g.from = nil, 0
}

// leaderBehind answers reads as an event log leader does that has not applied the events past
// upTo yet (0: it has all), while the follower's replica has: in a cluster, the feed reads from
// one replica and the replays from the leader.
type leaderBehind struct {
	actors.Log
	upTo atomic.Uint64
}

func (l *leaderBehind) Bounds(ctx context.Context) (uint64, uint64, error) {
	first, last, err := l.Log.Bounds(ctx)
	if upTo := l.upTo.Load(); upTo != 0 {
		last = min(last, upTo)
	}
	return first, last, err
}

func (l *leaderBehind) Next(ctx context.Context, filter string, from uint64) (*eventlog.Entry, error) {
	e, err := l.Log.Next(ctx, filter, from)
	if upTo := l.upTo.Load(); err == nil && upTo != 0 && e.Seq > upTo {
		return nil, eventlog.ErrNotFound
	}
	return e, err
}

// TestHub_WatchReplayWaitsForTheLeader: a resume on a node whose feed has applied events the
// log's leader has not applied yet waits for the leader (or is told to resume again) rather
// than reading the leader too early and missing them.
func TestHub_WatchReplayWaitsForTheLeader(t *testing.T) {
	t.Parallel()
	b := setup(t, options{lease: 10 * time.Second})
	a := b.hub
	behind := &leaderBehind{Log: b.log}
	node := secondHub(t, behind)

	live := watch(t, node, "alice", "", 0)
	one := create(t, a, "alice", "one", "paint")
	behind.upTo.Store(one.Seq)
	two := create(t, a, "alice", "two", "paint")
	three := create(t, a, "alice", "three", "paint")
	live.wait(3) // the node's feed has them all

	// The leader stays behind: the resume cannot be served in full, and says so.
	w, err := node.Watch(t.Context(), taskhub.WatchQuery{Owner: "alice", Epoch: node.Epoch(), AfterSeq: one.Seq})
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	var got []*taskhubv1.TaskEvent
	for {
		msgs, err := w.Next(ctx)
		if err != nil {
			require.Equal(t, taskhub.Unavailable, codeOf(err), "%v, after %v", err, got)
			require.ErrorContains(t, err, "leader does not hold")
			break
		}
		for _, m := range msgs {
			if e := m.GetEvent(); e != nil {
				got = append(got, e)
			}
		}
	}
	require.Empty(t, got, "no event is sent as if the ones before it did not exist")
	w.Close()

	// It catches up a moment after the resume began: the replay waits for it.
	time.AfterFunc(300*time.Millisecond, func() { behind.upTo.Store(0) })
	resumed := watch(t, node, "alice", node.Epoch(), one.Seq)
	_, events := resumed.wait(2)
	require.Equal(t, []string{two.Id, three.Id}, []string{events[0].Task.Id, events[1].Task.Id})
}

// TestHub_WatchResumeOnANodeThatLags: a client that saw events on one node and resumes on
// another whose follower lags behind them is told to retry, rather than given a snapshot older
// than what it has seen, and the lagging node is not ready; once it catches up, it is ready
// and the same resume recovers.
func TestHub_WatchResumeOnANodeThatLags(t *testing.T) {
	t.Parallel()
	b := setup(t, options{lease: 10 * time.Second})
	a := b.hub
	gate := &followGate{Log: b.log}
	lagging := secondHub(t, gate)

	_, last, err := b.log.Bounds(t.Context())
	require.NoError(t, err)
	gate.shut(last + 1)
	onA := watch(t, a, "alice", "", 0)
	create(t, a, "alice", "one", "paint")
	create(t, a, "alice", "two", "paint")
	_, seen := onA.wait(2)
	after := seen[1].Seq

	w, err := lagging.Watch(t.Context(), taskhub.WatchQuery{Owner: "alice", Epoch: lagging.Epoch(), AfterSeq: after})
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	msgs, err := w.Next(ctx)
	require.Equal(t, taskhub.Unavailable, codeOf(err), "a node behind the client's seq answered %v", msgs)
	require.ErrorContains(t, err, "not caught up")
	w.Close()
	require.Eventually(t, func() bool {
		err := lagging.Ready()
		return err != nil && strings.Contains(err.Error(), "behind the event log")
	}, 15*time.Second, 100*time.Millisecond, "a node whose feed lags says so in its readiness")
	require.NoError(t, a.Ready())

	gate.open()
	require.Eventually(t, func() bool { return lagging.Ready() == nil }, 5*time.Second, 100*time.Millisecond, "and is ready once it caught up")
	resumed := watch(t, lagging, "alice", lagging.Epoch(), after)
	snap, _ := resumed.wait(0)
	require.True(t, snap.Recovered)
	require.Equal(t, after, snap.Seq)
	three := create(t, a, "alice", "three", "paint")
	_, events := resumed.wait(1)
	require.Equal(t, three.Id, events[0].Task.Id, "what comes next, and nothing before it")
}

// readsOfReplays counts how a replay reads the log: the next event on an owner's subjects
// (which JetStream finds by reading every event in between), or an event by its sequence.
type readsOfReplays struct {
	actors.Log
	next, get atomic.Int64
}

func (r *readsOfReplays) Next(ctx context.Context, filter string, from uint64) (*eventlog.Entry, error) {
	r.next.Add(1)
	return r.Log.Next(ctx, filter, from)
}

func (r *readsOfReplays) Get(ctx context.Context, seq uint64) (*eventlog.Entry, error) {
	r.get.Add(1)
	return r.Log.Get(ctx, seq)
}

// TestHub_WatchReplaysByIndex: alice's tasks are created between bob's. A watch that resumes
// gets every event of hers after its seq, and reads each by its sequence from the feed's index,
// without asking the log to search bob's events for hers. After a restart the index starts
// afresh: a resume from before it searches the log as before, and gets the same events.
func TestHub_WatchReplaysByIndex(t *testing.T) {
	t.Parallel()
	r := &readsOfReplays{}
	opts := options{lease: 10 * time.Second, wrap: func(l actors.Log) actors.Log { r.Log = l; return r }}
	b := setup(t, opts)
	h := b.hub
	first := create(t, h, "alice", "first", "paint")
	for i := range 12 {
		create(t, h, "bob", fmt.Sprint("b", i), "paint")
		create(t, h, "alice", fmt.Sprint("a", i), "paint")
	}
	want := logEvents(t, b.log, "alice", first.Seq)
	require.Len(t, want, 12)

	resume := func() []*taskhubv1.TaskEvent {
		t.Helper()
		back := watch(t, b.hub, "alice", b.hub.Epoch(), first.Seq)
		snap, _ := back.wait(len(want))
		require.True(t, snap.Recovered)
		time.Sleep(50 * time.Millisecond) // a duplicate would arrive by now
		_, got := back.wait(0)
		back.stop()
		return got
	}
	r.next.Store(0)
	r.get.Store(0)
	require.Equal(t, keysOf(want), keysOf(resume()))
	require.Zero(t, r.next.Load(), "the replay searched the log")
	require.Equal(t, int64(len(want)), r.get.Load(), "one read an event")

	create(t, h, "bob", "last", "paint") // the restart's index starts after it
	b.close()
	b.open(t, opts)
	for i := range 3 { // after the restart, in its index
		create(t, b.hub, "bob", fmt.Sprint("b", i), "paint")
		create(t, b.hub, "alice", fmt.Sprint("after", i), "paint")
	}
	want = logEvents(t, b.log, "alice", first.Seq)
	require.Len(t, want, 15)
	r.next.Store(0)
	r.get.Store(0)
	require.Equal(t, keysOf(want), keysOf(resume()))
	require.NotZero(t, r.next.Load(), "events from before the restart are not in the index")
	// The search from before the index finds the first event after the restart; the two
	// after that are read by their sequence.
	require.Equal(t, int64(2), r.get.Load(), "events in the index are read by their sequence")
}

func TestHub_WatchResumeAcrossRestart(t *testing.T) {
	t.Parallel()

	t.Run("nothing missing or repeated", func(t *testing.T) {
		t.Parallel()
		opts := options{lease: 10 * time.Second}
		b := setup(t, opts)
		before := watch(t, b.hub, "alice", "", 0)
		t1 := create(t, b.hub, "alice", "one", "paint")
		t2 := create(t, b.hub, "alice", "two", "paint")
		c1 := claim(t, b.hub, "paint")
		require.Equal(t, t1.Id, c1.Task.Id)
		before.wait(3)
		report(t, b.hub, c1, 10)
		_, seen := before.wait(4)
		after, epoch := seen[3].Seq, b.hub.Epoch()

		b.close()
		select {
		case <-before.done:
		case <-time.After(5 * time.Second):
			t.Fatal("the watch did not end when the hub closed")
		}
		require.Equal(t, taskhub.Unavailable, codeOf(before.err), before.err)

		b.open(t, opts)
		require.Equal(t, epoch, b.hub.Epoch(), "the epoch must survive a restart")
		h, ctx := b.hub, t.Context()
		// The lease survived too.
		report(t, h, c1, 20)
		complete(t, h, c1)
		_, err := h.CancelTask(ctx, "alice", t2.Id)
		require.NoError(t, err)
		create(t, h, "alice", "three", "paint")

		want := logEvents(t, b.log, "alice", after)
		require.Len(t, want, 4)
		back := watch(t, h, "alice", epoch, after)
		snap, _ := back.wait(len(want))
		require.True(t, snap.Recovered)
		require.Equal(t, after, snap.Seq)
		time.Sleep(50 * time.Millisecond) // a duplicate would arrive by now
		_, resumed := back.wait(0)
		require.Equal(t, keysOf(want), keysOf(resumed))
		require.Equal(t, keysOf(logEvents(t, b.log, "alice", 0)), append(keysOf(seen), keysOf(resumed)...))
	})

	t.Run("a running task's lease keeps ticking", func(t *testing.T) {
		t.Parallel()
		opts := options{lease: 500 * time.Millisecond}
		b := setup(t, opts)
		task := create(t, b.hub, "alice", "x", "paint")
		c := claim(t, b.hub, "paint")
		b.close()
		b.open(t, opts)
		h, ctx := b.hub, t.Context()

		// Nobody touches the task: GetTask reads the log, not the task's actor.
		var got *taskhubv1.Task
		require.Eventually(t, func() bool {
			var err error
			got, err = h.GetTask(ctx, "alice", task.Id)
			require.NoError(t, err)
			return got.State != taskhubv1.TaskState_TASK_STATE_RUNNING
		}, 3*time.Second, 20*time.Millisecond, "the lease expired but the task is still running")
		require.Equal(t, taskhubv1.TaskState_TASK_STATE_QUEUED, got.State)
		require.Equal(t, uint32(2), got.Attempt)
		require.Contains(t, got.Message, "stopped reporting")
		e, err := b.log.Last(ctx, "alice", task.Id)
		require.NoError(t, err)
		require.Equal(t, taskhubv1.EventKind_EVENT_KIND_REQUEUED, e.Record.Event.Kind)

		_, err = h.ReportProgress(ctx, taskhub.Report{Lease: taskhub.Lease{TaskID: task.Id, Token: c.LeaseToken}, Progress: 50, Message: "late"})
		require.Equal(t, taskhub.FailedPrecondition, codeOf(err), err)
		again := claim(t, h, "paint")
		require.Equal(t, task.Id, again.Task.Id)
		require.Equal(t, uint32(2), again.Task.Attempt)
	})
}

func TestHub_WatchOwnerIsolation(t *testing.T) {
	t.Parallel()
	b := setup(t, options{lease: 10 * time.Second})
	h := b.hub
	alice := watch(t, h, "alice", "", 0)
	bob := watch(t, h, "bob", "", 0)
	alice.wait(0)
	bob.wait(0)

	a1 := create(t, h, "alice", "a1", "paint")
	b1 := create(t, h, "bob", "b1", "paint")
	a2 := create(t, h, "alice", "a2", "paint")
	b2 := create(t, h, "bob", "b2", "paint")
	c := claim(t, h, "paint")
	require.Equal(t, a1.Id, c.Task.Id)
	report(t, h, c, 40)

	bob.wait(2)
	alice.wait(4)
	time.Sleep(50 * time.Millisecond) // bob's events would have reached alice by now
	_, alices := alice.wait(0)
	_, bobs := bob.wait(0)
	require.Equal(t, keysOf(logEvents(t, b.log, "alice", 0)), keysOf(alices))
	require.Equal(t, keysOf(logEvents(t, b.log, "bob", 0)), keysOf(bobs))
	for _, e := range alices {
		require.Equal(t, "alice", e.Task.Owner)
	}
	for _, e := range bobs {
		require.Equal(t, "bob", e.Task.Owner)
	}

	snap, _ := watch(t, h, "bob", "", 0).wait(0)
	require.Equal(t, []string{b2.Id, b1.Id}, taskIDs(snap.Tasks))
	snap, _ = watch(t, h, "alice", "", 0).wait(0)
	require.Equal(t, []string{a2.Id, a1.Id}, taskIDs(snap.Tasks))

	// A replay reads only the owner's events too.
	resumed := watch(t, h, "bob", h.Epoch(), alices[0].Seq)
	snap, replayed := resumed.wait(2)
	require.True(t, snap.Recovered)
	require.Equal(t, keysOf(bobs), keysOf(replayed))
}

// TestHub_WatchWithoutAuth: the Hub's doc says callers pass "" as the owner when auth is off.
func TestHub_RejectsMalformedOwner(t *testing.T) {
	t.Parallel()
	b := setup(t, options{lease: 10 * time.Second})
	h, ctx := b.hub, t.Context()
	id := taskhub.NewTaskID(time.Now())
	// Owners become part of event log subjects: "" or "a.b" must never reach the log.
	for _, owner := range []string{"", "a.b", "*", ">"} {
		_, err := h.CreateTask(ctx, owner, taskhub.TaskSpec{Prompt: "x", Mode: "paint"})
		require.Equal(t, taskhub.Invalid, codeOf(err), "create as %q: %v", owner, err)
		_, err = h.GetTask(ctx, owner, id)
		require.Equal(t, taskhub.Invalid, codeOf(err), "get as %q: %v", owner, err)
		_, err = h.ListTasks(ctx, taskhub.ListQuery{Owner: owner, PageSize: 10})
		require.Equal(t, taskhub.Invalid, codeOf(err), "list as %q: %v", owner, err)
		_, err = h.CancelTask(ctx, owner, id)
		require.Equal(t, taskhub.Invalid, codeOf(err), "cancel as %q: %v", owner, err)
		_, err = h.Watch(ctx, taskhub.WatchQuery{Owner: owner, Epoch: "", AfterSeq: 0})
		require.Equal(t, taskhub.Invalid, codeOf(err), "watch as %q: %v", owner, err)
	}
	_, last, err := b.log.Bounds(ctx)
	require.NoError(t, err)
	require.Zero(t, last, "nothing was written")
}

func TestHub_WatchHeartbeat(t *testing.T) {
	t.Parallel()
	b := setup(t, options{lease: 10 * time.Second, heartbeat: 100 * time.Millisecond})
	h := b.hub
	// CreateTask returns once the event is durable, which may be before the hub has applied it;
	// a watcher that saw it makes sure the next snapshot is taken after it.
	first := watch(t, h, "alice", "", 0)
	first.wait(0)
	create(t, h, "alice", "before the watch", "paint")
	first.wait(1)

	w := watch(t, h, "alice", "", 0)
	snap, _ := w.wait(0)
	require.Equal(t, uint64(1), snap.Seq)

	// Idle: heartbeats carry the snapshot's seq.
	for _, seq := range w.waitBeats(2) {
		require.Equal(t, snap.Seq, seq)
	}

	// After an event they carry its seq, and another owner's events do not move it.
	create(t, h, "alice", "mine", "paint")
	_, events := w.wait(1)
	mine := events[0].Seq
	k := len(w.waitBeats(0)) // the beats from here on came after the event was taken
	create(t, h, "bob", "not mine", "paint")
	beats := w.waitBeats(k + 2)
	for _, seq := range beats[k:] {
		require.Equal(t, mine, seq, "beats after the event at %d: %v", mine, beats[k:])
	}
}

// waitBeats waits until the watcher has at least n heartbeats and returns them.
func (r *watcher) waitBeats(n int) []uint64 {
	r.t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for {
		r.mu.Lock()
		beats, err := slices.Clone(r.beats), r.err
		r.mu.Unlock()
		if len(beats) >= n {
			return beats
		}
		if err != nil || time.Now().After(deadline) {
			r.t.Fatalf("waiting for %d heartbeats, got %d: %v", n, len(beats), err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestWatch_CloseWhileNextWaits closes a watch from another goroutine while Next waits, as a
// stream's owner does when the client goes away. It runs alone (not in parallel) so that the
// race detector's report names it.
func TestWatch_CloseWhileNextWaits(t *testing.T) {
	b := setup(t, options{lease: 10 * time.Second})
	w, err := b.hub.Watch(t.Context(), taskhub.WatchQuery{Owner: "alice", Epoch: "", AfterSeq: 0})
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() {
		for {
			if _, err := w.Next(context.Background()); err != nil {
				done <- err
				return
			}
		}
	}()
	w.Close()
	select {
	case err := <-done:
		require.Equal(t, taskhub.Unavailable, codeOf(err), err)
	case <-time.After(5 * time.Second):
		t.Fatal("Next did not return after Close")
	}
}

// boundsPanics panics in Bounds while armed, which a subscriber calls when it resumes a watch.
type boundsPanics struct {
	actors.Log
	armed atomic.Bool
}

func (p *boundsPanics) Bounds(ctx context.Context) (uint64, uint64, error) {
	if p.armed.Load() {
		panic("injected: Bounds panics")
	}
	return p.Log.Bounds(ctx)
}

// TestWatch_SubscriberFailureEndsTheWatch: a subscriber that panics ends its watch with
// Unavailable, so the client resumes by seq, and the hub goes on serving other watches.
func TestWatch_SubscriberFailureEndsTheWatch(t *testing.T) {
	t.Parallel()
	p := &boundsPanics{}
	b := setup(t, options{lease: 10 * time.Second, wrap: func(l actors.Log) actors.Log { p.Log = l; return p }})
	h := b.hub
	first := watch(t, h, "alice", "", 0)
	first.wait(0) // subscribed: what follows comes as events
	create(t, h, "alice", "one", "paint")
	create(t, h, "alice", "two", "paint")
	_, seen := first.wait(2)

	p.armed.Store(true)
	w, err := h.Watch(t.Context(), taskhub.WatchQuery{Owner: "alice", Epoch: h.Epoch(), AfterSeq: seen[0].Seq}) // a resume reads the log's bounds
	require.NoError(t, err)
	defer w.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	_, err = w.Next(ctx)
	require.Equal(t, taskhub.Unavailable, codeOf(err), err)
	require.ErrorContains(t, err, "resume with the last seq")
	p.armed.Store(false)

	create(t, h, "alice", "three", "paint")
	_, seen = first.wait(3)
	require.Len(t, seen, 3, "the other watch goes on")
}

// TestWatch_NextEndsWithItsContext: a Next that waits returns once its context ends, woken by
// the hub's heartbeat loop within a tick.
func TestWatch_NextEndsWithItsContext(t *testing.T) {
	t.Parallel()
	// Heartbeats every 8s, ticks every second: only the tick's look at the context can end a
	// Next that waits, not a heartbeat message.
	b := setup(t, options{lease: 10 * time.Second, heartbeat: 8 * time.Second})
	w, err := b.hub.Watch(t.Context(), taskhub.WatchQuery{Owner: "alice", Epoch: "", AfterSeq: 0})
	require.NoError(t, err)
	defer w.Close()
	ctx, cancel := context.WithCancel(t.Context())
	msgs, err := w.Next(ctx)
	require.NoError(t, err)
	require.NotNil(t, msgs[0].GetSnapshot())
	done := make(chan error, 1)
	var got atomic.Int32
	go func() {
		for {
			msgs, err := w.Next(ctx)
			if err != nil {
				done <- err
				return
			}
			got.Add(int32(len(msgs)))
		}
	}()
	time.Sleep(20 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		require.ErrorIs(t, err, context.Canceled)
	case <-time.After(4 * time.Second):
		t.Fatal("Next did not return within a few ticks after its context ended")
	}
	require.Zero(t, got.Load(), "nothing but the context's end woke it")
}

func taskIDs(tasks []*taskhubv1.Task) []string {
	out := []string{}
	for _, task := range tasks {
		out = append(out, task.Id)
	}
	return out
}

func report(t *testing.T, h *actors.Hub, c *taskhub.Claim, p float64) {
	t.Helper()
	st, err := h.ReportProgress(t.Context(), taskhub.Report{Lease: taskhub.Lease{TaskID: c.Task.Id, Token: c.LeaseToken}, Progress: p, Message: fmt.Sprintf("at %v", p)})
	cancelled := st.CancelRequested
	require.NoError(t, err)
	require.False(t, cancelled)
}

func complete(t *testing.T, h *actors.Hub, c *taskhub.Claim) {
	t.Helper()
	done, err := h.CompleteTask(t.Context(), taskhub.Lease{TaskID: c.Task.Id, Token: c.LeaseToken}, "result of "+c.Task.Id)
	require.NoError(t, err)
	require.Equal(t, taskhubv1.TaskState_TASK_STATE_COMPLETED, done.State)
}

// valueCtx is a Context of a type that == can't compare: comparing two of them panics.
type valueCtx struct {
	context.Context
	tags map[string]string
}

// TestWatch_NextTakesAnyContext: Next tells contexts apart without comparing them, so a Context
// of a non-comparable type works like any other.
func TestWatch_NextTakesAnyContext(t *testing.T) {
	t.Parallel()
	b := setup(t, options{lease: 10 * time.Second})
	w, err := b.hub.Watch(t.Context(), taskhub.WatchQuery{Owner: "alice", Epoch: "", AfterSeq: 0})
	require.NoError(t, err)
	defer w.Close()
	msgs, err := w.Next(valueCtx{t.Context(), nil})
	require.NoError(t, err)
	require.NotNil(t, msgs[0].GetSnapshot())
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	for range 2 {
		_, err = w.Next(valueCtx{ctx, map[string]string{}})
		require.ErrorIs(t, err, context.Canceled)
	}
}

// TestHub_WatchSnapshotInParts: a snapshot too large for one message comes in parts at one
// seq, each of at most 48 KiB of tasks, all but the last marked more, together every active
// task newest first. The watch reads a part's tasks from the log only when its client has taken
// the part before (and the one task that did not fit in it): a client that takes nothing holds
// one part of the server's memory, not the whole. Events follow the last part, even when the
// parts outnumber the watch's buffer.
func TestHub_WatchSnapshotInParts(t *testing.T) {
	t.Parallel()
	r := &readsLog{}
	b := setup(t, options{lease: 10 * time.Second, outbox: 1, wrap: func(l actors.Log) actors.Log { r.Log = l; return r }})
	prompt := strings.Repeat("p", taskhub.MaxPromptBytes)
	var want []string
	for range 150 { // 2.4 MiB of prompts
		want = append(want, create(t, b.hub, "alice", prompt, "paint").Id)
	}
	slices.Reverse(want)
	_, _, err := b.hub.Position(t.Context()) // the hub has applied every create
	require.NoError(t, err)
	reads := func() int {
		r.mu.Lock()
		defer r.mu.Unlock()
		return len(r.owners)
	}
	before := reads()
	w, err := b.hub.Watch(t.Context(), taskhub.WatchQuery{Owner: "alice", Epoch: "", AfterSeq: 0})
	require.NoError(t, err)
	defer w.Close()

	var got []string
	var seq uint64
	parts, whole := 0, false
	for !whole {
		msgs, err := w.Next(t.Context())
		require.NoError(t, err)
		require.Len(t, msgs, 1, "one part at a time")
		for _, m := range msgs {
			require.False(t, whole, "a message after the last part before any event: %v", m)
			s := m.GetSnapshot()
			require.NotNil(t, s, "a snapshot part, not %v", m)
			require.False(t, s.Recovered)
			if parts > 0 {
				require.Equal(t, seq, s.Seq, "every part at the snapshot's seq")
			}
			seq = s.Seq
			parts++
			size, last := 0, 0
			for _, task := range s.Tasks {
				last = proto.Size(task)
				size += last
				got = append(got, task.Id)
			}
			require.NotEmpty(t, s.Tasks)
			require.LessOrEqual(t, size, 48<<10, "a part of %d tasks", len(s.Tasks))
			if s.More {
				require.Greater(t, size+last, 48<<10, "a part of %d tasks, where one more fit", len(s.Tasks))
			}
			whole = !s.More
		}
		ahead := 0
		if !whole {
			ahead = 1 // the task that did not fit
		}
		require.Equal(t, len(got)+ahead, reads()-before, "the tasks the watch read from the log, with %d sent", len(got))
	}
	require.Equal(t, 75, parts, "2.4 MiB of tasks in parts of 2 tasks of 16.5 KiB")
	require.Equal(t, want, got)

	task := create(t, b.hub, "alice", "after", "paint")
	msgs, err := w.Next(t.Context())
	require.NoError(t, err)
	require.Len(t, msgs, 1)
	require.Equal(t, task.Id, msgs[0].GetEvent().GetTask().GetId())
	require.Greater(t, msgs[0].GetEvent().Seq, seq)
}

// boundsHook runs hook, once, when Bounds is called while armed.
type boundsHook struct {
	actors.Log
	armed atomic.Bool
	hook  func() (first uint64)
}

func (p *boundsHook) Bounds(ctx context.Context) (uint64, uint64, error) {
	first, last, err := p.Log.Bounds(ctx)
	if p.armed.CompareAndSwap(true, false) {
		first = p.hook()
	}
	return first, last, err
}

// TestHub_WatchStartOverflowReplays: events that come while a watch starts are held until its
// first messages are queued; when more come than its buffer holds, the watch replays them from
// the log once its client has taken the snapshot, rather than falling silent.
func TestHub_WatchStartOverflowReplays(t *testing.T) {
	t.Parallel()
	p := &boundsHook{}
	b := setup(t, options{lease: 10 * time.Second, outbox: 1, wrap: func(l actors.Log) actors.Log { p.Log = l; return p }})
	h := b.hub
	var before []string
	for range 3 {
		before = append(before, create(t, h, "alice", "before", "paint").Id)
	}
	_, pos, err := h.Position(t.Context())
	require.NoError(t, err)

	// The watch resumes from an early seq, so its start reads the log's bounds after it has
	// subscribed. There, three tasks are created and reach the watch while it starts, and the
	// bounds say that history is gone, so it starts afresh with a snapshot.
	var during []string
	p.hook = func() uint64 {
		for range 3 {
			during = append(during, create(t, h, "alice", "during", "paint").Id)
		}
		_, _, err := h.Position(t.Context()) // applied: offered to the watch
		require.NoError(t, err)
		return pos + 100
	}
	p.armed.Store(true)
	r := watch(t, h, "alice", h.Epoch(), 1)
	defer r.w.Close()
	snap, events := r.wait(3)
	require.False(t, snap.Recovered)
	require.ElementsMatch(t, before, taskIDs(snap.Tasks))
	var created []string
	for _, e := range events {
		if e.Kind == taskhubv1.EventKind_EVENT_KIND_CREATED {
			created = append(created, e.Task.Id)
		}
	}
	require.Equal(t, during, created)
}

// deliverGoroutines counts the goroutines of this process that run a watch's own delivery. (A
// hub's writers run on its workerDispatcher's goroutines, kept a while for more.)
func deliverGoroutines(t *testing.T) int {
	var buf strings.Builder
	require.NoError(t, pprof.Lookup("goroutine").WriteTo(&buf, 2))
	return strings.Count(buf.String(), "actors.(*Watch).deliver(")
}

// TestWatch_DeliverHoldsNoGoroutineWhileIdle: a watch that delivers by itself runs a goroutine
// of its own only while it has something to hand over; its messages come in order, once each,
// and its end (ctx over, or the watch closed) reaches done once.
func TestWatch_DeliverHoldsNoGoroutineWhileIdle(t *testing.T) {
	b := setup(t, options{lease: 10 * time.Second, heartbeat: 8 * time.Second})
	h := b.hub
	const watches = 50
	type got struct {
		mu    sync.Mutex
		snaps int
		seqs  []uint64
		ends  []error
	}
	gots := make([]*got, watches)
	cancels := make([]context.CancelFunc, watches)
	ws := make([]taskhub.Watch, watches)
	for i := range watches {
		g := &got{}
		gots[i] = g
		w, err := h.Watch(t.Context(), taskhub.WatchQuery{Owner: "alice"})
		require.NoError(t, err)
		ws[i] = w
		ctx, cancel := context.WithCancel(t.Context())
		cancels[i] = cancel
		w.Deliver(ctx, taskhub.Sink{Send: func(msgs []*taskhub.Message) (int, bool, error) {
			g.mu.Lock()
			defer g.mu.Unlock()
			for _, m := range msgs {
				if m.GetSnapshot() != nil {
					g.snaps++
				}
				if e := m.GetEvent(); e != nil {
					g.seqs = append(g.seqs, e.Seq)
				}
			}
			return len(msgs), false, nil
		}, Done: func(err error) {
			g.mu.Lock()
			defer g.mu.Unlock()
			g.ends = append(g.ends, err)
		}})
	}
	// Until its snapshot is sent, a task created may be in the snapshot rather than an event.
	require.Eventually(t, func() bool {
		for _, g := range gots {
			g.mu.Lock()
			n := g.snaps
			g.mu.Unlock()
			if n == 0 {
				return false
			}
		}
		return true
	}, 10*time.Second, 5*time.Millisecond)
	for i := range 5 {
		create(t, h, "alice", fmt.Sprint("task ", i), "paint")
	}
	require.Eventually(t, func() bool {
		for _, g := range gots {
			g.mu.Lock()
			n := len(g.seqs)
			g.mu.Unlock()
			if n < 5 {
				return false
			}
		}
		return true
	}, 10*time.Second, 5*time.Millisecond)
	require.Eventually(t, func() bool { return deliverGoroutines(t) == 0 }, 5*time.Second, 5*time.Millisecond,
		"idle delivering watches hold no goroutine")
	for i, g := range gots {
		g.mu.Lock()
		require.Equal(t, 1, g.snaps, "watch %d", i)
		require.Len(t, g.seqs, 5, "watch %d", i)
		require.True(t, slices.IsSorted(g.seqs), "watch %d: %v", i, g.seqs)
		require.Equal(t, gots[0].seqs, g.seqs)
		require.Empty(t, g.ends)
		g.mu.Unlock()
	}

	// Its end: the context's (seen within a tick of the heartbeat loop), or Close.
	cancels[0]()
	ws[1].Close()
	require.Eventually(t, func() bool {
		for _, g := range gots[:2] {
			g.mu.Lock()
			n := len(g.ends)
			g.mu.Unlock()
			if n == 0 {
				return false
			}
		}
		return true
	}, 5*time.Second, 5*time.Millisecond)
	time.Sleep(50 * time.Millisecond) // a second call of done would come now
	require.Len(t, gots[0].ends, 1)
	require.ErrorIs(t, gots[0].ends[0], context.Canceled)
	require.Len(t, gots[1].ends, 1)
	require.Equal(t, taskhub.Unavailable, codeOf(gots[1].ends[0]), gots[1].ends[0])
	for _, w := range ws {
		w.Close()
	}
}

// TestWatch_DeliverPanicEndsTheWatch: a panic while a watch delivers by itself (no handler's
// recovery is around it) ends that watch with Internal; the hub serves the others. The snapshot
// is sent by the watch's own goroutine, a later event by the hub's writer: both recover.
func TestWatch_DeliverPanicEndsTheWatch(t *testing.T) {
	t.Parallel()
	for _, on := range []string{"snapshot", "event"} {
		t.Run("on the "+on, func(t *testing.T) {
			t.Parallel()
			b := setup(t, options{lease: 10 * time.Second})
			h := b.hub
			other := watch(t, h, "alice", "", 0)
			w, err := h.Watch(t.Context(), taskhub.WatchQuery{Owner: "alice"})
			require.NoError(t, err)
			ended := make(chan error, 2)
			sent := make(chan struct{}, 1)
			w.Deliver(t.Context(), taskhub.Sink{Send: func(msgs []*taskhub.Message) (int, bool, error) {
				if (on == "snapshot") == (msgs[0].GetSnapshot() != nil) {
					panic("injected: send panics")
				}
				sent <- struct{}{}
				return len(msgs), false, nil
			}, Done: func(err error) { ended <- err }})
			if on == "event" {
				select {
				case <-sent:
				case <-time.After(5 * time.Second):
					t.Fatal("no snapshot")
				}
				create(t, h, "alice", "zero", "paint")
			}
			select {
			case err := <-ended:
				require.Equal(t, taskhub.Internal, codeOf(err), err)
			case <-time.After(5 * time.Second):
				t.Fatal("the watch did not end")
			}
			create(t, h, "alice", "one", "paint")
			want := 1 // events the other watch gets: the tasks created
			if on == "event" {
				want = 2
			}
			other.wait(want)
			require.Empty(t, ended, "done is called once")
		})
	}
}

// TestHub_WritesWaitForALaggingFeed: a node whose feed falls WriteAhead events behind its own
// writes makes the next write wait for it; a write whose deadline comes first fails and changes
// nothing, and one that waits goes through once the feed catches up.
func TestHub_WritesWaitForALaggingFeed(t *testing.T) {
	t.Parallel()
	b := setup(t, options{lease: 10 * time.Second})
	gate := &followGate{Log: b.log}
	lagging, err := actors.Open(t.Context(), actors.Config{Log: gate, Shared: true, Logger: quiet(),
		Options: actors.Options{LeaseTimeout: 10 * time.Second, WriteAhead: 5}})
	require.NoError(t, err)
	t.Cleanup(func() { lagging.Close() })

	create(t, b.hub, "alice", "one", "paint")
	c := claim(t, b.hub, "paint")
	_, last, err := b.log.Bounds(t.Context())
	require.NoError(t, err)
	gate.shut(last + 1) // the lagging node's feed applies nothing from here on
	require.Eventually(t, func() bool { return lagging.Ready() == nil }, 5*time.Second, 10*time.Millisecond)

	for p := range 6 { // WriteAhead, and the write that reaches it
		report(t, lagging, c, float64(p))
	}
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	_, err = lagging.ReportProgress(ctx, taskhub.Report{Lease: taskhub.Lease{TaskID: c.Task.Id, Token: c.LeaseToken}, Progress: 50})
	require.Equal(t, taskhub.Unavailable, codeOf(err), "a write past the write-ahead: %v", err)
	require.ErrorContains(t, err, "nothing was changed")
	task, err := b.hub.GetTask(t.Context(), "alice", c.Task.Id)
	require.NoError(t, err)
	require.Equal(t, 5.0, task.Progress, "the refused write changed nothing")

	// A batch waits once, not once per report.
	ctx, cancel = context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	paced := lagging.Stats().Paced
	lease := taskhub.Lease{TaskID: c.Task.Id, Token: c.LeaseToken}
	results, err := lagging.BatchReportProgress(ctx, []taskhub.Report{{Lease: lease, Progress: 51}, {Lease: lease, Progress: 52}, {Lease: lease, Progress: 53}})
	require.NoError(t, err)
	require.Equal(t, paced+1, lagging.Stats().Paced, "one wait for the batch")
	for i, r := range results {
		require.Equal(t, taskhub.Unavailable, codeOf(r.Err), "report %d: %v", i, r.Err)
	}
	task, err = b.hub.GetTask(t.Context(), "alice", c.Task.Id)
	require.NoError(t, err)
	require.Equal(t, 5.0, task.Progress, "the refused batch changed nothing")

	done := make(chan error, 1)
	go func() {
		_, err := lagging.ReportProgress(t.Context(), taskhub.Report{Lease: taskhub.Lease{TaskID: c.Task.Id, Token: c.LeaseToken}, Progress: 60})
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("the write did not wait for the feed: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	gate.open()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(5 * time.Second):
		t.Fatal("the write did not go through once the feed caught up")
	}
	task, err = b.hub.GetTask(t.Context(), "alice", c.Task.Id)
	require.NoError(t, err)
	require.Equal(t, 60.0, task.Progress)
	require.GreaterOrEqual(t, lagging.Stats().Paced, uint64(3))

	// Closing the hub ends a waiting write at once, not after its wait.
	_, last, err = b.log.Bounds(t.Context())
	require.NoError(t, err)
	gate.shut(last + 1)
	for p := range 6 {
		report(t, lagging, c, float64(61+p))
	}
	go func() {
		_, err := lagging.ReportProgress(t.Context(), taskhub.Report{Lease: taskhub.Lease{TaskID: c.Task.Id, Token: c.LeaseToken}, Progress: 70})
		done <- err
	}()
	time.Sleep(100 * time.Millisecond)
	closing := time.Now()
	require.NoError(t, lagging.Close())
	select {
	case err := <-done:
		require.Equal(t, taskhub.Unavailable, codeOf(err), "%v", err)
		require.Less(t, time.Since(closing), 2*time.Second)
	case <-time.After(4 * time.Second):
		t.Fatal("the waiting write outlived the hub's Close")
	}
}
