package main

// The centrifugo command puts the shape of push's load on a local Centrifugo (v6), the peer
// taskhub's watch delivery is compared with, and writes the same report.
//
// --watchers clients each hold one WebSocket and speak Centrifugo's JSON client protocol, as
// its browser SDK does, all subscribed to one channel (of this run); --publishers goroutines
// publish --rate messages/s in all into it through the server HTTP API for --duration. Each
// message's data names its publisher, its index among that publisher's messages, and the
// time it was published (just before the request); a publisher sends its messages one after
// the other, so every watcher must get each publisher's messages in order, each once. Latency
// is receive time minus publish time, as push's is receive time minus the event's time.
//
// It was validated against Centrifugo v6.9.1 (go install
// github.com/centrifugal/centrifugo/v6@v6.9.1), run as
//
//	GOMAXPROCS=1 taskset -c 0 centrifugo --config config.json
//
// with this config.json (the memory engine is the default; named here for the reader):
//
//	{
//	  "log": {"level": "error"},
//	  "http_server": {"address": "127.0.0.1", "port": 8000},
//	  "engine": {"type": "memory"},
//	  "client": {"insecure": true},
//	  "http_api": {"key": "taskhub-load"},
//	  "usage_stats": {"disabled": true}
//	}
//
// and this tool as taskhub-load centrifugo --url http://127.0.0.1:8000 --api-key taskhub-load.
// client.insecure lets every connection in without a token and subscribe to any channel
// (--token sends a connection JWT instead). No limit needs raising: by default there is no
// connection limit nor connection rate limit, a client may have 128 channels, and its queue
// (1 MiB) holds seconds of this load.
//
// With an https --url and --tls-ca, each watcher's WebSocket is over TLS of its own (wss), as
// a browser's page over https has it, and the HTTP API is called over TLS; Centrifugo then
// needs "tls": {"enabled": true, "cert_pem": "cert.pem", "key_pem": "key.pem"} in its
// http_server.
//
// The protocol, as this tool speaks it: once the WebSocket is open a watcher sends
// {"id":1,"connect":{}} and, once that is answered, {"id":2,"subscribe":{"channel":C}}.
// Every message after that (a text message holds one or more, a line each) is a push,
// {"push":{"channel":C,"pub":{"data":D}}} with D as published, or a ping, {}, which must be
// answered with {}; an unasked {} makes the server disconnect the client.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// Centrifugo's default endpoints.
const (
	centrifugoWebSocketPath = "/connection/websocket"
	centrifugoAPIPath       = "/api/"
)

const (
	// maxPublishers bounds --publishers.
	maxPublishers = 100
	// centrifugoReadLimit bounds a message from the server: it may batch many pushes in one.
	centrifugoReadLimit = 16 << 20
	// centrifugoConnectTimeout bounds a watcher's dial, connect and subscribe.
	centrifugoConnectTimeout = time.Minute
)

// centrifugoLoad is one run of the centrifugo command.
type centrifugoLoad struct {
	*load
	channel   string
	connect   []byte // the watchers' connect command
	subscribe []byte // and subscribe command
	sockets   *pool  // dials the watchers' connections and counts their bytes
	api       *http.Client
}

// centrifugo runs the centrifugo command.
func (l *load) centrifugo(ctx context.Context) (*report, error) {
	cfg := l.cfg
	c := &centrifugoLoad{
		load:    l,
		channel: fmt.Sprintf("taskhub-load-%08x", rand.Uint32()),
		sockets: newPool(1, 1, nil, true, cfg.tls), // with an https URL, wss: WebSocket over TLS, a connection each
		api:     &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: cfg.publishers, TLSClientConfig: cfg.tls}},
	}
	defer c.sockets.close()
	defer c.api.CloseIdleConnections()
	connect := map[string]any{}
	if cfg.token != "" {
		connect["token"] = cfg.token
	}
	c.connect, _ = json.Marshal(map[string]any{"id": 1, "connect": connect})
	c.subscribe, _ = json.Marshal(map[string]any{"id": 2, "subscribe": map[string]string{"channel": c.channel}})

	rep := &report{
		Command: cfg.cmd, URL: cfg.url, Watchers: cfg.watchers, Rate: cfg.rate, DurationSec: cfg.duration.Seconds(),
		Codec: codecJSON, WatchClient: "websocket",
		// A publisher's messages are ordered as a task's events are.
		Tasks: cfg.publishers,
	}
	c.findServer()
	if err := c.call(ctx, "info", []byte("{}"), nil); err != nil {
		return nil, fmt.Errorf("the server HTTP API at %s: %w", cfg.url+centrifugoAPIPath, err)
	}
	var pr problems
	if err := c.run(ctx, rep, &pr); err != nil {
		return nil, err
	}
	rep.ViolationCount, rep.Violations = pr.n, pr.list
	rep.OK = pr.n == 0
	return rep, nil
}

