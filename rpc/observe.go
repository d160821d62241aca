package rpc

import (
	"context"
	"log/slog"
	"time"

	"connectrpc.com/connect"
)

// observer tells a function the outcome of every call: its procedure and its code.
type observer func(procedure string, code connect.Code)

func (o observer) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		res, err := next(ctx, req)
		o(req.Spec().Procedure, codeOf(err))
		return res, err
	}
}

func (o observer) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (o observer) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		err := next(ctx, conn)
		if !handedOff(ctx) { // a stream handed off reports its own end (http1Stream.end)
			o(conn.Spec().Procedure, codeOf(err))
		}
		return err
	}
}

// codeOf is err's code: 0 for none (connect.CodeOf says unknown).
func codeOf(err error) connect.Code {
	if err == nil {
		return 0
	}
	return connect.CodeOf(err)
}

// callLog logs every call that answers internal, with its cause, and every call at debug
// level: the request log.
type callLog struct{ logger *slog.Logger }

func (l callLog) log(ctx context.Context, procedure string, peer string, began time.Time, err error) {
	code := codeOf(err)
	switch {
	case code == connect.CodeInternal:
		l.logger.Error("internal error", "procedure", procedure, "peer", peer, "err", err)
	case l.logger.Enabled(ctx, slog.LevelDebug):
		name := "ok"
		if code != 0 {
			name = code.String()
		}
		l.logger.Debug("call", "procedure", procedure, "peer", peer, "code", name, "took", time.Since(began))
	}
}

func (l callLog) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		began := time.Now()
		res, err := next(ctx, req)
		l.log(ctx, req.Spec().Procedure, req.Peer().Addr, began, err)
		return res, err
	}
}

func (l callLog) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (l callLog) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		began := time.Now()
		err := next(ctx, conn)
		if !handedOff(ctx) {
			l.log(ctx, conn.Spec().Procedure, conn.Peer().Addr, began, err)
		}
		return err
	}
}
