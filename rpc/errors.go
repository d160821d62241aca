package rpc

import (
	"context"
	"errors"

	"connectrpc.com/connect"

	"github.com/taskhub/taskhub"
)

var codes = map[taskhub.Code]connect.Code{
	taskhub.Internal:           connect.CodeInternal,
	taskhub.Invalid:            connect.CodeInvalidArgument,
	taskhub.NotFound:           connect.CodeNotFound,
	taskhub.FailedPrecondition: connect.CodeFailedPrecondition,
	taskhub.PermissionDenied:   connect.CodePermissionDenied,
	taskhub.Unauthenticated:    connect.CodeUnauthenticated,
	taskhub.ResourceExhausted:  connect.CodeResourceExhausted,
	taskhub.Unavailable:        connect.CodeUnavailable,
	taskhub.DeadlineExceeded:   connect.CodeDeadlineExceeded,
}

// connectError maps an error from the hub to the Connect error a client sees.
func connectError(err error) error {
	if err == nil {
		return nil
	}
	var ce *connect.Error
	switch {
	case errors.As(err, &ce):
		return err
	case errors.Is(err, context.Canceled):
		return connect.NewError(connect.CodeCanceled, err)
	case errors.Is(err, context.DeadlineExceeded):
		return connect.NewError(connect.CodeDeadlineExceeded, err)
	}
	return connect.NewError(codes[taskhub.ErrorCode(err)], err)
}
