package actors

import (
	"context"
	"errors"
	"slices"

	"github.com/taskhub/taskhub/eventlog"
)

// history indexes events the feed applied by a key: the sequences of each key's events. The
// feed keeps two: by owner, so that a watch that replays (a client that resumes, or one its
// outbox could not keep up with) reads its owner's events by sequence, one read each; and by
// task, of the tasks with a webhook, for their delivery loops. Without it they ask the log for
// the next event on the owner's (or the task's) subjects, and JetStream finds it by reading
// every event in between, whoever's it is: in a log of many users' events, thousands of them
// for each event read (BenchmarkLog_Next: 0.6-0.75 ms an event by owner, 0.34 ms by task,
// among 5000 users' running tasks, against 25 µs for one user's alone).
//
// It holds the last maxHistory/2 to maxHistory events in two generations: when the newer one
// is full (of events, or of keys), the older one goes and floor moves up to where the newer one
// began. An event before
// floor is not indexed, and the replay reads the log as before. The caller (the feed) holds its
// lock.
type history struct {
	floor    uint64              // every event from here on is indexed; 0: none yet (the feed is not ready)
	old, cur map[string][]uint64 // key -> its events' sequences, ascending; old's all below curFrom
	curFrom  uint64              // the first sequence cur may hold
	curN     int                 // the sequences in cur
}

// maxHistory is how many events a history indexes at most: 8 bytes each, 16 MiB in all (32 with
// the room slices grow into). At 10,000 events a second that is the last 100 to 200 s.
// maxHistoryKeys bounds the keys a generation holds, about 100 bytes each (its map entry, its
// smallest slice): a generation with that many ends early, so that events of many keys with
// few events each (tasks with a webhook that end at once) hold at most about 50 MiB.
const (
	maxHistory     = 1 << 21
	maxHistoryKeys = 1 << 18
)

// start indexes every event from seq on.
func (h *history) start(seq uint64) {
	h.floor, h.curFrom, h.curN = seq, seq, 0
	h.old, h.cur = map[string][]uint64{}, map[string][]uint64{}
}

// add indexes key's event seq, after the last one added (or at start's seq or later).
func (h *history) add(key string, seq uint64) {
	if h.floor == 0 {
		return
	}
	if h.curN >= maxHistory/2 || len(h.cur) >= maxHistoryKeys/2 && h.cur[key] == nil {
		h.old, h.cur = h.cur, make(map[string][]uint64, len(h.cur))
		h.floor, h.curFrom, h.curN = h.curFrom, seq, 0
	}
	h.cur[key] = append(h.cur[key], seq)
	h.curN++
}

// next returns key's first event at or after seq (0: none yet), and whether the index covers
// seq: if not, it does not know.
func (h *history) next(key string, seq uint64) (uint64, bool) {
	if h.floor == 0 || seq < h.floor {
		return 0, false
	}
	for _, seqs := range [2][]uint64{h.old[key], h.cur[key]} {
		if i, _ := slices.BinarySearch(seqs, seq); i < len(seqs) {
			return seqs[i], true
		}
	}
	return 0, true
}

// indexedRead reads the first event at or after from on filter's subjects, if it is at most
// to (eventlog.ErrNotFound if none is): by its sequence when index (a history's next, for one
// key) covers from, else by asking the log for the next event on filter's subjects. An event
// the index names that the log does not give back as filter's (not found: compacted, or not
// yet held by the leader that answers reads; or another's) is found by asking the log from
// there instead, which passes over what was compacted and returns nothing the leader lacks.
func indexedRead(ctx context.Context, log interface {
	Get(ctx context.Context, seq uint64) (*eventlog.Entry, error)
	Next(ctx context.Context, filter string, from uint64) (*eventlog.Entry, error)
}, index func(seq uint64) (uint64, bool), filter string, mine func(subject string) bool, from, to uint64) (*eventlog.Entry, error) {
	s, indexed := index(from)
	switch {
	case !indexed:
		return log.Next(ctx, filter, from)
	case s == 0 || s > to:
		return nil, eventlog.ErrNotFound
	}
	e, err := log.Get(ctx, s)
	switch {
	case err == nil && e.Seq == s && mine(e.Subject):
		return e, nil
	case err == nil || errors.Is(err, eventlog.ErrNotFound):
		return log.Next(ctx, filter, s)
	}
	return nil, err
}
