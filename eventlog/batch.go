package eventlog

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// maxBatch is how many appends one fast batch carries at most.
const maxBatch = 1000

// errBatchLost is what a batched append is settled with when its batch ended without a word
// about it: its message may or may not be stored.
var errBatchLost = errors.New("eventlog: the batch of the append was not acknowledged")

// errNotSent is what an append fails with when its message was never sent: its caller's
// context ended while it waited for its batch.
var errNotSent = errors.New("eventlog: the append was not sent")

// Batches is how many batches this process sent to the event stream, and how many appends
// they carried (batch.go; zeros when appends are a request each).
func (l *Log) Batches() (batches, appends uint64) {
	if l.batch == nil {
		return 0, 0
	}
	l.batch.mu.Lock()
	defer l.batch.mu.Unlock()
	return l.batch.n, l.batch.sent
}

// batchRefused reports whether err is the server's refusal of a batch rather than of its
// message (fast batches turned off in the stream, too many in flight, a batch it does not
// know), or no stream's answer: the message was not stored, and can be sent alone, as a
// request, which waits a moment for a stream that is not listening.
func batchRefused(err error) bool {
	if errors.Is(err, nats.ErrNoResponders) {
		return true // no stream listened (a server restarting): a request waits for one
	}
	apiErr, ok := errors.AsType[*jetstream.APIError](err)
	if !ok {
		return false
	}
	switch apiErr.ErrorCode {
	case 10205, 10206, 10207, 10208, 10211: // JSBatchPublish{Disabled,InvalidPattern,InvalidBatchID,UnknownBatchID,TooManyInflight}
		return true
	}
	return false
}

// batcher sends the appends made while a batch is in flight as the next one, with JetStream's
// fast batch publishing: the server stores each message as it comes, checking its fence as it
// does a request's, and acknowledges the batch once, where a request each costs an
// acknowledgement each; that was about 45 % of JetStream's cost of an append with 1000 in
// flight (BenchmarkPublish). The server tells of a message only a refusal, by its place in the
// batch; the batch's acknowledgement carries the sequence of the last stored. So an append
// learns its sequence from the follower that takes its record (own.take).
//
// One batch is in flight at a time, so appends made together go together. An append made
// while none is in flight sends its batch itself, on its own goroutine, and then leaves any
// appends queued meanwhile to a goroutine that sends them until none is left. A batch of one is
// a plain publish, answered as a request is.
type batcher struct {
	l     *Log
	inbox string        // replies: inbox.<batch> (a batch of one), inbox.<batch>.<flow>.ok.<place>.<op>.$FI
	timer *time.Timer   // the batch in flight's deadline; only the goroutine sending uses it
	acked chan batchAck // cap 1: the batch in flight's acknowledgement

	mu      sync.Mutex
	queue   []*batched
	running bool       // a goroutine sends; it takes the queue before it stops
	n       uint64     // batches sent; the last is in flight while cur is set
	cur     []*batched // the batch in flight
	sent    uint64     // appends sent in batches
}

// batchAck is the answer to a batch: whether it was acknowledged, and the sequence of its last
// stored message (0: none).
type batchAck struct {
	batch, last uint64
	ok          bool
}

// batched is an append in a batcher.
type batched struct {
	m      *nats.Msg
	queued bool   // in the batcher's queue, not sent yet (under the batcher's lock)
	seq    uint64 // its sequence, or
	err    error  // why it failed: a refusal, or errBatchLost; both set before done closes
	once   sync.Once
	done   chan struct{}
}

// settle ends x's wait with its sequence or an error, once.
func (x *batched) settle(seq uint64, err error) {
	x.once.Do(func() {
		x.seq, x.err = seq, err
		close(x.done)
	})
}

