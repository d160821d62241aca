package server

import (
	"context"

	"connectrpc.com/connect"
	"connectrpc.com/otelconnect"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/taskhub/taskhub/actors"
	storagev1 "github.com/taskhub/taskhub/gen/taskhub/storage/v1"
)

// TracerName names the tracer of taskhub's own spans (the event log appends).
const TracerName = "github.com/taskhub/taskhub/server"

// AppendSpan is the name of the span of an append to the event log, a child of the call's.
const AppendSpan = "eventlog.Append"

// traceInterceptor makes a span of every call of the API with otelconnect (named after the
// procedure, such as taskhub.v1.TaskService/CreateTask), continuing the trace that the caller's
// traceparent header names: taskhub is called by an app's backend, whose trace it continues.
// Metrics stay Prometheus' (/metrics).
func traceInterceptor(tp trace.TracerProvider) (connect.Interceptor, error) {
	return otelconnect.NewInterceptor(
		otelconnect.WithTracerProvider(tp),
		otelconnect.WithPropagator(propagation.TraceContext{}),
		otelconnect.WithTrustRemote(),
		otelconnect.WithoutMetrics(),
	)
}

// tracedLog is the event log with a span for each append made within a traced call: the
// round trip that stores a task's change before the call is answered. Appends of the server's
// own (lease expiry, requeueing) have no call, and no span.
type tracedLog struct {
	actors.Log
	tracer trace.Tracer
}

func (l tracedLog) Append(ctx context.Context, rec *storagev1.Record, expectLast uint64) (uint64, error) {
	if !trace.SpanContextFromContext(ctx).IsValid() {
		return l.Log.Append(ctx, rec, expectLast)
	}
	ctx, span := l.tracer.Start(ctx, AppendSpan, trace.WithAttributes(
		attribute.String("taskhub.task.id", rec.GetEvent().GetTask().GetId()),
		attribute.String("taskhub.event.kind", eventKind(rec.GetEvent().GetKind().String())),
	))
	defer span.End()
	seq, err := l.Log.Append(ctx, rec, expectLast)
	if err != nil {
		span.SetStatus(codes.Error, err.Error())
		return seq, err
	}
	span.SetAttributes(attribute.Int64("taskhub.event.seq", int64(seq)))
	return seq, nil
}
