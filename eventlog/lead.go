package eventlog

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// leadSubject of the meta stream names the process, among those sharing the log, that does the
// work which must be done by one of them: settling finished tasks (see actors' compactor).
const leadSubject = "taskhub.lead"

// lead is what Lead remembers between calls: the last record it saw of another process, and
// since when (on this process's clock: no two machines' clocks are compared).
type lead struct {
	mu    sync.Mutex
	seq   uint64
	since time.Time
}

// Lead reports whether this process leads: it holds the record at leadSubject and renewed it
// just now. The leader must call it more often than Config.LeadTimeout to stay the leader; a
// process that calls it takes the lead over once the record has not changed for LeadTimeout
// (its leader stopped, or lost the log). Each change of the record is fenced on the one before,
// so two processes that take over at once cannot both succeed. A leader that cannot renew
// stops leading at once, and another takes over at least LeadTimeout after its last renewal:
// two processes lead at the same time only while one of them cannot write.
func (l *Log) Lead(ctx context.Context) (bool, error) {
	l.lead.mu.Lock()
	defer l.lead.mu.Unlock()
	var last uint64
	m, err := l.meta.GetLastMsgForSubject(ctx, leadSubject)
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
	case err != nil:
		return false, l.unavailable("lead", err)
	default:
		last = m.Sequence
		if string(m.Data) != l.node {
			if last != l.lead.seq {
				l.lead.seq, l.lead.since = last, time.Now()
				return false, nil
			}
			if time.Since(l.lead.since) < l.cfg.LeadTimeout {
				return false, nil
			}
		}
	}
	if err := l.writable("lead"); err != nil {
		return false, err
	}
	_, err = l.js.Publish(ctx, leadSubject, []byte(l.node), jetstream.WithExpectLastSequencePerSubject(last))
	if hasCode(err, jetstream.JSErrCodeStreamWrongLastSequence) || hasCode(err, jetstream.JSErrCodeStreamWrongLastSequenceConstant) {
		return false, nil // another process renewed or took over in between
	}
	if err != nil {
		return false, l.writeErr(ctx, "lead", err)
	}
	return true, nil
}
