package actors

import (
	"cmp"
	"context"
	"encoding/base64"
	"errors"
	"slices"
	"strings"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"

	"github.com/taskhub/taskhub"
	"github.com/taskhub/taskhub/eventlog"
)

// The TaskService side of the hub.
var _ taskhub.TaskService = (*Hub)(nil)

// CreateTask queues a new task of owner. It returns once the task is durable.
func (h *Hub) CreateTask(ctx context.Context, owner string, spec taskhub.TaskSpec) (*taskhubv1.Task, error) {
	if err := taskhub.ValidateName(owner); err != nil {
		return nil, err
	}
	spec.Mode = cmp.Or(spec.Mode, taskhub.DefaultMode)
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	if len(h.cfg.Modes) > 0 && !slices.Contains(h.cfg.Modes, spec.Mode) {
		return nil, taskhub.Errorf(taskhub.Invalid, "mode %q is not enabled on this server; enabled modes: %s", spec.Mode, strings.Join(h.cfg.Modes, ", "))
	}
	if h.cfg.ParamCheck != nil {
		if err := h.cfg.ParamCheck(spec.Mode, spec.Params); err != nil {
			return nil, err
		}
	}
	hook, err := h.cfg.Webhooks.Check(spec.Webhook)
	if err != nil {
		return nil, err
	}
	now := h.now()
	id := taskhub.NewTaskID(now)
	if spec.IdempotencyKey != "" {
		first, err := h.log.ClaimKey(ctx, owner, spec.IdempotencyKey, id)
		if err != nil {
			return nil, logError("idempotency key", err)
		}
		if first != id {
			// A retry: answer with the task the first create made, limits or not. If it was
			// not made (the first create failed, or is still under way), make it now under
			// its id, where the log's fence lets only one create through.
			t, err := h.GetTask(ctx, owner, first)
			if err == nil {
				h.ensureQueued(ctx, t)
				return t, nil
			}
			if taskhub.ErrorCode(err) != taskhub.NotFound {
				return nil, err
			}
			id = first
		}
	}
	if err := h.admit(owner, spec.Mode, id); err != nil {
		return nil, err
	}
	ts := timestamppb.New(now)
	t := &taskhubv1.Task{
		Id:        id,
		Owner:     owner,
		Prompt:    spec.Prompt,
		Mode:      spec.Mode,
		Params:    spec.Params,
		State:     taskhubv1.TaskState_TASK_STATE_QUEUED,
		Attempt:   1,
		CreatedAt: ts,
		UpdatedAt: ts,
		Webhook:   hook,
	}
	r := h.ask(ctx, id, &createCmd{task: t, actedBy: taskhub.ActorOf(ctx)})
	if r.err != nil {
		h.feed.abandon(id)
		return nil, r.err
	}
	return r.task, nil // under way until the feed applies it, then active
}

// ensureQueued queues t again if it is queued: a retried create answers with the task the first
// made, which may have been cut off before it was queued. Queueing twice is harmless.
func (h *Hub) ensureQueued(ctx context.Context, t *taskhubv1.Task) {
	if t.State != taskhubv1.TaskState_TASK_STATE_QUEUED {
		return
	}
	if _, err := h.log.Enqueue(ctx, t.Mode, t.Owner, t.Id); err != nil {
		h.logger.Warn("cannot queue a task again; the hub will when the log recovers", "task", t.Id, "err", err)
	}
}

// logError is what a caller is told when the event log fails a call of the hub's own.
func logError(what string, err error) error {
	if errors.Is(err, eventlog.ErrUncertain) {
		return taskhub.Errorf(taskhub.DeadlineExceeded, "%s: the event log did not confirm in time: %v", what, err)
	}
	return taskhub.Errorf(taskhub.Unavailable, "%s: %v", what, err)
}

// admit checks the limits a new task id of owner in mode must be within, and counts it as being
// created (see creating) until the feed applies it, or the caller abandons it.
func (h *Hub) admit(owner, mode, id string) error {
	maxModes := h.cfg.MaxModes
	if len(h.cfg.Modes) > 0 {
		maxModes = 0 // only the configured modes are allowed: no more to bound
	}
	return h.feed.admit(admission{owner: owner, mode: mode, id: id,
		maxActive: h.cfg.MaxActiveTasksPerUser, maxModes: maxModes})
}

// GetTask returns owner's task id as it is now.
func (h *Hub) GetTask(ctx context.Context, owner, id string) (*taskhubv1.Task, error) {
	if err := taskhub.ValidateName(owner); err != nil {
		return nil, err
	}
	if err := taskhub.ValidateTaskID(id); err != nil {
		return nil, err
	}
	e, err := h.log.Last(ctx, owner, id)
	if errors.Is(err, eventlog.ErrNotFound) {
		return nil, notFound(id)
	}
	if err != nil {
		return nil, taskhub.Errorf(taskhub.Unavailable, "get task %s: %v", id, err)
	}
	t := e.Record.Event.Task
	if t.Webhook != nil {
		t = proto.CloneOf(t)
		t.WebhookStatus = &taskhubv1.WebhookStatus{}
		c, err := h.log.WebhookCursor(ctx, id)
		switch {
		case err == nil:
			t.WebhookStatus = c.Status
		case !errors.Is(err, eventlog.ErrNotFound):
			return nil, taskhub.Errorf(taskhub.Unavailable, "get task %s: its webhook's state: %v", id, err)
		}
	}
	return t, nil
}

