package eventlog

import (
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	storagev1 "github.com/taskhub/taskhub/gen/taskhub/storage/v1"
	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"
)

// BenchmarkLog_Start measures what a start costs the event log: Follow until the follower has
// seen every task, on a log of 100 active tasks and 20,000 finished ones, settled (read from the
// live index) and as a log from before the index left them (read whole; every iteration
// removes the index first, outside the timing).
func BenchmarkLog_Start(b *testing.B) {
	const active, finished = 100, 20_000
	l, err := Open(b.Context(), Config{DataDir: b.TempDir(), ProbeInterval: time.Hour,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	rec := func(id string, state taskhubv1.TaskState) *storagev1.Record {
		return &storagev1.Record{Event: &taskhubv1.TaskEvent{Kind: taskhubv1.EventKind_EVENT_KIND_CREATED,
			Task: &taskhubv1.Task{Id: id, Owner: "alice", Mode: "demo", Prompt: "a prompt of some length", State: state}}}
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	for i := range active + finished {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			id := fmt.Sprintf("T%06d", i)
			seq, err := l.Append(b.Context(), rec(id, taskhubv1.TaskState_TASK_STATE_QUEUED), 0)
			if err != nil || i < active {
				return
			}
			if _, err := l.Append(b.Context(), rec(id, taskhubv1.TaskState_TASK_STATE_COMPLETED), seq); err == nil {
				_ = l.Retire(b.Context(), "alice", id)
			}
		})
	}
	wg.Wait()
	start := func(b *testing.B) {
		ready := make(chan struct{})
		var once sync.Once
		stop, err := l.Follow(b.Context(), func(_ *Entry, pending uint64) {
			if pending == 0 {
				once.Do(func() { close(ready) })
			}
		})
		if err != nil {
			b.Fatal(err)
		}
		<-ready
		stop()
	}
	b.Run("settled", func(b *testing.B) {
		for b.Loop() {
			start(b)
		}
	})
	b.Run("before-the-index", func(b *testing.B) {
		for range b.N {
			b.StopTimer()
			_ = l.meta.Purge(b.Context(), jetstream.WithPurgeSubject(liveFilled))
			b.StartTimer()
			start(b)
		}
	})
}
