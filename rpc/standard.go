package rpc

import (
	"context"
	"net/http"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
	"connectrpc.com/grpcreflect"

	"github.com/taskhub/taskhub/gen/taskhub/v1/taskhubv1connect"
)

// MountStandard registers the standard gRPC services beside taskhub's: server reflection (v1 and
// v1alpha) of TaskService and WorkerService, so that grpcurl and buf curl need no proto files,
// and health (grpc.health.v1), serving while ready answers nil: the server itself ("") and each
// of its services. With auth on they need a token, any a caller of the API may hold. Pages of
// origins may call them (CORS).
func MountStandard(mux *http.ServeMux, auth *Auth, ready func() error, origins []string) {
	errs := connect.NewErrorWriter()
	reflector := grpcreflect.NewStaticReflector(taskhubv1connect.TaskServiceName, taskhubv1connect.WorkerServiceName, grpchealth.HealthV1ServiceName)
	for _, mount := range []func() (string, http.Handler){
		func() (string, http.Handler) { return grpcreflect.NewHandlerV1(reflector) },
		func() (string, http.Handler) { return grpcreflect.NewHandlerV1Alpha(reflector) },
		func() (string, http.Handler) { return grpchealth.NewHandler(health(ready)) },
	} {
		path, h := mount()
		mux.Handle(path, withCORS(auth.GateAny(h, errs), origins))
	}
}

// health is grpc.health.v1's answer: serving while ready answers nil.
type health func() error

func (h health) Check(_ context.Context, req *grpchealth.CheckRequest) (*grpchealth.CheckResponse, error) {
	switch req.Service {
	case "", taskhubv1connect.TaskServiceName, taskhubv1connect.WorkerServiceName:
	default:
		return nil, connect.NewError(connect.CodeNotFound, errUnknownService(req.Service))
	}
	if h() != nil {
		return &grpchealth.CheckResponse{Status: grpchealth.StatusNotServing}, nil
	}
	return &grpchealth.CheckResponse{Status: grpchealth.StatusServing}, nil
}

type errUnknownService string

func (e errUnknownService) Error() string {
	return "no service " + string(e) + ": ask for \"\", " + taskhubv1connect.TaskServiceName + " or " + taskhubv1connect.WorkerServiceName
}