// newBatcher subscribes to the batches' replies.
func newBatcher(l *Log) (*batcher, error) {
	b := &batcher{l: l, inbox: nats.NewInbox(), timer: time.NewTimer(time.Hour), acked: make(chan batchAck, 1)}
	b.timer.Stop()
	// The connection's close ends the subscription.
	if _, err := l.nc.Subscribe(b.inbox+".>", b.reply); err != nil {
		return nil, fmt.Errorf("eventlog: subscribe to the batches' replies: %w", err)
	}
	return b, nil
}

// batching reports whether appends go in batches: the embedded server of a single node lets
// them (fastBatches), and a follower is live to number them.
func (l *Log) batching() bool {
	return l.batch != nil && l.following.Load() > 0
}

// append sends x in the next batch and returns its sequence once a follower took its record
// (or, in a batch of one, the server's answer told it), or the error it settled with: a
// refusal, errBatchLost, or ctx's (the log's Timeout when ctx has no deadline).
func (b *batcher) append(ctx context.Context, x *batched) (uint64, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, b.l.cfg.Timeout)
		defer cancel()
	}
	b.mu.Lock()
	b.queue = append(b.queue, x)
	x.queued = true
	first := !b.running
	b.running = true
	b.mu.Unlock()
	if first {
		// x is the only one queued: it goes in the next batch, sent from here.
		if b.next() {
			go b.run()
		}
	}
	select {
	case <-x.done:
		return x.seq, x.err
	case <-ctx.Done():
	case <-b.l.life.Done():
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	select {
	case <-x.done: // settled meanwhile
		return x.seq, x.err
	default:
	}
	if x.queued { // never sent: take it back
		b.queue = slices.DeleteFunc(b.queue, func(y *batched) bool { return y == x })
		return 0, fmt.Errorf("%w: %w", errNotSent, cmp.Or(ctx.Err(), b.l.life.Err()))
	}
	return 0, cmp.Or(ctx.Err(), errBatchLost)
}

// run sends batches until none is queued.
func (b *batcher) run() {
	for b.next() {
	}
}

// next sends the next batch, and reports whether more are queued; when none is, the batcher
// stops running.
func (b *batcher) next() bool {
	b.mu.Lock()
	n := min(len(b.queue), maxBatch)
	if n == 0 {
		b.running = false
		b.mu.Unlock()
		return false
	}
	batch := b.queue[:n:n]
	for _, x := range batch {
		x.queued = false
	}
	b.queue = b.queue[n:]
	if len(b.queue) == 0 {
		b.queue = nil
	}
	b.n++
	id := b.n
	b.cur = batch
	b.sent += uint64(n)
	b.mu.Unlock()

	b.send(id, batch)

	b.mu.Lock()
	defer b.mu.Unlock()
	b.cur = nil
	if len(b.queue) == 0 {
		b.running = false
		return false
	}
	return true
}

// send publishes batch as batch id and waits for its acknowledgement, or the log's Timeout.
// Unacknowledged, an append it has no word of is settled errBatchLost (Append then looks for it
// in the log); acknowledged, the appends not refused are stored, and wait for a follower.
//
// A batch of several ends with a commit that carries no message of its own (end of batch), so
// that its acknowledgement speaks for no append: the sequence it names is the last stored,
// whichever that is, and a refusal of the last would leave it that of another.
func (b *batcher) send(id uint64, batch []*batched) {
	const flow = maxBatch // no flow control: acknowledged at its end
	prefix := b.inbox + "." + strconv.FormatUint(id, 10)
	fast := func(place, op int) string {
		return prefix + "." + strconv.Itoa(flow) + ".ok." + strconv.Itoa(place) + "." + strconv.Itoa(op) + ".$FI"
	}
	msgs := make([]*nats.Msg, 0, len(batch)+1)
	for i, x := range batch {
		switch {
		case len(batch) == 1:
			x.m.Reply = prefix
		case i == 0:
			x.m.Reply = fast(1, 0) // start
		default:
			x.m.Reply = fast(i+1, 1) // append
		}
		msgs = append(msgs, x.m)
	}
	if len(batch) > 1 {
		// Commit, end of batch: not stored; on the probes' subject, which holds no task, were
		// it ever stored.
		msgs = append(msgs, &nats.Msg{Subject: probeEvents, Reply: fast(len(batch)+1, 3)})
	}
	select {
	case <-b.acked: // a batch's before, answered after its wait ended
	default:
	}
	sent := 0
	for _, m := range msgs {
		if err := b.l.nc.PublishMsg(m); err != nil {
			// Not sent, this and the rest (while the connection is made again, at once):
			// stored is only what was sent before, which the server may not acknowledge.
			for _, x := range batch[min(sent, len(batch)):] {
				x.settle(0, err)
			}
			break
		}
		sent++
	}
	acked := false
	if sent == len(msgs) {
		b.timer.Reset(b.l.cfg.Timeout)
	wait:
		for {
			select {
			case a := <-b.acked:
				if a.batch != id {
					continue // a batch's before, answered after its wait ended
				}
				acked = a.ok
				if a.last > 0 {
					b.l.wrote(a.last)
				}
				break wait
			case <-b.timer.C:
				break wait
			case <-b.l.life.Done():
				break wait
			}
		}
		b.timer.Stop()
	}
	if !acked {
		for _, x := range batch {
			x.settle(0, errBatchLost) // all but those settled already
		}
	}
}

