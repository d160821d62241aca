package eventlog

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	storagev1 "github.com/taskhub/taskhub/gen/taskhub/storage/v1"
)

// Stream names.
const (
	EventStream = "TASKS"
	QueueStream = "TASKQ"
	MetaStream  = "TASKHUB"
)

// Errors a Log returns that callers act on.
var (
	// ErrNotFound means no message matched.
	ErrNotFound = errors.New("eventlog: not found")
	// ErrConflict means the subject's last sequence was not the expected one: another writer
	// appended first. Reload the task and try again.
	ErrConflict = errors.New("eventlog: another append came first")
	// ErrUnavailable means NATS did not answer; nothing was written that the caller can rely on.
	ErrUnavailable = errors.New("eventlog: the event log is unavailable")
)

// Config says where the log lives and how it behaves.
type Config struct {
	// DataDir holds the embedded server's files (under DataDir/jetstream). Ignored with URL.
	DataDir string
	// URL of an external NATS server or cluster; empty runs NATS embedded in the process.
	URL string
	// SyncAlways fsyncs every write (embedded server only): slower, but survives power loss.
	SyncAlways bool
	// AckWait is how long a queue delivery stays leased without a renewal before JetStream
	// redelivers it. The hub sets it a little above its own lease timeout.
	AckWait time.Duration
	// Duplicates is how long idempotency keys (Nats-Msg-Id) are remembered; 24h when 0.
	Duplicates time.Duration
	// Timeout bounds each request to NATS; 10s when 0.
	Timeout time.Duration
	// Logger receives the embedded server's warnings and errors; slog.Default() when nil.
	Logger *slog.Logger
}

// Log is the event log and the task queue.
type Log struct {
	cfg    Config
	log    *slog.Logger
	ns     *server.Server // nil with an external server
	nc     *nats.Conn
	js     jetstream.JetStream
	events jetstream.Stream
	queue  jetstream.Stream
	meta   jetstream.Stream
	epoch  string

	consumersMu sync.Mutex
	consumers   map[string]jetstream.Consumer // durable pull consumer of each mode
}

// Open starts the embedded NATS server (unless cfg.URL is set), connects, and creates or
// updates the streams.
func Open(ctx context.Context, cfg Config) (*Log, error) {
	if cfg.Duplicates == 0 {
		cfg.Duplicates = 24 * time.Hour
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.AckWait == 0 {
		cfg.AckWait = 35 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	l := &Log{cfg: cfg, log: cfg.Logger}
	if err := l.connect(); err != nil {
		l.Close()
		return nil, err
	}
	if err := l.createStreams(ctx); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

func (l *Log) connect() error {
	// While disconnected, publishes fail at once instead of being buffered and sent after a
	// reconnect: a caller told "unavailable" must not have its write land later behind its back.
	opts := []nats.Option{nats.Name("taskhub"), nats.MaxReconnects(-1), nats.ReconnectBufSize(-1),
		nats.ReconnectWait(250 * time.Millisecond)}
	url := l.cfg.URL
	if url == "" {
		if l.cfg.DataDir == "" {
			return errors.New("eventlog: a data directory or a NATS URL is required")
		}
		ns, err := server.NewServer(&server.Options{
			ServerName: "taskhub",
			JetStream:  true,
			StoreDir:   filepath.Join(l.cfg.DataDir, "jetstream"),
			SyncAlways: l.cfg.SyncAlways,
			DontListen: true,
			NoSigs:     true,
		})
		if err != nil {
			return fmt.Errorf("eventlog: embedded NATS server: %w", err)
		}
		ns.SetLoggerV2(natsLogger{l.log.With("component", "nats")}, false, false, false)
		ns.Start()
		if !ns.ReadyForConnections(30 * time.Second) {
			ns.Shutdown()
			return errors.New("eventlog: the embedded NATS server did not start within 30s")
		}
		l.ns = ns
		opts = append(opts, nats.InProcessServer(ns))
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		return fmt.Errorf("eventlog: connect to NATS: %w", err)
	}
	l.nc = nc
	js, err := jetstream.New(nc, jetstream.WithDefaultTimeout(l.cfg.Timeout))
	if err != nil {
		return fmt.Errorf("eventlog: JetStream: %w", err)
	}
	l.js = js
	return nil
}

func (l *Log) createStreams(ctx context.Context) error {
	var err error
	l.events, err = l.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        EventStream,
		Description: "taskhub task events: subject tasks.<owner>.<task id>, one storage.v1.Record each",
		Subjects:    []string{"tasks.>"},
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		Duplicates:  l.cfg.Duplicates,
		AllowDirect: true,
	})
	if err != nil {
		return fmt.Errorf("eventlog: create stream %s: %w", EventStream, err)
	}
	info := l.events.CachedInfo()
	l.epoch = fmt.Sprintf("%s.%d", info.Config.Name, info.Created.UnixNano())

	l.meta, err = l.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:              MetaStream,
		Description:       "taskhub's own state: taskhub.compacted, the compaction watermark of " + EventStream,
		Subjects:          []string{"taskhub.>"},
		Storage:           jetstream.FileStorage,
		MaxMsgsPerSubject: 1,
		AllowDirect:       true,
	})
	if err != nil {
		return fmt.Errorf("eventlog: create stream %s: %w", MetaStream, err)
	}

	l.queue, err = l.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:                 QueueStream,
		Description:          "taskhub task queue: subject taskq.<mode>.<task id>, one message per queued task",
		Subjects:             []string{"taskq.>"},
		Storage:              jetstream.FileStorage,
		Retention:            jetstream.WorkQueuePolicy,
		MaxMsgsPerSubject:    1,
		Discard:              jetstream.DiscardNew,
		DiscardNewPerSubject: true,
		AllowDirect:          true,
	})
	if err != nil {
		return fmt.Errorf("eventlog: create stream %s: %w", QueueStream, err)
	}
	return nil
}

