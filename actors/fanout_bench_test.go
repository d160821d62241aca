package actors

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	storagev1 "github.com/taskhub/taskhub/gen/taskhub/storage/v1"
	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"

	"github.com/taskhub/taskhub"
	"github.com/taskhub/taskhub/eventlog"
	"github.com/taskhub/taskhub/webhook"
)

func benchHub(b testing.TB) *Hub { return benchHubWith(b, Options{}) }

// benchHubWith is benchHub with opts.
func benchHubWith(b testing.TB, opts Options) *Hub {
	b.Helper()
	log, err := eventlog.Open(b.Context(), eventlog.Config{DataDir: b.TempDir(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	h, err := Open(b.Context(), Config{Log: log, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Options: opts})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { h.Close(); log.Close() })
	return h
}

// BenchmarkFanout delivers one event to every subscriber of its owner: the feed hands it to each
// subscriber actor, which queues it in its outbox, from which each watch's reader takes it (as a
// stream's send loop would, minus the network). An op ends when every reader has it.
func BenchmarkFanout(b *testing.B) {
	for _, n := range []int{1, 100, 1000, 10000} {
		b.Run(fmt.Sprintf("%dSubs", n), func(b *testing.B) { benchFanout(b, n) })
	}
}

func benchFanout(b *testing.B, subs int) {
	// One event at a time, each waited for: held for the watch interval (Options.WatchInterval),
	// every op would take it. The hold's gain is measured with taskhub-load (docs/benchmarks.md);
	// this is what a delivery costs.
	h := benchHubWith(b, Options{WatchInterval: -1})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	var got atomic.Int64 // deliveries of the current event
	done := make(chan struct{}, 1)
	var target atomic.Uint64
	var wg sync.WaitGroup
	for range subs {
		w, err := h.Watch(ctx, taskhub.WatchQuery{Owner: "bench", Epoch: "", AfterSeq: 0})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := w.Next(ctx); err != nil { // the snapshot
			b.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer w.Close()
			for {
				msgs, err := w.Next(ctx)
				if err != nil {
					return
				}
				for _, m := range msgs {
					if m.GetEvent().GetSeq() == target.Load() && got.Add(1) == int64(subs) {
						done <- struct{}{}
					}
				}
			}
		}()
	}

	now := time.Now()
	task := &taskhubv1.Task{Id: taskhub.NewTaskID(now), Owner: "bench", Prompt: "p", Mode: "demo", State: taskhubv1.TaskState_TASK_STATE_RUNNING}
	base := h.feed.position() + 1
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		seq := base + uint64(i)
		got.Store(0)
		target.Store(seq)
		// STARTED is never coalesced, so every subscriber must get every event.
		h.feed.apply(&eventlog.Entry{Seq: seq, Subject: eventlog.Subject("bench", task.Id), Record: &storagev1.Record{
			Event: &taskhubv1.TaskEvent{Seq: seq, Kind: taskhubv1.EventKind_EVENT_KIND_STARTED, Task: task},
		}}, 0)
		<-done
	}
	b.StopTimer()
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(subs), "ns/delivery")
	cancel()
	wg.Wait()
}

// BenchmarkHub_CreateClaimComplete runs whole task lifecycles through the hub and the real
// embedded event log: create (an append and an enqueue), claim (a fetch and an append), complete
// (an append and an ack). With owners=5000, the log holds a task of each of 5000 owners before
// it starts, and each lifecycle is another owner's: the cost of a task must not grow with the
// users the log holds.
func BenchmarkHub_CreateClaimComplete(b *testing.B) {
	for _, owners := range []int{1, 5000} {
		b.Run(fmt.Sprintf("owners=%d", owners), func(b *testing.B) { benchLifecycles(b, owners) })
	}
}

