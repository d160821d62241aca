package rpc

import (
	"context"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"
	"github.com/taskhub/taskhub/gen/taskhub/v1/taskhubv1connect"

	"github.com/taskhub/taskhub/actors"
)

// Workers is what WorkerService needs from the hub.
type Workers interface {
	ClaimTask(ctx context.Context, worker, workerID string, modes []string, wait time.Duration) (*actors.Claim, error)
	ReportProgress(ctx context.Context, worker, id, token string, progress float64, message string) (cancelRequested bool, leaseExpires time.Time, err error)
	RenewLease(ctx context.Context, worker, id, token string) (cancelRequested bool, leaseExpires time.Time, err error)
	CompleteTask(ctx context.Context, worker, id, token, result string) (*taskhubv1.Task, error)
	FailTask(ctx context.Context, worker, id, token, text string, retryable bool) (*taskhubv1.Task, error)
}

type workerServer struct{ hub Workers }

// NewWorkerServer returns the WorkerService handler. With auth on, callers act as the worker
// the auth interceptor found, and a lease is only honoured for the worker that claimed it.
func NewWorkerServer(hub Workers) taskhubv1connect.WorkerServiceHandler {
	return &workerServer{hub: hub}
}

func (s *workerServer) ClaimTask(ctx context.Context, req *connect.Request[taskhubv1.ClaimTaskRequest]) (*connect.Response[taskhubv1.ClaimTaskResponse], error) {
	worker := identityFrom(ctx).worker
	workerID := req.Msg.WorkerId
	if workerID == "" {
		workerID = worker
	}
	c, err := s.hub.ClaimTask(ctx, worker, workerID, req.Msg.Modes, time.Duration(req.Msg.WaitSeconds)*time.Second)
	if err != nil {
		return nil, connectError(err)
	}
	res := &taskhubv1.ClaimTaskResponse{}
	if c != nil {
		res.Task, res.LeaseToken, res.LeaseExpiresAt = c.Task, c.LeaseToken, timestamppb.New(c.LeaseExpires)
	}
	return connect.NewResponse(res), nil
}

func (s *workerServer) ReportProgress(ctx context.Context, req *connect.Request[taskhubv1.ReportProgressRequest]) (*connect.Response[taskhubv1.ReportProgressResponse], error) {
	m := req.Msg
	cancelled, expires, err := s.hub.ReportProgress(ctx, identityFrom(ctx).worker, m.TaskId, m.LeaseToken, m.Progress, m.Message)
	if err != nil {
		return nil, connectError(err)
	}
	res := &taskhubv1.ReportProgressResponse{CancelRequested: cancelled}
	if !expires.IsZero() {
		res.LeaseExpiresAt = timestamppb.New(expires)
	}
	return connect.NewResponse(res), nil
}

func (s *workerServer) RenewLease(ctx context.Context, req *connect.Request[taskhubv1.RenewLeaseRequest]) (*connect.Response[taskhubv1.RenewLeaseResponse], error) {
	m := req.Msg
	cancelled, expires, err := s.hub.RenewLease(ctx, identityFrom(ctx).worker, m.TaskId, m.LeaseToken)
	if err != nil {
		return nil, connectError(err)
	}
	res := &taskhubv1.RenewLeaseResponse{CancelRequested: cancelled}
	if !expires.IsZero() {
		res.LeaseExpiresAt = timestamppb.New(expires)
	}
	return connect.NewResponse(res), nil
}

func (s *workerServer) CompleteTask(ctx context.Context, req *connect.Request[taskhubv1.CompleteTaskRequest]) (*connect.Response[taskhubv1.CompleteTaskResponse], error) {
	m := req.Msg
	t, err := s.hub.CompleteTask(ctx, identityFrom(ctx).worker, m.TaskId, m.LeaseToken, m.Result)
	if err != nil {
		return nil, connectError(err)
	}
	return connect.NewResponse(&taskhubv1.CompleteTaskResponse{Task: t}), nil
}

func (s *workerServer) FailTask(ctx context.Context, req *connect.Request[taskhubv1.FailTaskRequest]) (*connect.Response[taskhubv1.FailTaskResponse], error) {
	m := req.Msg
	t, err := s.hub.FailTask(ctx, identityFrom(ctx).worker, m.TaskId, m.LeaseToken, m.Error, m.Retryable)
	if err != nil {
		return nil, connectError(err)
	}
	return connect.NewResponse(&taskhubv1.FailTaskResponse{Task: t}), nil
}