// Close disconnects and stops the embedded server. Fetches and follows under way end.
func (l *Log) Close() error {
	if l.nc != nil {
		l.nc.Close()
	}
	if l.ns != nil {
		l.ns.Shutdown()
		l.ns.WaitForShutdown()
	}
	return nil
}

// Epoch is the event log's identity: the stream's name and creation time. A stream that is
// deleted and created again gets a new epoch, so sequence numbers from the old one never match.
func (l *Log) Epoch() string { return l.epoch }

// Healthy reports whether the connection to NATS is up.
func (l *Log) Healthy() bool { return l.nc.Status() == nats.CONNECTED }

// Subject is the event log subject of a task. Owner may be "*" to match any owner.
func Subject(owner, id string) string { return "tasks." + owner + "." + id }

// OwnerFilter is the subject filter matching every task of owner.
func OwnerFilter(owner string) string { return "tasks." + owner + ".>" }

// compactedSubject holds the compaction watermark, a decimal seq, in the meta stream (which keeps
// one message per subject): the event stream holds nothing but task events.
const compactedSubject = "taskhub.compacted"

// Compact removes every event of a task but its last (its final state).
func (l *Log) Compact(ctx context.Context, owner, id string) error {
	err := l.events.Purge(ctx, jetstream.WithPurgeSubject(Subject(owner, id)), jetstream.WithPurgeKeep(1))
	if err != nil {
		return l.unavailable("compact", err)
	}
	return nil
}

// Compacted returns the compaction watermark: events with a seq at or below it may have been
// removed by Compact. 0 when nothing was ever compacted.
func (l *Log) Compacted(ctx context.Context) (uint64, error) {
	m, err := l.meta.GetLastMsgForSubject(ctx, compactedSubject)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, l.unavailable("compacted", err)
	}
	w, err := strconv.ParseUint(string(m.Data), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("eventlog: compaction watermark %q: %w", m.Data, err)
	}
	return w, nil
}

// SetCompacted records the compaction watermark (the message replaces the previous one).
func (l *Log) SetCompacted(ctx context.Context, w uint64) error {
	if _, err := l.js.Publish(ctx, compactedSubject, strconv.AppendUint(nil, w, 10)); err != nil {
		return l.unavailable("set compacted", err)
	}
	return nil
}

// Entry is one event log message.
type Entry struct {
	// Seq is the stream sequence; Record.Event.Seq and Record.Event.Task.Seq are set to it.
	Seq     uint64
	Subject string
	Record  *storagev1.Record
}

func decode(subject string, seq uint64, data []byte) (*Entry, error) {
	rec := &storagev1.Record{}
	if err := proto.Unmarshal(data, rec); err != nil {
		return nil, fmt.Errorf("eventlog: decode message %d on %s: %w", seq, subject, err)
	}
	if rec.GetEvent().GetTask() == nil {
		return nil, fmt.Errorf("eventlog: message %d on %s has no task", seq, subject)
	}
	rec.Event.Seq = seq
	rec.Event.Task.Seq = seq
	return &Entry{Seq: seq, Subject: subject, Record: rec}, nil
}

// Append writes rec as the next event of the task, if the subject's last sequence is still
// expectLast (0: the task has no events yet). It returns the new sequence. With a msgID seen
// within the de-duplication window nothing is written: it returns the first message's sequence
// and dup = true.
func (l *Log) Append(ctx context.Context, owner, id string, rec *storagev1.Record, expectLast uint64, msgID string) (seq uint64, dup bool, err error) {
	data, err := proto.Marshal(rec)
	if err != nil {
		return 0, false, fmt.Errorf("eventlog: encode: %w", err)
	}
	opts := []jetstream.PublishOpt{jetstream.WithExpectLastSequencePerSubject(expectLast)}
	if msgID != "" {
		opts = append(opts, jetstream.WithMsgID(msgID))
	}
	ack, err := l.js.Publish(ctx, Subject(owner, id), data, opts...)
	if err != nil {
		if hasCode(err, jetstream.JSErrCodeStreamWrongLastSequence) {
			return 0, false, ErrConflict
		}
		return 0, false, l.unavailable("append", err)
	}
	return ack.Sequence, ack.Duplicate, nil
}

