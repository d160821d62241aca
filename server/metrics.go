package server

import (
	"net/http"
	"runtime/debug"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/taskhub/taskhub/actors"
	"github.com/taskhub/taskhub/eventlog"
	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"
	"github.com/taskhub/taskhub/rpc"
)

// metrics is what GET /metrics serves, in Prometheus' text format: the hub's counts (read at
// each scrape, so that the delivery path pays an atomic add, not a metric's label lookup), the
// API's calls by procedure and code, the build, and Go's and the process's own.
type metrics struct {
	registry *prometheus.Registry
	calls    *prometheus.CounterVec
	batched  *prometheus.CounterVec
	lag      prometheus.Histogram
	auth     *rpc.Auth
}

func newMetrics(hub *actors.Hub, log *eventlog.Log, conns *limitedListener, auth *rpc.Auth) *metrics {
	m := &metrics{registry: prometheus.NewRegistry(), auth: auth}
	m.calls = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "taskhub_rpc_calls_total",
		Help: "Calls of the Connect API that passed the token check, by procedure and code (ok for success).",
	}, []string{"procedure", "code"})
	m.batched = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "taskhub_batched_reports_total",
		Help: "Progress reports of BatchReportProgress calls, by code (ok for success): each is answered on its own.",
	}, []string{"code"})
	m.lag = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "taskhub_watch_delivery_seconds",
		Help: "How long events took from their time in the log (stamped by the task's actor, on its node's clock, before the append) until this node wrote them to a watch stream: to the socket (HTTP/1.1), or to net/http's HTTP/2 stream. Events replayed to a client that resumed or fell behind are not counted: their age is the client's absence.",
		// Fine where a live stream's deliveries fall (tens of ms), so that a p99 read from it
		// (as taskhub-load does) is not a bucket's width off.
		Buckets: []float64{0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 1.5, 2, 5, 10},
	})
	build := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "taskhub_build_info", Help: "The binary's version, commit and Go version: always 1.",
	}, []string{"version", "revision", "goversion"})
	if info, ok := debug.ReadBuildInfo(); ok {
		rev := ""
		for _, s := range info.Settings {
			if s.Key == "vcs.revision" {
				rev = s.Value
			}
		}
		build.WithLabelValues(info.Main.Version, rev, info.GoVersion).Set(1)
	}
	restarts := prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "taskhub_event_log_follower_restarts_total",
		Help: "Consumers this node's event log follower replaced because they stalled while it was behind this node's writes.",
	}, func() float64 { return float64(log.FollowerRestarts()) })
	batches := prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "taskhub_event_log_batches_total",
		Help: "Batches this node sent to the event log: the appends made while one was being stored go together in the next.",
	}, func() float64 { n, _ := log.Batches(); return float64(n) })
	batched := prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "taskhub_event_log_batched_appends_total",
		Help: "Appends this node sent to the event log in batches (divided by taskhub_event_log_batches_total: the mean batch).",
	}, func() float64 { _, n := log.Batches(); return float64(n) })
	stalled := prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "taskhub_write_timeouts_total",
		Help: "Writes that failed because their client took none of them for --write-timeout: each cost its client the connection.",
	}, func() float64 { return float64(conns.stalled.Load()) })
	m.registry.MustRegister(m.calls, m.batched, m.lag, build, hubCollector{hub}, restarts, batches, batched, stalled,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// observe counts a call (rpc.Options.Observe). A path that names no procedure of the API (a
// refused request may ask for any) counts as "other": a label per path would let anyone grow
// the metrics without bound.
func (m *metrics) observe(procedure string, code connect.Code) {
	if !procedures[procedure] {
		procedure = "/other"
	}
	m.calls.WithLabelValues(strings.TrimPrefix(procedure, "/"), codeLabel(code)).Inc()
}

// observeBatched counts a report of a BatchReportProgress call (rpc.Options.ObserveBatched).
func (m *metrics) observeBatched(code connect.Code) {
	m.batched.WithLabelValues(codeLabel(code)).Inc()
}

// observeDelivered observes an event's delivery to a watch stream (rpc.Options.ObserveDelivered).
func (m *metrics) observeDelivered(lag time.Duration) { m.lag.Observe(lag.Seconds()) }

// codeLabel is a call's code as a metric's label: ok for success.
func codeLabel(code connect.Code) string {
	if code == 0 {
		return "ok"
	}
	return code.String()
}

// procedures are the API's procedures, such as /taskhub.v1.TaskService/CreateTask.
var procedures = func() map[string]bool {
	set := map[string]bool{}
	services := taskhubv1.File_taskhub_v1_task_service_proto.Services()
	workers := taskhubv1.File_taskhub_v1_worker_service_proto.Services()
	for _, list := range []protoreflect.ServiceDescriptors{services, workers} {
		for i := range list.Len() {
			s := list.Get(i)
			for j := range s.Methods().Len() {
				set["/"+string(s.FullName())+"/"+string(s.Methods().Get(j).Name())] = true
			}
		}
	}
	return set
}()

// handler serves the metrics; with auth on, to a caller with any of the API's tokens (a
// Prometheus scrape config's authorization).
func (m *metrics) handler() http.Handler {
	return m.auth.GateAny(promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{}), connect.NewErrorWriter())
}

// hubCollector reads the hub's counts at each scrape.
type hubCollector struct{ hub *actors.Hub }

