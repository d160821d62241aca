// Package server wires taskhub together: the event log, the hub, the built-in demo executor, and
// the HTTP server that serves the Connect API, the pages and the assets on one port (HTTP/1.1
// and unencrypted HTTP/2; HTTP/1.1 and HTTP/2 over TLS when given a certificate).
package server

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"slices"
	"sync"
	"time"

	"connectrpc.com/connect"
	"github.com/klauspost/compress/gzhttp"
	"go.opentelemetry.io/otel/trace"

	"github.com/taskhub/taskhub/actors"
	"github.com/taskhub/taskhub/assets"
	"github.com/taskhub/taskhub/client"
	"github.com/taskhub/taskhub/demo"
	"github.com/taskhub/taskhub/eventlog"
	"github.com/taskhub/taskhub/rpc"
	"github.com/taskhub/taskhub/views"
	"github.com/taskhub/taskhub/webhook"
)

// Defaults of Config.
const (
	DefaultAddr        = "127.0.0.1:8080"
	DefaultDataDir     = "data"
	DefaultDemoWorkers = 4
)

// Config configures a Server: where it listens and keeps its data, who may call it, and the
// hub's Options. Zero values take the defaults (Default… here and in package actors).
type Config struct {
	// Addr is the address to listen on; port 0 picks a free port.
	Addr string
	// DataDir holds the embedded event log.
	DataDir string
	// NATSURL, when set, uses an external NATS server or cluster instead of the embedded one.
	NATSURL string
	// Cluster, when enabled, makes the embedded NATS server a node of a cluster of taskhub
	// nodes (see eventlog.Cluster). Ignored with NATSURL.
	Cluster eventlog.Cluster
	// Node names this process among those sharing the event log [the cluster's node name;
	// else "taskhub"]; processes that share an external NATS need distinct ones.
	Node string
	// Replicas is how many copies of the event log JetStream keeps [3 in a cluster of three
	// or more nodes, else 1] (see eventlog.Config.Replicas).
	Replicas int
	// Fsync makes the embedded event log fsync every write: it then survives power loss, at a
	// cost in write throughput.
	Fsync bool
	// AuthFile maps bearer tokens to users and workers; without it every caller is the local
	// user, and the server refuses to listen on anything but loopback.
	AuthFile string
	// JWTSecretFile (HS256) and JWKSURL (RS256, ES256) make the tokens an app mints for its
	// users user tokens too (rpc.JWTConfig), with JWTAudience their required aud when set. Either
	// turns auth on, as AuthFile does.
	JWTSecretFile, JWKSURL, JWTAudience string
	// AllowedOrigins are the origins (scheme://host[:port]) whose pages may call the Connect API
	// with a bearer token (CORS); taskhub's own pages need no entry.
	AllowedOrigins []string
	// WebhookSecretFile holds the Standard Webhooks secret (whsec_ and base64) that signs
	// webhook deliveries; with Webhooks.Allow naming hosts, tasks may ask for webhooks.
	WebhookSecretFile string
	// Webhooks are the webhook settings: Allow from --webhook-allow, the rest for tests.
	Webhooks webhook.Config
	// TLSCert and TLSKey, when set, are PEM files of a certificate and its key: the server then
	// speaks HTTPS (HTTP/1.1 and HTTP/2), and browser sessions get Secure cookies.
	TLSCert, TLSKey string
	// DemoWorkers is how many demo tasks run at once; negative disables the demo executor.
	DemoWorkers int
	// Limits bound connections and requests (see Limits).
	Limits Limits
	// Logger receives the server's logs [slog.Default()].
	Logger *slog.Logger
	// TracerProvider, when set, traces every call of the API (a span per call, continuing
	// the trace of the caller's traceparent header) and each event log append a call makes (a
	// child span). Nil: no tracing, and nothing on the calls' path pays for it. Its owner
	// shuts it down after Close (cmd/taskhub reads it from the OTEL_* environment variables).
	TracerProvider trace.TracerProvider
	// Options are the hub's: leases, attempts, limits on tasks and watches, and so on.
	actors.Options
}