// Last returns the last event of a task: its current state. Owner may be "*".
func (l *Log) Last(ctx context.Context, owner, id string) (*Entry, error) {
	m, err := l.events.GetLastMsgForSubject(ctx, Subject(owner, id))
	if err != nil {
		return nil, l.getErr("last", err)
	}
	return decode(m.Subject, m.Sequence, m.Data)
}

// Get returns the event with sequence seq.
func (l *Log) Get(ctx context.Context, seq uint64) (*Entry, error) {
	m, err := l.events.GetMsg(ctx, seq)
	if err != nil {
		return nil, l.getErr("get", err)
	}
	return decode(m.Subject, m.Sequence, m.Data)
}

// Next returns the first event at or after sequence from on a subject matching filter.
func (l *Log) Next(ctx context.Context, filter string, from uint64) (*Entry, error) {
	m, err := l.events.GetMsg(ctx, from, jetstream.WithGetMsgSubject(filter))
	if err != nil {
		return nil, l.getErr("next", err)
	}
	return decode(m.Subject, m.Sequence, m.Data)
}

// Bounds returns the first and last sequence the event log holds (0, 0 when empty).
func (l *Log) Bounds(ctx context.Context) (first, last uint64, err error) {
	info, err := l.events.Info(ctx)
	if err != nil {
		return 0, 0, l.unavailable("info", err)
	}
	if info.State.Msgs == 0 {
		return 0, info.State.LastSeq, nil
	}
	return info.State.FirstSeq, info.State.LastSeq, nil
}

// TaskIDs returns the ids of every task of owner, in no particular order.
func (l *Log) TaskIDs(ctx context.Context, owner string) ([]string, error) {
	info, err := l.events.Info(ctx, jetstream.WithSubjectFilter(Subject(owner, "*")))
	if err != nil {
		return nil, l.unavailable("list", err)
	}
	ids := make([]string, 0, len(info.State.Subjects))
	for subj := range info.State.Subjects {
		ids = append(ids, subj[strings.LastIndexByte(subj, '.')+1:])
	}
	return ids, nil
}

// Follow calls fn with the last event of every task, in sequence order, then with every new
// event as it is appended, on one goroutine, until the returned stop is called or the log is
// closed. pending is how many messages the follower has yet to deliver at the time of this one:
// when it reaches 0 the caller has seen every task.
func (l *Log) Follow(ctx context.Context, fn func(e *Entry, pending uint64)) (stop func(), err error) {
	cons, err := l.events.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{"tasks.>"},
		DeliverPolicy:  jetstream.DeliverLastPerSubjectPolicy,
	})
	if err != nil {
		return nil, l.unavailable("follow", err)
	}
	cc, err := cons.Consume(func(m jetstream.Msg) {
		md, err := m.Metadata()
		if err != nil {
			l.log.Error("event log: message without metadata", "subject", m.Subject(), "err", err)
			return
		}
		e, err := decode(m.Subject(), md.Sequence.Stream, m.Data())
		if err != nil {
			l.log.Error("event log: skipping a message", "err", err)
			e = &Entry{Seq: md.Sequence.Stream, Subject: m.Subject()}
		}
		fn(e, md.NumPending)
	})
	if err != nil {
		return nil, l.unavailable("follow", err)
	}
	return cc.Stop, nil
}

func (l *Log) getErr(op string, err error) error {
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return ErrNotFound
	}
	return l.unavailable(op, err)
}

func (l *Log) unavailable(op string, err error) error {
	return fmt.Errorf("%w: %s: %w", ErrUnavailable, op, err)
}

func hasCode(err error, code jetstream.ErrorCode) bool {
	apiErr, ok := errors.AsType[*jetstream.APIError](err)
	return ok && apiErr.ErrorCode == code
}

// natsLogger passes the embedded server's warnings and errors to slog; its chatter is dropped.
type natsLogger struct{ log *slog.Logger }

func (n natsLogger) Noticef(string, ...any) {}
func (n natsLogger) Debugf(string, ...any)  {}
func (n natsLogger) Tracef(string, ...any)  {}
func (n natsLogger) Warnf(format string, v ...any) {
	n.log.Warn(fmt.Sprintf(format, v...))
}
func (n natsLogger) Errorf(format string, v ...any) {
	n.log.Error(fmt.Sprintf(format, v...))
}
func (n natsLogger) Fatalf(format string, v ...any) {
	n.log.Error(fmt.Sprintf(format, v...), "fatal", true)
}
