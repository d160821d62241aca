// Command taskhub runs the task hub: the Connect API, the live page and the built-in demo
// executor, with NATS JetStream embedded (or external, with --nats-url).
//
//	taskhub [serve] [flags]
//	taskhub create PROMPT [--mode M] [--param k=v ...] [--wait] | get ID | list | cancel ID | watch [ID ...]
//	taskhub worker --mode M [flags] -- COMMAND [ARGS...]
//	taskhub version
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/taskhub/taskhub/actors"
	"github.com/taskhub/taskhub/server"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "taskhub:", err)
		}
		var code exitCode
		if errors.As(err, &code) {
			os.Exit(code.code)
		}
		os.Exit(2)
	}
}

// run runs the command line args until ctx ends.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && (args[0] == "version" || args[0] == "--version" || args[0] == "-version") {
		fmt.Fprintln(stdout, version())
		return nil
	}
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		switch args[0] {
		case "serve":
			args = args[1:]
		case "worker":
			return runWorker(ctx, args[1:], stderr)
		case "create", "get", "list", "cancel", "watch":
			return runClient(ctx, args[0], args[1:], stdout, stderr)
		default:
			return fmt.Errorf("unknown command %q: the commands are serve (the default), create, get, list, cancel, watch, worker and version", args[0])
		}
	}
	fs := flag.NewFlagSet("taskhub serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		cfg        server.Config
		modes      string
		secretFile string
		debugAddr  string
		logLevel   slog.Level
		logFormat  string
	)
	fs.StringVar(&cfg.Addr, "addr", server.DefaultAddr, "`host:port` to listen on; without --auth-file only loopback is allowed")
	fs.StringVar(&cfg.DataDir, "data-dir", server.DefaultDataDir, "`directory` of the embedded event log")
	fs.StringVar(&cfg.NATSURL, "nats-url", "", "use the NATS server or cluster at `url` instead of the embedded one")
	fs.StringVar(&cfg.Cluster.Addr, "cluster-addr", "", "`host:port` this node listens on for its cluster peers; with --peers, the embedded event log is one node of a replicated cluster")
	fs.Func("peers", "comma-separated cluster addresses (`host:port,...`) of the cluster's nodes; listing this node too is fine", func(v string) error {
		cfg.Cluster.Peers = strings.Split(v, ",")
		return nil
	})
	fs.StringVar(&cfg.Node, "node-name", "", "this node's `name` among the nodes sharing the event log: the cluster's nodes, or those using one --nats-url (default: from --cluster-addr, else taskhub)")
	fs.StringVar(&secretFile, "cluster-secret-file", "", "`file` holding the secret the cluster's nodes share (at least 16 characters); it or cluster TLS is required unless every cluster address is loopback")
	fs.StringVar(&cfg.Cluster.TLSCert, "cluster-tls-cert", "", "PEM `file` of this node's certificate for the routes between nodes (naming the host of --cluster-addr); with --cluster-tls-key and --cluster-tls-ca, routes are mutual TLS")
	fs.StringVar(&cfg.Cluster.TLSKey, "cluster-tls-key", "", "PEM `file` of the key of --cluster-tls-cert")
	fs.StringVar(&cfg.Cluster.TLSCA, "cluster-tls-ca", "", "PEM `file` of the certificate authority that signed every node's --cluster-tls-cert")
	fs.IntVar(&cfg.Replicas, "replicas", 0, "copies JetStream keeps of the event log (default: 3 in a cluster of three or more nodes, else 1; with --nats-url, at most its JetStream nodes)")
	fs.BoolVar(&cfg.Fsync, "fsync", false, "fsync every write of the embedded event log (survives power loss; fewer writes per second)")
	fs.StringVar(&cfg.AuthFile, "auth-file", "", "JSON `file` mapping bearer tokens to users and workers (see README)")
	fs.StringVar(&cfg.JWTSecretFile, "jwt-secret-file", "", "`file` holding the secret (at least 32 bytes) of HS256 tokens your app mints for its users: such a token is a user token for its sub (see README)")
	fs.StringVar(&cfg.JWKSURL, "jwks-url", "", "`URL` of the JWKS whose keys sign the RS256 or ES256 tokens your app mints for its users")
	fs.Func("allowed-origins", "comma-separated `origins` (https://app.example) whose pages may call the API with a bearer token (CORS)", func(v string) error {
		cfg.AllowedOrigins = append(cfg.AllowedOrigins, strings.Split(v, ",")...)
		return nil
	})
	fs.Func("webhook-allow", "comma-separated `hosts` (HOST for ports 80 and 443, or HOST:PORT) that tasks' webhooks may post to; none by default (webhooks off)", func(v string) error {
		cfg.Webhooks.Allow = append(cfg.Webhooks.Allow, strings.Split(v, ",")...)
		return nil
	})
	fs.StringVar(&cfg.WebhookSecretFile, "webhook-secret-file", "", "`file` holding the Standard Webhooks secret (whsec_ and base64) that signs webhook deliveries")
	fs.StringVar(&cfg.JWTAudience, "jwt-audience", "", "the aud minted tokens must name (default: aud is not checked)")
	fs.DurationVar(&cfg.LeaseTimeout, "lease-timeout", actors.DefaultLeaseTimeout, "how long a claimed task stays leased without a progress report")
	fs.IntVar(&cfg.MaxAttempts, "max-attempts", actors.DefaultMaxAttempts, "how many times a task may be claimed before it fails for good")
	fs.Func("mode-attempts", "per-mode max attempts, as `mode=n,...` (overrides --max-attempts)", func(v string) error {
		cfg.ModeAttempts = map[string]int{}
		for _, kv := range strings.Split(v, ",") {
			mode, n, ok := strings.Cut(kv, "=")
			attempts, err := strconv.Atoi(n)
			if !ok || err != nil || attempts < 1 {
				return fmt.Errorf("%q: want mode=n with n >= 1", kv)
			}
			cfg.ModeAttempts[mode] = attempts
		}
		return nil
	})
	fs.DurationVar(&cfg.StallTimeout, "stall-timeout", actors.DefaultStallTimeout, "mark a running task stalled after this long without progress; 0 disables")
	fs.DurationVar(&cfg.Retention, "retention", actors.DefaultRetention, "keep all events of a finished task this long, then only its final one; 0 keeps everything")
	fs.StringVar(&modes, "modes", "", "comma-separated `list` of the only modes tasks may use (default: any well-formed mode)")
	fs.IntVar(&cfg.DemoWorkers, "demo-workers", server.DefaultDemoWorkers, "how many demo tasks run at once; 0 disables the built-in demo executor")
	fs.DurationVar(&cfg.Heartbeat, "heartbeat", actors.DefaultHeartbeat, "heartbeat interval of idle watch streams")
	fs.DurationVar(&cfg.WatchInterval, "watch-interval", actors.DefaultWatchInterval, "how often at most a busy watch stream is sent to; events that come sooner wait and go together in one write; a negative value sends each at once")
	fs.IntVar(&cfg.WatchBuffer, "watch-buffer", actors.DefaultWatchBuffer, "events queued per watch for a slow client before it refills from the event log")
	fs.IntVar(&cfg.MaxWatches, "max-watches", actors.DefaultMaxWatches, "open watch streams allowed in all")
	fs.IntVar(&cfg.MaxWatchesPerUser, "max-watches-per-user", actors.DefaultMaxWatchesPerUser, "open watch streams allowed per user")
	fs.IntVar(&cfg.MaxActiveTasksPerUser, "max-active-tasks-per-user", actors.DefaultMaxActiveTasksPerUser, "queued and running tasks allowed per user")
	fs.IntVar(&cfg.MaxModes, "max-modes", actors.DefaultMaxModes, "modes that may have unfinished tasks at once (without --modes)")
	fs.IntVar(&cfg.Limits.MaxConns, "max-conns", 0, "open connections allowed (default: the file descriptor limit less 256)")
	fs.IntVar(&cfg.Limits.MaxConnsPerIP, "max-conns-per-ip", server.DefaultMaxConnsPerIP, "open connections allowed per client address (at most half of --max-conns); 0: no limit")
	fs.IntVar(&cfg.Limits.MaxRequestsPerIP, "max-requests-per-ip", server.DefaultMaxRequestsPerIP, "requests under way allowed per client address, watch streams included; 0: no limit")
	fs.DurationVar(&cfg.Limits.HeaderTimeout, "header-timeout", server.DefaultHeaderTimeout, "time allowed for a request's headers (and a new connection's first request)")
	fs.DurationVar(&cfg.Limits.BodyTimeout, "body-timeout", server.DefaultBodyTimeout, "time allowed for a request's whole body")
	fs.DurationVar(&cfg.Limits.IdleTimeout, "idle-timeout", server.DefaultIdleTimeout, "how long an idle connection is kept")
	fs.DurationVar(&cfg.Limits.WriteTimeout, "write-timeout", server.DefaultWriteTimeout, "how long a client may take none of what is written to it before its connection is closed")
	fs.StringVar(&cfg.TLSCert, "tls-cert", "", "PEM `file` of the TLS certificate: serve HTTPS (HTTP/1.1 and HTTP/2); needs --tls-key")
	fs.StringVar(&cfg.TLSKey, "tls-key", "", "PEM `file` of the TLS certificate's private key")
	fs.StringVar(&debugAddr, "debug-addr", "", "loopback `host:port` serving Go's profiles (/debug/pprof/), for measuring the server; off by default")
	fs.TextVar(&logLevel, "log-level", slog.LevelInfo, "log `level`: debug, info, warn or error")
	fs.StringVar(&logFormat, "log-format", "text", "log `format`: text (key=value) or json (one object a line)")
	if err := fromEnv(fs); err != nil {
		return err
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	if modes != "" {
		cfg.Modes = strings.Split(modes, ",")
	}
	if secretFile != "" {
		b, err := os.ReadFile(secretFile)
		if err != nil {
			return fmt.Errorf("--cluster-secret-file: %w", err)
		}
		cfg.Cluster.Secret = strings.TrimSpace(string(b))
	}
	cfg.Cluster.Name = cfg.Node
	if cfg.Cluster.Enabled() && cfg.NATSURL != "" {
		return errors.New("--cluster-addr and --nats-url exclude each other: with an external NATS, it is the cluster")
	}
	// 0 on the command line is none (no demo, no stall detection, keep all, no limit); in
	// Config it is the default, and a negative value is none.
	for _, n := range []*int{&cfg.DemoWorkers, &cfg.Limits.MaxConnsPerIP, &cfg.Limits.MaxRequestsPerIP} {
		if *n == 0 {
			*n = -1
		}
	}
	for _, d := range []*time.Duration{&cfg.StallTimeout, &cfg.Retention} {
		if *d == 0 {
			*d = -1
		}
	}
	logOpts := &slog.HandlerOptions{Level: logLevel}
	switch logFormat {
	case "text":
		cfg.Logger = slog.New(slog.NewTextHandler(stderr, logOpts))
	case "json":
		cfg.Logger = slog.New(slog.NewJSONHandler(stderr, logOpts))
	default:
		return fmt.Errorf("--log-format must be text or json: got %q", logFormat)
	}
	if debugAddr != "" {
		stopDebug, err := serveDebug(debugAddr)
		if err != nil {
			return fmt.Errorf("--debug-addr: %w", err)
		}
		defer stopDebug()
	}

	tp, err := openTracing(ctx, os.LookupEnv, cfg.Logger)
	if err != nil {
		return err
	}
	if tp != nil {
		cfg.TracerProvider = tp
		cfg.Logger.Info("tracing: spans are exported over OTLP (OTEL_* environment variables)")
		defer func() {
			// After the server's Close: the spans of the calls it ended are sent too.
			ctx, cancel := context.WithTimeout(context.Background(), tracingShutdown)
			defer cancel()
			if err := tp.Shutdown(ctx); err != nil {
				cfg.Logger.Warn("tracing: spans not sent at shutdown", "err", err)
			}
		}()
	}
	s, err := server.Open(ctx, cfg)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "taskhub serving on %s (data in %s)\n", s.URL(), dataWhere(cfg))
	cfg.Logger.Info("taskhub serving", "url", s.URL(), "data", dataWhere(cfg), "version", version())
	<-ctx.Done()
	fmt.Fprintln(stdout, "taskhub shutting down")
	return s.Close()
}

