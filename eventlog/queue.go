package eventlog

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// jsStoreFailed is the error code JetStream returns when a per-subject limit refuses a message.
const jsStoreFailed jetstream.ErrorCode = 10077

// ErrNoQueue means a mode has no queue consumer: no task of the mode was queued since JetStream
// last removed the mode's idle consumer (or ever). Fetch does not create one, so that naming a
// mode costs nothing durable; Enqueue and EnsureQueue do.
var ErrNoQueue = errors.New("eventlog: the mode has no queue")

// Delivery is one queue message handed to this process: a claim ticket for a task.
type Delivery struct {
	TaskID string
	Mode   string
	// Owner is the task's owner, as its message names it ("" in a message written before
	// messages named it).
	Owner string
	// AckSubject renews, releases or ends the delivery.
	AckSubject string
	// QueueSeq is the queue message's stream sequence: the same across redeliveries.
	QueueSeq uint64
	// Delivered counts the deliveries of this message, this one included.
	Delivered uint64
}

// QueueSubject is the queue subject of a task.
func QueueSubject(mode, id string) string { return "taskq." + mode + "." + id }

const consumerPrefix = "mode-"

// Enqueue puts owner's task id in its mode's queue, creating the mode's consumer if this process
// does not know it exists, and reports whether it added it. A task already in the queue
// (delivered or not) stays as it is: the stream keeps at most one message per task. The message
// holds the owner, so that the claim reads the task by owner and id (see Delivery.Owner).
func (l *Log) Enqueue(ctx context.Context, mode, owner, id string) (added bool, err error) {
	if err := l.writable("enqueue"); err != nil {
		return false, err
	}
	if err := l.EnsureQueue(ctx, mode); err != nil {
		return false, err
	}
	if _, _, err := l.publish(ctx, &nats.Msg{Subject: QueueSubject(mode, id), Data: []byte(owner)}); err != nil {
		if hasCode(err, jsStoreFailed) && strings.Contains(err.Error(), "maximum messages per subject") {
			return false, nil
		}
		return false, l.writeErr(ctx, "enqueue", err)
	}
	return true, nil
}

// Dequeue removes the task's queue message, delivered or not.
func (l *Log) Dequeue(ctx context.Context, mode, id string) error {
	if err := l.writable("dequeue"); err != nil {
		return err
	}
	if err := l.queue.Purge(ctx, jetstream.WithPurgeSubject(QueueSubject(mode, id))); err != nil {
		return l.writeErr(ctx, "dequeue", err)
	}
	return nil
}

// EnsureQueue creates the durable pull consumer of mode unless this process knows it exists.
// JetStream removes it after QueueIdle without claims or leases; its messages stay in the
// queue for the next consumer.
func (l *Log) EnsureQueue(ctx context.Context, mode string) error {
	l.consumersMu.Lock()
	_, ok := l.consumers[mode]
	l.consumersMu.Unlock()
	if ok {
		return nil
	}
	if err := l.writable("consumer " + mode); err != nil {
		return err
	}
	c, err := l.queue.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		Durable:           consumerPrefix + mode,
		Description:       "claims of mode " + mode,
		FilterSubject:     QueueSubject(mode, "*"),
		AckPolicy:         jetstream.AckExplicitPolicy,
		AckWait:           l.cfg.AckWait,
		MaxDeliver:        -1,
		MaxAckPending:     -1,
		InactiveThreshold: l.cfg.QueueIdle,
	})
	if err != nil {
		return l.writeErr(ctx, "consumer "+mode, err)
	}
	l.consumersMu.Lock()
	l.consumers[mode] = c
	l.consumersMu.Unlock()
	return nil
}

// forget drops what this process knows of mode's consumer, after JetStream removed it.
func (l *Log) forget(mode string) {
	l.consumersMu.Lock()
	delete(l.consumers, mode)
	l.consumersMu.Unlock()
}

// known returns the consumer of mode: from what this process knows, or else from JetStream. It
// never creates one (ErrNoQueue).
func (l *Log) known(ctx context.Context, mode string) (jetstream.Consumer, error) {
	l.consumersMu.Lock()
	c, ok := l.consumers[mode]
	l.consumersMu.Unlock()
	if ok {
		return c, nil
	}
	c, err := l.queue.Consumer(ctx, consumerPrefix+mode)
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		return nil, ErrNoQueue
	}
	if err != nil {
		return nil, l.unavailable("consumer "+mode, err)
	}
	l.consumersMu.Lock()
	l.consumers[mode] = c
	l.consumersMu.Unlock()
	return c, nil
}

