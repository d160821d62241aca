package eventlog

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/taskhub/taskhub"
)

// The live index lets a process start in time proportional to the tasks that still matter, not
// to every task ever: a marker per task, in the meta stream, from just before its create is
// stored until the task is settled (its history compacted, or kept whole when compaction is
// off; see Retire). Follow reads the markers, each marked task's last event, and then only the
// events stored after it began.
//
// A marker is written before the create, so no stored task lacks one; a marker whose create
// never came (the process died, or the create failed) is removed by the next Follow that finds
// it old enough. A finished task whose marker outlived it (the process died before Retire) is
// settled again by the next process: settling twice changes nothing.
const (
	livePrefix = "taskhub.live."
	// liveFilled marks the index as complete: a log written before the index existed is read
	// whole once, by Follow, to fill it.
	liveFilled = "taskhub.livefilled"
	// orphanAge is how old a marker without a task must be before Follow removes it: a create
	// under way writes its marker first.
	orphanAge = time.Minute
	// lastReads bounds the reads of last events a Follow makes at once.
	lastReads = 16
)

func liveSubject(owner, id string) string { return livePrefix + owner + "." + id }

// markLive writes the live marker of a task about to be created.
func (l *Log) markLive(ctx context.Context, owner, id string) error {
	if _, _, err := l.publish(ctx, &nats.Msg{Subject: liveSubject(owner, id)}); err != nil {
		_ = l.writeErr(ctx, "mark live", err) // a failed write, as any other
		return l.unavailable("append", err)   // the create itself was not sent
	}
	return nil
}

// Retire removes a finished task from the live index: the next start does not read it. The
// compactor calls it (through Compact when it compacts) once nothing remains to be done with
// the task's history. A task not in the index is no error.
func (l *Log) Retire(ctx context.Context, owner, id string) error {
	if err := l.writable("retire"); err != nil {
		return err
	}
	if err := l.meta.Purge(ctx, jetstream.WithPurgeSubject(liveSubject(owner, id))); err != nil {
		return l.writeErr(ctx, "retire", err)
	}
	return nil
}

type marker struct{ owner, id string }

// liveTasks reads the live index.
func (l *Log) liveTasks(ctx context.Context) ([]marker, error) {
	// Attempts of 2 s, then 4, 8...: on a cluster that is forming or electing, a request may go
	// unanswered, and waiting for it until ctx ends (a whole start's time) would be waiting for
	// nothing. A large index that takes longer to read gets longer attempts.
	var info *jetstream.StreamInfo
	var err error
	for wait := 2 * time.Second; ; wait *= 2 {
		attempt, cancel := context.WithTimeout(ctx, wait)
		info, err = l.meta.Info(attempt, jetstream.WithSubjectFilter(livePrefix+">"))
		cancel()
		if err == nil || ctx.Err() != nil || !errors.Is(err, context.DeadlineExceeded) {
			break
		}
	}
	if err != nil {
		return nil, l.unavailable("live index", err)
	}
	out := make([]marker, 0, len(info.State.Subjects))
	for subj := range info.State.Subjects {
		if owner, id, ok := strings.Cut(strings.TrimPrefix(subj, livePrefix), "."); ok {
			out = append(out, marker{owner: owner, id: id})
		}
	}
	return out, nil
}

// Live returns the ids of the tasks in the live index: those a start reads.
func (l *Log) Live(ctx context.Context) ([]string, error) {
	ms, err := l.liveTasks(ctx)
	if err != nil {
		return nil, err
	}
	ids := make([]string, len(ms))
	for i, m := range ms {
		ids[i] = m.id
	}
	return ids, nil
}

// orphan reports whether the marker of a task that is not stored is old enough to go.
func (l *Log) orphan(ctx context.Context, m marker) bool {
	msg, err := l.meta.GetLastMsgForSubject(ctx, liveSubject(m.owner, m.id))
	return err == nil && time.Since(msg.Time) > orphanAge
}