// Server is a running taskhub.
type Server struct {
	cfg   Config
	ln    net.Listener
	conns *limitedListener // beneath ln: the connections' limits
	srv   *http.Server
	log   *eventlog.Log
	hub   *actors.Hub
	demo  *demo.Executor
	// inproc serves the API to the demo executor over in-memory connections (pipeListener).
	inproc          *http.Server
	inprocTransport *http.Transport
	auth            *rpc.Auth    // nil when auth is off
	streams         *rpc.Streams // the watch streams that own their connections
	tls             bool
	done            chan error // Serve's result

	status struct { // what /readyz last read of the cluster (see clusterStatus)
		mu    sync.Mutex
		at    time.Time
		lines []string
	}

	stopBackground context.CancelFunc // ends what runs beside serving (recordSettings)
	background     sync.WaitGroup

	closeOnce sync.Once
	closeErr  error
}

// Open starts a server. Close stops it.
func Open(ctx context.Context, cfg Config) (_ *Server, err error) {
	cfg.Addr = cmp.Or(cfg.Addr, DefaultAddr)
	cfg.DataDir = cmp.Or(cfg.DataDir, DefaultDataDir)
	cfg.DemoWorkers = cmp.Or(cfg.DemoWorkers, DefaultDemoWorkers)
	cfg.Logger = cmp.Or(cfg.Logger, slog.Default())
	cfg.Options = cfg.Options.WithDefaults()
	s := &Server{cfg: cfg, done: make(chan error, 1)}
	defer func() {
		if err != nil {
			s.shutdown(context.Background())
		}
	}()

	var authFile *rpc.AuthFile
	if cfg.AuthFile != "" {
		f, err := rpc.ReadAuthFile(cfg.AuthFile)
		if err != nil {
			return nil, err
		}
		authFile = &f
	}
	jwtCfg := rpc.JWTConfig{JWKSURL: cfg.JWKSURL, Audience: cfg.JWTAudience}
	if cfg.JWTSecretFile != "" {
		b, err := os.ReadFile(cfg.JWTSecretFile)
		if err != nil {
			return nil, fmt.Errorf("jwt secret: %w", err)
		}
		jwtCfg.Secret = bytes.TrimSpace(b)
	}
	if cfg.JWTAudience != "" && !jwtCfg.Enabled() {
		return nil, errors.New("a JWT audience without a JWT secret file or JWKS URL checks nothing")
	}
	authOn := authFile != nil || jwtCfg.Enabled()
	switch {
	case len(cfg.Webhooks.Allow) > 0 && cfg.WebhookSecretFile == "":
		return nil, errors.New("--webhook-allow needs --webhook-secret-file: deliveries are signed")
	case len(cfg.Webhooks.Allow) > 0:
		b, err := os.ReadFile(cfg.WebhookSecretFile)
		if err != nil {
			return nil, fmt.Errorf("webhook secret: %w", err)
		}
		cfg.Webhooks.Secret = string(b)
		if cfg.Options.Webhooks, err = webhook.New(cfg.Webhooks); err != nil {
			return nil, err
		}
	case cfg.WebhookSecretFile != "":
		return nil, errors.New("--webhook-secret-file without --webhook-allow: name the hosts webhooks may post to")
	}
	if err := rpc.CheckOrigins(cfg.AllowedOrigins); err != nil {
		return nil, err
	}
	var tlsConfig *tls.Config
	if cfg.TLSCert != "" || cfg.TLSKey != "" {
		cert, err := tls.LoadX509KeyPair(cfg.TLSCert, cfg.TLSKey)
		if err != nil {
			return nil, fmt.Errorf("tls: %w", err)
		}
		tlsConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	limits := cfg.Limits.withDefaults(fdLimit())
	if s.ln, err = net.Listen("tcp", cfg.Addr); err != nil {
		return nil, err
	}
	if tcp, ok := s.ln.Addr().(*net.TCPAddr); ok && !tcp.IP.IsLoopback() && !authOn {
		return nil, fmt.Errorf("refusing to listen on %s without --auth-file or minted tokens (--jwt-secret-file, --jwks-url): anyone who can reach it could read and forge tasks", s.ln.Addr())
	}
	s.conns = newLimitedListener(s.ln, limits, cfg.Logger)
	s.ln = coalescingListener{s.conns}

	s.log, err = eventlog.Open(ctx, eventlog.Config{
		DataDir:    cfg.DataDir,
		URL:        cfg.NATSURL,
		Cluster:    cfg.Cluster,
		Node:       cfg.Node,
		Replicas:   cfg.Replicas,
		SyncAlways: cfg.Fsync,
		// JetStream's own lease is the backstop for a crashed process; the task actor's lease
		// timer, a little shorter, is what requeues a task.
		AckWait: cfg.LeaseTimeout + 5*time.Second,
		Logger:  cfg.Logger,
	})
	if err != nil {
		return nil, err
	}
	demoOn := cfg.DemoWorkers > 0 && (len(cfg.Modes) == 0 || slices.Contains(cfg.Modes, demo.Mode))
	var hubLog actors.Log = s.log
	var tracer connect.Interceptor
	if cfg.TracerProvider != nil {
		hubLog = tracedLog{Log: s.log, tracer: cfg.TracerProvider.Tracer(TracerName)}
		if tracer, err = traceInterceptor(cfg.TracerProvider); err != nil {
			return nil, err
		}
	}
	s.hub, err = actors.Open(ctx, actors.Config{
		Log:     hubLog,
		Logger:  cfg.Logger,
		Shared:  s.shared(),
		Options: cfg.Options,
		ParamCheck: func(mode string, params map[string]string) error {
			if mode == demo.Mode && demoOn {
				return demo.CheckParams(params)
			}
			return nil
		},
	})
	if err != nil {
		return nil, err
	}
	var background context.Context
	background, s.stopBackground = context.WithCancel(context.Background())
	if s.shared() {
		s.background.Go(func() { s.recordSettings(background) })
	}

	var auth *rpc.Auth
	var demoToken string // the demo executor's worker token, with auth
	if authOn {
		f := *cmp.Or(authFile, &rpc.AuthFile{})
		if demoOn {
			if f, demoToken, err = withDemoWorker(f); err != nil {
				return nil, err
			}
		}
		if auth, err = rpc.NewAuth(f, s.log); err != nil {
			return nil, err
		}
		s.auth = auth
		if jwtCfg.Enabled() {
			if err := auth.AcceptJWT(jwtCfg); err != nil {
				return nil, err
			}
		}
	}
	mux := http.NewServeMux()
	metrics := newMetrics(s.hub, s.log, s.conns, auth)
	s.streams = rpc.NewStreams()
	rpc.Mount(mux, s.hub, rpc.Options{Auth: auth, Logger: cfg.Logger, Origins: cfg.AllowedOrigins, Observe: metrics.observe, ObserveBatched: metrics.observeBatched, ObserveDelivered: metrics.observeDelivered, Trace: tracer, Streams: s.streams})
	rpc.MountStandard(mux, auth, s.hub.Ready, cfg.AllowedOrigins)
	// Pages and assets are compressed here; Connect negotiates its own compression, and its
	// streams must not wait in a compressor's buffer.
	pages := views.NewHandler(views.Config{Hub: s.hub, Users: auth, Modes: cfg.Modes, Heartbeat: cfg.Heartbeat, Logger: cfg.Logger})
	mux.Handle("/", gzhttp.GzipHandler(http.NewCrossOriginProtection().Handler(pages)))
	mux.Handle(assets.Prefix, gzhttp.GzipHandler(assets.Handler()))
	mux.HandleFunc("GET /healthz", s.healthz)
	mux.HandleFunc("GET /readyz", s.readyz)
	mux.Handle("GET /metrics", metrics.handler())
	if demoOn {
		s.startDemo(mux, demoToken)
	}
	handler := limitRequests(mux, limits, connect.NewErrorWriter())
	if !auth.Enabled() {
		handler = loopbackHostsOnly(handler)
	}
	handler = directHTTP1(handler)

	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	if tlsConfig != nil {
		protocols.SetHTTP2(true)
		s.tls = true
	} else {
		protocols.SetUnencryptedHTTP2(true)
	}
	s.srv = &http.Server{
		Handler:           handler,
		Protocols:         protocols,
		TLSConfig:         tlsConfig,
		ReadHeaderTimeout: limits.HeaderTimeout,
		IdleTimeout:       limits.IdleTimeout,
		MaxHeaderBytes:    MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelWarn),
		ConnContext:       withConn,
	}
	go func() {
		if s.tls {
			s.done <- s.srv.ServeTLS(s.ln, "", "") // the certificate is in TLSConfig
		} else {
			s.done <- s.srv.Serve(s.ln)
		}
	}()
	return s, nil
}

