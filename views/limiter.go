package views

import (
	"net/netip"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/taskhub/taskhub/internal/clientaddr"
)

// addrLimiter allows each client (clientaddr.Of) burst attempts at once, then one per every. It
// remembers at most maxAddrs addresses: when it would remember more, it forgets those whose
// allowance is full again, and if that is not enough, all of them.
type addrLimiter struct {
	every time.Duration
	burst int

	mu     sync.Mutex
	byAddr map[netip.Addr]*rate.Limiter
}

const maxAddrs = 10000

func newAddrLimiter(every time.Duration, burst int) *addrLimiter {
	return &addrLimiter{every: every, burst: burst, byAddr: map[netip.Addr]*rate.Limiter{}}
}

// wait takes an attempt for remoteAddr (host:port) and returns 0, or, when its allowance is
// used up, how long until the next attempt is allowed (taking none).
func (l *addrLimiter) wait(remoteAddr string) time.Duration {
	addr := clientaddr.Of(remoteAddr)
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	lim := l.byAddr[addr]
	if lim == nil {
		if len(l.byAddr) >= maxAddrs {
			l.forget(now)
		}
		lim = rate.NewLimiter(rate.Every(l.every), l.burst)
		l.byAddr[addr] = lim
	}
	r := lim.ReserveN(now, 1)
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return d
	}
	return 0
}

func (l *addrLimiter) forget(now time.Time) {
	for a, lim := range l.byAddr {
		if lim.TokensAt(now) >= float64(l.burst) {
			delete(l.byAddr, a)
		}
	}
	if len(l.byAddr) >= maxAddrs {
		clear(l.byAddr)
	}
}