func benchLifecycles(b *testing.B, owners int) {
	h := benchHub(b)
	ctx := b.Context()
	owner := func(i int) string { return fmt.Sprintf("user%d", i%owners) }
	if owners > 1 {
		for i := range owners {
			if _, err := h.CreateTask(ctx, owner(i), taskhub.TaskSpec{Prompt: "p", Mode: "other"}); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		t, err := h.CreateTask(ctx, owner(i), taskhub.TaskSpec{Prompt: "p", Mode: "bench"})
		if err != nil {
			b.Fatal(err)
		}
		c, err := h.ClaimTask(ctx, taskhub.ClaimParams{WorkerID: "w", Modes: []string{"bench"}, Wait: time.Second})
		if err != nil || c == nil {
			b.Fatal("claim", err)
		}
		if c.Task.Id != t.Id {
			b.Fatal("claimed another task")
		}
		if _, err := h.CompleteTask(ctx, taskhub.Lease{TaskID: t.Id, Token: c.LeaseToken}, "r"); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "tasks/s")
}

// BenchmarkHub_QueuedTaskMemory creates tasks with the largest prompt and params a create
// accepts and nobody claims them, then reports the heap the process holds per queued task
// after a garbage collection (hub and embedded event log together, as one server holds them):
// heap-B/task at once, which includes the embedded JetStream's cache of the blocks it wrote in
// the last 10 s, and settled-heap-B/task once that cache has expired (11 s later). Run it with
// a fixed count, such as -benchtime 3000x.
func BenchmarkHub_QueuedTaskMemory(b *testing.B) {
	h := benchHub(b)
	ctx := b.Context()
	params := map[string]string{}
	for i := range taskhub.MaxParams {
		params[fmt.Sprintf("%0*d", taskhub.MaxParamKeyLen, i)] = strings.Repeat("v", taskhub.MaxParamValueBytes)
	}
	prompt := strings.Repeat("p", taskhub.MaxPromptBytes)
	before := heapInUse()
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		_, err := h.CreateTask(ctx, fmt.Sprintf("user%d", i%100), taskhub.TaskSpec{Prompt: prompt, Mode: "bench", Params: params})
		if err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	time.Sleep(100 * time.Millisecond) // the passivated task actors stop
	b.ReportMetric(float64(heapInUse()-before)/float64(b.N), "heap-B/task")
	time.Sleep(11 * time.Second)
	b.ReportMetric(float64(heapInUse()-before)/float64(b.N), "settled-heap-B/task")
}

func heapInUse() int64 {
	var m runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&m)
	return int64(m.HeapInuse)
}

// BenchmarkHub_ReportProgress is the write path: progress reports on running tasks, each
// stored in the real embedded event log before it is answered. Sequential: one report at a
// time, round-robin over the tasks. Parallel: one reporter per task, 64 at once, as many
// workers report. Batched: 1000 tasks run by 10 workers, each sending a BatchReportProgress
// with a report for each of its 100 tasks at a time (taskhub-load's --batch-workers 10). It
// reports events/s; run it under `taskset -c 0` with GOMAXPROCS=1 for the CPU of one core per
// event (ns/op is then the CPU per event). An op is one report.
func BenchmarkHub_ReportProgress(b *testing.B) {
	for _, tc := range []struct {
		name    string
		tasks   int
		callers int // at once, each with tasks/callers of the tasks
		batched bool
	}{{"Sequential", 1, 1, false}, {"Parallel64", 64, 64, false}, {"Batched", 1000, 10, true}} {
		b.Run(tc.name, func(b *testing.B) {
			h := benchHub(b)
			ctx := b.Context()
			claims := make([]*taskhub.Claim, tc.tasks)
			for i := range claims {
				if _, err := h.CreateTask(ctx, "bench", taskhub.TaskSpec{Prompt: "p", Mode: "bench"}); err != nil {
					b.Fatal(err)
				}
				c, err := h.ClaimTask(ctx, taskhub.ClaimParams{WorkerID: "w", Modes: []string{"bench"}, Wait: time.Second})
				if err != nil || c == nil {
					b.Fatal("claim", err)
				}
				claims[i] = c
			}
			per := tc.tasks / tc.callers
			b.ReportAllocs()
			b.ResetTimer()
			var next atomic.Int64
			var wg sync.WaitGroup
			for w := range tc.callers {
				mine := claims[w*per : (w+1)*per]
				wg.Go(func() {
					for {
						n := next.Add(int64(per)) - int64(per) // reports made before these
						if n >= int64(b.N) {
							return
						}
						batch := make([]taskhub.Report, min(per, b.N-int(n)))
						for i := range batch {
							c := mine[i]
							batch[i] = taskhub.Report{Lease: taskhub.Lease{TaskID: c.Task.Id, Token: c.LeaseToken},
								Progress: float64((n + int64(i)) % 100), Message: "step"}
						}
						if !tc.batched {
							for _, r := range batch {
								if _, err := h.ReportProgress(ctx, r); err != nil {
									b.Error(err)
									return
								}
							}
							continue
						}
						res, err := h.BatchReportProgress(ctx, batch)
						if err != nil {
							b.Error(err)
							return
						}
						for _, r := range res {
							if r.Err != nil {
								b.Error(r.Err)
								return
							}
						}
					}
				})
			}
			wg.Wait()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
		})
	}
}