// URL is the server's base URL, such as http://127.0.0.1:8080 (https:// with TLS).
func (s *Server) URL() string {
	if s.tls {
		return "https://" + s.ln.Addr().String()
	}
	return "http://" + s.ln.Addr().String()
}

// ShutdownGrace is how long Close waits for requests under way before it cuts them. With the
// rest of a shutdown (the actors, the event log), Close returns within 10 s.
const ShutdownGrace = 5 * time.Second

// Close stops the server: it stops accepting requests, ends open watch streams with Unavailable
// (clients resume with after_seq) and long-polling claims with no task, waits up to
// ShutdownGrace for other requests under way and then cuts them, and closes the event log.
// Calls after the first return its result.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), ShutdownGrace)
		defer cancel()
		s.closeErr = s.shutdown(ctx)
	})
	return s.closeErr
}

func (s *Server) shutdown(ctx context.Context) error {
	if s.demo != nil {
		s.demo.Stop()
	}
	if s.inproc != nil {
		s.inproc.Close() // the demo executor, its only client, has stopped
		s.inprocTransport.CloseIdleConnections()
	}
	var shut chan error
	if s.srv != nil {
		shut = make(chan error, 1)
		go func() { shut <- s.srv.Shutdown(ctx) }()
	} else if s.ln != nil {
		s.ln.Close()
	}
	if s.hub != nil {
		s.hub.Close() // ends the watch streams, so Shutdown does not wait for them
	}
	if s.streams != nil {
		// The hub's close ends the watch streams that own their connections; those whose
		// clients stopped reading end when their writes are cut. They end before the log
		// closes under them.
		s.streams.Cut(time.Second)
		if !s.streams.Wait(3 * time.Second) {
			s.cfg.Logger.Warn("watch streams still open at shutdown")
		}
	}
	s.auth.Close()
	var err error
	if shut != nil {
		if err := <-shut; errors.Is(err, context.DeadlineExceeded) {
			// The time is up: cut what is left (a body still trickling in, say).
			s.cfg.Logger.Warn("cutting requests still under way at shutdown", "grace", ShutdownGrace)
			s.srv.Close()
		} else if err != nil {
			s.cfg.Logger.Warn("shutdown", "err", err)
		}
		if serveErr := <-s.done; !errors.Is(serveErr, http.ErrServerClosed) {
			err = cmp.Or(err, serveErr)
		}
	}
	if s.stopBackground != nil {
		s.stopBackground()
		s.background.Wait()
	}
	if s.log != nil {
		s.log.Close()
	}
	return err
}

