package main

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
)

// openTracing returns the tracer provider that the standard OpenTelemetry environment
// variables ask for, read with lookup, or nil when they ask for none: tracing is off unless
// OTEL_TRACES_EXPORTER is otlp, or an OTLP endpoint is set (OTEL_EXPORTER_OTLP_ENDPOINT,
// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT), and OTEL_SDK_DISABLED is not true and
// OTEL_TRACES_EXPORTER not none. OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL picks http/protobuf (the
// default) or grpc. The exporter and the SDK read the rest from the process's environment
// themselves: the endpoint, headers, timeout, compression and certificates of
// OTEL_EXPORTER_OTLP_*, OTEL_SERVICE_NAME (default taskhub) and OTEL_RESOURCE_ATTRIBUTES,
// OTEL_TRACES_SAMPLER[_ARG] (default: sample what the caller sampled, and every call that
// comes without a trace), and the batching of OTEL_BSP_*. Shutting the provider down sends
// the spans still batched.
func openTracing(ctx context.Context, lookup func(string) (string, bool), logger *slog.Logger) (*sdktrace.TracerProvider, error) {
	env := func(key string) string {
		v, _ := lookup(key)
		return strings.TrimSpace(v)
	}
	if strings.EqualFold(env("OTEL_SDK_DISABLED"), "true") {
		return nil, nil
	}
	switch exporters := strings.ToLower(env("OTEL_TRACES_EXPORTER")); exporters {
	case "none":
		return nil, nil
	case "":
		if env("OTEL_EXPORTER_OTLP_ENDPOINT") == "" && env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") == "" {
			return nil, nil
		}
	case "otlp":
	default:
		return nil, fmt.Errorf("OTEL_TRACES_EXPORTER=%q: taskhub exports traces with otlp only (or none)", exporters)
	}
	protocol := env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
	if protocol == "" {
		protocol = env("OTEL_EXPORTER_OTLP_PROTOCOL")
	}
	var exporter sdktrace.SpanExporter
	var err error
	switch protocol {
	case "", "http/protobuf":
		exporter, err = otlptracehttp.New(ctx)
	case "grpc":
		exporter, err = otlptracegrpc.New(ctx)
	default:
		return nil, fmt.Errorf("OTEL_EXPORTER_OTLP_PROTOCOL=%q: taskhub exports traces over http/protobuf or grpc", protocol)
	}
	if err != nil {
		return nil, fmt.Errorf("OTLP trace exporter: %w", err)
	}
	// The environment's attributes (OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES) come last:
	// they win over the defaults.
	res, err := resource.New(ctx,
		resource.WithAttributes(semconv.ServiceName("taskhub"), semconv.ServiceVersion(moduleVersion())),
		resource.WithTelemetrySDK(),
		resource.WithFromEnv(),
	)
	if err != nil {
		exporter.Shutdown(ctx)
		return nil, fmt.Errorf("OTEL_RESOURCE_ATTRIBUTES: %w", err)
	}
	// Exports that fail are reported through OpenTelemetry's process-wide handler; they go
	// to the server's log rather than the standard logger.
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) {
		logger.Warn("tracing", "err", err)
	}))
	return sdktrace.NewTracerProvider(sdktrace.WithBatcher(exporter), sdktrace.WithResource(res)), nil
}