var (
	descAppended      = prometheus.NewDesc("taskhub_events_appended_total", "Events this node's task actors stored in the event log, by kind.", []string{"kind"}, nil)
	descAppendSeconds = prometheus.NewDesc("taskhub_event_log_append_seconds", "How long this node's appends to the event log took, until JetStream acknowledged them.", nil, nil)
	descExpiries      = prometheus.NewDesc("taskhub_lease_expiries_total", "Leases that ran out: each requeued or failed its task.", nil, nil)
	descWatchMessages = prometheus.NewDesc("taskhub_watch_messages_total", "Messages handed to watch streams: events, snapshot parts, heartbeats.", nil, nil)
	descCoalesced     = prometheus.NewDesc("taskhub_watch_coalesced_total", "Progress events a slow watch's queue replaced with a later one of their task.", nil, nil)
	descReadsByID     = prometheus.NewDesc("taskhub_task_reads_by_id_total", "Reads of a task by its id alone (for a call naming a task this node knows no owner of), which cost in proportion to the users the log holds: made (read), or, for workers' calls beyond 100 a second, refused (refused).", []string{"result"}, nil)
	descPaced         = prometheus.NewDesc("taskhub_writes_paced_total", "Writes that waited for this node's feed to come within its write-ahead (1000 events) of this node's writes.", nil, nil)
	descSends         = prometheus.NewDesc("taskhub_watch_sends_total", "Writes of watch streams that own their connection (HTTP/1.1), by result: sent (the connection took it at once), waited (a goroutine of the stream's own wrote the rest: its client was slow to read, or the connection is TLS, whose writes all go that way).", []string{"result"}, nil)
	descReplayed      = prometheus.NewDesc("taskhub_watch_replayed_events_total", "Events read back from the event log for watches that resumed or fell behind.", nil, nil)
	descWatches       = prometheus.NewDesc("taskhub_watches_open", "Watch streams open now.", nil, nil)
	descActive        = prometheus.NewDesc("taskhub_tasks_active", "Queued and running tasks now, by mode and state (queued: the mode's queue depth).", []string{"mode", "state"}, nil)
	descOldestQueued  = prometheus.NewDesc("taskhub_queue_oldest_seconds", "How long the longest-waiting queued task of each mode has waited since it was queued or requeued.", []string{"mode"}, nil)
	descWebhooks      = prometheus.NewDesc("taskhub_webhook_deliveries_total", "Webhook deliveries this node made, by result: delivered (2xx), failed (retried), gave_up (a task's deliveries stopped).", []string{"result"}, nil)
	descHooksFailing  = prometheus.NewDesc("taskhub_webhooks_failing", "Tasks whose next webhook delivery is failing now (being retried).", nil, nil)
)

func (hubCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descAppended, descAppendSeconds, descExpiries, descWatchMessages, descCoalesced, descPaced, descReadsByID, descSends, descReplayed, descWatches, descActive, descOldestQueued, descWebhooks, descHooksFailing} {
		ch <- d
	}
}

func (c hubCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.hub.Stats()
	for kind, n := range s.Appended {
		ch <- prometheus.MustNewConstMetric(descAppended, prometheus.CounterValue, float64(n), eventKind(kind.String()))
	}
	buckets := map[float64]uint64{}
	for i, le := range s.AppendSeconds.Buckets {
		buckets[le] = s.AppendSeconds.Counts[i]
	}
	ch <- prometheus.MustNewConstHistogram(descAppendSeconds, s.AppendSeconds.Count, s.AppendSeconds.Sum, buckets)
	ch <- prometheus.MustNewConstMetric(descExpiries, prometheus.CounterValue, float64(s.LeaseExpiries))
	ch <- prometheus.MustNewConstMetric(descWatchMessages, prometheus.CounterValue, float64(s.WatchMessages))
	ch <- prometheus.MustNewConstMetric(descCoalesced, prometheus.CounterValue, float64(s.Coalesced))
	ch <- prometheus.MustNewConstMetric(descPaced, prometheus.CounterValue, float64(s.Paced))
	ch <- prometheus.MustNewConstMetric(descReadsByID, prometheus.CounterValue, float64(s.ReadsByID), "read")
	ch <- prometheus.MustNewConstMetric(descReadsByID, prometheus.CounterValue, float64(s.ReadsByIDRefused), "refused")
	ch <- prometheus.MustNewConstMetric(descSends, prometheus.CounterValue, float64(s.WatchSendsAtOnce), "sent")
	ch <- prometheus.MustNewConstMetric(descSends, prometheus.CounterValue, float64(s.WatchSendsWaited), "waited")
	ch <- prometheus.MustNewConstMetric(descReplayed, prometheus.CounterValue, float64(s.Replayed))
	ch <- prometheus.MustNewConstMetric(descWatches, prometheus.GaugeValue, float64(s.OpenWatches))
	if s.Webhooks != nil {
		for result, n := range s.Webhooks {
			ch <- prometheus.MustNewConstMetric(descWebhooks, prometheus.CounterValue, float64(n), result)
		}
		ch <- prometheus.MustNewConstMetric(descHooksFailing, prometheus.GaugeValue, float64(s.WebhooksFailing))
	}
	for ms, n := range s.Active {
		ch <- prometheus.MustNewConstMetric(descActive, prometheus.GaugeValue, float64(n), ms.Mode, eventKind(ms.State.String()))
	}
	for mode, at := range s.OldestQueued {
		ch <- prometheus.MustNewConstMetric(descOldestQueued, prometheus.GaugeValue, time.Since(at).Seconds(), mode)
	}
}

// eventKind is an enum value's name without its prefix: EVENT_KIND_PROGRESS is progress,
// TASK_STATE_RUNNING running.
func eventKind(name string) string {
	name = strings.TrimPrefix(strings.TrimPrefix(name, "EVENT_KIND_"), "TASK_STATE_")
	return strings.ToLower(name)
}
