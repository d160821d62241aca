package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"runtime"
	"strconv"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/taskhub/taskhub/gen/taskhub/v1/taskhubv1connect"
	"github.com/taskhub/taskhub/rpc"
)

// saturated is the share of its cores above which a process is taken to have had no more to
// give: the side that reaches it first is the bottleneck.
const saturated = 0.9

// load is one run of the tool.
type load struct {
	cfg    config
	notes  io.Writer
	prefix string   // of this run's task prompts
	srv    *proc    // nil when the server's process is unknown
	users  []string // with --users, their tokens, from --auth-file
}

// connectParallel bounds the watchers connecting at once, so the connect time is that of a
// watcher, not of a queue.
const connectParallel = 100

func newLoad(cfg config, notes io.Writer) *load {
	return &load{cfg: cfg, notes: notes, prefix: fmt.Sprintf("taskhub-load %08x task ", rand.Uint32())}
}

// findServer sets l.srv to the server's process: --server-pid, or the process listening on
// the URL's port; nil when it is not found.
func (l *load) findServer() {
	pid := l.cfg.serverPID
	if pid == 0 {
		var err error
		if pid, err = findListener(l.cfg.port); err != nil {
			l.notef("server CPU and memory unknown: %v", err)
			return
		}
	}
	l.srv = &proc{pid}
	if _, err := l.srv.cpu(); err != nil {
		l.notef("server CPU and memory unknown: %v", err)
		l.srv = nil
	}
}

// readUsers takes the tokens of the first --users users of the auth file, and of its first
// worker unless --worker-token names one.
func (l *load) readUsers() error {
	f, err := rpc.ReadAuthFile(l.cfg.authFile)
	if err != nil {
		return err
	}
	if len(f.Users) < l.cfg.users {
		return fmt.Errorf("--users %d: %s has %d users (taskhub-load users writes one with enough)", l.cfg.users, l.cfg.authFile, len(f.Users))
	}
	for _, u := range f.Users[:l.cfg.users] {
		l.users = append(l.users, u.Token)
	}
	if l.cfg.workerToken == "" {
		if len(f.Workers) == 0 {
			return fmt.Errorf("%s has no worker, and no --worker-token was given", l.cfg.authFile)
		}
		l.cfg.workerToken = f.Workers[0].Token
	}
	return nil
}

// watchUser is whom watcher i watches as: without --users the one user of --token, else each
// user in turn has --watchers-per-user watchers.
func (l *load) watchUser(i int) watchUser {
	if l.users == nil {
		return watchUser{token: l.cfg.token}
	}
	u := i / l.cfg.perUser
	return watchUser{index: u, token: l.users[u]}
}

func (l *load) run(ctx context.Context) (*report, error) {
	cfg := l.cfg
	rep := &report{
		Command: cfg.cmd, URL: cfg.url, Watchers: cfg.watchers, Tasks: cfg.tasks, Rate: cfg.rate,
		DurationSec: cfg.duration.Seconds(), Gzip: cfg.gzip, HTTP1: cfg.http1, TLS: cfg.tls != nil, Codec: cfg.codec,
	}
	if cfg.cmd == "push" {
		rep.WatchClient = cfg.client
	}
	l.findServer()
	if cfg.users > 0 {
		if err := l.readUsers(); err != nil {
			return nil, err
		}
	}
	var pr problems
	var err error
	if cfg.cmd == "poll" {
		err = l.poll(ctx, rep, &pr)
	} else {
		err = l.push(ctx, rep, &pr)
	}
	if err != nil {
		return nil, err
	}
	rep.ViolationCount, rep.Violations = pr.n, pr.list
	rep.OK = pr.n == 0
	return rep, nil
}

func (l *load) notef(format string, args ...any) {
	fmt.Fprintf(l.notes, format+"\n", args...)
}

// measure watches the server and this process from start to end.
type measure struct {
	l     *load
	start time.Time
	cpu   time.Duration
	self  time.Duration
	peak  *rssPeak
}

func (l *load) startMeasure() *measure {
	m := &measure{l: l, start: time.Now(), self: selfCPU()}
	if l.srv != nil {
		m.cpu, _ = l.srv.cpu()
		m.peak = sampleRSS(*l.srv)
	}
	return m
}