// runningTasks creates a task for each of owners users (hooked(i) is the webhook of user i's, or
// nil), claims them all, and has them report rounds times in turn, in batches, as many users'
// running tasks do. It returns the claims, in the order of the users.
func runningTasks(b *testing.B, h *Hub, owners, rounds int, hooked func(i int) *taskhubv1.Webhook) []*taskhub.Claim {
	b.Helper()
	const batch = 500
	ctx := b.Context()
	for i := range owners {
		if _, err := h.CreateTask(ctx, fmt.Sprint("user", i), taskhub.TaskSpec{Prompt: "p", Mode: "bench", Webhook: hooked(i)}); err != nil {
			b.Fatal(err)
		}
	}
	claims := make([]*taskhub.Claim, owners)
	for i := range claims {
		c, err := h.ClaimTask(ctx, taskhub.ClaimParams{WorkerID: "w", Modes: []string{"bench"}, Wait: time.Second})
		if err != nil || c == nil {
			b.Fatal("claim", err)
		}
		claims[i] = c
	}
	for r := range rounds {
		for i := 0; i < owners; i += batch {
			reports := make([]taskhub.Report, 0, batch)
			for _, c := range claims[i:min(i+batch, owners)] {
				reports = append(reports, taskhub.Report{Lease: taskhub.Lease{TaskID: c.Task.Id, Token: c.LeaseToken}, Progress: float64(r), Message: "step"})
			}
			res, err := h.BatchReportProgress(ctx, reports)
			if err != nil || res[0].Err != nil {
				b.Fatal(err, res[0].Err)
			}
		}
	}
	return claims
}

// BenchmarkHub_Resume is a watch that resumes: one owner's events since its task started (18
// progress reports) to replay, among those of 5000 owners, each with a task reporting in turn,
// as many users' running tasks do. An op is one resume, from the watch's start until its last
// replayed event; run it under `taskset -c 0` with GOMAXPROCS=1 for its CPU.
func BenchmarkHub_Resume(b *testing.B) {
	const owners = 5000
	h := benchHub(b)
	ctx := b.Context()
	claims := runningTasks(b, h, owners, 18, func(int) *taskhubv1.Webhook { return nil })
	last := make([]uint64, owners)
	for i, c := range claims {
		t, err := h.GetTask(ctx, c.Task.Owner, c.Task.Id)
		if err != nil {
			b.Fatal(err)
		}
		last[i] = t.Seq
	}
	b.Run(fmt.Sprintf("owners=%d", owners), func(b *testing.B) {
		b.ReportAllocs()
		for n := range b.N {
			c := claims[n%owners]
			w, err := h.Watch(ctx, taskhub.WatchQuery{Owner: c.Task.Owner, Epoch: h.Epoch(), AfterSeq: c.Task.Seq})
			if err != nil {
				b.Fatal(err)
			}
			for done := false; !done; {
				msgs, err := w.Next(ctx)
				if err != nil {
					b.Fatal(err)
				}
				for _, m := range msgs {
					done = done || m.GetEvent().GetSeq() == last[n%owners]
				}
			}
			w.Close()
		}
	})
}

// BenchmarkHub_Webhook is a task's webhook delivery among many users' running tasks: 5000
// owners' tasks report 18 times in turn; every 25th has a webhook for its completion, which its
// delivery loop finds after reading the task's events. An op completes one of those tasks and
// ends when its webhook is delivered (to a receiver in the same process); at most 200 ops in
// all (-benchtime 100x).
func BenchmarkHub_Webhook(b *testing.B) {
	const owners, every = 5000, 25
	delivered := make(chan struct{}, owners/every)
	rcv := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { delivered <- struct{}{} }))
	b.Cleanup(rcv.Close)
	u, _ := url.Parse(rcv.URL)
	sender, err := webhook.New(webhook.Config{Allow: []string{u.Host}, Secret: "whsec_" + "C2FVsBQIhrscChlQIMV+b5sSYspob7oD"})
	if err != nil {
		b.Fatal(err)
	}
	h := benchHubWith(b, Options{Webhooks: sender})
	ctx := b.Context()
	claims := runningTasks(b, h, owners, 18, func(i int) *taskhubv1.Webhook {
		if i%every != 0 {
			return nil
		}
		return &taskhubv1.Webhook{Url: rcv.URL, Events: []taskhubv1.EventKind{taskhubv1.EventKind_EVENT_KIND_COMPLETED}}
	})
	next := 0 // the next hooked task to complete, over the runs
	b.Run(fmt.Sprintf("owners=%d", owners), func(b *testing.B) {
		if next+b.N > owners/every {
			b.Skipf("at most %d ops in all", owners/every)
		}
		b.ReportAllocs()
		for range b.N {
			c := claims[next*every]
			next++
			if _, err := h.CompleteTask(ctx, taskhub.Lease{TaskID: c.Task.Id, Token: c.LeaseToken}, "done"); err != nil {
				b.Fatal(err)
			}
			<-delivered
		}
	})
}