// envPrefix makes a flag's environment variable: --lease-timeout is TASKHUB_LEASE_TIMEOUT.
const envPrefix = "TASKHUB_"

// fromEnv sets every flag of fs whose environment variable is set; the command line, parsed
// after, wins.
func fromEnv(fs *flag.FlagSet) error {
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		name := envPrefix + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := os.LookupEnv(name); ok && err == nil {
			if serr := fs.Set(f.Name, v); serr != nil {
				err = fmt.Errorf("%s=%q: %w", name, v, serr)
			}
		}
	})
	return err
}

// tracingShutdown bounds the sending of the last spans at shutdown.
const tracingShutdown = 5 * time.Second

// moduleVersion is the module's version from the build info: a tagged release, a
// pseudo-version, or (devel).
func moduleVersion() string {
	if info, ok := debug.ReadBuildInfo(); ok {
		return info.Main.Version
	}
	return "(devel)"
}

// version is the binary's version, from its build info: the module version (a tagged release,
// or a pseudo-version for go install) and the commit it was built from.
func version() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "taskhub (no build info)"
	}
	v := "taskhub " + info.Main.Version
	var rev, at, modified string
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.time":
			at = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				modified = ", modified"
			}
		}
	}
	if rev != "" {
		v += fmt.Sprintf(" (commit %.12s %s%s)", rev, at, modified)
	}
	return v + " " + info.GoVersion
}

// serveDebug serves Go's profiles on addr, which must be a loopback address: a profile shows
// the server's internals and costs CPU, so it is for whoever runs the machine.
func serveDebug(addr string) (stop func(), err error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return nil, fmt.Errorf("%s is not a loopback address: profiles are only served to this machine", addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	return func() { srv.Close() }, nil
}

func dataWhere(cfg server.Config) string {
	if cfg.NATSURL != "" {
		return cfg.NATSURL
	}
	return cfg.DataDir
}
