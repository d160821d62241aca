package main

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"text/tabwriter"
	"time"
)

// report is the result of a run; --json prints it as is.
type report struct {
	Command     string  `json:"command"`
	URL         string  `json:"url"`
	Watchers    int     `json:"watchers"` // or polling clients
	Tasks       int     `json:"tasks"`
	Rate        float64 `json:"rate"`
	DurationSec float64 `json:"duration_s"`
	Gzip        bool    `json:"gzip"`
	HTTP1       bool    `json:"http1"`
	TLS         bool    `json:"tls"`
	Codec       string  `json:"codec"`
	// ContentType is the media type of the watch streams as the server answered them
	// (connect-go watchers; the raw client speaks application/connect+proto).
	ContentType string `json:"content_type,omitempty"`
	WatchClient string `json:"watch_client,omitempty"` // push: raw or connect

	Connect    *connectStats  `json:"connect,omitempty"`
	Events     *eventStats    `json:"events,omitempty"`
	Deliveries *deliveryStats `json:"deliveries,omitempty"`
	// Latency is receive time minus the event's time (when the hub accepted it), over every
	// delivery of a load task to a watcher that kept reading.
	Latency *dist `json:"latency_ms,omitempty"`
	// ServerLag is the server's part of Latency, from its taskhub_watch_delivery_seconds.
	ServerLag *lagStats    `json:"server_lag_ms,omitempty"`
	Slow      *slowStats   `json:"slow,omitempty"`
	Poll      *pollStats   `json:"poll,omitempty"`
	Server    *serverStats `json:"server,omitempty"`
	Client    clientStats  `json:"client"`

	// Bottleneck says which side used (nearly) all the cores it may run on: "tool", when this
	// tool did (its latency and achieved rate are then its own limits, not the server's), or
	// "server"; empty when neither did.
	Bottleneck string `json:"bottleneck,omitempty"`

	OK             bool     `json:"ok"`
	ViolationCount int      `json:"violation_count"`
	Violations     []string `json:"violations,omitempty"` // the first few
}

type connectStats struct {
	Connected   int     `json:"connected"`
	Failed      int     `json:"failed"`
	Seconds     float64 `json:"seconds"` // to connect them all, at most 100 at a time
	P50Ms       float64 `json:"p50_ms"`  // from the call to the snapshot
	MaxMs       float64 `json:"max_ms"`
	Connections int64   `json:"connections"` // HTTP/2 connections they share
}

type eventStats struct {
	Published      int64   `json:"published"`      // progress + lifecycle
	Progress       int64   `json:"progress"`       // accepted ReportProgress calls
	Lifecycle      int64   `json:"lifecycle"`      // created, started, completed
	ProgressPerSec float64 `json:"progress_per_s"` // achieved; below --rate when the server answers slower
	DriverErrors   int     `json:"driver_errors"`
	FirstError     string  `json:"first_error,omitempty"`
	// Calls is how long the accepted ReportProgress calls took, from asking to the answer.
	Calls *dist `json:"report_call_ms,omitempty"`
	// The server's CPU while the tasks reported progress (not while they were created,
	// claimed or completed, nor during the drain), and that per accepted progress report:
	// the write path's cost, the event's deliveries to the watchers included.
	ReportCPUSec     float64 `json:"report_cpu_s,omitempty"`
	ReportCPUShare   float64 `json:"report_cpu_share,omitempty"` // of one core
	CPUPerProgressUs float64 `json:"cpu_per_progress_us,omitempty"`
}

type deliveryStats struct {
	// Expected is events published x watchers connected; every watcher sees every task.
	Expected int64 `json:"expected"`
	Received int64 `json:"received"`
	// Coalesced is Expected - Received: progress events a queue replaced with a newer one of
	// the same task. Only progress may be coalesced; anything else missing is a violation.
	Coalesced  int64   `json:"coalesced"`
	PerSec     float64 `json:"per_s"`
	BytesIn    int64   `json:"bytes_in"` // on the watchers' connections, framing included
	Heartbeats int64   `json:"heartbeats"`
}

type slowStats struct {
	Watchers   int     `json:"watchers"`
	StoppedSec float64 `json:"stopped_s"` // the longest stop
	Received   int64   `json:"received"`
	Coalesced  int64   `json:"coalesced"`
	// Latency includes what waited while they did not read.
	Latency *dist `json:"latency_ms,omitempty"`
	// SameFinal: every slow watcher ended with exactly the tasks CompleteTask returned, as the
	// others did.
	SameFinal bool `json:"same_final_states"`
}

type pollStats struct {
	IntervalSec float64 `json:"interval_s"`
	Requests    int64   `json:"requests"`
	Failed      int64   `json:"failed"`
	FirstError  string  `json:"first_error,omitempty"`
	WindowSec   float64 `json:"window_s"` // from the first poll to the end
	ReqPerSec   float64 `json:"requests_per_s"`
	BytesIn     int64   `json:"bytes_in"`
	BytesOut    int64   `json:"bytes_out"`
	BytesPerSec float64 `json:"bytes_per_s"` // in and out, framing included
	// Staleness is, for every change and every client, the time from the change (its call
	// returning to the driver) to the first poll that showed it or a later change.
	Staleness *dist `json:"staleness_ms,omitempty"`
}

