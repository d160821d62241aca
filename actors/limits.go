package actors

import (
	"sync"

	"github.com/taskhub/taskhub"
)

// watchCount counts the open watches, in all and per user.
type watchCount struct {
	mu     sync.Mutex
	total  int
	byUser map[string]int
}

// open is the watches open now.
func (c *watchCount) open() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.total
}

func (c *watchCount) take(user string, max, maxPerUser int) error {
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

// creating is the creates under way: admitted, not yet applied by the feed. It lives in the
// feed, under its lock, and the feed drops a create from it in the same step that applies the
// create's event and makes the task active: so from admission on, a create counts exactly once
// against its owner's and its mode's limits, never twice and never not at all.
type creating struct {
	tasks   map[string]*underWay // task id ->
	byOwner map[string]int       // owner -> tasks under way
	byMode  map[string]int       // mode -> tasks under way
}

// underWay is one task being created, by n calls at once (retries with its idempotency key).
type underWay struct {
	owner, mode string
	n           int
}

// admission is a create to admit, and the limits it must be within.
type admission struct {
	owner, mode, id     string
	maxActive, maxModes int // maxModes 0: no limit on modes
}

// admit counts the create of task a.id as under way, or refuses it with ResourceExhausted. The
// caller calls abandon if the create fails; one that succeeds is dropped when the feed applies it.
func (f *feed) admit(a admission) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := &f.creating
	if u := c.tasks[a.id]; u != nil {
		u.n++ // a retry of a create under way: it is counted already
		return nil
	}
	if n := len(f.active[a.owner]) + c.byOwner[a.owner]; n >= a.maxActive {
		return taskhub.Errorf(taskhub.ResourceExhausted,
			"you have %d queued or running tasks, the most one user may have (--max-active-tasks-per-user): wait for some to finish, or cancel some", n)
	}
	if a.maxModes > 0 && f.modes[a.mode] == 0 && c.byMode[a.mode] == 0 {
		modes := len(f.modes)
		for m := range c.byMode {
			if f.modes[m] == 0 {
				modes++ // a mode only creates under way use yet
			}
		}
		if modes >= a.maxModes {
			return taskhub.Errorf(taskhub.ResourceExhausted,
				"%d modes have unfinished tasks, the most this server allows (--max-modes): use one of them, or wait for their tasks to finish", modes)
		}
	}
	if c.tasks == nil {
		c.tasks, c.byOwner, c.byMode = map[string]*underWay{}, map[string]int{}, map[string]int{}
	}
	c.tasks[a.id] = &underWay{owner: a.owner, mode: a.mode, n: 1}
	c.byOwner[a.owner]++
	c.byMode[a.mode]++
	return nil
}

// abandon ends one call's create of task id that failed. What it may have written after all
// (an unconfirmed write) counts as active once the feed applies it.
func (f *feed) abandon(id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if u := f.creating.tasks[id]; u != nil {
		if u.n--; u.n == 0 {
			f.creating.drop(id)
		}
	}
}

// drop forgets the create of task id, if it is under way. The caller holds the feed's lock.
func (c *creating) drop(id string) {
	u := c.tasks[id]
	if u == nil {
		return
	}
	delete(c.tasks, id)
	if c.byOwner[u.owner]--; c.byOwner[u.owner] == 0 {
		delete(c.byOwner, u.owner)
	}
	if c.byMode[u.mode]--; c.byMode[u.mode] == 0 {
		delete(c.byMode, u.mode)
	}
}