// Fetch takes up to max queued tasks of mode, waiting up to wait for the first (not at all when
// wait is 0) or until ctx ends. Each delivery is leased for the consumer's AckWait unless renewed.
// A mode without a consumer fails with ErrNoQueue.
func (l *Log) Fetch(ctx context.Context, mode string, max int, wait time.Duration) ([]Delivery, error) {
	c, err := l.known(ctx, mode)
	if err != nil {
		return nil, err
	}
	var batch jetstream.MessageBatch
	waitCtx := ctx
	if wait <= 0 {
		batch, err = c.FetchNoWait(max)
	} else {
		var cancel context.CancelFunc
		waitCtx, cancel = context.WithTimeout(ctx, wait)
		defer cancel()
		batch, err = c.Fetch(max, jetstream.FetchContext(waitCtx))
	}
	if err != nil {
		return nil, l.fetchErr(ctx, mode, err)
	}
	var out []Delivery
	for m := range batch.Messages() {
		md, err := m.Metadata()
		if err != nil {
			continue
		}
		subj := m.Subject()
		out = append(out, Delivery{
			TaskID:     subj[strings.LastIndexByte(subj, '.')+1:],
			Mode:       mode,
			Owner:      string(m.Data()),
			AckSubject: m.Reply(),
			QueueSeq:   md.Sequence.Stream,
			Delivered:  md.NumDelivered,
		})
	}
	if err := batch.Error(); err != nil && len(out) == 0 && waitCtx.Err() == nil {
		return nil, l.fetchErr(ctx, mode, err)
	}
	return out, nil
}

// fetchErr tells a consumer JetStream removed (ErrNoQueue) from other failures. It asks
// JetStream within ctx: a fetch that ended with its caller (a closing hub) does not wait for a
// stream that cannot answer.
func (l *Log) fetchErr(ctx context.Context, mode string, err error) error {
	ctx, cancel := context.WithTimeout(ctx, l.cfg.Timeout)
	defer cancel()
	if _, cerr := l.queue.Consumer(ctx, consumerPrefix+mode); errors.Is(cerr, jetstream.ErrConsumerNotFound) {
		l.forget(mode)
		return ErrNoQueue
	}
	return l.unavailable("fetch", err)
}

// QueueModes returns the modes that have a queue consumer.
func (l *Log) QueueModes(ctx context.Context) ([]string, error) {
	var modes []string
	names := l.queue.ConsumerNames(ctx)
	for name := range names.Name() {
		if mode, ok := strings.CutPrefix(name, consumerPrefix); ok {
			modes = append(modes, mode)
		}
	}
	if err := names.Err(); err != nil {
		return nil, l.unavailable("list consumers", err)
	}
	return modes, nil
}

// Queued returns the id of every task in the queue, delivered or not.
func (l *Log) Queued(ctx context.Context) (map[string]bool, error) {
	info, err := l.queue.Info(ctx, jetstream.WithSubjectFilter("taskq.>"))
	if err != nil {
		return nil, l.unavailable("queued", err)
	}
	ids := make(map[string]bool, len(info.State.Subjects))
	for subj := range info.State.Subjects {
		ids[subj[strings.LastIndexByte(subj, '.')+1:]] = true
	}
	return ids, nil
}

// Renew extends a delivery's lease by the consumer's AckWait.
func (l *Log) Renew(ackSubject string) error {
	return l.ackOp(ackSubject, "+WPI")
}

// AckWait is how long a delivery stays leased without a renewal before JetStream delivers it
// again (Config.AckWait).
func (l *Log) AckWait() time.Duration { return l.cfg.AckWait }

// Release hands a delivery back to the queue, to be delivered again after delay.
func (l *Log) Release(ackSubject string, delay time.Duration) error {
	if delay <= 0 {
		return l.ackOp(ackSubject, "-NAK")
	}
	return l.ackOp(ackSubject, fmt.Sprintf(`-NAK {"delay": %d}`, delay.Nanoseconds()))
}

// Ack ends a delivery: the task leaves the queue. It does not wait for JetStream to confirm:
// queue messages are claim tickets, and a ticket whose ack was lost comes back after the ack
// wait to a claim that finds its task finished and acks it again.
func (l *Log) Ack(ctx context.Context, ackSubject string) error {
	return l.ackOp(ackSubject, "+ACK")
}

func (l *Log) ackOp(ackSubject, body string) error {
	if ackSubject == "" {
		return nil
	}
	if err := l.nc.Publish(ackSubject, []byte(body)); err != nil {
		return l.unavailable("ack", err)
	}
	return nil
}