// Unsettled returns the last event of every task in the live index, in sequence order: the
// active tasks, and the finished ones not yet settled (see Retire). A marker whose task was
// never stored is left out, and removed once it is old enough.
func (l *Log) Unsettled(ctx context.Context) ([]*Entry, error) {
	markers, err := l.liveTasks(ctx)
	if err != nil {
		return nil, err
	}
	entries := make([]*Entry, len(markers))
	errs := make([]error, len(markers))
	sem := make(chan struct{}, lastReads)
	var wg sync.WaitGroup
	for i, m := range markers {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			entries[i], errs[i] = l.Last(ctx, m.owner, m.id)
		})
	}
	wg.Wait()
	var orphans []marker
	for i, err := range errs {
		switch {
		case errors.Is(err, ErrNotFound):
			if l.orphan(ctx, markers[i]) {
				orphans = append(orphans, markers[i])
			}
			entries[i] = nil
		case err != nil:
			return nil, err
		}
	}
	for _, m := range orphans {
		if err := l.Retire(ctx, m.owner, m.id); err != nil {
			l.logger.Warn("cannot remove a live marker whose task was never stored", "task", m.id, "err", err)
		}
	}
	entries = slices.DeleteFunc(entries, func(e *Entry) bool { return e == nil })
	slices.SortFunc(entries, func(a, b *Entry) int { return cmp.Compare(a.Seq, b.Seq) })
	return entries, nil
}

// followLive is Follow from the live index: the last event of every marked task stored at or
// before the stream's last sequence P when it begins, in sequence order, then every event after
// P. A task whose last event is past P is left to those: each event carries the whole task.
func (l *Log) followLive(ctx context.Context, fn func(e *Entry, pending uint64)) (stop func(), err error) {
	info, err := l.events.Info(ctx)
	if err != nil {
		return nil, l.unavailable("follow", err)
	}
	p := info.State.LastSeq
	entries, err := l.Unsettled(ctx)
	if err != nil {
		return nil, err
	}
	entries = slices.DeleteFunc(entries, func(e *Entry) bool { return e.Seq > p })
	if len(entries) == 0 || entries[len(entries)-1].Seq < p {
		// The position P, as a probe entry: the follower's position reaches it.
		entries = append(entries, &Entry{Seq: p, Subject: probeEvents})
	}

	// The follower has seen every task at the last entry if nothing was stored since P, and
	// otherwise once the consumer's last message says so.
	now, err := l.events.Info(ctx)
	if err != nil {
		return nil, l.unavailable("follow", err)
	}
	more := uint64(0)
	if now.State.LastSeq > p {
		more = 1
	}
	for i, e := range entries {
		fn(e, uint64(len(entries)-1-i)+more)
	}
	return l.follow(ctx, p+1, fn)
}

// fillLive fills the live index from a log written before it existed, as Follow reads every
// task's last event: it marks every task that is active or whose history may not be settled
// yet (finished after the compaction watermark). fill is called with each entry; done, once
// the follower has seen every task, records the index as complete unless a mark failed.
func (l *Log) fillLive(ctx context.Context) (fill func(*Entry), done func(), err error) {
	watermark, err := l.Compacted(ctx)
	if err != nil {
		return nil, nil, err
	}
	var failed error
	fill = func(e *Entry) {
		if e.Record == nil || failed != nil {
			return
		}
		t := e.Record.Event.Task
		if taskhub.Terminal(t.State) && e.Seq <= watermark {
			return
		}
		call, cancel := context.WithTimeout(context.Background(), l.cfg.Timeout)
		defer cancel()
		if _, err := l.js.Publish(call, liveSubject(t.Owner, t.Id), nil); err != nil {
			failed = err
		}
	}
	done = func() {
		if failed != nil {
			l.logger.Warn("cannot fill the live index; the next start reads every task again", "err", failed)
			return
		}
		call, cancel := context.WithTimeout(context.Background(), l.cfg.Timeout)
		defer cancel()
		if _, err := l.js.Publish(call, liveFilled, nil); err != nil {
			l.logger.Warn("cannot record the live index as filled; the next start reads every task again", "err", err)
			return
		}
		l.logger.Info("filled the live index: the next start reads the active tasks only")
	}
	return fill, done, nil
}

// hasLiveIndex reports whether the live index is complete. A log with no events has a complete
// (empty) one, recorded here.
func (l *Log) hasLiveIndex(ctx context.Context) (bool, error) {
	_, err := l.meta.GetLastMsgForSubject(ctx, liveFilled)
	if err == nil {
		return true, nil
	}
	if !errors.Is(err, jetstream.ErrMsgNotFound) {
		return false, l.unavailable("live index", err)
	}
	_, err = l.events.GetMsg(ctx, 1, jetstream.WithGetMsgSubject("tasks.>"))
	if err == nil {
		return false, nil // tasks stored before the index
	}
	if !errors.Is(err, jetstream.ErrMsgNotFound) {
		return false, l.unavailable("live index", err)
	}
	if _, err := l.js.Publish(ctx, liveFilled, nil); err != nil {
		return false, fmt.Errorf("%w: live index: %w", ErrUnavailable, err)
	}
	return true, nil
}
