package eventlog

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

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
	// ErrUnavailable means the write was not made (or a read could not be answered).
	ErrUnavailable = errors.New("eventlog: the event log is unavailable")
	// ErrUncertain means a write was sent but not confirmed: it may or may not be stored.
	ErrUncertain = errors.New("eventlog: the event log did not confirm the write")
)

// Config says where the log lives and how it behaves. Zero values take the defaults in brackets.
type Config struct {
	// DataDir holds the embedded server's files (under DataDir/jetstream). Ignored with URL.
	DataDir string
	// URL of an external NATS server or cluster; empty runs NATS embedded in the process.
	URL string
	// Cluster, when enabled, makes the embedded server a node of a cluster. Ignored with URL.
	Cluster Cluster
	// Node names this process among those that share the log: letters, digits, '-' and '_'
	// [the cluster's node name; else "taskhub"]. Processes sharing one external NATS need
	// distinct names.
	Node string
	// Replicas is how many copies JetStream keeps of each stream, on as many nodes [3 in a
	// cluster of three or more nodes, else the number of nodes; 1 without a cluster or URL].
	// With URL it must not exceed the external cluster's JetStream nodes.
	Replicas int
	// SyncAlways fsyncs every write (embedded server only): slower, but survives power loss.
	SyncAlways bool
	// SyncInterval is how often the embedded server fsyncs its files without SyncAlways [2m,
	// JetStream's default].
	SyncInterval time.Duration
	// AckWait is how long a queue delivery stays leased without a renewal before JetStream
	// redelivers it. The hub sets it a little above its own lease timeout [35s].
	AckWait time.Duration
	// Duplicates is how long idempotency keys are remembered [24h].
	Duplicates time.Duration
	// Timeout bounds each request to NATS [10s].
	Timeout time.Duration
	// ProbeInterval is how often a write to each stream checks that the log takes writes [1s].
	ProbeInterval time.Duration
	// RestartAfter is how long writes may fail before the embedded server is restarted to
	// reopen its stores [3s]. Restarts then back off, up to a minute apart.
	RestartAfter time.Duration
	// QueueIdle is how long a mode's queue consumer lives without claims or leases before
	// JetStream removes it; the next task of the mode creates it again [1h].
	QueueIdle time.Duration
	// SessionTTL is how long a browser session lives [30 days].
	SessionTTL time.Duration
	// LeadTimeout is how long the leader of the processes sharing the log may go without
	// renewing its lead before another takes it over (see Lead) [10s].
	LeadTimeout time.Duration
	// Logger receives the embedded server's warnings and errors [slog.Default()].
	Logger *slog.Logger
}

// Log is the event log and the task queue.
type Log struct {
	cfg         Config
	node        string // Config.Node
	logger      *slog.Logger
	emb         *embedded // nil with an external server
	nc          *nats.Conn
	js          jetstream.JetStream
	events      jetstream.Stream
	queue       jetstream.Stream
	meta        jetstream.Stream
	sessions    jetstream.KeyValue
	idempotency jetstream.KeyValue
	webhooks    jetstream.KeyValue
	epoch       string

	consumersMu sync.Mutex
	consumers   map[string]jetstream.Consumer // the queue consumers this process knows exist, by mode

	appended       atomic.Uint64 // the highest sequence this process appended
	own            own           // the records this process appended, for the followers (own.go)
	followers      sync.Map      // *follower: the live ones (a test stalls them)
	following      atomic.Int32  // how many followers are live
	batch          *batcher      // nil: appends are a request each (batch.go)
	followRestarts atomic.Uint64 // consumers the followers replaced (follow.go)

	health    health
	lead      lead
	kick      chan struct{}   // cap 1: probe now
	recovered chan struct{}   // cap 1
	life      context.Context // ends with Close: the log's own goroutines and calls stop
	stop      context.CancelFunc
	wg        sync.WaitGroup
	closeOnce sync.Once
}

