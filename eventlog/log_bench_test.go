package eventlog_test

import (
	"fmt"
	"io"
	"log/slog"
	"testing"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"

	"github.com/taskhub/taskhub/eventlog"
)

// benchLog opens an event log as cfg asks, in a temp dir, closed when b ends.
func benchLog(b *testing.B, cfg eventlog.Config) *eventlog.Log {
	b.Helper()
	cfg.DataDir, cfg.Logger = b.TempDir(), slog.New(slog.NewTextHandler(io.Discard, nil))
	l, err := eventlog.Open(b.Context(), cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { l.Close() })
	return l
}

// BenchmarkLog_Append appends the CREATED event of a new task, one writer, with the default
// sync policy and with an fsync on every write (--fsync).
func BenchmarkLog_Append(b *testing.B) {
	for _, fsync := range []bool{false, true} {
		b.Run(fmt.Sprintf("fsync=%v", fsync), func(b *testing.B) {
			l := benchLog(b, eventlog.Config{SyncAlways: fsync})
			b.ReportAllocs()
			for i := range b.N {
				id := fmt.Sprintf("T%d", i)
				rec := record(id, taskhubv1.EventKind_EVENT_KIND_CREATED, taskhubv1.TaskState_TASK_STATE_QUEUED)
				if _, err := l.Append(b.Context(), rec, 0); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "appends/s")
		})
	}
}

// BenchmarkLog_Last reads a task's last event among the tasks of many owners, by its id alone
// (owner "*", which JetStream answers by matching every owner's subjects) and by its owner and
// id.
func BenchmarkLog_Last(b *testing.B) {
	l := benchLog(b, eventlog.Config{})
	const owners = 5000
	for i := range owners {
		rec := record(fmt.Sprintf("T%d", i), taskhubv1.EventKind_EVENT_KIND_CREATED, taskhubv1.TaskState_TASK_STATE_QUEUED)
		rec.Event.Task.Owner = fmt.Sprintf("user%d", i)
		if _, err := l.Append(b.Context(), rec, 0); err != nil {
			b.Fatal(err)
		}
	}
	for _, byOwner := range []bool{false, true} {
		b.Run(fmt.Sprintf("owners=%d/by-owner=%v", owners, byOwner), func(b *testing.B) {
			b.ReportAllocs()
			for i := range b.N {
				owner := "*"
				if byOwner {
					owner = fmt.Sprintf("user%d", i%owners)
				}
				if _, err := l.Last(b.Context(), owner, fmt.Sprintf("T%d", i%owners)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkLog_Next reads one owner's events in order, as a resumed watch's replay did
// (Log.Next with the owner's filter, from the sequence after the last one read), and one task's
// (its subject, as the webhooks read), in a log whose events are interleaved with those of
// other owners: every owner's task reports in turn, as many users' running tasks do. An op is
// one event read.
func BenchmarkLog_Next(b *testing.B) {
	for _, owners := range []int{1, 100, 5000} {
		b.Run(fmt.Sprintf("owners=%d", owners), func(b *testing.B) {
			l := benchLog(b, eventlog.Config{})
			const events = 100_000
			var err error
			last := make([]uint64, owners)
			for i := range events {
				o := i % owners
				kind := taskhubv1.EventKind_EVENT_KIND_PROGRESS
				if last[o] == 0 {
					kind = taskhubv1.EventKind_EVENT_KIND_CREATED
				}
				rec := record(fmt.Sprintf("T%d", o), kind, taskhubv1.TaskState_TASK_STATE_RUNNING)
				rec.Event.Task.Owner = fmt.Sprintf("user%d", o)
				if last[o], err = l.Append(b.Context(), rec, last[o]); err != nil {
					b.Fatal(err)
				}
			}
			for _, by := range []struct{ name, filter string }{{"owner", eventlog.OwnerFilter("user0")}, {"task", eventlog.Subject("user0", "T0")}} {
				filter := by.filter
				b.Run("by="+by.name, func(b *testing.B) {
					b.ReportAllocs()
					seq := uint64(1)
					for range b.N {
						e, err := l.Next(b.Context(), filter, seq)
						if err != nil { // past the owner's last: from its first again
							seq = 1
							continue
						}
						seq = e.Seq + 1
					}
				})
			}
		})
	}
}