// stop stops sampling, if end did not.
func (m *measure) stop() {
	if m.peak != nil {
		m.peak.end()
	}
}

func (m *measure) end(rep *report) {
	window := time.Since(m.start)
	rep.Client.CPUSec, rep.Client.WindowSec = (selfCPU() - m.self).Seconds(), window.Seconds()
	rep.Client.Cores = runtime.NumCPU() // the cores it may run on: a taskset counts
	rep.Client.CPUShare = rep.Client.CPUSec / rep.Client.WindowSec / float64(rep.Client.Cores)
	if rep.Client.CPUShare >= saturated {
		rep.Bottleneck = "tool"
	}
	if m.peak == nil {
		return
	}
	s := rep.Server
	if s == nil {
		s = &serverStats{PID: m.l.srv.pid}
		rep.Server = s
	}
	cpu, _ := m.l.srv.cpu()
	s.CPUSec = (cpu - m.cpu).Seconds()
	s.WindowSec = window.Seconds()
	s.CPUShare = s.CPUSec / s.WindowSec
	if s.Cores = m.l.srv.cores(); s.Cores > 0 && s.CPUShare/float64(s.Cores) >= saturated && rep.Bottleneck == "" {
		rep.Bottleneck = "server"
	}
	s.PeakRSS = m.peak.end()
	_, s.HWM, _ = m.l.srv.mem()
}

// rss is the server's RSS now, or 0.
func (l *load) rss() int64 {
	if l.srv == nil {
		return 0
	}
	rss, _, _ := l.srv.mem()
	return rss
}