// run connects the watchers, publishes, waits for the watchers to get everything and fills
// in the report.
func (c *centrifugoLoad) run(ctx context.Context, rep *report, pr *problems) error {
	cfg := c.cfg
	ws := make([]*centrifugoWatcher, cfg.watchers)
	for i := range ws {
		ws[i] = newCentrifugoWatcher(i, cfg.publishers)
		ws[i].load = c
	}
	rssBefore := c.rss()
	wctx, stopWatchers := context.WithCancel(ctx)
	started := 0
	defer func() {
		stopWatchers()
		for _, w := range ws[:started] {
			<-w.exited
		}
	}()
	c.notef("connecting %d watchers to channel %s", cfg.watchers, c.channel)
	conn, n, err := connectAll(ctx, wctx, ws, nil, pr)
	started = n
	if err != nil {
		return err
	}
	conn.Connections = int64(conn.Connected) // one WebSocket each
	rep.Connect = conn
	if c.srv != nil {
		time.Sleep(time.Second) // let the server's allocations settle
		rss := c.rss()
		rep.Server = &serverStats{PID: c.srv.pid, RSSBefore: rssBefore, RSSIdle: rss,
			PerWatcher: float64(rss-rssBefore) / float64(conn.Connected)}
	}

	m := c.startMeasure()
	defer m.stop()
	c.notef("publishing %g messages/s from %d publishers for %v", cfg.rate, cfg.publishers, cfg.duration)
	var cpu time.Duration
	if c.srv != nil {
		cpu, _ = c.srv.cpu()
	}
	p := c.publish(ctx)
	if c.srv != nil {
		if now, err := c.srv.cpu(); err == nil {
			p.cpu = now - cpu
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if !drained(ctx, ws, p.total(), time.Now().Add(cfg.drain)) && ctx.Err() != nil {
		return ctx.Err()
	}
	window := time.Since(m.start)
	m.end(rep)
	stopWatchers()
	for _, w := range ws {
		<-w.exited
	}
	rep.Events = p.stats(pr)
	rep.Deliveries = &deliveryStats{BytesIn: c.sockets.in.Load()}
	tallyCentrifugo(rep, ws, window, pr)
	return nil
}

// drained waits until every subscribed watcher that is still connected has want
// publications, ctx ends or deadline passes; it reports whether they all got there.
func drained(ctx context.Context, ws []*centrifugoWatcher, want int64, deadline time.Time) bool {
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for i := 0; i < len(ws); {
		w := ws[i]
		if !w.subscribed || w.got.Load() >= want || isDone(w.exited) {
			i++
			continue
		}
		if time.Now().After(deadline) {
			return false
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return false
		}
	}
	return true
}

func isDone(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// tallyCentrifugo checks what every watcher received against what was published, and fills
// in the deliveries (rep.Deliveries has the bytes already) and latencies.
func tallyCentrifugo(rep *report, ws []*centrifugoWatcher, window time.Duration, pr *problems) {
	del := rep.Deliveries
	published := rep.Events.Published
	var lat []time.Duration
	for _, w := range ws {
		pr.merge(&w.problems)
		del.Heartbeats += w.pings
		if !w.subscribed {
			continue // reported as not connected
		}
		if w.err != nil {
			pr.addf("watcher %d: the connection failed: %v", w.id, w.err)
		}
		del.Expected += published
		del.Received += w.received
		if w.received < published {
			pr.addf("watcher %d: missed %d of the %d messages", w.id, published-w.received, published)
		}
		lat = append(lat, w.latency...)
		w.latency = nil
	}
	// Centrifugo does not coalesce: what is not received is missed.
	del.Coalesced = del.Expected - del.Received
	del.PerSec = float64(del.Received) / window.Seconds()
	rep.Latency = newDist(lat)
}

// call posts body to the server HTTP API's method and checks the answer, which it reads into
// buf (a new one when nil). Centrifugo answers an error with 200 OK and {"error":{...}}.
func (c *centrifugoLoad) call(ctx context.Context, method string, body []byte, buf *bytes.Buffer) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.cfg.url+centrifugoAPIPath+method, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-API-Key", c.cfg.apiKey)
	res, err := c.api.Do(req)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	if buf == nil {
		buf = new(bytes.Buffer)
	}
	buf.Reset()
	if _, err := buf.ReadFrom(res.Body); err != nil {
		return err
	}
	switch {
	case res.StatusCode == http.StatusUnauthorized:
		return errors.New("401 Unauthorized: pass --api-key, the http_api.key of Centrifugo's config")
	case res.StatusCode != http.StatusOK:
		return fmt.Errorf("%s: %.200s", res.Status, buf.Bytes())
	case bytes.Contains(buf.Bytes(), []byte(`"error"`)):
		var e struct {
			Error struct {
				Code    int    `json:"code"`
				Message string `json:"message"`
			} `json:"error"`
		}
		if err := json.Unmarshal(buf.Bytes(), &e); err != nil || e.Error.Code == 0 {
			return fmt.Errorf("an unexpected answer: %.200s", buf.Bytes())
		}
		return fmt.Errorf("error %d: %s", e.Error.Code, e.Error.Message)
	}
	return nil
}

// publishing is what the publishers did.
type publishing struct {
	mu        sync.Mutex
	took      time.Duration
	published []int64 // accepted publishes, per publisher
	calls     []time.Duration
	failures  int
	firstErr  error
	cpu       time.Duration // the server's, while publishing; 0: unknown
}

func (p *publishing) total() int64 {
	var n int64
	for _, k := range p.published {
		n += k
	}
	return n
}

func (p *publishing) fail(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.failures == 0 {
		p.firstErr = err
	}
	p.failures++
}

// stats sums up the publishing as push's driver does its progress reports, and reports
// failed publishes as a violation.
func (p *publishing) stats(pr *problems) *eventStats {
	n := p.total()
	if p.failures > 0 {
		pr.addf("%d publishes failed; the first: %v", p.failures, p.firstErr)
	}
	e := &eventStats{
		Published: n, Progress: n, ProgressPerSec: float64(n) / p.took.Seconds(),
		DriverErrors: p.failures, Calls: newDist(p.calls),
	}
	if p.firstErr != nil {
		e.FirstError = p.firstErr.Error()
	}
	if p.cpu > 0 && n > 0 {
		e.ReportCPUSec = p.cpu.Seconds()
		e.ReportCPUShare = e.ReportCPUSec / p.took.Seconds()
		e.CPUPerProgressUs = 1e6 * e.ReportCPUSec / float64(n)
	}
	return e
}

// publish publishes rate messages/s in all for dur, as push's driver reports progress:
// publisher g publishes its k-th message at start + (g + k*n)/rate, each after the previous
// one was answered (at once when it has fallen behind), and stops at dur whatever the count.
// The message's data is {"p":g,"k":k,"t":unix nanoseconds just before the request}.
func (c *centrifugoLoad) publish(ctx context.Context) *publishing {
	n, rate, dur := c.cfg.publishers, c.cfg.rate, c.cfg.duration
	p := &publishing{published: make([]int64, n)}
	calls := make([][]time.Duration, n)
	prefix := fmt.Appendf(nil, `{"channel":%q,"data":{"p":`, c.channel)
	start := time.Now()
	var wg sync.WaitGroup
	for g := range n {
		wg.Go(func() {
			timer := time.NewTimer(0)
			defer timer.Stop()
			<-timer.C
			var body []byte
			var answer bytes.Buffer
			for k := 0; ; k++ {
				at := time.Duration(float64(g+k*n) / rate * float64(time.Second))
				if at >= dur || time.Since(start) >= dur {
					return
				}
				if wait := time.Until(start.Add(at)); wait > 0 {
					timer.Reset(wait)
					select {
					case <-timer.C:
					case <-ctx.Done():
						return
					}
				}
				asked := time.Now()
				body = appendPublication(append(body[:0], prefix...), g, int64(k), asked.UnixNano())
				if err := c.call(ctx, "publish", body, &answer); err != nil {
					if ctx.Err() != nil {
						return
					}
					p.fail(fmt.Errorf("publisher %d, message %d: %w", g, k, err))
					continue
				}
				calls[g] = append(calls[g], time.Since(asked))
				p.published[g]++
			}
		})
	}
	wg.Wait()
	p.took = time.Since(start)
	for _, cs := range calls {
		p.calls = append(p.calls, cs...)
	}
	return p
}

// appendPublication appends the rest of a publish request, from the data's first value: a
// message's data is {"p":publisher,"k":index,"t":unix nanoseconds}, in this order.
func appendPublication(b []byte, publisher int, k, t int64) []byte {
	b = strconv.AppendInt(b, int64(publisher), 10)
	b = append(b, `,"k":`...)
	b = strconv.AppendInt(b, k, 10)
	b = append(b, `,"t":`...)
	b = strconv.AppendInt(b, t, 10)
	return append(b, "}}"...)
}

// centrifugoWatcher is one Centrifugo client: a WebSocket subscribed to the run's channel,
// read by a goroutine of its own. Its fields belong to that goroutine until ready is closed
// (id, subscribed, connectTime) or exited is (the others), except got.
type centrifugoWatcher struct {
	id     int
	load   *centrifugoLoad // its run's
	ready  chan struct{}   // closed when it subscribed or failed to
	exited chan struct{}
	got    atomic.Int64 // publications received, for the drain to watch

	start       time.Time
	connectTime time.Duration // from the dial to the subscribe reply
	subscribed  bool
	err         error   // the connection failed or ended before it was stopped
	next        []int64 // per publisher, the index after the last one received
	received    int64
	pings       int64
	latency     []time.Duration
	buf         []byte // the message being read
	problems    problems
}

func newCentrifugoWatcher(id, publishers int) *centrifugoWatcher {
	return &centrifugoWatcher{
		id: id, ready: make(chan struct{}), exited: make(chan struct{}),
		next: make([]int64, publishers),
	}
}

// run connects, subscribes and reads until ctx ends or the connection fails.
func (w *centrifugoWatcher) launch(ctx context.Context) { go w.run(ctx, w.load) }

func (w *centrifugoWatcher) readyCh() chan struct{} { return w.ready }

func (w *centrifugoWatcher) outcome() (bool, time.Duration, error) {
	return w.subscribed, w.connectTime, w.err
}

func (w *centrifugoWatcher) run(ctx context.Context, c *centrifugoLoad) {
	defer close(w.exited)
	conn, rest, err := w.open(ctx, c)
	if err != nil {
		w.err = err
		close(w.ready)
		return
	}
	defer conn.CloseNow()
	// Reads without a context are cheaper; closing the connection ends them.
	stop := context.AfterFunc(ctx, func() { conn.CloseNow() })
	defer stop()
	w.subscribed = true
	close(w.ready)
	err = w.read(conn, rest)
	if ctx.Err() == nil {
		w.err = err
	}
}

// open dials, connects and subscribes. It returns the connection and what followed the
// subscribe reply in its message.
func (w *centrifugoWatcher) open(ctx context.Context, c *centrifugoLoad) (*websocket.Conn, []byte, error) {
	ctx, cancel := context.WithTimeout(ctx, centrifugoConnectTimeout)
	defer cancel()
	w.start = time.Now()
	u := "ws" + c.cfg.url[len("http"):] + centrifugoWebSocketPath
	conn, _, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPClient: c.sockets.client(0)})
	if err != nil {
		return nil, nil, err
	}
	conn.SetReadLimit(centrifugoReadLimit)
	var rest []byte
	for i, cmd := range [][]byte{c.connect, c.subscribe} {
		if err = conn.Write(ctx, websocket.MessageText, cmd); err == nil {
			rest, err = w.await(ctx, conn, i+1)
		}
		if err != nil {
			conn.CloseNow()
			if i == 0 {
				return nil, nil, fmt.Errorf("connect: %w (is client.insecure true in Centrifugo's config? else pass a connection JWT as --token)", err)
			}
			return nil, nil, fmt.Errorf("subscribe to %s: %w", c.channel, err)
		}
	}
	w.connectTime = time.Since(w.start)
	return conn, rest, nil
}

