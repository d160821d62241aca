package rpc

import (
	"context"

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
		o(conn.Spec().Procedure, codeOf(err))
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
