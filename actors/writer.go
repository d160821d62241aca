package actors

import (
	"runtime"
	"sync"
	"sync/atomic"
)

// writer delivers the watches that hand their messages to a sink (Watch.Deliver): an event
// offered to many watches makes each of them ready, and one goroutine sends to them one after
// the other, where each used to start a goroutine of its own. A delivery that would wait (its
// client is slow, or it needs the log: a snapshot, a replay) or ends the watch is handed to a
// goroutine of the watch's own, and the writer goes on to the next watch (see Watch.pass).
//
// Two things make this cheaper than a goroutine per ready watch. Starting and scheduling 5000
// goroutines for an event sent to 5000 watchers was about a sixth of the server's CPU, and
// every other goroutine on the event's path (the next report's call, its actor, the log) queued
// behind them. And while a writer is busy its watches gather events: a watch is ready once,
// however many events it got meanwhile, and sends them with one write.
//
// The writer runs only while watches are ready, on a goroutine of the hub's workerDispatcher,
// which keeps its goroutines (and their grown stacks) for a while between bursts, as it does
// for the actors: a goroutine started for each burst had a small stack that grew, and was
// copied, in the first event's JSON every time (2–4 % of the CPU of a node whose watchers are
// on HTTP/1.1 connections of their own).
type writer struct {
	mu       sync.Mutex
	ready    []*Watch     // in the order they became ready
	spare    []*Watch     // the slice the goroutine walks, kept for reuse
	running  bool         // run runs; it takes ready before it returns
	schedule func(func()) // runs run on a goroutine: the hub's workerDispatcher's Schedule
}

// yieldEvery is how many watches a writer passes over before it lets the goroutines waiting to
// run go first: about 6 ms of writes. Never yielding made each delivery cost 24 % more CPU at
// 2000 watchers on HTTP/1.1, all of it in the write(2) calls. Yielding every 64 watches gave
// the deliveries of a node at its limit too small a share against the reports it took: with
// 5000 users and two watchers each, 40–60 % of progress events were coalesced away, none at 512
// or 4096; and 4096 cost more a delivery at 5000 watchers. docs/benchmarks.md has the runs.
const yieldEvery = 512

// writers is a hub's set of writers, one per processor the runtime uses, so that deliveries
// still spread over the cores; a watch is given one when it starts delivering.
type writers struct {
	all  []*writer
	next atomic.Uint32
}

// newWriters makes the writers, which run on goroutines that schedule gives them.
func newWriters(schedule func(func())) *writers {
	ws := &writers{all: make([]*writer, max(runtime.GOMAXPROCS(0), 1))}
	for i := range ws.all {
		ws.all[i] = &writer{schedule: schedule}
	}
	return ws
}

// pick returns the writer for a watch that starts delivering, in turn.
func (ws *writers) pick() *writer {
	return ws.all[ws.next.Add(1)%uint32(len(ws.all))]
}

// add makes w ready: the writer passes over it (Watch.pass) once, after the watches ready
// before it. Whoever made w deliverRunning calls it: the outbox's wake (at once, or when its
// hold ends) by way of Watch.kick, under its lock; the writer's pass of a watch woken meanwhile.
func (wr *writer) add(w *Watch) {
	wr.mu.Lock()
	wr.ready = append(wr.ready, w)
	start := !wr.running
	wr.running = true
	wr.mu.Unlock()
	if start {
		wr.schedule(wr.run)
	}
}

// run passes over the ready watches until none is left.
func (wr *writer) run() {
	for {
		wr.mu.Lock()
		batch := wr.ready
		if len(batch) == 0 {
			wr.running = false
			wr.mu.Unlock()
			return
		}
		wr.ready = wr.spare[:0]
		wr.mu.Unlock()
		for i, w := range batch {
			w.pass()
			if i%yieldEvery == yieldEvery-1 {
				runtime.Gosched()
			}
		}
		clear(batch)
		wr.spare = batch
	}
}