// DemoWorker is the name of the worker identity the server gives its own demo executor when
// auth is on: a worker of the auth file may not have it.
const DemoWorker = "taskhub-demo"

// withDemoWorker adds the demo executor's worker, with a token made for this run of the
// process, to an auth file, and returns the token.
func withDemoWorker(f rpc.AuthFile) (rpc.AuthFile, string, error) {
	for _, w := range f.Workers {
		if w.Name == DemoWorker {
			return rpc.AuthFile{}, "", fmt.Errorf("auth file: the worker name %q is the built-in demo executor's; rename that worker, or turn the demo executor off (--demo-workers 0)", DemoWorker)
		}
	}
	token := rand.Text()
	f.Workers = append(slices.Clone(f.Workers), rpc.Principal{Name: DemoWorker, Token: token})
	return f, token, nil
}

// startDemo starts the demo executor. It is a client of the API like any worker, on
// connections in memory to mux (pipeListener): with auth on, as DemoWorker with token. It
// hears of a cancel from the hub at once (client.Worker.TaskEnded), where a remote worker
// learns it at its next report or lease renewal.
func (s *Server) startDemo(mux http.Handler, token string) {
	pipe := newPipeListener()
	s.inproc = &http.Server{Handler: mux, ErrorLog: slog.NewLogLogger(s.cfg.Logger.Handler(), slog.LevelWarn)}
	go s.inproc.Serve(pipe) // returns when Close closes pipe
	s.inprocTransport = &http.Transport{DialContext: pipe.DialContext, MaxIdleConnsPerHost: 2 * s.cfg.DemoWorkers}
	c := client.New("http://taskhub.in-process", client.WithHTTPClient(&http.Client{Transport: s.inprocTransport}), client.WithToken(token))
	s.demo = demo.Start(demo.Config{Client: c, Workers: s.cfg.DemoWorkers, TaskEnded: s.hub.TaskEnded, Logger: s.cfg.Logger})
}

