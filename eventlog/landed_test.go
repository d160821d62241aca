package eventlog_test

import (
	"bufio"
	"cmp"
	"context"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"

	"github.com/taskhub/taskhub/eventlog"
	"github.com/taskhub/taskhub/internal/freeport"
	"github.com/taskhub/taskhub/internal/natstest"
)

// ackDropper is a TCP proxy on loopback between a Log's NATS client and the NATS server. It
// passes the NATS protocol through one operation at a time, and when armed with a subject it
// loses the answer to the next publish on it: JetStream stores the message, and its
// acknowledgement never reaches the client, as when it is lost on the network. With cut, it
// also drops the client's connection right then, as a connection that breaks after the write
// was sent; the client reconnects through the proxy, which refuses it for away.
type ackDropper struct {
	ln     net.Listener
	server string

	mu        sync.Mutex
	armed     string         // the subject whose next publish loses its answer; "" when disarmed
	cut       bool           // drop the connection with the answer
	away      time.Duration  // with cut: refuse connections for this long after it
	downUntil time.Time      // connections are refused until then
	reply     string         // the reply subject of the answer to lose
	publishes map[string]int // publishes seen, by subject
	dropped   int            // answers lost
	conns     map[net.Conn]bool
	closed    bool
	wg        sync.WaitGroup
}

// newAckDropper starts a proxy to the NATS server at addr (host:port); it stops when the test
// ends.
func newAckDropper(t *testing.T, addr string) *ackDropper {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &ackDropper{ln: ln, server: addr, publishes: map[string]int{}, conns: map[net.Conn]bool{}}
	p.wg.Go(p.accept)
	t.Cleanup(p.close)
	return p
}

// URL is the proxy's NATS URL, for Config.URL.
func (p *ackDropper) URL() string { return "nats://" + p.ln.Addr().String() }

// arm loses the answer to the next publish on subject, and with cut drops the connection too,
// then refuses connections for away.
func (p *ackDropper) arm(subject string, cut bool, away time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.armed, p.cut, p.away = subject, cut, away
}

// seen returns how many publishes on subject the proxy passed on, and how many answers it lost.
func (p *ackDropper) seen(subject string) (publishes, dropped int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.publishes[subject], p.dropped
}

func (p *ackDropper) accept() {
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return // closed
		}
		p.mu.Lock()
		down := time.Now().Before(p.downUntil)
		p.mu.Unlock()
		if down {
			client.Close()
			continue
		}
		server, err := net.Dial("tcp", p.server)
		if err != nil {
			client.Close()
			continue
		}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			client.Close()
			server.Close()
			return
		}
		p.conns[client], p.conns[server] = true, true
		p.mu.Unlock()
		p.wg.Go(func() {
			_ = pipe(server, client, p.fromClient)
			p.drop(client, server)
		})
		p.wg.Go(func() {
			_ = pipe(client, server, func(op []string) bool { return p.fromServer(op, client, server) })
			p.drop(client, server)
		})
	}
}

