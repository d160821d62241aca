// Command taskhub-load puts a running taskhub under a bounded load and measures what its
// watchers get: every event, in order, and how soon.
//
//	taskhub-load [push|poll|centrifugo|users|resume] [flags]
//
// push (the default) opens --watchers WatchTasks streams (Connect, binary codec, HTTP/2
// cleartext; read by the tool's own lean HTTP/2 client, or with --client connect by the
// generated connect-go client), creates --tasks tasks in --mode, claims them and reports progress
// on them through WorkerService at --rate events/s in total for --duration, completes them, and
// checks that every watcher got every task's events with strictly increasing seqs and ended
// with every task COMPLETED. It reports delivery latency, coalescing, and the server's CPU and
// memory. poll drives the same task load while as many clients poll ListTasks every
// --poll-interval, and measures how stale their view is, so the saving of push is a number.
// centrifugo puts the same shape of load on a local Centrifugo, the peer push is compared
// with, and writes the same report (see centrifugo.go). users writes an auth file of many
// users, for push --users: the tasks spread over users, each watched by its own devices.
// resume has many of those users' clients resume their watches at once, as a load balancer's
// restart makes every page reconnect, and reports the server's CPU a resume (see resume.go).
//
// It only targets a server on this machine, and exits non-zero when anything was lost.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "taskhub-load:", err)
		}
		os.Exit(1)
	}
}

// run parses args, runs the load and writes the report to stdout and progress notes to stderr.
// It fails when the load could not run or when a watcher or client lost anything.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "users" {
		return runUsers(args[1:], stdout, stderr)
	}
	if len(args) > 0 && args[0] == "resume" {
		return runResume(ctx, args[1:], stdout, stderr)
	}
	cfg, err := parseConfig(args, stderr)
	if err != nil {
		return err
	}
	var rep *report
	if cfg.cmd == "centrifugo" {
		rep, err = newLoad(cfg, stderr).centrifugo(ctx)
	} else {
		rep, err = newLoad(cfg, stderr).run(ctx)
	}
	if err != nil {
		return err
	}
	if cfg.json {
		err = rep.writeJSON(stdout)
	} else {
		err = rep.writeText(stdout)
	}
	if err != nil {
		return err
	}
	if !rep.OK {
		return fmt.Errorf("%d violations (see the report)", rep.ViolationCount)
	}
	return nil
}

// config is the parsed command line.
type config struct {
	cmd          string // push, poll or centrifugo
	url          string // base URL, without a trailing slash
	port         int
	watchers     int
	tasks        int
	rate         float64
	duration     time.Duration
	mode         string
	token        string
	workerToken  string
	slow         int
	slowFor      time.Duration
	pollInterval time.Duration
	serverPID    int
	perConn      int
	drain        time.Duration
	gzip         bool
	http1        bool
	client       string // how push's watchers read: clientRaw or clientConnect
	codec        string // of the watchers' and pollers' messages: codecProto or codecJSON
	json         bool
	tls          *tls.Config   // with an https URL: trusting --tls-ca
	authFile     string        // the server's, for --users' tokens
	workerConns  int           // with --http1: the most worker connections; 0: one per task
	promptBytes  int           // the tasks' prompts are padded to this many bytes
	batchWorkers int           // worker processes batching their tasks' reports; 0: a call per report
	batchDelay   time.Duration // each batch waits this long after its first report (client.BatchDelay)
	users        int           // users owning the tasks, each with perUser watchers; 0: --token's
	perUser      int
	apiKey       string // centrifugo: of its server HTTP API
	publishers   int    // centrifugo: goroutines publishing, each in order
}

// The clients a push's watchers read their streams with.
const (
	clientRaw     = "raw"
	clientConnect = "connect"
)

// The codecs the watchers and pollers may speak.
const (
	codecProto = "proto"
	codecJSON  = "json"
)

// Bounds on what one run may ask for.
const (
	maxWatchers    = 50_000
	maxUsers       = 50_000
	maxTasks       = 10_000
	maxPollTasks   = 500 // one ListTasks page
	maxRate        = 50_000
	maxDuration    = 10 * time.Minute
	maxReportEvery = 10 * time.Second // a task reports at least this often, to keep its lease
)