// await reads until the reply to command id, and returns what followed it in its message.
func (w *centrifugoWatcher) await(ctx context.Context, conn *websocket.Conn, id int) ([]byte, error) {
	for {
		_, msg, err := conn.Read(ctx)
		if err != nil {
			return nil, err
		}
		line, rest, _ := bytes.Cut(msg, []byte("\n"))
		if len(line) == 0 {
			continue
		}
		var r struct {
			ID    int `json:"id"`
			Error *struct {
				Code    int    `json:"code"`
				Message string `json:"message"`
			} `json:"error"`
		}
		switch err := json.Unmarshal(line, &r); {
		case err != nil || r.ID != id:
			return nil, fmt.Errorf("an unexpected message %.200q while awaiting the reply to command %d", line, id)
		case r.Error != nil:
			return nil, fmt.Errorf("error %d: %s", r.Error.Code, r.Error.Message)
		}
		return rest, nil
	}
}

// read reads the connection's messages until it fails, starting with rest, and answers the
// pings.
func (w *centrifugoWatcher) read(conn *websocket.Conn, rest []byte) error {
	pong := []byte("{}")
	pings := w.message(rest, time.Now())
	for {
		for range pings {
			if err := conn.Write(context.Background(), websocket.MessageText, pong); err != nil {
				return err
			}
		}
		_, r, err := conn.Reader(context.Background())
		if err != nil {
			return err
		}
		if w.buf, err = readAll(r, w.buf[:0]); err != nil {
			return err
		}
		pings = w.message(w.buf, time.Now())
	}
}