// fromClient notes the reply subject of an armed publish before the server can answer it.
func (p *ackDropper) fromClient(op []string) bool {
	var subject, reply string
	switch {
	case op[0] == "PUB" && len(op) == 4, op[0] == "HPUB" && len(op) == 5:
		subject, reply = op[1], op[2]
	case op[0] == "PUB", op[0] == "HPUB":
		subject = op[1]
	default:
		return true
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.publishes[subject]++
	if subject == p.armed && reply != "" {
		p.armed, p.reply = "", reply
	}
	return true
}

// fromServer leaves out the armed publish's answer, and cuts the connection after it if asked.
func (p *ackDropper) fromServer(op []string, client, server net.Conn) bool {
	if (op[0] != "MSG" && op[0] != "HMSG") || len(op) < 2 {
		return true
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.reply == "" || op[1] != p.reply {
		return true
	}
	p.reply = ""
	p.dropped++
	if p.cut {
		p.downUntil = time.Now().Add(p.away)
		client.Close()
		server.Close()
	}
	return false
}

func (p *ackDropper) drop(conns ...net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range conns {
		c.Close()
		delete(p.conns, c)
	}
}

func (p *ackDropper) close() {
	p.ln.Close()
	p.mu.Lock()
	p.closed = true
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// pipe copies the NATS protocol from src to dst one operation at a time: a control line and,
// for PUB, HPUB, MSG and HMSG, its payload. keep sees the line's fields (the operation upper
// case) and says whether the operation is passed on.
func pipe(dst io.Writer, src io.Reader, keep func(op []string) bool) error {
	r := bufio.NewReaderSize(src, 64<<10)
	for {
		line, err := r.ReadBytes('\n')
		if err != nil {
			return err
		}
		op := strings.Fields(string(line))
		if len(op) == 0 {
			continue
		}
		op[0] = strings.ToUpper(op[0])
		size := 0
		switch op[0] {
		case "PUB", "HPUB", "MSG", "HMSG":
			// The last field is the payload's size (headers included).
			if size, err = strconv.Atoi(op[len(op)-1]); err != nil {
				return err
			}
			size += 2 // CRLF
		}
		msg := make([]byte, len(line)+size)
		copy(msg, line)
		if _, err := io.ReadFull(r, msg[len(line):]); err != nil {
			return err
		}
		if keep(op) {
			if _, err := dst.Write(msg); err != nil {
				return err
			}
		}
	}
}

// proxied starts NATS (a single server, or a cluster of three with three replicas) and opens
// a Log on it through an ackDropper.
func proxied(t *testing.T, replicas int, timeout time.Duration) (*eventlog.Log, *ackDropper) {
	t.Helper()
	var addr string
	if replicas == 1 {
		addr = freeport.Addr(t)
		_, port, _ := net.SplitHostPort(addr)
		n, _ := strconv.Atoi(port)
		ns := natstest.Single(t, n, t.TempDir())()
		t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	} else {
		_, urls := natstest.Cluster(t, 3)
		addr = strings.TrimPrefix(urls[0], "nats://")
	}
	p := newAckDropper(t, addr)
	open, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	// Short requests: an append whose answer is lost waits Timeout for it (with replicas, each
	// attempt does). No periodic probes: the ones after a failed write are enough.
	l, err := eventlog.Open(open, eventlog.Config{URL: p.URL(), Replicas: replicas, Timeout: timeout, ProbeInterval: time.Hour})
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })
	return l, p
}

// requireLandedOnce checks, as a reader of the log, that the append numbered seq after the
// task's after is the task's last event, holds rec, and is stored once.
func requireLandedOnce(t *testing.T, l *eventlog.Log, id string, after, seq uint64, want proto.Message) {
	t.Helper()
	ctx := t.Context()
	last, err := l.Last(ctx, "alice", id)
	require.NoError(t, err)
	require.Equal(t, seq, last.Seq)
	require.True(t, proto.Equal(want, last.Record), "the last event is the appended record:\n got %v\nwant %v", last.Record, want)

	subject := eventlog.Subject("alice", id)
	e, err := l.Next(ctx, subject, after+1)
	require.NoError(t, err)
	require.Equal(t, seq, e.Seq, "the first event after the fence is the append")
	_, err = l.Next(ctx, subject, seq+1)
	require.ErrorIs(t, err, eventlog.ErrNotFound, "the append is stored once")
}

// TestLog_AppendFindsAWriteWhoseAckWasLost: an append whose acknowledgement is lost (it times
// out, or the connection drops after the write was sent) but which JetStream stored is
// reported as appended, with its sequence, and numbered so; it is stored once, and the task's
// next append, fenced on it, is taken.
func TestLog_AppendFindsAWriteWhoseAckWasLost(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		create  bool          // the lost append is the task's create
		cut     bool          // the connection drops with the acknowledgement
		away    time.Duration // with cut, the server is out of reach this long
		timeout time.Duration // Config.Timeout [1s]: the append's wait for its answer
	}{
		{name: "ack lost"},
		{name: "ack of a create lost", create: true},
		// The client is back (after Config's 250 ms reconnect wait) before the append's wait
		// for its acknowledgement ends, and reads the task's last event then.
		{name: "connection dropped before the ack", cut: true},
		// The client is still away when the append's wait ends (2 s), back 2.5 s after the
		// append plus a reconnect wait: its read of the task's last event is tried again until
		// then, within its 2 s.
		{name: "connection down past the ack wait", cut: true, away: 2500 * time.Millisecond, timeout: 2 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			l, p := proxied(t, 1, cmp.Or(tc.timeout, time.Second))
			ctx := t.Context()
			subject := eventlog.Subject("alice", "T1")

			var after uint64
			if !tc.create {
				var err error
				after, err = l.Append(ctx, record("T1", taskhubv1.EventKind_EVENT_KIND_CREATED, taskhubv1.TaskState_TASK_STATE_QUEUED), 0)
				require.NoError(t, err)
			}
			p.arm(subject, tc.cut, tc.away)
			rec := record("T1", taskhubv1.EventKind_EVENT_KIND_STARTED, taskhubv1.TaskState_TASK_STATE_RUNNING)
			if tc.create {
				rec = record("T1", taskhubv1.EventKind_EVENT_KIND_CREATED, taskhubv1.TaskState_TASK_STATE_QUEUED)
			}
			start := time.Now()
			seq, err := l.Append(ctx, rec, after)
			t.Logf("append with its acknowledgement lost: seq %d, err %v, in %v", seq, err, time.Since(start).Round(time.Millisecond))
			publishes, dropped := p.seen(subject)
			require.Equal(t, 1, dropped, "the proxy lost the acknowledgement")
			if !tc.create {
				publishes-- // the create's
			}
			require.Equal(t, 1, publishes, "the append is sent once: no retry without replicas")
			require.NoError(t, err, "the append landed")
			require.Greater(t, seq, after)
			require.Equal(t, seq, rec.Event.Seq, "the record is numbered with its sequence")
			require.Equal(t, seq, rec.Event.Task.Seq)
			require.GreaterOrEqual(t, l.Appended(), seq)
			requireLandedOnce(t, l, "T1", after, seq, rec)

			// The log works: readiness stays green, and the task's next append, fenced on seq,
			// is taken at once.
			require.NoError(t, l.Ready(), "an append that was stored turned readiness red")
			next, err := l.Append(ctx, record("T1", taskhubv1.EventKind_EVENT_KIND_COMPLETED, taskhubv1.TaskState_TASK_STATE_COMPLETED), seq)
			require.NoError(t, err)
			require.Greater(t, next, seq)
		})
	}
}

