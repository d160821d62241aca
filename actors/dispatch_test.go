package actors

import (
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestWorkerDispatcher: work runs at once, however much other work is blocked, and the
// goroutines that ran earlier work run later work.
func TestWorkerDispatcher(t *testing.T) {
	d := newWorkerDispatcher(mailboxThroughput)
	defer d.stop()
	require.Equal(t, mailboxThroughput, d.Throughput())

	// 100 mailboxes blocked at once: each got a goroutine, none waits for another.
	release := make(chan struct{})
	var started, done sync.WaitGroup
	for range 100 {
		started.Add(1)
		done.Add(1)
		d.Schedule(func() {
			started.Done()
			<-release
			done.Done()
		})
	}
	waitOrFail(t, &started, "work waited for other work")
	close(release)
	waitOrFail(t, &done, "blocked work did not finish")

	// One after the other: the 100 goroutines, now idle, run it all; none is added.
	time.Sleep(10 * time.Millisecond) // let them reach their wait
	before := runtime.NumGoroutine()
	for range 1000 {
		ran := make(chan struct{})
		d.Schedule(func() { close(ran) })
		<-ran
	}
	require.LessOrEqual(t, runtime.NumGoroutine(), before+1, "sequential work started new goroutines")

	d.stop()
	require.Eventually(t, func() bool { return runtime.NumGoroutine() < before-90 }, 5*time.Second, time.Millisecond,
		"stop ends the idle goroutines")
	ran := make(chan struct{})
	d.Schedule(func() { close(ran) })
	<-ran // and later work still runs
}

func waitOrFail(t *testing.T, wg *sync.WaitGroup, msg string) {
	t.Helper()
	ch := make(chan struct{})
	go func() { wg.Wait(); close(ch) }()
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatal(msg)
	}
}