// readAll appends what r has to b.
func readAll(r io.Reader, b []byte) ([]byte, error) {
	for {
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
		n, err := r.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err == io.EOF {
			return b, nil
		}
		if err != nil {
			return b, err
		}
	}
}

// message checks and counts the replies of one WebSocket message, received at now, and
// returns how many were pings.
func (w *centrifugoWatcher) message(msg []byte, now time.Time) (pings int) {
	for len(msg) > 0 {
		var line []byte
		line, msg, _ = bytes.Cut(msg, []byte("\n"))
		switch {
		case len(line) == 0:
		case string(line) == "{}":
			pings++
			w.pings++
		default:
			p, k, t, ok := parsePublication(line)
			if !ok {
				w.problems.addf("watcher %d: an unexpected message %.200q", w.id, line)
				continue
			}
			w.publication(p, k, t, now)
		}
	}
	return pings
}

// publication checks and counts a publication of publisher p's k-th message, published at t
// (unix nanoseconds) and received at now.
func (w *centrifugoWatcher) publication(p, k, t int64, now time.Time) {
	if p < 0 || p >= int64(len(w.next)) {
		w.problems.addf("watcher %d: a message of publisher %d, of %d", w.id, p, len(w.next))
		return
	}
	w.received++
	w.got.Store(w.received)
	w.latency = append(w.latency, now.Sub(time.Unix(0, t)))
	if k < w.next[p] {
		w.problems.addf("watcher %d: publisher %d's message %d after its message %d: repeated or out of order", w.id, p, k, w.next[p]-1)
		return
	}
	w.next[p] = k + 1
}