// ListTasks returns a page of the owner's tasks, newest first, in the given states (all if none).
func (h *Hub) ListTasks(ctx context.Context, q taskhub.ListQuery) (taskhub.TaskPage, error) {
	if err := taskhub.ValidateName(q.Owner); err != nil {
		return taskhub.TaskPage{}, err
	}
	owner, pageSize := q.Owner, q.PageSize
	switch {
	case pageSize == 0:
		pageSize = 50
	case pageSize < 0 || pageSize > 500:
		return taskhub.TaskPage{}, taskhub.Errorf(taskhub.Invalid, "page_size must be 1..500: got %d", pageSize)
	}
	var want map[taskhubv1.TaskState]bool
	for _, s := range q.States {
		if _, ok := taskhubv1.TaskState_name[int32(s)]; !ok || s == taskhubv1.TaskState_TASK_STATE_UNSPECIFIED {
			return taskhub.TaskPage{}, taskhub.Errorf(taskhub.Invalid, "states: %d is not a task state", s)
		}
		if want == nil {
			want = map[taskhubv1.TaskState]bool{}
		}
		want[s] = true
	}
	before, err := decodePageToken(q.PageToken)
	if err != nil {
		return taskhub.TaskPage{}, err
	}
	ids, err := h.log.TaskIDs(ctx, owner)
	if err != nil {
		return taskhub.TaskPage{}, taskhub.Errorf(taskhub.Unavailable, "list tasks: %v", err)
	}
	slices.SortFunc(ids, func(a, b string) int { return cmp.Compare(b, a) })
	var out []*taskhubv1.Task
	size := 0
	for _, id := range ids {
		if before != "" && id >= before {
			continue
		}
		if len(out) == pageSize {
			return taskhub.TaskPage{Tasks: out, NextPageToken: encodePageToken(out[len(out)-1].Id)}, nil
		}
		e, err := h.log.Last(ctx, owner, id)
		if errors.Is(err, eventlog.ErrNotFound) {
			continue
		}
		if err != nil {
			return taskhub.TaskPage{}, taskhub.Errorf(taskhub.Unavailable, "list tasks: %v", err)
		}
		if t := e.Record.Event.Task; want == nil || want[t.State] {
			n := proto.Size(t)
			if len(out) > 0 && size+n > maxPageBytes {
				return taskhub.TaskPage{Tasks: out, NextPageToken: encodePageToken(out[len(out)-1].Id)}, nil
			}
			out = append(out, t)
			size += n
		}
	}
	return taskhub.TaskPage{Tasks: out}, nil
}

// maxPageBytes bounds a page of ListTasks in encoded bytes of tasks, unless it holds one: past
// it a page holds fewer tasks than its size asks for. A page of 500 tasks as large as they may
// be (a prompt of 16 KiB, params of 32 KiB) would be 25 MB, which the server builds and holds
// until its client reads it: a hundred such calls whose clients never read took 10 GB.
const maxPageBytes = 1 << 20

// A page token is the id of the last task of the page before, base64url-encoded.
func encodePageToken(lastID string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(lastID))
}

// decodePageToken returns the task id a page token carries ("" for no token).
func decodePageToken(token string) (string, error) {
	if token == "" {
		return "", nil
	}
	// The decoder skips newlines: only the one spelling this server issues is taken.
	b, err := base64.RawURLEncoding.Strict().DecodeString(token)
	if err != nil || taskhub.ValidateTaskID(string(b)) != nil || encodePageToken(string(b)) != token {
		return "", taskhub.Errorf(taskhub.Invalid, "page_token is not one this server issued")
	}
	return string(b), nil
}

// CancelTask cancels owner's task id if it is queued or running.
func (h *Hub) CancelTask(ctx context.Context, owner, id string) (*taskhubv1.Task, error) {
	if err := taskhub.ValidateName(owner); err != nil {
		return nil, err
	}
	if err := taskhub.ValidateTaskID(id); err != nil {
		return nil, err
	}
	r := h.ask(ctx, id, &cancelCmd{owner: owner, actedBy: taskhub.ActorOf(ctx)})
	return r.task, r.err
}

// Watch starts a watch of the owner's tasks: a snapshot, then every change. With the log's epoch
// and an AfterSeq it still covers, the snapshot is recovered and the events after AfterSeq are
// replayed first. The caller must Close it.
func (h *Hub) Watch(ctx context.Context, q taskhub.WatchQuery) (taskhub.Watch, error) {
	if h.closed.Load() {
		return nil, errShuttingDown
	}
	if err := taskhub.ValidateName(q.Owner); err != nil {
		return nil, err
	}
	if err := h.watches.take(q.Owner, h.cfg.MaxWatches, h.cfg.MaxWatchesPerUser); err != nil {
		return nil, err
	}
	w := &Watch{h: h, owner: q.Owner}
	w.out.init(h.cfg.WatchBuffer)
	w.out.every = max(0, h.cfg.WatchInterval.Nanoseconds())
	w.out.coalesced = &h.counts.coalesced
	w.pid = h.root.Spawn(h.subscriber)
	h.root.Send(w.pid, &startWatch{w: w, epoch: q.Epoch, after: q.AfterSeq})
	return w, nil
}