// Open starts the embedded NATS server (unless cfg.URL is set), connects, creates or updates
// the streams, and starts probing that they take writes (see Ready).
func Open(ctx context.Context, cfg Config) (*Log, error) {
	cfg.Duplicates = cmp.Or(cfg.Duplicates, 24*time.Hour)
	cfg.Timeout = cmp.Or(cfg.Timeout, 10*time.Second)
	cfg.AckWait = cmp.Or(cfg.AckWait, 35*time.Second)
	cfg.ProbeInterval = cmp.Or(cfg.ProbeInterval, time.Second)
	cfg.RestartAfter = cmp.Or(cfg.RestartAfter, 3*time.Second)
	cfg.QueueIdle = cmp.Or(cfg.QueueIdle, time.Hour)
	cfg.SessionTTL = cmp.Or(cfg.SessionTTL, 30*24*time.Hour)
	cfg.LeadTimeout = cmp.Or(cfg.LeadTimeout, 10*time.Second)
	cfg.Logger = cmp.Or(cfg.Logger, slog.Default())
	if cfg.URL == "" && cfg.Cluster.Enabled() {
		if err := cfg.Cluster.validate(); err != nil {
			return nil, err
		}
		cfg.Replicas = cmp.Or(cfg.Replicas, min(3, cfg.Cluster.nodes()))
		if cfg.Replicas > cfg.Cluster.nodes() {
			return nil, fmt.Errorf("eventlog: %d replicas need as many nodes; the cluster has %d", cfg.Replicas, cfg.Cluster.nodes())
		}
	} else {
		cfg.Cluster = Cluster{}
	}
	cfg.Replicas = cmp.Or(cfg.Replicas, 1)
	cfg.Node = cmp.Or(cfg.Node, cfg.Cluster.Name, "taskhub")
	if !validNodeName(cfg.Node) {
		return nil, fmt.Errorf("eventlog: node name %q: use letters, digits, '-' and '_'", cfg.Node)
	}
	if cfg.Replicas < 1 || cfg.Replicas > 5 {
		return nil, fmt.Errorf("eventlog: %d replicas: JetStream keeps 1 to 5", cfg.Replicas)
	}
	l := &Log{cfg: cfg, node: cfg.Node, logger: cfg.Logger, consumers: map[string]jetstream.Consumer{},
		kick: make(chan struct{}, 1), recovered: make(chan struct{}, 1)}
	l.life, l.stop = context.WithCancel(context.Background())
	if err := l.connect(); err != nil {
		l.Close()
		return nil, err
	}
	if err := l.createStreamsWhenReady(ctx); err != nil {
		l.Close()
		return nil, err
	}
	if l.fastBatches() {
		b, err := newBatcher(l)
		if err != nil {
			l.Close()
			return nil, err
		}
		l.batch = b
	}
	l.wg.Add(1)
	go l.watch()
	return l, nil
}