// shared reports whether other processes share the event log: nodes of a cluster, or taskhubs
// on one external NATS.
func (s *Server) shared() bool { return s.cfg.Cluster.Enabled() || s.cfg.NATSURL != "" }

// LiveFailAfter is how long event log writes may fail before /healthz fails too: the log could
// not recover by itself (see eventlog.Log.Ready), and restarting the process may help.
const LiveFailAfter = time.Minute

// healthz answers liveness: 200 while the process serves and its event log has not been
// failing writes for LiveFailAfter.
func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	if d := s.log.FailingFor(); d > LiveFailAfter {
		http.Error(w, fmt.Sprintf("event log writes have failed for %s: %v", d.Round(time.Second), s.log.Ready()), http.StatusServiceUnavailable)
		return
	}
	fmt.Fprintln(w, "ok")
}

// readyz answers readiness: 200 while the hub takes writes, 503 with the reason while it does
// not (event log writes fail, or the server is shutting down). In a cluster it names the node
// and the event log's leader.
func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	if err := s.hub.Ready(); err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	fmt.Fprintln(w, "ready")
	if s.shared() {
		for _, line := range s.clusterStatus() {
			fmt.Fprintln(w, line)
		}
	}
}

// statusEvery is how often /readyz reads the cluster's state at most: anyone may ask it, and
// each read costs the streams' leaders a handful of requests.
const statusEvery = time.Second

// clusterStatus says, one line each, which node this is; which node leads each stream (losing
// the event log's leader pauses every write for an election, the queue's or the meta stream's
// creates and claims); and the settings the nodes must agree on but do not (a warning, not
// unreadiness: a rolling change of a setting passes through it). It is read at most every
// statusEvery, within 2 s; callers meanwhile get the last one.
func (s *Server) clusterStatus() []string {
	s.status.mu.Lock()
	defer s.status.mu.Unlock()
	if time.Since(s.status.at) < statusEvery {
		return s.status.lines
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	lines := []string{"node " + s.log.Node()}
	leaders := s.log.Leaders(ctx)
	if leader := leaders[eventlog.EventStream]; leader != "" {
		lines = append(lines, "event log leader "+leader)
	}
	for _, name := range slices.Sorted(maps.Keys(leaders)) {
		lines = append(lines, fmt.Sprintf("%s leader %s", name, leaders[name]))
	}
	if diffs, err := s.settingsDiffer(ctx); err == nil {
		for _, d := range diffs {
			lines = append(lines, "settings differ: "+d)
		}
	}
	s.status.lines, s.status.at = lines, time.Now()
	return lines
}

// loopbackHostsOnly refuses requests whose Host is not a loopback name. Without auth the server
// only listens on loopback; this keeps web pages elsewhere from reaching it by DNS rebinding.
func loopbackHostsOnly(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, err := net.SplitHostPort(r.Host)
		if err != nil {
			host = r.Host
		}
		if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
			http.Error(w, "this server only answers requests for localhost: it runs without --auth-file", http.StatusMisdirectedRequest)
			return
		}
		next.ServeHTTP(w, r)
	})
}
