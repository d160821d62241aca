package client

import (
	"context"
	"net/http"

	"connectrpc.com/connect"
)

// Bearer is a client interceptor that sends token as the bearer token of every call:
// connect.WithInterceptors(client.Bearer(token)).
func Bearer(token string) connect.Interceptor {
	return headers{"Authorization": "Bearer " + token}
}

// headers is a client interceptor that sets its headers on every call.
type headers map[string]string

func (h headers) set(to http.Header) {
	for k, v := range h {
		to.Set(k, v)
	}
}

func (h headers) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		h.set(req.Header())
		return next(ctx, req)
	}
}

func (h headers) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, spec connect.Spec) connect.StreamingClientConn {
		conn := next(ctx, spec)
		h.set(conn.RequestHeader())
		return conn
	}
}

func (h headers) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}
