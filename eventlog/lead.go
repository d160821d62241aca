package eventlog

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
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

// GatherLeaders asks each stream and bucket of the log, and each queue consumer, whose leader
// is not the event stream's leader to hand its leadership to that node's server. With every
// leader on one node, losing any other node pauses nothing; losing that one pauses every write
// for one election, as losing the event log's leader alone would. Each group elects its own
// leader, so they drift apart as nodes come and go: the node that leads (Lead) calls this
// every few seconds. A move is one request, and takes the group a moment.
func (l *Log) GatherLeaders(ctx context.Context) error {
	if l.cfg.Replicas == 1 {
		return nil
	}
	leaders := l.Leaders(ctx)
	want := leaders[EventStream]
	if want == "" {
		return nil // electing: next time
	}
	var errs []error
	for name, leader := range leaders {
		if leader == want {
			continue
		}
		api := "$JS.API.STREAM.LEADER.STEPDOWN." + name
		if stream, consumer, ok := strings.Cut(name, " consumer "); ok {
			api = "$JS.API.CONSUMER.LEADER.STEPDOWN." + stream + "." + consumer
		}
		errs = append(errs, l.stepDown(ctx, api, want))
	}
	return errors.Join(errs...)
}

// stepDown asks the group of a stream or consumer (subject: its stepdown API) to make node's
// server its leader.
func (l *Log) stepDown(ctx context.Context, subject, node string) error {
	req, err := json.Marshal(server.JSApiLeaderStepdownRequest{Placement: &server.Placement{Preferred: node}})
	if err != nil {
		return err
	}
	msg, err := l.nc.RequestWithContext(ctx, subject, req)
	if err != nil {
		return fmt.Errorf("eventlog: %s: %w", subject, err)
	}
	var res struct {
		Error *jetstream.APIError `json:"error"`
	}
	if err := json.Unmarshal(msg.Data, &res); err != nil {
		return fmt.Errorf("eventlog: %s: %w", subject, err)
	}
	if res.Error != nil {
		return fmt.Errorf("eventlog: %s: %w", subject, res.Error)
	}
	return nil
}
