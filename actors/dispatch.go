package actors

import (
	"sync"
	"time"
)

// workerDispatcher runs actors' mailboxes on goroutines it keeps for a while, instead of a new
// goroutine each time a mailbox gets work, as protoactor's default dispatcher does. A task
// actor's mailbox gets work for nearly every report, and a new goroutine's small stack had to
// grow (and be copied) for each event's encoding and append: 5 % of a busy server's CPU. A kept
// goroutine's stack stays grown until the collector shrinks it.
//
// It never queues: a mailbox waits for no other. Work goes to an idle goroutine if one is
// waiting, else to a new one, so as many mailboxes run at once as with the default.
type workerDispatcher struct {
	throughput int
	idle       chan func()   // unbuffered: a send succeeds only into a waiting goroutine
	quit       chan struct{} // closed by stop
	stopOnce   sync.Once
}

// workerIdle is how long a goroutine with nothing to run waits for more before it ends.
const workerIdle = 10 * time.Second

func newWorkerDispatcher(throughput int) *workerDispatcher {
	return &workerDispatcher{throughput: throughput, idle: make(chan func()), quit: make(chan struct{})}
}

// stop ends the idle goroutines. Work scheduled later still runs, each on a goroutine that
// ends with it.
func (d *workerDispatcher) stop() { d.stopOnce.Do(func() { close(d.quit) }) }

func (d *workerDispatcher) Schedule(fn func()) {
	select {
	case d.idle <- fn:
	default:
		go d.work(fn)
	}
}

func (d *workerDispatcher) Throughput() int { return d.throughput }

func (d *workerDispatcher) work(fn func()) {
	t := time.NewTimer(workerIdle)
	defer t.Stop()
	for {
		fn()
		t.Reset(workerIdle)
		select {
		case fn = <-d.idle:
		case <-t.C:
			return
		case <-d.quit:
			return
		}
	}
}

// mailboxThroughput is how many messages a mailbox runs before it lets others have the
// goroutine: protoactor's default.
const mailboxThroughput = 300
