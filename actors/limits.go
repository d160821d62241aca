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

// creating counts the creates under way, per owner and per mode: admitted, but not yet among the
// feed's active tasks. Admission counts both, so concurrent creates cannot pass a limit
// together.
type creating struct {
	mu      sync.Mutex
	byOwner map[string]int
	byMode  map[string]int
}

type creatingParams struct {
	owner, mode         string
	feed                *feed
	maxActive, maxModes int // maxModes 0: no limit on modes
}

func (c *creating) start(p creatingParams) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if n := p.feed.activeCount(p.owner) + c.byOwner[p.owner]; n >= p.maxActive {
		return taskhub.Errorf(taskhub.ResourceExhausted,
			"you have %d queued or running tasks, the most one user may have (--max-active-tasks-per-user): wait for some to finish, or cancel some", n)
	}
	if p.maxModes > 0 && c.byMode[p.mode] == 0 {
		active, modes := p.feed.modeActive(p.mode)
		for m := range c.byMode {
			if a, _ := p.feed.modeActive(m); !a {
				modes++ // a mode only creates under way use yet
			}
		}
		if !active && modes >= p.maxModes {
			return taskhub.Errorf(taskhub.ResourceExhausted,
				"%d modes have unfinished tasks, the most this server allows (--max-modes): use one of them, or wait for their tasks to finish", modes)
		}
	}
	if c.byOwner == nil {
		c.byOwner, c.byMode = map[string]int{}, map[string]int{}
	}
	c.byOwner[p.owner]++
	c.byMode[p.mode]++
	return nil
}

func (c *creating) done(owner, mode string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.byOwner[owner]--; c.byOwner[owner] <= 0 {
		delete(c.byOwner, owner)
	}
	if c.byMode[mode]--; c.byMode[mode] <= 0 {
		delete(c.byMode, mode)
	}
}