// push runs the watchers against the task load.
func (l *load) push(ctx context.Context, rep *report, pr *problems) error {
	cfg := l.cfg
	nFast := cfg.watchers - cfg.slow // watchers 0..nFast-1 keep reading
	// A watcher that stops reading stops granting HTTP/2 flow control. With Go's default 4 MiB
	// stream window the client would buffer minutes of events and the server would never
	// notice; with 64 KiB it must hold or drop this watcher's events within seconds.
	var fast, slow *pool
	switch {
	case cfg.client == clientRaw && cfg.http1:
		fast, slow = newPool(0, 1, nil, true, cfg.tls), newPool(0, 1, nil, true, cfg.tls) // for their dialers
	case cfg.client == clientRaw:
		fast = newRawPool(nFast, cfg.perConn, l.rawConfig(defaultStreamWindow), cfg.tls)
		slow = newRawPool(cfg.slow, cfg.perConn, l.rawConfig(slowStreamWindow), cfg.tls)
	default:
		fast = newPool(nFast, cfg.perConn, nil, cfg.http1, cfg.tls)
		slow = newPool(cfg.slow, cfg.perConn, &http.HTTP2Config{MaxReceiveBufferPerStream: slowStreamWindow}, cfg.http1, cfg.tls)
	}
	defer fast.close()
	defer slow.close()
	spec := &watchSpec{mode: cfg.mode, prefix: l.prefix, tasks: cfg.tasks, users: max(cfg.users, 1), started: make(chan struct{}), slowFor: cfg.slowFor}
	ws := make([]*watcher, cfg.watchers)
	opens := make([]bool, cfg.watchers) // the watcher opens its HTTP/2 connection
	h1 := map[*pool]*h1Config{fast: l.h1Config(fast), slow: l.h1Config(slow)}
	for i := range ws {
		p, k := fast, i
		if i >= nFast {
			p, k = slow, i-nFast
		}
		user := l.watchUser(i)
		switch {
		case cfg.client == clientRaw && cfg.http1:
			ws[i] = newH1Watcher(i, h1[p], spec, user, i >= nFast)
		case cfg.client == clientRaw:
			ws[i] = newRawWatcher(i, p.rawConn(k), spec, user, i >= nFast)
		default:
			opts := clientOptions(user.token, cfg.gzip, cfg.codec)
			ws[i] = newWatcher(i, taskhubv1connect.NewTaskServiceClient(p.client(k), cfg.url, opts...), spec, user, i >= nFast)
		}
		opens[i] = k%cfg.perConn == 0
	}

	rssBefore := l.rss()
	wctx, stopWatchers := context.WithCancel(ctx)
	started := 0
	defer func() {
		stopWatchers()
		for _, w := range ws[:started] {
			<-w.exited
		}
	}()
	l.notef("connecting %d watchers", cfg.watchers)
	c, n, err := connectAll(ctx, wctx, ws, opens, pr)
	started = n
	if err != nil {
		return err
	}
	c.Connections = fast.conns.Load() + slow.conns.Load()
	rep.Connect = c
	if cfg.client == clientConnect || cfg.http1 {
		// Each watcher noted it with its snapshot, before it was ready.
		for _, w := range ws {
			if rep.ContentType == "" {
				rep.ContentType = w.contentType
			}
			if w.snapshot && w.contentType != rep.ContentType {
				pr.addf("watcher %d: its stream is %s, another's %s", w.id, w.contentType, rep.ContentType)
			}
		}
	}
	if l.srv != nil {
		time.Sleep(time.Second) // let the server's allocations settle
		rss := l.rss()
		rep.Server = &serverStats{PID: l.srv.pid, RSSBefore: rssBefore, RSSIdle: rss,
			PerWatcher: float64(rss-rssBefore) / float64(c.Connected)}
	}

	lagBefore, lagErr := l.readLag(ctx)
	if lagErr != nil {
		l.notef("the server's part of the latency unknown: %v", lagErr)
	}
	m := l.startMeasure()
	defer m.stop()
	if cfg.tasks == 0 {
		l.notef("holding %d idle watchers for %v", c.Connected, cfg.duration)
		select {
		case <-time.After(cfg.duration):
		case <-ctx.Done():
			return ctx.Err()
		}
		m.end(rep)
		stopWatchers()
		var beats int64
		for _, w := range ws {
			<-w.exited
			beats += w.heartbeats
			pr.merge(&w.problems)
		}
		rep.Deliveries = &deliveryStats{BytesIn: fast.in.Load() + slow.in.Load(), Heartbeats: beats}
		return nil
	}

	d := newDriver(l.cfg, l.prefix, l.users, l.notes)
	defer d.close()
	close(spec.started)
	l.notef("driving %d tasks at %g progress events/s for %v", cfg.tasks, cfg.rate, cfg.duration)
	driveTime, err := l.drive(ctx, d)
	if err != nil {
		d.abandon()
		return err
	}
	drainFrom := time.Now()
	if cfg.slow > 0 {
		drainFrom = later(drainFrom, m.start.Add(cfg.slowFor))
	}
	if !waitAll(ctx, ws, func(w *watcher) chan struct{} { return w.done }, drainFrom.Add(cfg.drain)) && ctx.Err() != nil {
		return ctx.Err()
	}
	window := time.Since(m.start)
	m.end(rep)
	stopWatchers()
	for _, w := range ws {
		<-w.exited
	}
	rep.Deliveries = &deliveryStats{BytesIn: fast.in.Load() + slow.in.Load()}
	if lagErr == nil {
		if after, err := l.readLag(ctx); err != nil {
			l.notef("the server's part of the latency unknown: %v", err)
		} else {
			rep.ServerLag = newLagStats(after.since(lagBefore))
		}
	}

	rep.Events = d.stats(driveTime, pr)
	tallyPush(rep, ws, d, window, pr)
	return nil
}

// Stream receive windows: Go's transport's default, and that of the watchers that stop reading.
const (
	defaultStreamWindow = 4 << 20
	slowStreamWindow    = 64 << 10
)

// h1Config is the configuration of the HTTP/1.1 watchers whose connections p dials.
func (l *load) h1Config(p *pool) *h1Config {
	u, _ := url.Parse(l.cfg.url) // parseConfig checked it
	return &h1Config{
		addr: net.JoinHostPort(u.Hostname(), strconv.Itoa(l.cfg.port)), authority: u.Host,
		codec: l.cfg.codec, dial: p.dialFor("http/1.1"),
	}
}

// rawConfig is the configuration of the rawConns of a pool whose streams get window bytes.
func (l *load) rawConfig(window uint32) rawConfig {
	u, _ := url.Parse(l.cfg.url) // parseConfig checked it
	return rawConfig{
		addr: net.JoinHostPort(u.Hostname(), strconv.Itoa(l.cfg.port)), authority: u.Host,
		gzip: l.cfg.gzip, window: window,
	}
}

