package eventlog

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Probe subjects: a write to each stream, once per probe interval, tells whether its store still
// takes writes. A store that failed a write (out of file descriptors, a full disk, an I/O error)
// refuses every write after it, so reads alone would not tell.
const (
	probeEvents = "probe.tasks"
	probeQueue  = "probe.queue" // .<node>: the queue keeps one message per subject, and each node probes
	probeMeta   = "taskhub.probe"
	probeKey    = "probe" // in the key-value buckets, whose own keys are hex SHA-256 sums
)

// health is what the last probe found.
type health struct {
	mu          sync.Mutex
	err         error     // why writes fail; nil while they work
	since       time.Time // when they started failing
	failures    uint64    // writes that failed so far: a probe that began before one cannot clear it
	restarts    int       // embedded server restarts since they started failing
	lastRestart time.Time
}

// ErrNotReady wraps what Ready returns while writes fail.
var ErrNotReady = errors.New("eventlog: writes are failing")

// Ready returns nil while the event log takes writes: the last probe of every stream succeeded
// (probes run every ProbeInterval, and at once after a write fails). Otherwise it says since
// when and why writes fail; the error wraps ErrNotReady.
func (l *Log) Ready() error {
	l.health.mu.Lock()
	defer l.health.mu.Unlock()
	if l.health.err == nil {
		return nil
	}
	return fmt.Errorf("%w since %s: %w", ErrNotReady, l.health.since.Format(time.RFC3339), l.health.err)
}

// FailingFor is how long writes have been failing; 0 while they work.
func (l *Log) FailingFor() time.Duration {
	l.health.mu.Lock()
	defer l.health.mu.Unlock()
	if l.health.err == nil {
		return 0
	}
	return time.Since(l.health.since)
}

// Recovered receives a value after writes work again following a failure. A hub uses it to redo
// what may have been lost meanwhile (queueing tasks whose queue write failed). Buffered: a
// recovery nobody took yet is not signalled twice.
func (l *Log) Recovered() <-chan struct{} { return l.recovered }

// writable refuses a write while the probes say writes fail: it would wait for an answer that a
// failed store does not give (JetStream drops a write its store refuses, so the writer only
// times out, not knowing whether it was stored). Refused here, it is certainly not stored.
//
// A replicated log is not held back so: there a write fails while its stream elects a leader,
// which takes seconds, and each write should go through as soon as its stream has one.
func (l *Log) writable(op string) error {
	if l.cfg.Replicas > 1 {
		return nil
	}
	if err := l.Ready(); err != nil {
		return l.unavailable(op, err)
	}
	return nil
}

// writeFailed is called by a write that failed for a reason other than the caller's: readiness
// is red from now until a probe of every stream succeeds, and that probe runs at once.
func (l *Log) writeFailed(err error) {
	h := &l.health
	h.mu.Lock()
	h.failures++
	first := h.err == nil
	if first {
		h.err, h.since = err, time.Now()
	}
	h.mu.Unlock()
	if first {
		l.logger.Error("event log writes fail; readiness is red until they work again", "err", err)
	}
	select {
	case l.kick <- struct{}{}:
	default:
	}
}

// watch probes the streams every ProbeInterval until the log closes. While probes fail it
// restarts the embedded server (after RestartAfter, then backing off up to a minute between
// restarts) unless it is a node of a cluster; an external server is left to reconnect by itself.
func (l *Log) watch() {
	defer l.wg.Done()
	tick := time.NewTicker(l.cfg.ProbeInterval)
	defer tick.Stop()
	for {
		select {
		case <-l.life.Done():
			return
		case <-tick.C:
		case <-l.kick:
		}
		l.health.mu.Lock()
		failures := l.health.failures
		l.health.mu.Unlock()
		err := l.probe(l.life)
		if l.life.Err() != nil {
			return // a probe cut short by Close says nothing of the store
		}
		l.settle(err, failures)
	}
}

// probe writes to every stream, giving up when ctx ends.
func (l *Log) probe(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, min(l.cfg.Timeout, 5*time.Second))
	defer cancel()
	if _, err := l.js.Publish(ctx, probeMeta, nil); err != nil {
		return fmt.Errorf("stream %s: %w", MetaStream, err)
	}
	for _, kv := range []jetstream.KeyValue{l.sessions, l.idempotency} {
		if _, err := kv.Put(ctx, probeKey, nil); err != nil {
			return fmt.Errorf("bucket %s: %w", kv.Bucket(), err)
		}
	}
	for _, p := range []struct {
		stream  jetstream.Stream
		subject string
	}{{l.events, probeEvents}, {l.queue, probeQueue + "." + l.node}} {
		// Purge first: the queue keeps one message per subject, and a probe must write.
		if err := p.stream.Purge(ctx, jetstream.WithPurgeSubject(p.subject)); err != nil {
			return fmt.Errorf("stream %s: %w", p.stream.CachedInfo().Config.Name, err)
		}
		if _, err := l.js.Publish(ctx, p.subject, nil); err != nil {
			return fmt.Errorf("stream %s: %w", p.stream.CachedInfo().Config.Name, err)
		}
	}
	return nil
}

// settle records the outcome of a probe that began when failures writes had failed, and acts on
// it.
func (l *Log) settle(err error, failures uint64) {
	h := &l.health
	h.mu.Lock()
	was := h.err
	now := time.Now()
	switch {
	case err == nil && h.failures != failures:
		// A write failed while the probe ran: its success says nothing about that failure, and
		// writeFailed has asked for another probe.
		h.mu.Unlock()
		return
	case err == nil:
		h.err, h.restarts = nil, 0
	case was == nil:
		h.err, h.since = err, now
	default:
		h.err = err
	}
	// A node of a cluster is not restarted: its probes also fail while a stream elects a
	// leader, and a restart would cost the others another election.
	restart := err != nil && l.emb != nil && l.cfg.Replicas == 1 && now.Sub(h.since) >= l.cfg.RestartAfter &&
		now.Sub(h.lastRestart) >= min(l.cfg.RestartAfter<<min(h.restarts, 6), time.Minute)
	if restart {
		h.restarts++
		h.lastRestart = now
	}
	h.mu.Unlock()

	switch {
	case err == nil && was != nil:
		l.logger.Info("event log writes work again")
		select {
		case l.recovered <- struct{}{}:
		default:
		}
	case err != nil && was == nil:
		l.logger.Error("event log writes fail; readiness is red until they work again", "err", err)
	}
	if restart {
		l.logger.Warn("restarting the embedded NATS server to reopen its stores", "failing_for", now.Sub(h.since).Round(time.Millisecond))
		if err := l.emb.restart(); err != nil {
			l.logger.Error("cannot restart the embedded NATS server; will try again", "err", err)
		}
	}
}