// serverStats is what /proc says about the server process.
type serverStats struct {
	PID        int     `json:"pid"`
	CPUSec     float64 `json:"cpu_s"`      // user + system, from the first task to the end
	CPUShare   float64 `json:"cpu_share"`  // of one core over WindowSec
	Cores      int     `json:"cores"`      // it may run on; 0: unknown
	WindowSec  float64 `json:"window_s"`   //
	PeakRSS    int64   `json:"peak_rss"`   // VmRSS sampled every 100 ms over the window, bytes
	HWM        int64   `json:"vm_hwm"`     // VmHWM at the end: the process's lifetime peak
	RSSBefore  int64   `json:"rss_before"` // before the watchers connected
	RSSIdle    int64   `json:"rss_idle"`   // after they connected, before any load
	PerWatcher float64 `json:"rss_per_idle_watcher"`
}

type clientStats struct {
	CPUSec    float64 `json:"cpu_s"` // this tool's, from the first task to the end
	WindowSec float64 `json:"window_s"`
	Cores     int     `json:"cores"`     // it may run on
	CPUShare  float64 `json:"cpu_share"` // of those cores, over WindowSec
}

// dist summarises durations, in milliseconds.
type dist struct {
	Count int     `json:"count"`
	Mean  float64 `json:"mean"`
	P50   float64 `json:"p50"`
	P90   float64 `json:"p90"`
	P99   float64 `json:"p99"`
	Max   float64 `json:"max"`
}

// newDist summarises d, which it sorts; nil when d is empty.
func newDist(d []time.Duration) *dist {
	if len(d) == 0 {
		return nil
	}
	slices.Sort(d)
	var sum float64
	for _, v := range d {
		sum += float64(v)
	}
	at := func(q float64) float64 { // nearest rank
		i := int(q*float64(len(d))+0.999999) - 1
		return ms(d[min(max(i, 0), len(d)-1)])
	}
	return &dist{
		Count: len(d), Mean: sum / float64(len(d)) / 1e6,
		P50: at(0.50), P90: at(0.90), P99: at(0.99), Max: ms(d[len(d)-1]),
	}
}

func ms(d time.Duration) float64 { return float64(d) / 1e6 }

func (r *report) writeJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

