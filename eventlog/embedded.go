package eventlog

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// embedded is the NATS server running inside the process. It is the connection's in-process
// provider, so when it replaces a server whose store failed (see Log.watch), the connection
// reconnects to the new one by itself.
type embedded struct {
	dataDir      string
	cluster      Cluster // when enabled, the server is a node of it
	token        string  // with a cluster, what opens the server's loopback client port
	sync         bool
	syncInterval time.Duration
	logger       *slog.Logger

	mu  sync.Mutex
	cur *server.Server // nil until started; the old one while a restart fails
}

// start starts a server on the data directory, waiting up to ready for it to take connections.
func (e *embedded) start(ready time.Duration) error {
	opts := &server.Options{
		ServerName:   "taskhub",
		JetStream:    true,
		StoreDir:     filepath.Join(e.dataDir, "jetstream"),
		SyncAlways:   e.sync,
		SyncInterval: e.syncInterval,
		DontListen:   true, // no client port: the process connects in-process
		NoSigs:       true,
	}
	if e.cluster.Enabled() {
		if err := e.cluster.configure(opts); err != nil {
			return fmt.Errorf("eventlog: cluster: %w", err)
		}
		// The server starts its routes only once it listens for clients, so a node listens on
		// a loopback port of its own choosing, which only this process's token opens.
		opts.DontListen, opts.Host, opts.Port, opts.Authorization = false, "127.0.0.1", server.RANDOM_PORT, e.token
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return fmt.Errorf("eventlog: embedded NATS server: %w", err)
	}
	fatal := make(chan string, 1)
	ns.SetLoggerV2(natsLogger{log: e.logger.With("component", "nats"), fatal: fatal}, false, false, false)
	ns.Start()
	// A server that cannot start (its cluster port is taken, say) says so in a fatal log line
	// and never becomes ready: fail with that at once, rather than after waiting for ready.
	for deadline := time.Now().Add(ready); !ns.ReadyForConnections(100 * time.Millisecond); {
		select {
		case why := <-fatal:
			ns.Shutdown()
			return fmt.Errorf("eventlog: the embedded NATS server did not start: %s", why)
		default:
		}
		if time.Now().After(deadline) {
			ns.Shutdown()
			return fmt.Errorf("eventlog: the embedded NATS server did not start within %v", ready)
		}
	}
	if !ns.JetStreamEnabled() {
		ns.Shutdown()
		return errors.New("eventlog: the embedded NATS server started without JetStream (see its log)")
	}
	e.mu.Lock()
	e.cur = ns
	e.mu.Unlock()
	return nil
}

// singleNodeData reports whether dataDir holds streams that a server outside any cluster wrote:
// JetStream's files without its clustered metadata.
func singleNodeData(dataDir string) bool {
	store := filepath.Join(dataDir, "jetstream", "jetstream")
	streams, err := os.ReadDir(filepath.Join(store, "$G", "streams"))
	if err != nil || len(streams) == 0 {
		return false
	}
	_, err = os.Stat(filepath.Join(store, "$SYS", "_js_", "_meta_"))
	return errors.Is(err, fs.ErrNotExist)
}

// restart stops the server and starts a fresh one on the same files: JetStream reopens its
// stores, which clears a store's write error (a store that failed a write refuses every write
// after it until it is reopened). It waits at most 5 s for the new one, so that closing the log
// is not held up long by a restart under way; a server that is slower is tried again later.
func (e *embedded) restart() error {
	e.stop()
	return e.start(5 * time.Second)
}

// stop shuts the server down and waits until it has.
func (e *embedded) stop() {
	e.mu.Lock()
	ns := e.cur
	e.mu.Unlock()
	if ns != nil {
		ns.Shutdown()
		ns.WaitForShutdown()
	}
}

// InProcessConn connects to the current server (nats.InProcessConnProvider).
func (e *embedded) InProcessConn() (net.Conn, error) {
	e.mu.Lock()
	ns := e.cur
	e.mu.Unlock()
	if ns == nil {
		return nil, errors.New("eventlog: the embedded NATS server is not running")
	}
	return ns.InProcessConn()
}

// natsLogger passes the embedded server's warnings and errors to slog; its chatter is dropped.
type natsLogger struct {
	log   *slog.Logger
	fatal chan<- string // cap 1: the first fatal error, for start
}

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
	msg := fmt.Sprintf(format, v...)
	n.log.Error(msg, "fatal", true)
	select {
	case n.fatal <- msg:
	default:
	}
}
