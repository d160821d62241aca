package actors

import (
	"slices"
	"sync"

	"github.com/taskhub/taskhub"
)

// watchCount counts the open watches, in all and per user.
type watchCount struct {
	mu     sync.Mutex
	total  int
	byUser map[string]int
}

func (c *watchCount) open(user string, max, maxPerUser int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.byUser[user] >= maxPerUser:
		return taskhub.Errorf(taskhub.ResourceExhausted, "you have %d open watches, the most one user may have: close some (one watch sees all your tasks)", c.byUser[user])
	case c.total >= max:
		return taskhub.Errorf(taskhub.ResourceExhausted, "the server has %d open watches, its limit: try again later", c.total)
	}
	if c.byUser == nil {
		c.byUser = map[string]int{}
	}
	c.byUser[user]++
	c.total++
	return nil
}

func (c *watchCount) close(user string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.total--
	if c.byUser[user]--; c.byUser[user] == 0 {
		delete(c.byUser, user)
	}
}

// creating counts the creates under way, per owner and per mode: admitted, but not yet applied
// by the feed. Admission counts both, so concurrent creates cannot pass a limit together. A
// create counts as under way until the feed's position reaches its event, and from then on as
// one of the feed's active tasks; start compares the two under the feed's lock, so no create
// counts twice, or not at all, in between.
type creating struct {
	mu      sync.Mutex
	byOwner map[string]*inFlight
	byMode  map[string]*inFlight
}

// inFlight is the creates under way of one owner or mode.
type inFlight struct {
	unwritten int      // admitted, not yet in the log
	written   []uint64 // the seqs of those in the log, until the feed has applied them
}

// count is how many creates are under way at feed position pos. A nil inFlight has none.
func (f *inFlight) count(pos uint64) int {
	if f == nil {
		return 0
	}
	n := f.unwritten
	for _, seq := range f.written {
		if seq > pos {
			n++
		}
	}
	return n
}

type creatingParams struct {
	owner, mode         string
	feed                *feed
	maxActive, maxModes int // maxModes 0: no limit on modes
}

// start admits a create, or refuses it with ResourceExhausted. The caller then calls failed,
// or written and, once the feed has applied the event, done.
func (c *creating) start(p creatingParams) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	f := p.feed
	f.mu.Lock()
	pos := f.pos
	n := len(f.active[p.owner]) + c.byOwner[p.owner].count(pos)
	modeUsed := f.modes[p.mode] > 0 || c.byMode[p.mode].count(pos) > 0
	modes := len(f.modes)
	for m, in := range c.byMode {
		if f.modes[m] == 0 && in.count(pos) > 0 {
			modes++ // a mode only creates under way use yet
		}
	}
	f.mu.Unlock()
	if n >= p.maxActive {
		return taskhub.Errorf(taskhub.ResourceExhausted,
			"you have %d queued or running tasks, the most one user may have (--max-active-tasks-per-user): wait for some to finish, or cancel some", n)
	}
	if p.maxModes > 0 && !modeUsed && modes >= p.maxModes {
		return taskhub.Errorf(taskhub.ResourceExhausted,
			"%d modes have unfinished tasks, the most this server allows (--max-modes): use one of them, or wait for their tasks to finish", modes)
	}
	if c.byOwner == nil {
		c.byOwner, c.byMode = map[string]*inFlight{}, map[string]*inFlight{}
	}
	for _, in := range []*inFlight{entry(c.byOwner, p.owner), entry(c.byMode, p.mode)} {
		in.unwritten++
	}
	return nil
}

func entry(m map[string]*inFlight, key string) *inFlight {
	in := m[key]
	if in == nil {
		in = &inFlight{}
		m[key] = in
	}
	return in
}

// failed ends an admitted create that wrote nothing.
func (c *creating) failed(owner, mode string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, in := range c.entries(owner, mode) {
		in.unwritten--
	}
	c.prune(owner, mode)
}

// written records that an admitted create's event is in the log at seq.
func (c *creating) written(owner, mode string, seq uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, in := range c.entries(owner, mode) {
		in.unwritten--
		in.written = append(in.written, seq)
	}
}

// done forgets a create whose event, at seq, the feed has applied.
func (c *creating) done(owner, mode string, seq uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, in := range c.entries(owner, mode) {
		in.written = slices.DeleteFunc(in.written, func(s uint64) bool { return s == seq })
	}
	c.prune(owner, mode)
}

// entries are the inFlights of an admitted create's owner and mode.
func (c *creating) entries(owner, mode string) [2]*inFlight {
	return [2]*inFlight{c.byOwner[owner], c.byMode[mode]}
}

func (c *creating) prune(owner, mode string) {
	if c.byOwner[owner].idle() {
		delete(c.byOwner, owner)
	}
	if c.byMode[mode].idle() {
		delete(c.byMode, mode)
	}
}

func (f *inFlight) idle() bool { return f.unwritten == 0 && len(f.written) == 0 }