// TestLog_AppendRetriedFindsItsFirstAttempt: on a replicated log an attempt whose answer does
// not come is sent again; when the first attempt was stored after all, the fence refuses the
// second as a conflict, and the append is still reported as appended, numbered as the first
// attempt, and stored once.
func TestLog_AppendRetriedFindsItsFirstAttempt(t *testing.T) {
	t.Parallel()
	l, p := proxied(t, 3, time.Second)
	ctx := t.Context()
	subject := eventlog.Subject("alice", "T1")

	first, err := l.Append(ctx, record("T1", taskhubv1.EventKind_EVENT_KIND_CREATED, taskhubv1.TaskState_TASK_STATE_QUEUED), 0)
	require.NoError(t, err)
	p.arm(subject, false, 0)
	rec := record("T1", taskhubv1.EventKind_EVENT_KIND_STARTED, taskhubv1.TaskState_TASK_STATE_RUNNING)
	// A deadline past the first attempt's (Timeout), so that there is a second.
	call, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	start := time.Now()
	seq, err := l.Append(call, rec, first)
	t.Logf("append with its first acknowledgement lost: seq %d, err %v, in %v", seq, err, time.Since(start).Round(time.Millisecond))
	publishes, dropped := p.seen(subject)
	require.Equal(t, 1, dropped, "the proxy lost the first attempt's acknowledgement")
	require.Equal(t, 3, publishes, "the create, and the append sent twice")
	require.NoError(t, err, "the first attempt landed")
	require.Greater(t, seq, first)
	require.Equal(t, seq, rec.Event.Seq, "the record is numbered with its sequence")
	require.Equal(t, seq, rec.Event.Task.Seq)
	requireLandedOnce(t, l, "T1", first, seq, rec)

	next, err := l.Append(ctx, record("T1", taskhubv1.EventKind_EVENT_KIND_COMPLETED, taskhubv1.TaskState_TASK_STATE_COMPLETED), seq)
	require.NoError(t, err)
	require.Greater(t, next, seq)
}
