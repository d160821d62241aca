package rpc

import (
	"context"
	"errors"
	"fmt"
	"time"

	"connectrpc.com/connect"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"
	"github.com/taskhub/taskhub/gen/taskhub/v1/taskhubv1connect"

	"github.com/taskhub/taskhub"
)

type taskServer struct {
	hub       taskhub.TaskService
	delivered func(lag time.Duration) // Options.ObserveDelivered; may be nil
}

// NewTaskServer returns the TaskService handler. Callers act as the user the auth interceptor
// found.
func NewTaskServer(hub taskhub.TaskService) taskhubv1connect.TaskServiceHandler {
	return &taskServer{hub: hub}
}

func (s *taskServer) CreateTask(ctx context.Context, req *connect.Request[taskhubv1.CreateTaskRequest]) (*connect.Response[taskhubv1.CreateTaskResponse], error) {
	m := req.Msg
	t, err := s.hub.CreateTask(ctx, identityFrom(ctx).user, taskhub.TaskSpec{
		Prompt: m.Prompt, Mode: m.Mode, Params: m.Params, IdempotencyKey: m.IdempotencyKey, Webhook: m.Webhook,
	})
	if err != nil {
		return nil, connectError(err)
	}
	return connect.NewResponse(&taskhubv1.CreateTaskResponse{Task: t}), nil
}

func (s *taskServer) GetTask(ctx context.Context, req *connect.Request[taskhubv1.GetTaskRequest]) (*connect.Response[taskhubv1.GetTaskResponse], error) {
	t, err := s.hub.GetTask(ctx, identityFrom(ctx).user, req.Msg.Id)
	if err != nil {
		return nil, connectError(err)
	}
	return connect.NewResponse(&taskhubv1.GetTaskResponse{Task: t}), nil
}

func (s *taskServer) ListTasks(ctx context.Context, req *connect.Request[taskhubv1.ListTasksRequest]) (*connect.Response[taskhubv1.ListTasksResponse], error) {
	page, err := s.hub.ListTasks(ctx, taskhub.ListQuery{Owner: identityFrom(ctx).user, States: req.Msg.States,
		PageSize: int(req.Msg.PageSize), PageToken: req.Msg.PageToken})
	if err != nil {
		return nil, connectError(err)
	}
	return connect.NewResponse(&taskhubv1.ListTasksResponse{Tasks: page.Tasks, NextPageToken: page.NextPageToken}), nil
}

func (s *taskServer) CancelTask(ctx context.Context, req *connect.Request[taskhubv1.CancelTaskRequest]) (*connect.Response[taskhubv1.CancelTaskResponse], error) {
	t, err := s.hub.CancelTask(ctx, identityFrom(ctx).user, req.Msg.Id)
	if err != nil {
		return nil, connectError(err)
	}
	return connect.NewResponse(&taskhubv1.CancelTaskResponse{Task: t}), nil
}

var errTokenExpired = errors.New("the token expired")

func (s *taskServer) WatchTasks(ctx context.Context, req *connect.Request[taskhubv1.WatchTasksRequest], stream *connect.ServerStream[taskhubv1.WatchTasksResponse]) error {
	id := identityFrom(ctx)
	q := taskhub.WatchQuery{Owner: id.user, Epoch: req.Msg.Epoch, AfterSeq: req.Msg.AfterSeq}
	if h := handOff(ctx); h != nil {
		h.serve(s.hub, q, id, s.delivered) // its own connection: it goes on by itself
		return nil
	}
	ctx, cancel := id.streamContext(ctx)
	defer cancel()
	w, err := s.hub.Watch(ctx, q)
	if err != nil {
		return connectError(err)
	}
	defer w.Close()
	// The stream's connection sends a *taskhub.Message in its shared encoding (messageCodec):
	// a typed Send would take only the message it wraps.
	conn := stream.Conn()
	batch := batchOf(ctx)
	for {
		msgs, err := w.Next(ctx)
		if err != nil {
			return id.streamEnd(ctx, err)
		}
		// What was queued leaves with one flush (batchWriter); a connection's streams'
		// flushes that come together reach the socket together (server.coalescingConn).
		batch.hold()
		for _, m := range msgs {
			if err := conn.Send(m); err != nil {
				return err
			}
		}
		if err := batch.release(); err != nil {
			return err
		}
		observeDelivered(s.delivered, time.Now(), msgs)
	}
}

// observeDelivered tells observe (nil: nobody) how long each live event of msgs took from its
// time in the log until at.
func observeDelivered(observe func(time.Duration), at time.Time, msgs []*taskhub.Message) {
	if observe == nil {
		return
	}
	for _, m := range msgs {
		if t, ok := liveEventTime(m); ok {
			observe(at.Sub(t))
		}
	}
}

// liveEventTime is the time in the log of m's event, when m is an event delivered live.
// Replayed events are left out: their age is the client's absence, not the server's delay.
func liveEventTime(m *taskhub.Message) (time.Time, bool) {
	e := m.GetEvent()
	if e == nil || e.Time == nil || m.Replayed {
		return time.Time{}, false
	}
	return e.Time.AsTime(), true
}

// streamContext is a stream's context: a minted token's stream ends when the token does, and
// the client mints another and resumes after the last seq it saw (see streamEnd).
func (id identity) streamContext(ctx context.Context) (context.Context, context.CancelFunc) {
	if id.expires.IsZero() {
		return context.WithCancel(ctx)
	}
	return context.WithDeadlineCause(ctx, id.expires, errTokenExpired)
}

// streamEnd is the error a stream with context ctx ends with, for the watch's err.
func (id identity) streamEnd(ctx context.Context, err error) error {
	if errors.Is(context.Cause(ctx), errTokenExpired) {
		return connect.NewError(connect.CodeUnauthenticated, fmt.Errorf("%w at %s: mint a new token and resume after the last seq you saw",
			errTokenExpired, id.expires.UTC().Format(time.RFC3339)))
	}
	return connectError(err)
}
