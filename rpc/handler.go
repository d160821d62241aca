package rpc

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"connectrpc.com/connect"

	"github.com/taskhub/taskhub"
	"github.com/taskhub/taskhub/gen/taskhub/v1/taskhubv1connect"
)

// MaxRequestBytes bounds a request message; a larger one gets resource_exhausted.
const MaxRequestBytes = 1 << 20

// MinCompressBytes is the smallest message compressed for a client that accepts compression.
const MinCompressBytes = 4 << 10

// Hub is the whole hub API the handlers need.
type Hub interface {
	taskhub.TaskService
	taskhub.WorkerService
}

// Options are how Mount serves the API.
type Options struct {
	Auth    *Auth // nil: off (see Auth.Gate)
	Logger  *slog.Logger
	Origins []string // whose pages may call the API (CORS; see CheckOrigins)
	// Observe, when set, is told the outcome of every call: its procedure and its code (0 for
	// success), the calls the token check refused included.
	Observe func(procedure string, code connect.Code)
	// ObserveBatched, when set, is told the code of every report of a BatchReportProgress
	// call (0 for success): the call itself succeeds while some of its reports fail.
	ObserveBatched func(code connect.Code)
	// ObserveDelivered, when set, is told for every event sent to a watch stream how long it
	// took from its time in the log (stamped by its task's actor before the append) until the
	// server wrote it to the stream: to the socket (an HTTP/1.1 stream that owns its
	// connection), or to net/http's stream (HTTP/2, which may still wait on flow control).
	ObserveDelivered func(lag time.Duration)
	// Trace, when set, is the outermost interceptor of every call the token check let
	// through: a tracer's (server.Config.TracerProvider's, with otelconnect).
	Trace connect.Interceptor
	// Streams, when set, keeps the WatchTasks streams that own their connections, for Cut at
	// shutdown.
	Streams *Streams
}

// Mount registers TaskService and WorkerService on mux, with auth, panic recovery, the request
// size limit, bounded decompression and framing checks.
func Mount(mux *http.ServeMux, hub Hub, o Options) {
	auth, logger, origins := o.Auth, o.Logger, o.Origins
	interceptors := []connect.Interceptor{callLog{logger}, auth.Interceptor()}
	if o.Observe != nil {
		interceptors = append([]connect.Interceptor{observer(o.Observe)}, interceptors...)
	}
	if o.Trace != nil {
		interceptors = append([]connect.Interceptor{o.Trace}, interceptors...)
	}
	options := append(codecs(), gzipCompression())
	opts := connect.WithHandlerOptions(append(options,
		// The first interceptor is the outermost: recovery wraps everything.
		connect.WithRecover(func(ctx context.Context, spec connect.Spec, _ http.Header, p any) error {
			logger.Error("handler panic", "procedure", spec.Procedure, "panic", p)
			return connect.NewError(connect.CodeInternal, fmt.Errorf("internal error"))
		}),
		connect.WithInterceptors(interceptors...),
		connect.WithReadMaxBytes(MaxRequestBytes),
		// Events are a few hundred bytes: compressing each for every watcher that asks for
		// gzip (as stock Go clients do) costs far more than the bytes it saves.
		connect.WithCompressMinBytes(MinCompressBytes),
	)...)
	errs := connect.NewErrorWriter(options...)
	path, h := taskhubv1connect.NewTaskServiceHandler(&taskServer{hub: hub, delivered: o.ObserveDelivered}, opts)
	mux.Handle(path, withCORS(auth.Gate(batches(checkEnvelopes(h), observer(o.Observe), callLog{logger}, o.Streams), errs, o.Observe), origins))
	path, h = taskhubv1connect.NewWorkerServiceHandler(&workerServer{hub: hub, batched: o.ObserveBatched}, opts)
	mux.Handle(path, withCORS(auth.Gate(checkEnvelopes(h), errs, o.Observe), origins))
}