// connectee is a watcher connectAll starts: a push watcher, or a Centrifugo one.
type connectee interface {
	launch(ctx context.Context) // runs it on ctx, on goroutines of its own
	readyCh() chan struct{}     // closed once it is connected or failed to
	outcome() (ok bool, took time.Duration, err error)
}

// connectAll starts the watchers on wctx, at most connectParallel connecting at once, and
// waits until each has connected (its snapshot or its subscription) or failed. A watcher whose
// opens is true is waited for before the next starts (nil opens: none). It returns how many it
// started, even on error.
func connectAll[W connectee](ctx, wctx context.Context, ws []W, opens []bool, pr *problems) (_ *connectStats, started int, _ error) {
	start := time.Now()
	for i, w := range ws {
		if i >= connectParallel {
			select {
			case <-ws[i-connectParallel].readyCh():
			case <-ctx.Done():
				return nil, started, ctx.Err()
			}
		}
		w.launch(wctx)
		started++
		if opens != nil && opens[i] {
			// Streams that start together on a transport without a connection each dial
			// their own; the others wait for this one's.
			select {
			case <-w.readyCh():
			case <-ctx.Done():
				return nil, started, ctx.Err()
			}
		}
	}
	if !waitAll(ctx, ws, func(w W) chan struct{} { return w.readyCh() }, start.Add(2*time.Minute)) {
		return nil, started, errors.Join(ctx.Err(), errors.New("the watchers did not connect within 2 minutes"))
	}
	c := &connectStats{Seconds: time.Since(start).Seconds()}
	var times []time.Duration
	var firstErr error
	for i, w := range ws {
		ok, took, err := w.outcome()
		if ok {
			c.Connected++
			times = append(times, took)
			continue
		}
		c.Failed++
		firstErr = cmp.Or(firstErr, err)
		pr.addf("watcher %d did not connect: %v", i, err)
	}
	if c.Connected == 0 {
		return nil, started, fmt.Errorf("no watcher connected; the first error: %v", firstErr)
	}
	d := newDist(times)
	c.P50Ms, c.MaxMs = d.P50, d.Max
	return c, started, nil
}

// tallyPush checks what every watcher received against what the driver published, and fills
// in the deliveries (rep.Deliveries has the bytes already), latencies and slow watchers.
func tallyPush(rep *report, ws []*watcher, d *driver, window time.Duration, pr *problems) {
	del := rep.Deliveries
	var s *slowStats
	if n := rep.Watchers - keepReading(ws); n > 0 {
		s = &slowStats{Watchers: n, SameFinal: true}
	}
	var lat, slowLat []time.Duration
	for _, w := range ws {
		pr.merge(&w.problems)
		del.Heartbeats += w.heartbeats
		if !w.snapshot {
			continue // reported as not connected
		}
		if w.err != nil {
			pr.addf("watcher %d: the stream failed: %v", w.id, w.err)
		}
		got, want := w.progress+w.lifecycle, d.publishedOf(w.user, w.spec.users)
		del.Expected += want
		del.Received += got
		if w.slow {
			s.Received += got
			s.Coalesced += want - got
			s.StoppedSec = max(s.StoppedSec, w.stoppedFor.Seconds())
			slowLat = append(slowLat, w.latency...)
		} else {
			lat = append(lat, w.latency...)
		}
		w.latency = nil
		for j, t := range w.tasks {
			if j%w.spec.users != w.user {
				continue
			}
			if t.created != 1 || t.started != 1 || t.completed != 1 {
				pr.addf("watcher %d: task %d: %d CREATED, %d STARTED, %d COMPLETED events, want one each (lost or repeated)", w.id, j, t.created, t.started, t.completed)
			}
			if int64(t.progress) > d.progress[j] {
				pr.addf("watcher %d: task %d: %d PROGRESS events, more than the %d accepted", w.id, j, t.progress, d.progress[j])
			}
			same := t.final != nil && proto.Equal(t.final, d.final[j])
			if t.final != nil && !same {
				pr.addf("watcher %d: task %d: its final state is not the task CompleteTask returned", w.id, j)
			}
			if w.slow && !same {
				s.SameFinal = false
			}
		}
	}
	del.Coalesced = del.Expected - del.Received
	del.PerSec = float64(del.Received) / window.Seconds()
	rep.Latency = newDist(lat)
	if s != nil {
		s.Latency = newDist(slowLat)
		rep.Slow = s
	}
}

