package eventlog

import (
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	storagev1 "github.com/taskhub/taskhub/gen/taskhub/storage/v1"
	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"
)

// TestOwn: a follower takes the record appended as a sequence, once; what it passes without
// taking is let go, and an append it has passed is not held; a slot still wanted is not
// overwritten by an append a whole ring ahead.
func TestOwn(t *testing.T) {
	t.Parallel()
	var o own
	rec := func() *storagev1.Record {
		return &storagev1.Record{Event: &taskhubv1.TaskEvent{Task: &taskhubv1.Task{}}}
	}
	keep := func(seq uint64, rec *storagev1.Record, size int) {
		o.mu.Lock() // as its callers hold it
		defer o.mu.Unlock()
		o.keep(seq, rec, size)
	}
	held := func() (n int) {
		for _, r := range o.recs {
			if r != nil {
				n++
			}
		}
		return n
	}

	r1, r3 := rec(), rec()
	keep(1, r1, 1)
	keep(3, r3, 1)
	keep(2+ownSlots, rec(), 1) // 2's slot: a follower ownSlots behind
	require.Same(t, r1, o.take(1, probe()))
	require.Nil(t, o.take(1, probe()), "taken once")
	require.Same(t, r3, o.take(3, probe()), "2 passed: another process's")
	require.Equal(t, 1, held(), "2+ownSlots is still wanted")

	keep(3, rec(), 1)
	require.Equal(t, 1, held(), "3 is passed: never taken again, so not held")

	// A follower that starts with the last event of each task skips some appends: they are let go.
	r10 := rec()
	for s := uint64(4); s <= 10; s++ {
		keep(s, map[bool]*storagev1.Record{true: r10, false: rec()}[s == 10], 1)
	}
	require.Same(t, r10, o.take(10, probe()))
	require.Equal(t, 1, held())

	// A slot still wanted keeps its record against an append a whole ring later.
	r20 := rec()
	keep(20, r20, 1)
	keep(20+ownSlots, rec(), 1)
	require.Same(t, r20, o.take(20, probe()))

	// A jump of more than the ring lets everything before it go, and keeps what is after.
	r := rec()
	keep(5*ownSlots+1, r, 1)
	require.Nil(t, o.take(5*ownSlots, probe()))
	require.Equal(t, 1, held())
	require.Same(t, r, o.take(5*ownSlots+1, probe()))
	require.Zero(t, held())
	require.Zero(t, o.bytes)

	// What is held is bounded in bytes too: a large record that does not fit is not kept.
	base := uint64(10 * ownSlots)
	keep(base+1, rec(), ownBytes-10)
	keep(base+2, rec(), 11)
	keep(base+3, rec(), 10)
	require.Equal(t, 2, held())
	require.Equal(t, ownBytes, o.bytes)
	require.NotNil(t, o.take(base+1, probe()))
	require.Nil(t, o.take(base+2, probe()))
	require.NotNil(t, o.take(base+3, probe()))
	require.Zero(t, o.bytes)
}

// msg is a message of the log as a follower gets it: fenced, or not (a probe).
type msg struct {
	subject string
	data    []byte
	last    string // its fence's expected last sequence; "": none
}

func (m msg) Subject() string { return m.subject }
func (m msg) Data() []byte    { return m.data }
func (m msg) Headers() nats.Header {
	if m.last == "" {
		return nil
	}
	return nats.Header{jetstream.ExpectedLastSubjSeqHeader: {m.last}}
}

// TestOwn_BeforeTheAcknowledgement: a follower that gets an append's message before the
// appender gets its acknowledgement takes the record, by the message's fence and bytes, and
// numbers it; a message of another writer for the same fence does not take it; whatever the
// outcome, the bytes held come back to none.
func TestOwn_BeforeTheAcknowledgement(t *testing.T) {
	t.Parallel()
	var o own
	rec := func() *storagev1.Record {
		return &storagev1.Record{Event: &taskhubv1.TaskEvent{Task: &taskhubv1.Task{}}}
	}
	data := []byte("the record, encoded")

	// The follower first: it takes and numbers the record; the acknowledgement after changes nothing.
	r := rec()
	e := o.expect("tasks.a.1", 4, r, data, nil)
	require.NotNil(t, e)
	require.Nil(t, o.expect("tasks.a.1", 4, rec(), data, nil), "one append in flight a fence: another's fails")
	require.Equal(t, len(data), o.bytes)
	require.Same(t, r, o.take(9, msg{"tasks.a.1", data, "4"}))
	require.Equal(t, uint64(9), r.Event.Seq)
	require.Equal(t, uint64(9), r.Event.Task.Seq)
	o.stored(e, r, 9, len(data))
	o.drop(e)
	require.Zero(t, o.bytes)
	require.Empty(t, o.waiting)

	// The acknowledgement first: the record moves to the ring, numbered, and is taken by sequence.
	r = rec()
	e = o.expect("tasks.a.1", 9, r, data, nil)
	o.stored(e, r, 12, len(data))
	o.drop(e)
	require.Equal(t, uint64(12), r.Event.Seq)
	require.Equal(t, len(data), o.bytes)
	require.Same(t, r, o.take(12, msg{"tasks.a.1", data, "9"}))
	require.Zero(t, o.bytes)

	// Another writer's message for the same fence (its append won) has other bytes: not this
	// record, which its appender drops when its append is refused.
	r = rec()
	e = o.expect("tasks.a.1", 12, r, data, nil)
	require.Nil(t, o.take(13, msg{"tasks.a.1", []byte("another writer's record"), "12"}))
	require.Nil(t, o.take(14, msg{"tasks.a.2", data, "12"}), "another task's")
	require.Nil(t, o.take(15, msg{"tasks.a.1", data, ""}), "no fence")
	require.Zero(t, r.Event.Seq)
	o.drop(e)
	o.drop(e)
	require.Zero(t, o.bytes)
	require.Empty(t, o.waiting)

	// An append the follower passed before its acknowledgement came is not held after it.
	r = rec()
	e = o.expect("tasks.a.1", 13, r, data, nil)
	require.Nil(t, o.take(17, probe()))
	o.stored(e, r, 16, len(data))
	require.Equal(t, uint64(16), r.Event.Seq)
	require.Zero(t, o.bytes)

	// Bounded in bytes: a record that does not fit is not held, and is numbered when stored.
	big := make([]byte, ownBytes)
	require.NotNil(t, o.expect("tasks.a.3", 0, rec(), big, nil))
	r = rec()
	require.Nil(t, o.expect("tasks.a.4", 0, r, data, nil))
	o.stored(nil, r, 20, len(data))
	require.Equal(t, uint64(20), r.Event.Seq)
}

func probe() msg { return msg{subject: "probe"} }
