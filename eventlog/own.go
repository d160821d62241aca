package eventlog

import (
	"bytes"
	"strconv"
	"sync"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	storagev1 "github.com/taskhub/taskhub/gen/taskhub/storage/v1"
)

const (
	// ownSlots is how many acknowledged records own holds at most: the appends of this process
	// that its followers have yet to reach. Beyond it (a follower far behind) an append keeps
	// nothing, and its message is decoded as any other. A node at its core's limit runs its
	// follower a few hundred milliseconds behind: at 10,000 appends a second, 1024 slots left
	// a sixth of its records to be decoded again, 8192 none (24 bytes a slot).
	ownSlots = 8192
	// ownBytes bounds the encoded size of the records own holds: a follower that lags a burst
	// of large tasks' events (prompts and params of up to 48 KiB) holds no more than this.
	ownBytes = 4 << 20
)

// own holds the records this process appended until a follower reaches them: the follower
// hands on the record as it was appended instead of decoding its message again (a proto decode
// and its allocations, about a twentieth of a progress report's CPU). A record is read-only
// from its append on, but for its sequence; its appender keeps it too, as its task's state.
//
// A record is held from before its append is sent (expect), by the task's subject and the
// sequence the append expects last on it, which the message's header carries: the fence admits
// one stored message for that pair. A message takes the record only if it has the record's
// bytes: that of another writer whose append won the fence (a task's actor and its successor)
// differs, in its time at least, and one identical to it stands for the same event. A follower
// often gets the message before the appender gets the acknowledgement (at 10,000 appends a
// second, a node at its core's limit decoded a third of its own records): it then takes the
// record, and numbers it, first. Once acknowledged, a record not taken moves to the ring, by
// sequence (stored).
//
// Slot seq%ownSlots of the ring holds the record appended as seq. A follower reaching seq takes
// it, and clears the slots of the sequences it passed without taking (another process's
// appends, or events a consumer that delivers the last of each task skips), so nothing is held
// longer than it can be wanted. The records awaiting their acknowledgement are the appends in
// flight, one a fence at most, each settled by its appender (stored or drop).
type own struct {
	mu      sync.Mutex
	seqs    [ownSlots]uint64
	recs    [ownSlots]*storagev1.Record
	sizes   [ownSlots]int
	bytes   int    // the sizes held, in the ring and awaiting
	passed  uint64 // the furthest sequence a follower reached: a record at or below it is not kept
	waiting map[fence]*expected
}

// fence is an append's subject and the sequence it expects last on it.
type fence struct {
	subject string
	last    uint64
}

// expected is a record held while its append awaits its acknowledgement.
type expected struct {
	key   fence
	rec   *storagev1.Record
	data  []byte   // rec encoded, as sent
	taken bool     // a follower took it, and numbered it
	batch *batched // its append in a batch, which learns its sequence when a follower takes it
}

// expect holds rec, encoded as data, about to be appended to subject after last (in batch x,
// or nil), and returns what stored or drop settles; nil when the records held are ownBytes
// already, or another append for the same pair is in flight (a task's actor and its successor:
// one will fail).
func (o *own) expect(subject string, last uint64, rec *storagev1.Record, data []byte, x *batched) *expected {
	o.mu.Lock()
	defer o.mu.Unlock()
	key := fence{subject, last}
	if o.bytes+len(data) > ownBytes || o.waiting[key] != nil {
		return nil
	}
	if o.waiting == nil {
		o.waiting = map[fence]*expected{}
	}
	e := &expected{key: key, rec: rec, data: data, batch: x}
	o.waiting[key] = e
	o.bytes += len(data)
	return e
}

// stored numbers rec, appended as seq, and holds it for the followers unless one has passed seq
// or took it already. e is what expect returned for it (nil: not held).
func (o *own) stored(e *expected, rec *storagev1.Record, seq uint64, size int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if e != nil {
		if e.taken {
			return // numbered by the follower that took it
		}
		o.forget(e)
	}
	number(rec, seq)
	o.keep(seq, rec, size)
}

// drop lets e go: its append failed, or may not have been stored.
func (o *own) drop(e *expected) {
	if e == nil {
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	o.forget(e)
}

// forget lets e go, once.
func (o *own) forget(e *expected) {
	if o.waiting[e.key] == e {
		delete(o.waiting, e.key)
		o.bytes -= len(e.data)
	}
}

// number sets the sequence a record was stored as.
func number(rec *storagev1.Record, seq uint64) {
	rec.Event.Seq, rec.Event.Task.Seq = seq, seq
}

// keep holds rec, appended as seq and size bytes encoded, in the ring, unless a follower has
// passed seq, its slot holds a record still wanted, or the records held are ownBytes. o.mu is
// held.
func (o *own) keep(seq uint64, rec *storagev1.Record, size int) {
	i := seq % ownSlots
	if seq <= o.passed || o.seqs[i] > o.passed || o.bytes+size > ownBytes {
		return
	}
	o.seqs[i], o.recs[i], o.sizes[i] = seq, rec, size
	o.bytes += size
}

// take returns the record of m, the message stored as seq, if it is held, and notes that a
// follower reached seq. A message with a fence finds its record by it, and by its bytes, while
// its append awaits its acknowledgement.
func (o *own) take(seq uint64, m fencedMsg) (rec *storagev1.Record) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if seq <= o.passed {
		return nil // a follower behind another, or a consumer's message again
	}
	// The slots of (passed, seq], each looked at once: what they hold up to seq is seq's record
	// or was passed without being taken.
	n := min(seq-o.passed, ownSlots)
	for s := seq - n + 1; s <= seq; s++ {
		i := s % ownSlots
		if o.seqs[i] == seq {
			rec = o.recs[i]
		}
		if o.seqs[i] <= seq {
			o.clear(i)
		}
	}
	o.passed = seq
	if rec != nil || len(o.waiting) == 0 {
		return rec
	}
	if key, ok := fenceOf(m); ok {
		if e := o.waiting[key]; e != nil && bytes.Equal(e.data, m.Data()) {
			o.forget(e)
			e.taken = true
			rec = e.rec
			number(rec, seq)
			if e.batch != nil {
				e.batch.settle(seq, nil)
			}
		}
	}
	return rec
}

// fencedMsg is a message of the event log as a follower gets it.
type fencedMsg interface {
	Subject() string
	Data() []byte
	Headers() nats.Header
}

// fenceOf returns the subject of m and the sequence its append expected last on it; false
// for a message without (a probe).
func fenceOf(m fencedMsg) (fence, bool) {
	v := m.Headers()[jetstream.ExpectedLastSubjSeqHeader]
	if len(v) != 1 {
		return fence{}, false
	}
	last, err := strconv.ParseUint(v[0], 10, 64)
	if err != nil {
		return fence{}, false
	}
	return fence{m.Subject(), last}, true
}

func (o *own) clear(i uint64) {
	o.bytes -= o.sizes[i]
	o.seqs[i], o.recs[i], o.sizes[i] = 0, nil, 0
}