// fastBatches reports whether appends go to the event stream in fast batches (batch.go): with
// the embedded server of a single node.
func (l *Log) fastBatches() bool {
	return l.emb != nil && !l.cfg.Cluster.Enabled() && l.cfg.Replicas == 1
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
		if l.cfg.Cluster.Enabled() && singleNodeData(l.cfg.DataDir) {
			return fmt.Errorf("eventlog: %s holds the event log of a single node; a node of a cluster "+
				"would start an empty one in its place and hide it: give the node an empty data dir", l.cfg.DataDir)
		}
		emb := &embedded{dataDir: l.cfg.DataDir, cluster: l.cfg.Cluster, sync: l.cfg.SyncAlways, syncInterval: l.cfg.SyncInterval, logger: l.logger}
		if l.cfg.Cluster.Enabled() {
			emb.token = rand.Text()
			opts = append(opts, nats.Token(emb.token))
		}
		if err := emb.start(30 * time.Second); err != nil {
			return err
		}
		l.emb = emb
		opts = append(opts, nats.InProcessServer(emb))
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

// createStreamsWhenReady creates the streams; with replicas, once JetStream has the nodes to
// place them on. A node of a cluster that starts before the others waits for them here.
func (l *Log) createStreamsWhenReady(ctx context.Context) error {
	if l.cfg.Replicas == 1 {
		return l.createStreams(ctx)
	}
	logged := time.Time{}
	for {
		// Short attempts: on a cluster that is forming, a request may go unanswered (no meta
		// leader yet, or a create made meanwhile by another node), and the next attempt finds
		// what the last one made.
		attempt, cancel := context.WithTimeout(ctx, min(l.cfg.Timeout, 2*time.Second))
		err := l.createStreams(attempt)
		cancel()
		if err == nil || ctx.Err() != nil {
			return err
		}
		if time.Since(logged) > 5*time.Second {
			l.logger.Info("waiting for the cluster's nodes to place the streams' replicas", "replicas", l.cfg.Replicas, "err", err)
			logged = time.Now()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("eventlog: the cluster was not ready: %w", err)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func (l *Log) createStreams(ctx context.Context) error {
	// Direct gets may be answered by any replica, one that lags included: with replicas every
	// read goes to the stream's leader instead, so a read never misses an acknowledged write.
	direct := l.cfg.Replicas == 1
	var err error
	l.events, err = l.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        EventStream,
		Description: "taskhub task events: subject tasks.<owner>.<task id>, one storage.v1.Record each; " + probeEvents + ": write probes",
		Subjects:    []string{"tasks.>", probeEvents},
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		Replicas:    l.cfg.Replicas,
		AllowDirect: direct,
		// The embedded server alone: its stream has one writer's process, and one copy.
		AllowBatchPublish: l.fastBatches(),
	})
	if err != nil {
		return fmt.Errorf("eventlog: create stream %s: %w", EventStream, err)
	}
	info := l.events.CachedInfo()
	l.epoch = fmt.Sprintf("%s.%d", info.Config.Name, info.Created.UnixNano())

	l.meta, err = l.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:              MetaStream,
		Description:       "taskhub's own state: taskhub.compacted, the compaction watermark of " + EventStream + "; " + livePrefix + "<owner>.<task id>: the live index; " + leadSubject + ": the node that settles finished tasks; " + probeMeta + ": write probes",
		Subjects:          []string{"taskhub.>"},
		Storage:           jetstream.FileStorage,
		MaxMsgsPerSubject: 1,
		Replicas:          l.cfg.Replicas,
		AllowDirect:       direct,
	})
	if err != nil {
		return fmt.Errorf("eventlog: create stream %s: %w", MetaStream, err)
	}

	l.queue, err = l.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:                 QueueStream,
		Description:          "taskhub task queue: subject taskq.<mode>.<task id>, one message per queued task; " + probeQueue + ".<node>: write probes",
		Subjects:             []string{"taskq.>", probeQueue + ".>"},
		Storage:              jetstream.FileStorage,
		Retention:            jetstream.WorkQueuePolicy,
		MaxMsgsPerSubject:    1,
		Discard:              jetstream.DiscardNew,
		DiscardNewPerSubject: true,
		Replicas:             l.cfg.Replicas,
		AllowDirect:          direct,
	})
	if err != nil {
		return fmt.Errorf("eventlog: create stream %s: %w", QueueStream, err)
	}

	if l.sessions, err = l.bucket(ctx, sessionBucket, l.cfg.SessionTTL,
		"taskhub browser sessions: SHA-256 of the cookie -> storage.v1.Session"); err != nil {
		return err
	}
	if l.idempotency, err = l.bucket(ctx, idempotencyBucket, l.cfg.Duplicates,
		"taskhub idempotency keys: SHA-256 of owner and key -> the task id of the first create"); err != nil {
		return err
	}
	if l.webhooks, err = l.bucket(ctx, webhookBucket, webhookTTL,
		"taskhub webhook cursors: task id -> storage.v1.WebhookCursor, where its deliveries are"); err != nil {
		return err
	}
	// A new log gets its live index complete (empty) from the start.
	_, err = l.hasLiveIndex(ctx)
	return err
}

// bucket creates (or updates) a key-value bucket whose entries expire after ttl. Replicated, it
// reads from the bucket's leader, as the streams do (see createStreams).
func (l *Log) bucket(ctx context.Context, name string, ttl time.Duration, description string) (jetstream.KeyValue, error) {
	cfg := jetstream.KeyValueConfig{
		Bucket:      name,
		Description: description,
		TTL:         ttl,
		Storage:     jetstream.FileStorage,
		Replicas:    l.cfg.Replicas,
	}
	var kv jetstream.KeyValue
	var err error
	if l.cfg.Replicas == 1 {
		kv, err = l.js.CreateOrUpdateKeyValue(ctx, cfg)
	} else {
		kv, err = l.leaderBucket(ctx, cfg)
	}
	if err != nil {
		return nil, fmt.Errorf("eventlog: create bucket %s: %w", name, err)
	}
	return kv, nil
}

