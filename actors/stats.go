package actors

import (
	"sync/atomic"
	"time"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"
)

// Stats is what the hub has counted, for metrics. The counters only grow, from the hub's
// start; the rest is the state now.
type Stats struct {
	// Appended is the events this node's task actors stored, by kind.
	Appended map[taskhubv1.EventKind]uint64
	// LeaseExpiries is the leases that ran out (each requeued or failed its task).
	LeaseExpiries uint64
	// WatchMessages is the messages handed to watch streams: events, snapshot parts,
	// heartbeats.
	WatchMessages uint64
	// Coalesced is the progress events a watch's queue replaced with a later one of their task
	// before the stream took them.
	Coalesced uint64
	// Paced is the writes that waited for this node's feed to catch up with its writes.
	Paced uint64
	// ReadsByID is the reads of a task by its id alone (see Hub.byID), and ReadsByIDRefused
	// the calls refused because those reads were at their rate.
	ReadsByID, ReadsByIDRefused uint64
	// WatchSendsAtOnce is the batches of messages the watches that deliver by themselves
	// (Watch.Deliver) handed to their connections that the connection took at once, and
	// WatchSendsWaited those whose rest a goroutine of the watch's own wrote (Sink.Flush).
	WatchSendsAtOnce, WatchSendsWaited uint64
	// Replayed is the events read back from the log for watches that resumed or fell behind.
	Replayed uint64
	// OpenWatches is the watch streams open now.
	OpenWatches int
	// Active is the queued and running tasks now, by mode and state.
	Active map[ModeState]int
	// OldestQueued is, per mode with queued tasks, when its longest-waiting one was queued
	// (created, or last requeued).
	OldestQueued map[string]time.Time
	// AppendSeconds is how long this node's appends took (the event log's round trip).
	AppendSeconds Durations
	// Webhook deliveries this node made, by result: "delivered" (a 2xx answer), "failed" (to
	// be retried), "gave_up" (the last failure of a task whose deliveries stopped).
	Webhooks map[string]uint64
	// WebhooksFailing is the tasks whose next webhook delivery is failing now.
	WebhooksFailing int
}

// ModeState is a mode and a state.
type ModeState struct {
	Mode  string
	State taskhubv1.TaskState
}

// counters are the hub's counts, added to as things happen: an atomic add each.
type counters struct {
	appended                          [16]atomic.Uint64 // by EventKind, which has fewer values
	expiries, paced                   atomic.Uint64
	readsByID, readsByIDRefused       atomic.Uint64
	watchMessages, coalesced, replays atomic.Uint64
	sendsAtOnce, sendsWaited          atomic.Uint64
	appendTime                        durations
}

// Durations is a histogram of durations: the count in each bucket of appendBuckets (the last
// bucket unbounded), their number and their sum.
type Durations struct {
	Buckets []float64 // upper bounds, seconds
	Counts  []uint64  // cumulative, per bucket
	Count   uint64
	Sum     float64 // seconds
}

// appendBuckets are the upper bounds of the append histogram, in seconds.
var appendBuckets = []float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5}

// durations counts durations into appendBuckets without a lock.
type durations struct {
	counts [16]atomic.Uint64 // per bucket, not cumulative; the last: above every bound
	sumNS  atomic.Uint64
}

func (d *durations) observe(t time.Duration) {
	s := t.Seconds()
	i := 0
	for i < len(appendBuckets) && s > appendBuckets[i] {
		i++
	}
	d.counts[i].Add(1)
	d.sumNS.Add(uint64(t.Nanoseconds()))
}

func (d *durations) read() Durations {
	out := Durations{Buckets: appendBuckets, Counts: make([]uint64, len(appendBuckets))}
	for i := range len(appendBuckets) + 1 {
		out.Count += d.counts[i].Load()
		if i < len(appendBuckets) {
			out.Counts[i] = out.Count
		}
	}
	out.Sum = float64(d.sumNS.Load()) / 1e9
	return out
}

// Stats returns what the hub has counted.
func (h *Hub) Stats() Stats {
	c := &h.counts
	s := Stats{
		Appended:         map[taskhubv1.EventKind]uint64{},
		LeaseExpiries:    c.expiries.Load(),
		WatchMessages:    c.watchMessages.Load(),
		Coalesced:        c.coalesced.Load(),
		Replayed:         c.replays.Load(),
		WatchSendsAtOnce: c.sendsAtOnce.Load(),
		WatchSendsWaited: c.sendsWaited.Load(),
		Paced:            c.paced.Load(),
		ReadsByID:        c.readsByID.Load(),
		ReadsByIDRefused: c.readsByIDRefused.Load(),
		OpenWatches:      h.watches.open(),
		Active:           map[ModeState]int{},
		OldestQueued:     map[string]time.Time{},
		AppendSeconds:    c.appendTime.read(),
	}
	for k := range c.appended {
		if n := c.appended[k].Load(); n > 0 {
			s.Appended[taskhubv1.EventKind(k)] = n
		}
	}
	if k := h.hooks; k != nil {
		s.Webhooks = map[string]uint64{"delivered": k.delivered.Load(), "failed": k.failed.Load(), "gave_up": k.gaveUp.Load()}
		s.WebhooksFailing = int(k.failing.Load())
	}
	for _, t := range h.feed.activeTasks() {
		s.Active[ModeState{Mode: t.Mode, State: t.State}]++
		if t.State == taskhubv1.TaskState_TASK_STATE_QUEUED {
			at := t.GetUpdatedAt().AsTime()
			if old, ok := s.OldestQueued[t.Mode]; !ok || at.Before(old) {
				s.OldestQueued[t.Mode] = at
			}
		}
	}
	return s
}