// parsePublication returns the publisher, index and publish time of a push of a publication
// whose data is as the publishers wrote it:
//
//	{"push":{"channel":C,"pub":{"data":{"p":P,"k":K,"t":T}...}}}
//
// It decodes no more than that: Centrifugo passes the data through as it was published.
func parsePublication(line []byte) (p, k, t int64, ok bool) {
	if !bytes.HasPrefix(line, []byte(`{"push":{`)) {
		return 0, 0, 0, false
	}
	const data = `"pub":{"data":{`
	i := bytes.Index(line, []byte(data))
	if i < 0 {
		return 0, 0, 0, false
	}
	b := line[i+len(data):]
	var v [3]int64
	for j, key := range []string{`"p":`, `,"k":`, `,"t":`} {
		if !bytes.HasPrefix(b, []byte(key)) {
			return 0, 0, 0, false
		}
		b = b[len(key):]
		n := 0
		for ; n < len(b) && n < 19 && '0' <= b[n] && b[n] <= '9'; n++ {
			v[j] = 10*v[j] + int64(b[n]-'0')
		}
		if n == 0 {
			return 0, 0, 0, false
		}
		b = b[n:]
	}
	if len(b) == 0 || b[0] != '}' {
		return 0, 0, 0, false
	}
	return v[0], v[1], v[2], true
}