// leaderBucket creates a replicated bucket, or brings an existing one to cfg, without the direct
// gets a key-value bucket has by default (any replica may answer them, one that lags included),
// and binds it so that its reads go to the leader. It changes the bucket's stream only where it
// differs from cfg: the nodes of a cluster all run this as they start, and a bucket updated
// back and forth by them would keep its replicas busy.
func (l *Log) leaderBucket(ctx context.Context, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	_, err := l.js.CreateKeyValue(ctx, cfg)
	if err != nil && !errors.Is(err, jetstream.ErrBucketExists) {
		return nil, err
	}
	st, err := l.js.Stream(ctx, "KV_"+cfg.Bucket)
	if err != nil {
		return nil, err
	}
	have := st.CachedInfo().Config
	want := have
	want.AllowDirect, want.MaxAge, want.Replicas, want.Description = false, cfg.TTL, cfg.Replicas, cfg.Description
	if want.AllowDirect != have.AllowDirect || want.MaxAge != have.MaxAge || want.Replicas != have.Replicas || want.Description != have.Description {
		if _, err := l.js.UpdateStream(ctx, want); err != nil {
			return nil, err
		}
	}
	return l.js.KeyValue(ctx, cfg.Bucket)
}

// Close stops probing, disconnects and stops the embedded server. Fetches and follows under way
// end.
func (l *Log) Close() error {
	l.closeOnce.Do(func() {
		l.stop()
		l.wg.Wait()
		if l.nc != nil {
			l.nc.Close()
		}
		if l.emb != nil {
			l.emb.stop()
		}
	})
	return nil
}

// Epoch is the event log's identity: the stream's name and creation time. A stream that is
// deleted and created again gets a new epoch, so sequence numbers from the old one never match.
func (l *Log) Epoch() string { return l.epoch }

// Node is this process's name among those that share the log (Config.Node).
func (l *Log) Node() string { return l.node }

// Leaders returns, for each stream the log uses (buckets by their streams' names) and each
// queue consumer ("TASKQ consumer <name>"), the node whose server leads it; one whose leader
// cannot be read is left out. Empty without replicas. Losing a node pauses the writes to the
// streams it leads, and the claims of the consumers it leads, while they elect another.
func (l *Log) Leaders(ctx context.Context) map[string]string {
	out := map[string]string{}
	if l.cfg.Replicas == 1 {
		return out
	}
	for _, name := range []string{EventStream, QueueStream, MetaStream, "KV_" + idempotencyBucket, "KV_" + sessionBucket, "KV_" + webhookBucket} {
		s, err := l.js.Stream(ctx, name)
		if err != nil {
			continue
		}
		if c := s.CachedInfo().Cluster; c != nil && c.Leader != "" {
			out[name] = c.Leader
		}
	}
	consumers := l.queue.ListConsumers(ctx)
	for ci := range consumers.Info() {
		if c := ci.Cluster; c != nil && c.Leader != "" {
			out[QueueStream+" consumer "+ci.Name] = c.Leader
		}
	}
	return out
}

// Subject is the event log subject of a task. Owner may be "*" to match any owner.
func Subject(owner, id string) string { return "tasks." + owner + "." + id }

// OwnerFilter is the subject filter matching every task of owner.
func OwnerFilter(owner string) string { return "tasks." + owner + ".>" }

// compactedSubject holds the compaction watermark, a decimal seq, in the meta stream (which keeps
// one message per subject): the event stream holds nothing but task events.
const compactedSubject = "taskhub.compacted"