// drive runs the driver: create, claim, report progress for the duration, complete. It
// returns how long the progress reports took.
func (l *load) drive(ctx context.Context, d *driver) (time.Duration, error) {
	if err := d.create(ctx); err != nil {
		return 0, err
	}
	if err := d.claim(ctx); err != nil {
		return 0, err
	}
	var cpu time.Duration
	if l.srv != nil {
		cpu, _ = l.srv.cpu()
	}
	start := time.Now()
	d.drive(ctx, l.cfg.rate, l.cfg.duration)
	took := time.Since(start)
	if l.srv != nil {
		if now, err := l.srv.cpu(); err == nil {
			d.reportCPU = now - cpu
		}
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	return took, d.complete(ctx)
}

// poll runs the polling clients against the task load.
func (l *load) poll(ctx context.Context, rep *report, pr *problems) error {
	cfg := l.cfg
	pool := newPool(cfg.watchers, cfg.perConn, nil, cfg.http1, cfg.tls)
	defer pool.close()
	spec := &watchSpec{mode: cfg.mode, prefix: l.prefix, tasks: cfg.tasks, users: 1}
	opts := clientOptions(cfg.token, cfg.gzip, cfg.codec)
	ps := make([]*poller, cfg.watchers)
	for i := range ps {
		phase := cfg.pollInterval * time.Duration(i) / time.Duration(len(ps))
		ps[i] = newPoller(i, taskhubv1connect.NewTaskServiceClient(pool.client(i), cfg.url, opts...), spec, cfg.pollInterval, phase)
	}
	pctx, stopPollers := context.WithCancel(ctx)
	defer func() {
		stopPollers()
		for _, p := range ps {
			<-p.exited
		}
	}()
	l.notef("starting %d clients polling every %v", cfg.watchers, cfg.pollInterval)
	m := l.startMeasure()
	defer m.stop()
	for _, p := range ps {
		go p.run(pctx)
	}

	d := newDriver(cfg, l.prefix, nil, l.notes)
	defer d.close()
	l.notef("driving %d tasks at %g progress events/s for %v", cfg.tasks, cfg.rate, cfg.duration)
	driveTime, err := l.drive(ctx, d)
	if err != nil {
		d.abandon()
		return err
	}
	deadline := time.Now().Add(cfg.pollInterval + cfg.drain)
	if !waitAll(ctx, ps, func(p *poller) chan struct{} { return p.done }, deadline) && ctx.Err() != nil {
		return ctx.Err()
	}
	window := time.Since(m.start)
	m.end(rep)
	stopPollers()
	for _, p := range ps {
		<-p.exited
	}

	rep.Events = d.stats(driveTime, pr)
	st := &pollStats{
		IntervalSec: cfg.pollInterval.Seconds(), WindowSec: window.Seconds(),
		BytesIn: pool.in.Load(), BytesOut: pool.out.Load(),
	}
	var stale []time.Duration
	for _, p := range ps {
		st.Requests += p.polls
		st.Failed += p.failures
		if p.failures > 0 && st.FirstError == "" {
			st.FirstError = p.firstErr.Error()
		}
		stale = p.staleness(d, stale, pr)
	}
	if st.Failed > 0 {
		pr.addf("%d polls failed; the first: %s", st.Failed, st.FirstError)
	}
	st.ReqPerSec = float64(st.Requests) / st.WindowSec
	st.BytesPerSec = float64(st.BytesIn+st.BytesOut) / st.WindowSec
	st.Staleness = newDist(stale)
	rep.Poll = st
	return nil
}

// waitAll waits until ch(x) is closed for every x, ctx ends or deadline passes; it reports
// whether they all closed.
func waitAll[T any](ctx context.Context, xs []T, ch func(T) chan struct{}, deadline time.Time) bool {
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	for _, x := range xs {
		select {
		case <-ch(x):
		case <-timer.C:
			return false
		case <-ctx.Done():
			return false
		}
	}
	return true
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// keepReading counts the watchers that are not slow.
func keepReading(ws []*watcher) int {
	n := 0
	for _, w := range ws {
		if !w.slow {
			n++
		}
	}
	return n
}