func parseConfig(args []string, stderr io.Writer) (config, error) {
	cfg := config{cmd: "push"}
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		switch args[0] {
		case "push", "poll", "centrifugo":
			cfg.cmd, args = args[0], args[1:]
		default:
			return cfg, fmt.Errorf("unknown command %q: the commands are push, poll, centrifugo and users", args[0])
		}
	}
	fs := flag.NewFlagSet("taskhub-load "+cfg.cmd, flag.ContinueOnError)
	var tlsCA string
	fs.SetOutput(stderr)
	fs.StringVar(&cfg.url, "url", "http://127.0.0.1:8080", "base `URL` of the taskhub server (loopback only)")
	fs.IntVar(&cfg.watchers, "watchers", 100, "how many watch streams (push) or polling clients (poll)")
	fs.IntVar(&cfg.tasks, "tasks", 10, "how many tasks to drive; 0 (push) only holds the watchers idle for --duration")
	fs.Float64Var(&cfg.rate, "rate", 100, "progress events per second, over all tasks")
	fs.DurationVar(&cfg.duration, "duration", 10*time.Second, "how long to report progress")
	fs.StringVar(&cfg.mode, "mode", "load", "task `mode`; no other worker may claim it")
	fs.StringVar(&cfg.token, "token", "", "bearer `token` of a user, for TaskService (a server with --auth-file)")
	fs.StringVar(&cfg.workerToken, "worker-token", "", "bearer `token` of a worker, for WorkerService (default with --users: the auth file's first worker)")
	fs.IntVar(&cfg.users, "users", 0, "spread the tasks over this many users, each watched by --watchers-per-user watchers of their own, who must see their user's tasks only (push; needs --auth-file: the users are its first ones)")
	fs.IntVar(&cfg.perUser, "watchers-per-user", 1, "watchers (devices) per user with --users; --watchers is then users x this")
	fs.IntVar(&cfg.promptBytes, "prompt-bytes", 0, "pad each task's prompt to this many bytes, as an AI generation's prompt of a paragraph or a page (every event carries its task's prompt)")
	fs.IntVar(&cfg.workerConns, "worker-conns", 0, "with --http1, at most this many worker connections, shared by the tasks' reports as worker processes that each run several tasks share theirs (default: one per task)")
	fs.DurationVar(&cfg.batchDelay, "batch-delay", 0, "with --batch-workers, each batch waits this long after its first report for more to join it (the Go client's BatchDelay; default: it goes when no other batch of its worker is on its way)")
	fs.IntVar(&cfg.batchWorkers, "batch-workers", 0, "the tasks are run by this many worker processes, each sending its tasks' reports as the Go client's Worker does: those made while one is on its way go together in one BatchReportProgress call (default: a ReportProgress call per report)")
	fs.StringVar(&tlsCA, "tls-ca", "", "PEM `file` of the certificate (or its authority) to trust for an https:// --url; with https each watcher has a TLS connection of its own (HTTP/2, or HTTP/1.1 with --http1), as a browser's page does, unless --streams-per-conn says otherwise")
	fs.StringVar(&cfg.authFile, "auth-file", "", "the server's --auth-file, for --users' tokens (taskhub-load users writes one)")
	fs.IntVar(&cfg.slow, "slow", 0, "how many watchers stop reading when the load starts (push)")
	fs.DurationVar(&cfg.slowFor, "slow-for", 30*time.Second, "how long the --slow watchers stop reading")
	fs.DurationVar(&cfg.pollInterval, "poll-interval", 10*time.Second, "how often each client polls ListTasks (poll)")
	fs.IntVar(&cfg.serverPID, "server-pid", 0, "`pid` of the server, for its CPU and memory (default: the process listening on the URL's port)")
	fs.IntVar(&cfg.perConn, "streams-per-conn", 100, "watchers or clients sharing one HTTP/2 connection (Go's server allows 250)")
	fs.DurationVar(&cfg.drain, "drain", 30*time.Second, "how long to wait after the last event (or the slow watchers' resume) for every watcher to have it")
	fs.BoolVar(&cfg.http1, "http1", false, "one HTTP/1.1 connection per stream, as the page uses without TLS, instead of HTTP/2 (sets --streams-per-conn 1; a --slow watcher then stops reading its socket, and kernel buffers absorb megabytes first); the workers then report over HTTP/1.1 too, a kept-alive connection per task, as separate worker processes do, instead of sharing one HTTP/2 connection")
	fs.StringVar(&cfg.client, "client", clientRaw, "how the watchers read their streams (push): `raw`, one goroutine per HTTP/2 connection reads its frames with x/net/http2's Framer and decodes the Connect messages itself, lean enough that the tool's own queueing stays out of the latency it measures; or connect, the generated connect-go client over net/http's transport, a goroutine per stream, as a Go program would watch. With --http1, raw is a goroutine per connection that writes the request and reads the chunked response itself (proto or JSON)")
	fs.BoolVar(&cfg.gzip, "gzip", false, "accept gzip responses as a stock Go Connect client does (the server then compresses each message for each watcher)")
	fs.StringVar(&cfg.codec, "codec", codecProto, "`codec` of the watchers', pollers' and workers' messages: proto, or json (application/connect+json, as curl and most scripts watch; over HTTP/2 it needs --client connect, which it sets)")
	fs.BoolVar(&cfg.json, "json", false, "print the report as JSON")
	fs.StringVar(&cfg.apiKey, "api-key", "", "`key` of Centrifugo's server HTTP API, its http_api.key (centrifugo)")
	fs.IntVar(&cfg.publishers, "publishers", 4, "goroutines sharing --rate, each publishing its messages one after the other, in an order every watcher must keep (centrifugo)")
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	base, port, err := loopbackURL(cfg.url)
	if err != nil {
		return cfg, err
	}
	cfg.url, cfg.port = base, port
	if strings.HasPrefix(base, "https://") {
		if cfg.tls, err = trusting(tlsCA); err != nil {
			return cfg, err
		}
	} else if tlsCA != "" {
		return cfg, errors.New("--tls-ca is for an https:// --url")
	}
	clientSet, watchersSet, perConnSet := false, false, false
	fs.Visit(func(f *flag.Flag) {
		clientSet = clientSet || f.Name == "client"
		watchersSet = watchersSet || f.Name == "watchers"
		perConnSet = perConnSet || f.Name == "streams-per-conn"
	})
	switch {
	case cfg.client != clientRaw && cfg.client != clientConnect:
		return cfg, fmt.Errorf("--client must be %s or %s: got %q", clientRaw, clientConnect, cfg.client)
	case clientSet && cfg.cmd != "push":
		return cfg, errors.New("--client is for push; poll always uses the connect-go client")
	case cfg.codec != codecProto && cfg.codec != codecJSON:
		return cfg, fmt.Errorf("--codec must be %s or %s: got %q", codecProto, codecJSON, cfg.codec)
	case clientSet && cfg.codec == codecJSON && cfg.client == clientRaw && !cfg.http1:
		return cfg, errors.New("--client raw over HTTP/2 decodes proto only; --codec json uses --client connect there (or add --http1)")
	case cfg.users < 0 || cfg.users > maxUsers:
		return cfg, fmt.Errorf("--users must be 0..%d: got %d", maxUsers, cfg.users)
	case cfg.users > 0 && cfg.cmd != "push":
		return cfg, errors.New("--users is for push")
	case cfg.users > 0 && cfg.authFile == "":
		return cfg, errors.New("--users needs --auth-file, the server's, to take the users' tokens from")
	case cfg.users > 0 && cfg.token != "":
		return cfg, errors.New("--users and --token exclude each other: with --users each user's token comes from --auth-file")
	case cfg.perUser < 1 || cfg.perUser > maxWatchers:
		return cfg, fmt.Errorf("--watchers-per-user must be 1..%d: got %d", maxWatchers, cfg.perUser)
	case cfg.users > 0 && watchersSet && cfg.watchers != cfg.users*cfg.perUser:
		return cfg, fmt.Errorf("--watchers %d is not --users x --watchers-per-user (%d): leave it out", cfg.watchers, cfg.users*cfg.perUser)
	case cfg.workerConns < 0 || (cfg.workerConns > 0 && !cfg.http1):
		return cfg, errors.New("--worker-conns is for --http1 (over HTTP/2 the workers share one connection), and at least 0")
	case cfg.batchWorkers < 0 || cfg.batchWorkers > maxTasks:
		return cfg, fmt.Errorf("--batch-workers must be 0..%d: got %d", maxTasks, cfg.batchWorkers)
	case cfg.batchDelay < 0 || (cfg.batchDelay > 0 && cfg.batchWorkers == 0):
		return cfg, errors.New("--batch-delay is for --batch-workers, and at least 0")
	case cfg.gzip && cfg.http1 && cfg.client == clientRaw:
		return cfg, errors.New("--client raw over HTTP/1.1 does not decompress: drop --gzip, or use --client connect")
	}
	if cfg.users > 0 {
		cfg.watchers = cfg.users * cfg.perUser
	}
	if cfg.tls != nil && !perConnSet {
		cfg.perConn = 1
	}
	if cfg.http1 {
		cfg.perConn = 1
		if !clientSet && cfg.gzip {
			cfg.client = clientConnect
		}
	} else if cfg.codec == codecJSON {
		cfg.client = clientConnect
	}

	switch {
	case cfg.watchers < 1 || cfg.watchers > maxWatchers:
		return cfg, fmt.Errorf("--watchers must be 1..%d: got %d", maxWatchers, cfg.watchers)
	case cfg.tasks < 0 || cfg.tasks > maxTasks:
		return cfg, fmt.Errorf("--tasks must be 0..%d: got %d", maxTasks, cfg.tasks)
	case cfg.cmd == "poll" && (cfg.tasks < 1 || cfg.tasks > maxPollTasks):
		return cfg, fmt.Errorf("poll: --tasks must be 1..%d (one ListTasks page): got %d", maxPollTasks, cfg.tasks)
	case cfg.rate <= 0 || cfg.rate > maxRate:
		return cfg, fmt.Errorf("--rate must be above 0 and at most %d: got %v", maxRate, cfg.rate)
	case cfg.duration <= 0 || cfg.duration > maxDuration:
		return cfg, fmt.Errorf("--duration must be above 0 and at most %v: got %v", maxDuration, cfg.duration)
	case cfg.tasks > 0 && time.Duration(float64(cfg.tasks)/cfg.rate*float64(time.Second)) > maxReportEvery:
		return cfg, fmt.Errorf("--rate %v over %d tasks reports on each task less often than every %v, so leases could expire: raise --rate or lower --tasks", cfg.rate, cfg.tasks, maxReportEvery)
	case cfg.slow < 0 || (cfg.slow > 0 && cfg.slow >= cfg.watchers):
		return cfg, fmt.Errorf("--slow must be 0..%d (fewer than --watchers): got %d", cfg.watchers-1, cfg.slow)
	case cfg.slow > 0 && (cfg.cmd != "push" || cfg.tasks == 0):
		return cfg, errors.New("--slow needs push with --tasks above 0")
	case cfg.slowFor <= 0 || cfg.slowFor > maxDuration:
		return cfg, fmt.Errorf("--slow-for must be above 0 and at most %v: got %v", maxDuration, cfg.slowFor)
	case cfg.pollInterval < 10*time.Millisecond || cfg.pollInterval > time.Minute:
		return cfg, fmt.Errorf("--poll-interval must be 10ms..1m: got %v", cfg.pollInterval)
	case cfg.perConn < 1 || cfg.perConn > 250:
		return cfg, fmt.Errorf("--streams-per-conn must be 1..250: got %d", cfg.perConn)
	case cfg.drain <= 0 || cfg.drain > maxDuration:
		return cfg, fmt.Errorf("--drain must be above 0 and at most %v: got %v", maxDuration, cfg.drain)
	case cfg.cmd == "centrifugo" && cfg.apiKey == "":
		return cfg, errors.New("centrifugo: pass --api-key, the http_api.key of Centrifugo's config")
	case cfg.publishers < 1 || cfg.publishers > maxPublishers:
		return cfg, fmt.Errorf("--publishers must be 1..%d: got %d", maxPublishers, cfg.publishers)
	}
	return cfg, nil
}