// Compact removes every event of a task but its last (its final state), and then the task from
// the live index: its history is settled.
func (l *Log) Compact(ctx context.Context, owner, id string) error {
	if err := l.writable("compact"); err != nil {
		return err
	}
	err := l.events.Purge(ctx, jetstream.WithPurgeSubject(Subject(owner, id)), jetstream.WithPurgeKeep(1))
	if err != nil {
		return l.writeErr(ctx, "compact", err)
	}
	return l.Retire(ctx, owner, id)
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

// SetCompacted raises the compaction watermark to w: it is never lowered, whichever node of a
// cluster records it (the message replaces the previous one only if that is still the last).
func (l *Log) SetCompacted(ctx context.Context, w uint64) error {
	if err := l.writable("set compacted"); err != nil {
		return err
	}
	for {
		var cur, last uint64
		m, err := l.meta.GetLastMsgForSubject(ctx, compactedSubject)
		switch {
		case errors.Is(err, jetstream.ErrMsgNotFound):
		case err != nil:
			return l.unavailable("set compacted", err)
		default:
			last = m.Sequence
			if cur, err = strconv.ParseUint(string(m.Data), 10, 64); err != nil {
				return fmt.Errorf("eventlog: compaction watermark %q: %w", m.Data, err)
			}
		}
		if w <= cur {
			return nil
		}
		_, err = l.js.Publish(ctx, compactedSubject, strconv.AppendUint(nil, w, 10), jetstream.WithExpectLastSequencePerSubject(last))
		if hasCode(err, jetstream.JSErrCodeStreamWrongLastSequence) || hasCode(err, jetstream.JSErrCodeStreamWrongLastSequenceConstant) {
			continue // another node raised it meanwhile
		}
		if err != nil {
			return l.writeErr(ctx, "set compacted", err)
		}
		return nil
	}
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

// Append writes rec as the next event of its task (rec.Event.Task names the owner and id), if
// the task's last sequence is still expectLast (0: the task has no events yet: a create), and
// returns its sequence, which it sets as rec.Event.Seq and rec.Event.Task.Seq. rec is shared
// with this process's followers from the call on, whatever its outcome (a follower may get the
// message, and number rec, before Append gets its answer, or when the answer is lost): the
// caller must not change it, nor read its sequence before Append returns.
//
// It fails with ErrConflict when another append came first, with ErrUnavailable when nothing
// was written (at once while Ready fails), and with ErrUncertain when the write was sent but not
// confirmed (the server did not answer in time, or the connection dropped) and a read
// afterwards could not find it either: it may still be stored.
func (l *Log) Append(ctx context.Context, rec *storagev1.Record, expectLast uint64) (seq uint64, err error) {
	if err := l.writable("append"); err != nil {
		return 0, err
	}
	task := rec.GetEvent().GetTask()
	if task == nil {
		return 0, errors.New("eventlog: append: the record has no task")
	}
	data, err := proto.Marshal(rec)
	if err != nil {
		return 0, fmt.Errorf("eventlog: encode: %w", err)
	}
	if expectLast == 0 {
		// A create: into the live index first, so that no stored task is missing from it.
		if err := l.markLive(ctx, task.Owner, task.Id); err != nil {
			return 0, err
		}
	}
	subject := Subject(task.Owner, task.Id)
	// Held for the followers from before it is sent: one may get the message before this gets
	// its acknowledgement (own.go).
	var x *batched // the append in a batch, when appends go in batches (batch.go)
	if l.batching() {
		x = &batched{done: make(chan struct{})}
	}
	held := l.own.expect(subject, expectLast, rec, data, x)
	defer func() { l.own.drop(held) }() // unless stored settled it: the append failed, or may not have landed
	// The fence makes a second attempt safe: if the first landed after all, the second is
	// refused as a conflict, and the event found after expectLast is this one.
	m, attempts := fenced(subject, data, expectLast), 1
	if x != nil && held != nil { // a follower can number it
		x.m = m
		seq, err = l.batch.append(ctx, x)
		if batchRefused(err) { // not stored: the server took no batch, so send it alone
			m.Reply = ""
			seq, attempts, err = l.publish(ctx, m)
			attempts++ // a conflict looks for it in the log all the same
		}
	} else {
		seq, attempts, err = l.publish(ctx, m)
	}
	// stored numbers rec as decode numbers a message, and hands it to the followers unless one
	// has passed it (it may have decoded its message, when it was not held).
	stored := func(seq uint64) (uint64, error) {
		l.own.stored(held, rec, seq, len(data))
		held = nil // settled: the deferred drop need not take own's lock again
		l.wrote(seq)
		return seq, nil
	}
	switch {
	case err == nil:
		return stored(seq)
	case hasCode(err, jetstream.JSErrCodeStreamWrongLastSequence), hasCode(err, jetstream.JSErrCodeStreamWrongLastSequenceConstant):
		if attempts > 1 {
			if seq := l.landed(ctx, subject, expectLast, data); seq > 0 {
				return stored(seq)
			}
		}
		return 0, ErrConflict
	}
	// An append whose answer was lost may be stored: then it is one, and no failure of the
	// log's (its store answered the read that found it).
	if mayBeStored(err) {
		if seq := l.landed(ctx, subject, expectLast, data); seq > 0 {
			return stored(seq)
		}
	}
	return 0, l.writeErr(ctx, "append", err)
}

// wrote records that seq was appended, for the followers (follow.go).
func (l *Log) wrote(seq uint64) {
	for w := l.appended.Load(); seq > w && !l.appended.CompareAndSwap(w, seq); w = l.appended.Load() {
	}
}

// Appended is the highest sequence this process appended (0: none yet).
func (l *Log) Appended() uint64 { return l.appended.Load() }

// FollowerRestarts is how many stalled consumers the followers replaced (see followStall).
func (l *Log) FollowerRestarts() uint64 { return l.followRestarts.Load() }

// landed returns the sequence of an append whose answer was lost, if it landed after all, or 0:
// a task has one writer, so an event after expectLast with the same bytes is this one. A read
// that fails without an answer from JetStream (the connection that lost the answer is being
// made again) is tried again for up to 2 s; an answer, such as a store's refusal, is not.
func (l *Log) landed(ctx context.Context, subject string, expectLast uint64, data []byte) uint64 {
	check, cancel := context.WithTimeout(context.WithoutCancel(ctx), min(l.cfg.Timeout, 2*time.Second))
	defer cancel()
	for {
		m, err := l.events.GetLastMsgForSubject(check, subject)
		switch {
		case err == nil:
			if m.Sequence > expectLast && bytes.Equal(m.Data, data) {
				return m.Sequence
			}
			return 0
		case errors.Is(err, jetstream.ErrMsgNotFound):
			return 0
		}
		if _, answered := errors.AsType[*jetstream.APIError](err); answered {
			return 0 // asking again gets the same answer
		}
		select {
		case <-check.Done():
			return 0
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// publish sends m, a write that is safe to send twice (fenced by an expected sequence, or one
// whose repeat changes nothing), in attempts of 2 s, then 4, 8...  while ctx lasts: a replicated
// stream whose leader changes drops the requests in flight unanswered, and waiting for an answer until
// ctx ends would fail a write the next attempt makes. A ctx without a deadline gets
// Config.Timeout. It returns the sequence m was stored as, and how many attempts it made.
func (l *Log) publish(ctx context.Context, m *nats.Msg) (uint64, int, error) {
	if l.cfg.Replicas == 1 {
		// One replica: its leader never changes, and the attempts' contexts would cost every
		// write (3 % of an in-process progress report) for nothing.
		seq, err := l.request(ctx, m)
		return seq, 1, err
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, l.cfg.Timeout) // as one request would be
		defer cancel()
	}
	for n, wait := 1, min(2*time.Second, l.cfg.Timeout); ; n, wait = n+1, wait*2 {
		attempt, cancel := context.WithTimeout(ctx, wait)
		seq, err := l.request(attempt, m)
		timedOut := attempt.Err() == context.DeadlineExceeded
		cancel()
		if err == nil || !timedOut || ctx.Err() != nil {
			return seq, n, err
		}
	}
}

// writeErr classifies the error of a write that JetStream did not acknowledge. An answer from
// JetStream (an API error), or no stream listening, means nothing was written: ErrUnavailable.
// Anything else (a timeout, a dropped connection, the caller's context ending after the write
// was sent) means it may have been: ErrUncertain. Unless the caller's context ended, readiness
// turns red until a probe finds that writes work.
func (l *Log) writeErr(ctx context.Context, op string, err error) error {
	if ctx.Err() == nil || !errors.Is(err, ctx.Err()) {
		l.writeFailed(fmt.Errorf("%s: %w", op, err))
	}
	if !mayBeStored(err) {
		return l.unavailable(op, err)
	}
	return fmt.Errorf("%w: %s: %w", ErrUncertain, op, err)
}

// mayBeStored reports whether a write that failed with err may have been stored: an answer
// from JetStream (an API error), or no stream listening, means it was not.
func mayBeStored(err error) bool {
	if _, ok := errors.AsType[*jetstream.APIError](err); ok {
		return false
	}
	return !errors.Is(err, jetstream.ErrNoStreamResponse) && !errors.Is(err, nats.ErrNoResponders) &&
		!errors.Is(err, nats.ErrReconnectBufExceeded) && !errors.Is(err, errNotSent)
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

// followHeartbeat is how often the server tells the follower that its consumer is alive. The
// consumer lives on one node; after two missed heartbeats the follower makes a new one on a node
// that is up. With the client's default (5 s), a node whose consumer lived on a node that died
// gave its watchers no events for 10 s and more.
const followHeartbeat = time.Second

// Follow calls fn with the last event of every task that is active or not yet settled (see
// Retire), in sequence order, then with every new event as it is appended, on one goroutine,
// until the returned stop is called or the log is closed. Write probes come through as entries
// without a Record, so that the follower's position reaches the stream's last sequence. pending
// is how many messages the follower has yet to deliver at the time of this one: when it reaches
// 0 the caller has seen every task.
//
// It reads the live index (live.go): its cost grows with the tasks that matter, not with every
// task ever. A log written before the index existed is read whole, once, to fill it.
func (l *Log) Follow(ctx context.Context, fn func(e *Entry, pending uint64)) (stop func(), err error) {
	indexed, err := l.hasLiveIndex(ctx)
	if err != nil {
		return nil, err
	}
	if indexed {
		return l.followLive(ctx, fn)
	}

	fill, done, err := l.fillLive(ctx)
	if err != nil {
		return nil, err
	}
	filling := true
	return l.follow(ctx, 0, func(e *Entry, pending uint64) {
		if filling {
			fill(e)
			if pending == 0 {
				filling = false
				done()
			}
		}
		fn(e, pending)
	})
}

// entry is the Entry of a message of the event stream, and how many the consumer has yet to
// deliver. A probe, or a message that does not decode (logged), is an entry without a Record.
func (l *Log) entry(m jetstream.Msg) (e *Entry, pending uint64, ok bool) {
	md, err := m.Metadata()
	if err != nil {
		l.logger.Error("event log: message without metadata", "subject", m.Subject(), "err", err)
		return nil, 0, false
	}
	if m.Subject() == probeEvents {
		return &Entry{Seq: md.Sequence.Stream, Subject: m.Subject()}, md.NumPending, true
	}
	if rec := l.own.take(md.Sequence.Stream, m); rec != nil {
		return &Entry{Seq: md.Sequence.Stream, Subject: m.Subject(), Record: rec}, md.NumPending, true
	}
	if e, err = decode(m.Subject(), md.Sequence.Stream, m.Data()); err != nil {
		l.logger.Error("event log: skipping a message", "err", err)
		e = &Entry{Seq: md.Sequence.Stream, Subject: m.Subject()}
	}
	return e, md.NumPending, true
}

func (l *Log) getErr(op string, err error) error {
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return ErrNotFound
	}
	return l.unavailable(op, err)
}

// unavailable wraps the error of a request JetStream did not serve. A read that fails may mean
// writes fail too: the probe runs now rather than at its next tick.
func (l *Log) unavailable(op string, err error) error {
	if !errors.Is(err, ErrNotReady) {
		select {
		case l.kick <- struct{}{}:
		default:
		}
	}
	return fmt.Errorf("%w: %s: %w", ErrUnavailable, op, err)
}

func hasCode(err error, code jetstream.ErrorCode) bool {
	apiErr, ok := errors.AsType[*jetstream.APIError](err)
	return ok && apiErr.ErrorCode == code
}