func (r *report) writeText(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	row := func(name, format string, args ...any) {
		fmt.Fprintf(tw, "%s\t%s\n", name, fmt.Sprintf(format, args...))
	}
	who := "watchers"
	if r.Command == "poll" {
		who = "polling clients"
	}
	how := ""
	if r.Gzip {
		how = ", gzip"
	}
	if r.HTTP1 {
		how += ", HTTP/1.1"
	}
	if r.TLS {
		how += ", TLS"
	}
	if r.WatchClient != "" {
		how += ", " + r.WatchClient + " client"
	}
	if r.Command == "centrifugo" {
		fmt.Fprintf(tw, "taskhub-load centrifugo: %d watchers (WebSocket, JSON), %d publishers, %g messages/s for %gs, against %s\n",
			r.Watchers, r.Tasks, r.Rate, r.DurationSec, r.URL)
	} else {
		fmt.Fprintf(tw, "taskhub-load %s: %d %s, %d tasks, %g progress events/s for %gs, against %s%s\n",
			r.Command, r.Watchers, who, r.Tasks, r.Rate, r.DurationSec, r.URL, how)
	}
	if c := r.Connect; c != nil {
		row("watchers", "%d connected, %d failed, in %.2fs over %d connections; connect p50 %s, max %s",
			c.Connected, c.Failed, c.Seconds, c.Connections, fmtMs(c.P50Ms), fmtMs(c.MaxMs))
	}
	if e := r.Events; e != nil {
		calls, event := "report calls", "progress event"
		if r.Command == "centrifugo" {
			calls, event = "publish calls", "message"
			row("messages", "%d published (%.1f/s)", e.Published, e.ProgressPerSec)
		} else {
			row("events", "%d published: %d progress (%.1f/s) + %d lifecycle", e.Published, e.Progress, e.ProgressPerSec, e.Lifecycle)
		}
		if e.ProgressPerSec < 0.95*r.Rate {
			why := "the server answered too slowly: each task's reports are sequential"
			if r.Bottleneck == "tool" {
				why = "this tool could not ask faster: it used all its cores"
			}
			row("", "below the %g progress events/s asked: %s", r.Rate, why)
		}
		if e.Calls != nil {
			row(calls, "%s", e.Calls)
		}
		if e.ReportCPUSec > 0 {
			row("while publishing", "server %.2f CPU s (%.0f%% of a core): %.1fµs per %s, its deliveries included",
				e.ReportCPUSec, 100*e.ReportCPUShare, e.CPUPerProgressUs, event)
		}
		if e.DriverErrors > 0 {
			row("driver errors", "%d, the first: %s", e.DriverErrors, e.FirstError)
		}
	}
	if d := r.Deliveries; d != nil {
		lost := "coalesced (progress only)"
		if r.Command == "centrifugo" {
			lost = "missed"
		}
		row("deliveries", "%d expected, %d received, %d %s; %.0f/s, %s in",
			d.Expected, d.Received, d.Coalesced, lost, d.PerSec, fmtBytes(d.BytesIn))
		if d.Heartbeats > 0 {
			row("heartbeats", "%d", d.Heartbeats)
		}
	}
	if l := r.Latency; l != nil {
		name := "latency"
		if r.Slow != nil {
			name = "latency (others)"
		}
		row(name, "%s", l)
	}
	if s := r.ServerLag; s != nil {
		row("the server's part", "%s", s)
	}
	if s := r.Slow; s != nil {
		row(fmt.Sprintf("slow watchers (%d)", s.Watchers), "stopped reading for %.1fs; %d received, %d coalesced; same final states as the others: %v",
			s.StoppedSec, s.Received, s.Coalesced, s.SameFinal)
		if s.Latency != nil {
			row("latency (slow)", "%s", s.Latency)
		}
	}
	if p := r.Poll; p != nil {
		row("polls", "%d requests (%d failed) in %.1fs: %.1f/s, every %gs per client", p.Requests, p.Failed, p.WindowSec, p.ReqPerSec, p.IntervalSec)
		row("poll traffic", "%s in, %s out: %s/s", fmtBytes(p.BytesIn), fmtBytes(p.BytesOut), fmtBytes(int64(p.BytesPerSec)))
		if p.Staleness != nil {
			row("staleness", "%s", p.Staleness)
		}
		if p.FirstError != "" {
			row("first poll error", "%s", p.FirstError)
		}
	}
	if s := r.Server; s != nil {
		per := ""
		if d := r.Deliveries; d != nil && d.Received > 0 {
			per = fmt.Sprintf(", %.1fµs per delivery", s.CPUSec/float64(d.Received)*1e6)
		}
		row("server", "pid %d: %.2f CPU s in %.1fs (%.0f%% of a core%s); RSS peak %s (VmHWM %s)",
			s.PID, s.CPUSec, s.WindowSec, 100*s.CPUShare, per, fmtBytes(s.PeakRSS), fmtBytes(s.HWM))
		if s.RSSIdle > 0 {
			row("idle watchers", "RSS %s before, %s with the watchers connected: %s per watcher",
				fmtBytes(s.RSSBefore), fmtBytes(s.RSSIdle), fmtBytes(int64(s.PerWatcher)))
		}
	}
	row("this tool", "%.2f CPU s in %.1fs (%.0f%% of its %d cores)", r.Client.CPUSec, r.Client.WindowSec, 100*r.Client.CPUShare, r.Client.Cores)
	switch r.Bottleneck {
	case "tool":
		row("bottleneck", "THIS TOOL: it used %.0f%% of its %d cores, so the latency and rates above are its limits, not the server's; give it more cores or fewer watchers", 100*r.Client.CPUShare, r.Client.Cores)
	case "server":
		row("bottleneck", "the server: it used %.0f%% of its %d cores", 100*r.Server.CPUShare/float64(r.Server.Cores), r.Server.Cores)
	}
	switch {
	case r.OK && r.Command == "centrifugo":
		row("result", "OK: every watcher got every publisher's messages, each once, in order")
	case r.OK && r.Command == "poll":
		row("result", "OK: every client's view only moved forward and ended with every task COMPLETED")
	case r.OK && r.Tasks == 0:
		row("result", "OK: every watcher stayed connected")
	case r.OK:
		row("result", "OK: nothing lost; every watcher ended with every task COMPLETED, seqs strictly increasing")
	default:
		row("result", "FAILED: %d violations", r.ViolationCount)
		for _, v := range r.Violations {
			row("", "%s", v)
		}
		if n := r.ViolationCount - len(r.Violations); n > 0 {
			row("", "and %d more", n)
		}
	}
	return tw.Flush()
}

func (d *dist) String() string {
	return fmt.Sprintf("p50 %s  p90 %s  p99 %s  max %s  mean %s  (%d)",
		fmtMs(d.P50), fmtMs(d.P90), fmtMs(d.P99), fmtMs(d.Max), fmtMs(d.Mean), d.Count)
}

func fmtMs(v float64) string {
	switch {
	case v >= 1000:
		return fmt.Sprintf("%.2fs", v/1000)
	case v >= 10:
		return fmt.Sprintf("%.0fms", v)
	}
	return fmt.Sprintf("%.2fms", v)
}

func fmtBytes(n int64) string {
	switch {
	case n >= 10<<20:
		return fmt.Sprintf("%.0f MiB", float64(n)/(1<<20))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 10<<10:
		return fmt.Sprintf("%.0f KiB", float64(n)/(1<<10))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