// reply handles what the server says of the batch in flight: the answer to a batch of one, a
// refusal of one of its messages (by its place), and the batch's acknowledgement. It ignores
// flow control, and any word of a batch no longer in flight.
func (b *batcher) reply(m *nats.Msg) {
	rest, ok := strings.CutPrefix(m.Subject, b.inbox+".")
	if !ok {
		return
	}
	place, fast := 1, false
	if r, ok := strings.CutSuffix(rest, ".$FI"); ok {
		// <batch>.<flow>.ok.<place>.<op>
		r = r[:max(strings.LastIndexByte(r, '.'), 0)]
		i := strings.LastIndexByte(r, '.')
		p, err := strconv.Atoi(r[i+1:])
		if i < 0 || err != nil {
			return
		}
		place, fast = p, true
		rest, _, _ = strings.Cut(r, ".")
	}
	id, err := strconv.ParseUint(rest, 10, 64)
	if err != nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if id != b.n || b.cur == nil || place < 1 || place > len(b.cur)+1 || fast == (len(b.cur) == 1) {
		return
	}
	if fast && bytes.HasPrefix(m.Data, []byte(`{"type":`)) {
		// Flow control, a gap (which ends the batch: the acknowledgement follows), or a refusal.
		var r struct {
			Type  string              `json:"type"`
			Seq   uint64              `json:"seq"`
			Error *jetstream.APIError `json:"error"`
		}
		if json.Unmarshal(m.Data, &r) == nil && r.Type == "err" && r.Seq >= 1 && r.Seq <= uint64(len(b.cur)) {
			if r.Error == nil {
				b.cur[r.Seq-1].settle(0, errBatchLost)
			} else {
				b.cur[r.Seq-1].settle(0, fmt.Errorf("nats: %w", r.Error))
			}
		}
		return
	}
	seq, err := pubAck(m.Data)
	if m.Header.Get("Status") == "503" {
		err = nats.ErrNoResponders // no stream listened: nothing stored
	}
	switch {
	case !fast: // a batch of one: its message's own answer, as a request's
		if err == nil && seq == 0 {
			err = jetstream.ErrInvalidJSAck
		}
		b.cur[0].settle(seq, err)
		b.ack(batchAck{id, seq, true})
	case place == len(b.cur)+1: // the end of the batch: its acknowledgement, or its refusal
		b.ack(batchAck{id, seq, err == nil})
	case err != nil: // a refusal of one message (a batch refused whole is, message by message)
		b.cur[place-1].settle(0, err)
	}
}

// ack hands the batch in flight its answer, once. b.mu is held.
func (b *batcher) ack(a batchAck) {
	select {
	case b.acked <- a:
	default:
	}
}
