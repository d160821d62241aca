package eventlog

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// jsStoreFailed is the error code JetStream returns when a per-subject limit refuses a message.
const jsStoreFailed jetstream.ErrorCode = 10077

// Delivery is one queue message handed to this process: a claim ticket for a task.
type Delivery struct {
	TaskID string
	Mode   string
	// AckSubject renews, releases or ends the delivery.
	AckSubject string
	// QueueSeq is the queue message's stream sequence: the same across redeliveries.
	QueueSeq uint64
	// Delivered counts the deliveries of this message, this one included.
	Delivered uint64
}

// QueueSubject is the queue subject of a task.
func QueueSubject(mode, id string) string { return "taskq." + mode + "." + id }

// Enqueue puts the task in its mode's queue. A task already in the queue (delivered or not)
// stays as it is: the stream keeps at most one message per task.
func (l *Log) Enqueue(ctx context.Context, mode, id string) error {
	_, err := l.js.Publish(ctx, QueueSubject(mode, id), nil)
	if err != nil {
		if hasCode(err, jsStoreFailed) && strings.Contains(err.Error(), "maximum messages per subject") {
			return nil
		}
		return l.unavailable("enqueue", err)
	}
	return nil
}

// Dequeue removes the task's queue message, delivered or not.
func (l *Log) Dequeue(ctx context.Context, mode, id string) error {
	if err := l.queue.Purge(ctx, jetstream.WithPurgeSubject(QueueSubject(mode, id))); err != nil {
		return l.unavailable("dequeue", err)
	}
	return nil
}

// consumer returns the durable pull consumer of mode, creating or updating it on first use.
func (l *Log) consumer(ctx context.Context, mode string) (jetstream.Consumer, error) {
	l.consumersMu.Lock()
	defer l.consumersMu.Unlock()
	if c, ok := l.consumers[mode]; ok {
		return c, nil
	}
	c, err := l.queue.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		Durable:       "mode-" + mode,
		Description:   "claims of mode " + mode,
		FilterSubject: QueueSubject(mode, "*"),
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       l.cfg.AckWait,
		MaxDeliver:    -1,
		MaxAckPending: -1,
	})
	if err != nil {
		return nil, l.unavailable("consumer "+mode, err)
	}
	if l.consumers == nil {
		l.consumers = map[string]jetstream.Consumer{}
	}
	l.consumers[mode] = c
	return c, nil
}

// Fetch takes up to max queued tasks of mode, waiting up to wait for the first (not at all when
// wait is 0) or until ctx ends. Each delivery is leased for the consumer's AckWait unless renewed.
func (l *Log) Fetch(ctx context.Context, mode string, max int, wait time.Duration) ([]Delivery, error) {
	c, err := l.consumer(ctx, mode)
	if err != nil {
		return nil, err
	}
	var batch jetstream.MessageBatch
	if wait <= 0 {
		batch, err = c.FetchNoWait(max)
	} else {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, wait)
		defer cancel()
		batch, err = c.Fetch(max, jetstream.FetchContext(ctx))
	}
	if err != nil {
		return nil, l.unavailable("fetch", err)
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
			AckSubject: m.Reply(),
			QueueSeq:   md.Sequence.Stream,
			Delivered:  md.NumDelivered,
		})
	}
	if err := batch.Error(); err != nil && len(out) == 0 && ctx.Err() == nil {
		return nil, l.unavailable("fetch", err)
	}
	return out, nil
}

// Renew extends a delivery's lease by the consumer's AckWait.
func (l *Log) Renew(ackSubject string) error {
	return l.ackOp(ackSubject, "+WPI")
}

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