// trusting is a TLS client configuration that trusts the certificates of the PEM file ca.
func trusting(ca string) (*tls.Config, error) {
	if ca == "" {
		return nil, errors.New("an https:// --url needs --tls-ca, the PEM file of the server's certificate or its authority")
	}
	pem, err := os.ReadFile(ca)
	if err != nil {
		return nil, fmt.Errorf("--tls-ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("--tls-ca %s: no PEM certificate in it", ca)
	}
	return &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, nil
}

// loopbackURL checks that raw is an http URL of this machine and returns it without a trailing
// slash, and its port. The tool makes heavy load; it must not be pointed at anyone else.
func loopbackURL(raw string) (base string, port int, err error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", 0, fmt.Errorf("--url: %w", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return "", 0, fmt.Errorf("--url %s: want http:// or https:// (with --tls-ca)", raw)
	}
	host := u.Hostname()
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return "", 0, fmt.Errorf("--url %s: refusing a host that is not loopback (localhost, 127.0.0.0/8, ::1): this tool is a load generator", raw)
	}
	port = 80
	if u.Scheme == "https" {
		port = 443
	}
	if p := u.Port(); p != "" {
		if _, err := fmt.Sscan(p, &port); err != nil || port < 1 || port > 65535 {
			return "", 0, fmt.Errorf("--url %s: bad port %q", raw, p)
		}
	}
	if u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return "", 0, fmt.Errorf("--url %s: want a base URL such as http://127.0.0.1:8080", raw)
	}
	return strings.TrimSuffix(u.String(), "/"), port, nil
}
