package main

import (
	"compress/gzip"
	"context"
	"encoding/hex"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/stretchr/testify/require"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"
	"github.com/taskhub/taskhub/gen/taskhub/v1/taskhubv1connect"
	"github.com/taskhub/taskhub/internal/freeport"
	"github.com/taskhub/taskhub/server"
)

// collector is a fake OTLP/HTTP trace collector: it keeps the spans it is sent, each with the
// service.name of its resource.
type collector struct {
	*httptest.Server
	mu    sync.Mutex
	spans []collected
}

type collected struct {
	service string
	span    *tracepb.Span
}

func startCollector(t *testing.T) *collector {
	t.Helper()
	c := &collector{}
	c.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/v1/traces" || r.Header.Get("Content-Type") != "application/x-protobuf" {
			http.Error(w, "want a POST of application/x-protobuf to /v1/traces", http.StatusBadRequest)
			return
		}
		var body io.Reader = r.Body
		if r.Header.Get("Content-Encoding") == "gzip" {
			gz, err := gzip.NewReader(r.Body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			body = gz
		}
		b, err := io.ReadAll(body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		var req coltracepb.ExportTraceServiceRequest
		if err := proto.Unmarshal(b, &req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		c.mu.Lock()
		for _, rs := range req.ResourceSpans {
			service := attr(rs.GetResource().GetAttributes(), "service.name")
			for _, ss := range rs.ScopeSpans {
				for _, s := range ss.Spans {
					c.spans = append(c.spans, collected{service: service, span: s})
				}
			}
		}
		c.mu.Unlock()
		res, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
		w.Header().Set("Content-Type", "application/x-protobuf")
		w.Write(res)
	}))
	t.Cleanup(c.Close)
	return c
}

func (c *collector) received() []collected {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]collected(nil), c.spans...)
}

// attr is the string value of the attribute key, "" without it.
func attr(attrs []*commonpb.KeyValue, key string) string {
	for _, kv := range attrs {
		if kv.Key == key {
			return kv.Value.GetStringValue()
		}
	}
	return ""
}

// TestRun_Tracing: with OTEL_EXPORTER_OTLP_ENDPOINT set, the server continues the trace of a
// call's traceparent header with a span for the call and a child span for its event log append,
// and sends them to the collector when it shuts down (the batch delay here is a minute).
func TestRun_Tracing(t *testing.T) {
	c := startCollector(t)
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", c.URL)
	t.Setenv("OTEL_SERVICE_NAME", "taskhub-under-test")
	t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "60000")

	addr := freeport.Addr(t)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--addr", addr, "--data-dir", t.TempDir(), "--demo-workers", "0", "--log-level", "error"}, io.Discard, io.Discard)
	}()
	hc := &http.Client{Timeout: 5 * time.Second}
	tasks := taskhubv1connect.NewTaskServiceClient(hc, "http://"+addr)
	const (
		traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
		appSpan = "00f067aa0ba902b7"
	)
	req := connect.NewRequest(&taskhubv1.CreateTaskRequest{Prompt: "traced", Mode: "render"})
	req.Header().Set("traceparent", "00-"+traceID+"-"+appSpan+"-01")
	require.Eventually(t, func() bool {
		res, err := hc.Get("http://" + addr + "/healthz")
		if err != nil {
			return false
		}
		res.Body.Close()
		return res.StatusCode == http.StatusOK
	}, 30*time.Second, 20*time.Millisecond, "no server on %s", addr)
	_, err := tasks.CreateTask(ctx, req)
	require.NoError(t, err)
	require.Empty(t, c.received(), "spans wait in the batch until shutdown")
	cancel()
	require.NoError(t, <-done)

	var call, appends []*tracepb.Span
	for _, s := range c.received() {
		require.Equal(t, "taskhub-under-test", s.service, "OTEL_SERVICE_NAME")
		if hex.EncodeToString(s.span.TraceId) != traceID {
			continue
		}
		switch s.span.Name {
		case "taskhub.v1.TaskService/CreateTask":
			call = append(call, s.span)
		case server.AppendSpan:
			appends = append(appends, s.span)
		}
	}
	require.Len(t, call, 1, "the call's span, in the app's trace: %v", c.received())
	require.Equal(t, appSpan, hex.EncodeToString(call[0].ParentSpanId), "a child of the app's span")
	require.Equal(t, tracepb.Span_SPAN_KIND_SERVER, call[0].Kind)
	require.Len(t, appends, 1, "one append: the task's created event")
	require.Equal(t, call[0].SpanId, appends[0].ParentSpanId, "a child of the call's span")
	require.Equal(t, "created", attr(appends[0].Attributes, "taskhub.event.kind"))
	require.NotEmpty(t, attr(appends[0].Attributes, "taskhub.task.id"))
}

// TestOpenTracing: tracing is on only when an OTEL_* variable asks for traces.
func TestOpenTracing(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		env  map[string]string
		on   bool
		err  string
	}{
		{name: "no variables", env: nil},
		{name: "only a service name", env: map[string]string{"OTEL_SERVICE_NAME": "taskhub"}},
		{name: "an endpoint", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, on: true},
		{name: "a traces endpoint", env: map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, on: true},
		{name: "the otlp exporter", env: map[string]string{"OTEL_TRACES_EXPORTER": "otlp"}, on: true},
		{name: "over grpc", env: map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, on: true},
		{name: "exporter none", env: map[string]string{"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}},
		{name: "sdk disabled", env: map[string]string{"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}},
		{name: "an exporter not built in", env: map[string]string{"OTEL_TRACES_EXPORTER": "zipkin"}, err: "otlp only"},
		{name: "a protocol not built in", env: map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"}, err: "http/protobuf or grpc"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			lookup := func(key string) (string, bool) {
				v, ok := tc.env[key]
				return v, ok
			}
			tp, err := openTracing(t.Context(), lookup, slog.New(slog.DiscardHandler))
			if tc.err != "" {
				require.ErrorContains(t, err, tc.err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.on, tp != nil)
			if tp != nil {
				require.NoError(t, tp.Shutdown(t.Context()))
			}
		})
	}
}
