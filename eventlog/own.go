package eventlog

import (
	"sync"

	storagev1 "github.com/taskhub/taskhub/gen/taskhub/storage/v1"
)

const (
	// ownSlots is how many appended records own holds at most: the appends of this process
	// that its followers have yet to reach. Beyond it (a follower far behind) an append keeps
	// nothing, and its message is decoded as any other.
	ownSlots = 1024
	// ownBytes bounds the encoded size of the records own holds: a follower that lags a burst
	// of large tasks' events (prompts and params of up to 48 KiB) holds no more than this.
	ownBytes = 4 << 20
)

// own holds the records this process appended, by sequence, until a follower reaches them: the
// follower hands on the record as it was appended instead of decoding its message again (a
// proto decode and its allocations, about a twentieth of a progress report's CPU). A record is
// read-only from its append on; its appender keeps it too, as its task's state.
//
// Slot seq%ownSlots holds the record appended as seq. A follower reaching seq takes it, and
// clears the slots of the sequences it passed without taking (another process's appends,
// or events a consumer that delivers the last of each task skips), so nothing is held
// longer than it can be wanted.
type own struct {
	mu     sync.Mutex
	seqs   [ownSlots]uint64
	recs   [ownSlots]*storagev1.Record
	sizes  [ownSlots]int
	bytes  int    // the sizes held
	passed uint64 // the furthest sequence a follower reached: a record at or below it is not kept
}

// keep holds rec, appended as seq and size bytes encoded, for the followers, unless one has
// passed seq already, its slot holds a record still wanted, or the records held are ownBytes.
func (o *own) keep(seq uint64, rec *storagev1.Record, size int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	i := seq % ownSlots
	if seq <= o.passed || o.seqs[i] > o.passed || o.bytes+size > ownBytes {
		return
	}
	o.seqs[i], o.recs[i], o.sizes[i] = seq, rec, size
	o.bytes += size
}

// take returns the record appended as seq, if it is held, and notes that a follower reached seq.
func (o *own) take(seq uint64) (rec *storagev1.Record) {
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
	return rec
}

func (o *own) clear(i uint64) {
	o.bytes -= o.sizes[i]
	o.seqs[i], o.recs[i], o.sizes[i] = 0, nil, 0
}
