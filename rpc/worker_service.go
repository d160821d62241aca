package rpc

import (
	"context"
	"errors"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"
	"github.com/taskhub/taskhub/gen/taskhub/v1/taskhubv1connect"

	"github.com/taskhub/taskhub"
)

type workerServer struct {
	hub     taskhub.WorkerService
	batched func(code connect.Code) // told each batched report's code (Options.ObserveBatched); may be nil
}

// NewWorkerServer returns the WorkerService handler. With auth on, callers act as the worker
// the auth interceptor found, and a lease is only honoured for the worker that claimed it.
func NewWorkerServer(hub taskhub.WorkerService) taskhubv1connect.WorkerServiceHandler {
	return &workerServer{hub: hub}
}

func (s *workerServer) ClaimTask(ctx context.Context, req *connect.Request[taskhubv1.ClaimTaskRequest]) (*connect.Response[taskhubv1.ClaimTaskResponse], error) {
	worker := identityFrom(ctx).worker
	workerID := req.Msg.WorkerId
	if workerID == "" {
		workerID = worker
	}
	c, err := s.hub.ClaimTask(ctx, taskhub.ClaimParams{Worker: worker, WorkerID: workerID, Modes: req.Msg.Modes,
		Wait: time.Duration(req.Msg.WaitSeconds) * time.Second})
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
	st, err := s.hub.ReportProgress(ctx, taskhub.Report{Lease: lease(ctx, m.TaskId, m.LeaseToken), Progress: m.Progress, Message: m.Message})
	if err != nil {
		return nil, connectError(err)
	}
	res := &taskhubv1.ReportProgressResponse{CancelRequested: st.CancelRequested}
	if !st.Expires.IsZero() {
		res.LeaseExpiresAt = timestamppb.New(st.Expires)
	}
	return connect.NewResponse(res), nil
}

func (s *workerServer) BatchReportProgress(ctx context.Context, req *connect.Request[taskhubv1.BatchReportProgressRequest]) (*connect.Response[taskhubv1.BatchReportProgressResponse], error) {
	rs := make([]taskhub.Report, len(req.Msg.Reports))
	for i, m := range req.Msg.Reports {
		rs[i] = taskhub.Report{Lease: lease(ctx, m.TaskId, m.LeaseToken), Progress: m.Progress, Message: m.Message}
	}
	results, err := s.hub.BatchReportProgress(ctx, rs)
	if err != nil {
		return nil, connectError(err)
	}
	res := &taskhubv1.BatchReportProgressResponse{Results: make([]*taskhubv1.ReportProgressResult, len(results))}
	for i, r := range results {
		out := &taskhubv1.ReportProgressResult{CancelRequested: r.CancelRequested}
		code := connect.Code(0)
		switch {
		case r.Err != nil:
			var ce *connect.Error
			errors.As(connectError(r.Err), &ce)
			code = ce.Code()
			out.Error = &taskhubv1.ReportError{Code: code.String(), Message: ce.Message()}
		case !r.Expires.IsZero():
			out.LeaseExpiresAt = timestamppb.New(r.Expires)
		}
		if s.batched != nil {
			s.batched(code)
		}
		res.Results[i] = out
	}
	return connect.NewResponse(res), nil
}

func (s *workerServer) RenewLease(ctx context.Context, req *connect.Request[taskhubv1.RenewLeaseRequest]) (*connect.Response[taskhubv1.RenewLeaseResponse], error) {
	m := req.Msg
	st, err := s.hub.RenewLease(ctx, lease(ctx, m.TaskId, m.LeaseToken))
	if err != nil {
		return nil, connectError(err)
	}
	res := &taskhubv1.RenewLeaseResponse{CancelRequested: st.CancelRequested}
	if !st.Expires.IsZero() {
		res.LeaseExpiresAt = timestamppb.New(st.Expires)
	}
	return connect.NewResponse(res), nil
}

func (s *workerServer) CompleteTask(ctx context.Context, req *connect.Request[taskhubv1.CompleteTaskRequest]) (*connect.Response[taskhubv1.CompleteTaskResponse], error) {
	m := req.Msg
	t, err := s.hub.CompleteTask(ctx, lease(ctx, m.TaskId, m.LeaseToken), m.Result)
	if err != nil {
		return nil, connectError(err)
	}
	return connect.NewResponse(&taskhubv1.CompleteTaskResponse{Task: t}), nil
}

func (s *workerServer) FailTask(ctx context.Context, req *connect.Request[taskhubv1.FailTaskRequest]) (*connect.Response[taskhubv1.FailTaskResponse], error) {
	m := req.Msg
	t, err := s.hub.FailTask(ctx, lease(ctx, m.TaskId, m.LeaseToken), taskhub.Failure{Error: m.Error, Retryable: m.Retryable})
	if err != nil {
		return nil, connectError(err)
	}
	return connect.NewResponse(&taskhubv1.FailTaskResponse{Task: t}), nil
}

// lease is the lease a request names, held by the worker the auth interceptor found.
func lease(ctx context.Context, taskID, token string) taskhub.Lease {
	return taskhub.Lease{Worker: identityFrom(ctx).worker, TaskID: taskID, Token: token}
}
