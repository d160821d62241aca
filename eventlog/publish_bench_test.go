package eventlog

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// BenchmarkPublish measures what JetStream itself costs an append, the way the write path
// would pay it, to choose how appends reach it: 1000 tasks' fenced appends in flight at once
// (as 1000 running tasks report), 200-byte messages, and a follower (an ordered consumer)
// reading every message, on a stream of its own in the log's embedded server. An op is one
// message stored and followed.
//
//   - request: each append is one request and its acknowledgement, as Log.Append sends it
//     (Log.request), and waits for it before its task's next.
//   - fastbatch: the engine's fast batch publishing (nats-server 2.14 on): one publisher sends
//     every append, each fenced on its task's last sequence, in batches the server acknowledges
//     every 100 messages rather than each, skipping a message whose fence fails and going on
//     ("gap: ok"). It tells no message's sequence, so an append would learn it from the
//     follower; this measures the engine's side only. The fences are computed: the publisher is
//     the stream's only writer, and no fence fails.
func BenchmarkPublish(b *testing.B) {
	const tasks, size = 1000, 200
	data := bytes.Repeat([]byte("x"), size)
	for _, mode := range []string{"request", "fastbatch"} {
		b.Run(mode, func(b *testing.B) {
			l, err := Open(b.Context(), Config{DataDir: b.TempDir(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
			if err != nil {
				b.Fatal(err)
			}
			defer l.Close()
			s, err := l.js.CreateStream(b.Context(), jetstream.StreamConfig{Name: "BENCH", Subjects: []string{"bench.>"},
				Storage: jetstream.FileStorage, AllowBatchPublish: true})
			if err != nil {
				b.Fatal(err)
			}
			followed := make(chan struct{})
			var got atomic.Int64
			c, err := s.OrderedConsumer(b.Context(), jetstream.OrderedConsumerConfig{})
			if err != nil {
				b.Fatal(err)
			}
			cc, err := c.Consume(func(jetstream.Msg) {
				if got.Add(1) == int64(b.N) {
					close(followed)
				}
			}, jetstream.PullHeartbeat(followHeartbeat))
			if err != nil {
				b.Fatal(err)
			}
			defer cc.Stop()
			subject := func(task int) string { return "bench." + strconv.Itoa(task) }
			b.ReportAllocs()
			b.ResetTimer()
			if mode == "request" {
				var next atomic.Int64
				var wg sync.WaitGroup
				for task := range tasks {
					wg.Go(func() {
						last := uint64(0)
						for next.Add(1) <= int64(b.N) {
							seq, err := l.request(b.Context(), fenced(subject(task), data, last))
							if err != nil {
								b.Error(err)
								return
							}
							last = seq
						}
					})
				}
				wg.Wait()
			} else {
				fastBatch(b, l.nc, b.N, tasks, subject, data)
			}
			select {
			case <-followed:
			case <-time.After(time.Minute):
				b.Fatalf("the follower got %d of %d messages", got.Load(), b.N)
			}
		})
	}
}

// fastBatch publishes n fenced messages over tasks subjects in turn as fast batches of up to
// 1000, acknowledged every 100, with at most 10 acknowledgements outstanding; a batch starts
// once the one before it is committed.
func fastBatch(b *testing.B, nc *nats.Conn, n, tasks int, subject func(int) string, data []byte) {
	const perBatch, flow = 1000, 100
	inbox := nats.NewInbox()
	var acked atomic.Uint64 // the current batch's messages acknowledged
	committed := make(chan struct{}, 1)
	sub, err := nc.Subscribe(inbox+".>", func(m *nats.Msg) {
		var ack struct {
			Type  string          `json:"type"`
			Seq   uint64          `json:"seq"`
			Error json.RawMessage `json:"error"`
		}
		if err := json.Unmarshal(m.Data, &ack); err != nil || ack.Error != nil {
			b.Errorf("fast batch: %s", m.Data)
			return
		}
		switch ack.Type {
		case "ack": // flow control: the batch's messages up to seq are stored
			acked.Store(max(acked.Load(), ack.Seq))
		case "": // the commit's PubAck
			committed <- struct{}{}
		default:
			b.Errorf("fast batch: %s", m.Data)
		}
	})
	if err != nil {
		b.Fatal(err)
	}
	defer sub.Unsubscribe()
	wait := func() {
		select {
		case <-committed:
		case <-time.After(time.Minute):
			b.Fatal("a fast batch was not committed")
		}
	}
	last := make([]uint64, tasks)
	id := ""
	for i := range n {
		k := i%perBatch + 1 // the message's place in its batch
		if k == 1 {
			if i > 0 {
				wait()
			}
			id = nats.NewInbox()[len(nats.InboxPrefix):]
			acked.Store(0)
		}
		op := 1 // append
		switch {
		case i == n-1 || k == perBatch:
			op = 2 // commit
		case k == 1:
			op = 0 // start
		}
		task := i % tasks
		m := fenced(subject(task), data, last[task])
		m.Reply = inbox + "." + id + "." + strconv.Itoa(flow) + ".ok." + strconv.Itoa(k) + "." + strconv.Itoa(op) + ".$FI"
		if err := nc.PublishMsg(m); err != nil {
			b.Fatal(err)
		}
		last[task] = uint64(i) + 1 // the stream's only writer, and no fence fails
		for uint64(k) > acked.Load()+10*flow && !b.Failed() {
			time.Sleep(20 * time.Microsecond)
		}
	}
	wait()
}
