package client_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"

	"github.com/taskhub/taskhub"
	"github.com/taskhub/taskhub/actors"
	"github.com/taskhub/taskhub/client"
	"github.com/taskhub/taskhub/server"
)

// workerBundle is a server, a Client of it, and a Worker claiming mode "import" through it
// until the test ends.
type workerBundle struct {
	*bundle
	c *client.Client
	w *client.Worker
}

func setupWorker(t *testing.T, opts actors.Options) *workerBundle {
	t.Helper()
	b := setup(t, server.Config{Options: opts})
	c := b.client()
	return &workerBundle{bundle: b, c: c, w: &client.Worker{Client: c, ID: "w-1", Logger: b.cfg.Logger}}
}

// run runs the worker until the returned function is called, which waits for Run to return
// and returns its error.
func (b *workerBundle) run(handle client.Handler) (stop func() error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.w.Run(ctx, []string{"import"}, handle) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			err = <-done
		})
		return err
	}
	b.t.Cleanup(func() { _ = stop() })
	return stop
}

func finished(t *taskhubv1.Task) bool { return taskhub.Terminal(t.State) }

func (b *workerBundle) create(prompt string) *taskhubv1.Task {
	b.t.Helper()
	task, err := b.c.Create(b.t.Context(), &taskhubv1.CreateTaskRequest{Prompt: prompt, Mode: "import"})
	require.NoError(b.t, err)
	return task
}

// blocked is a handler that tells started when it runs, then waits for its context to end and
// tells why on ended (or for the test to end).
func blocked(t *testing.T, started chan<- string, ended chan<- error) client.Handler {
	return func(ctx context.Context, job *client.Job) (string, error) {
		started <- job.Task.Id
		select {
		case <-ctx.Done():
			ended <- context.Cause(ctx)
		case <-t.Context().Done():
		}
		return "not kept", nil
	}
}

// stopWithin calls stop and checks that it returns context.Canceled within d.
func stopWithin(t *testing.T, stop func() error, d time.Duration) {
	t.Helper()
	stopped := make(chan error, 1)
	go func() { stopped <- stop() }()
	select {
	case err := <-stopped:
		require.ErrorIs(t, err, context.Canceled)
	case <-time.After(d):
		t.Fatalf("Run did not return within %s", d)
	}
}

func TestWorker_Run(t *testing.T) {
	t.Parallel()

	t.Run("the handler's result completes the task, after its reports", func(t *testing.T) {
		t.Parallel()
		b := setupWorker(t, actors.Options{})
		reported := make(chan *taskhubv1.Task, 1)
		b.run(func(ctx context.Context, job *client.Job) (string, error) {
			if err := job.Report(ctx, 50, "half way"); err != nil {
				return "", err
			}
			task, err := b.c.Get(ctx, job.Task.Id)
			reported <- task
			return "the result", err
		})
		task := b.create("a report")
		mid := <-reported
		require.NotNil(t, mid)
		require.Equal(t, taskhubv1.TaskState_TASK_STATE_RUNNING, mid.State)
		require.EqualValues(t, 50, mid.Progress)
		require.Equal(t, "half way", mid.Message)
		done := waitTask(t, b.c, task.Id, finished)
		require.Equal(t, taskhubv1.TaskState_TASK_STATE_COMPLETED, done.State)
		require.Equal(t, "the result", done.Result)
		require.Equal(t, "w-1", done.WorkerId)
	})

	t.Run("an error retries the task; a permanent one fails it", func(t *testing.T) {
		t.Parallel()
		b := setupWorker(t, actors.Options{MaxAttempts: 3})
		b.run(func(ctx context.Context, job *client.Job) (string, error) {
			if job.Task.Attempt == 1 {
				return "", errors.New("the disk was full")
			}
			return "", client.Permanent(errors.New("the file is not a CSV"))
		})
		task := b.create("an import")
		done := waitTask(t, b.c, task.Id, finished)
		require.Equal(t, taskhubv1.TaskState_TASK_STATE_FAILED, done.State)
		require.EqualValues(t, 2, done.Attempt, "retried once, then failed for good")
		require.Contains(t, done.Error, "the file is not a CSV")
		require.NotContains(t, done.Error, "permanent failure", "Permanent keeps the message")
	})

	t.Run("a cancel ends the handler's context", func(t *testing.T) {
		t.Parallel()
		// The worker renews a 3 s lease every second, and learns of the cancel then.
		b := setupWorker(t, actors.Options{LeaseTimeout: 3 * time.Second})
		started, ended := make(chan string, 1), make(chan error, 1)
		b.run(blocked(t, started, ended))
		task := b.create("a long one")
		<-started
		_, err := b.c.Cancel(t.Context(), task.Id)
		require.NoError(t, err)
		select {
		case cause := <-ended:
			require.ErrorIs(t, cause, client.ErrCancelled)
		case <-time.After(10 * time.Second):
			t.Fatal("the handler's context did not end")
		}
		got, err := b.c.Get(t.Context(), task.Id)
		require.NoError(t, err)
		require.Equal(t, taskhubv1.TaskState_TASK_STATE_CANCELLED, got.State)
		require.Empty(t, got.Result)
	})

	t.Run("TaskEnded makes a cancel end the handler at once", func(t *testing.T) {
		t.Parallel()
		// With the default 30 s lease the worker renews every 10 s: only the hint can make it
		// ask sooner.
		b := setupWorker(t, actors.Options{})
		hints := &endedHints{c: b.c}
		hints.watch(t)
		b.w.TaskEnded = hints.ended
		started, ended := make(chan string, 1), make(chan error, 1)
		b.run(blocked(t, started, ended))
		task := b.create("a long one")
		<-started
		_, err := b.c.Cancel(t.Context(), task.Id)
		require.NoError(t, err)
		select {
		case cause := <-ended:
			require.ErrorIs(t, cause, client.ErrCancelled)
		case <-time.After(3 * time.Second):
			t.Fatal("the handler's context did not end at once")
		}
	})

	t.Run("the lease is renewed while the handler is silent", func(t *testing.T) {
		t.Parallel()
		b := setupWorker(t, actors.Options{LeaseTimeout: 2 * time.Second})
		b.run(func(ctx context.Context, job *client.Job) (string, error) {
			select {
			case <-time.After(5 * time.Second): // 2.5 leases
				return "still mine", nil
			case <-ctx.Done():
				return "", context.Cause(ctx)
			}
		})
		task := b.create("a silent one")
		done := waitTask(t, b.c, task.Id, finished)
		require.Equal(t, taskhubv1.TaskState_TASK_STATE_COMPLETED, done.State)
		require.Equal(t, "still mine", done.Result)
		require.EqualValues(t, 1, done.Attempt)
	})
}

func TestWorker_Drain(t *testing.T) {
	t.Parallel()

	t.Run("a stopped worker lets its task finish", func(t *testing.T) {
		t.Parallel()
		b := setupWorker(t, actors.Options{})
		started, finish := make(chan string, 1), make(chan struct{})
		stop := b.run(func(ctx context.Context, job *client.Job) (string, error) {
			started <- job.Task.Id
			select {
			case <-finish:
			case <-t.Context().Done():
			}
			return "finished", ctx.Err()
		})
		task := b.create("one")
		<-started
		stopped := make(chan error, 1)
		go func() { stopped <- stop() }()
		select {
		case <-stopped:
			t.Fatal("Run returned before its task finished")
		case <-time.After(300 * time.Millisecond):
		}
		close(finish)
		require.ErrorIs(t, <-stopped, context.Canceled)
		got, err := b.c.Get(t.Context(), task.Id)
		require.NoError(t, err)
		require.Equal(t, taskhubv1.TaskState_TASK_STATE_COMPLETED, got.State)
		require.Equal(t, "finished", got.Result)
	})

	t.Run("DrainTimeout drops a task that takes longer", func(t *testing.T) {
		t.Parallel()
		b := setupWorker(t, actors.Options{})
		b.w.DrainTimeout = 200 * time.Millisecond
		started, ended := make(chan string, 1), make(chan error, 1)
		stop := b.run(blocked(t, started, ended))
		task := b.create("one")
		<-started
		stopWithin(t, stop, 3*time.Second)
		require.ErrorIs(t, <-ended, client.ErrStopped)
		got, err := b.c.Get(t.Context(), task.Id)
		require.NoError(t, err)
		require.Equal(t, taskhubv1.TaskState_TASK_STATE_RUNNING, got.State, "dropped: its lease runs out")
		require.Empty(t, got.Result)
	})

	t.Run("a negative DrainTimeout does not wait for a claim", func(t *testing.T) {
		t.Parallel()
		b := setupWorker(t, actors.Options{})
		b.w.DrainTimeout = -1
		stop := b.run(func(context.Context, *client.Job) (string, error) { return "", errors.New("no task was created") })
		time.Sleep(300 * time.Millisecond) // the claim is waiting (5 s) for a task
		stopWithin(t, stop, time.Second)
	})
}

// endedHints is a Worker.TaskEnded made from a watch: a task's channel closes when the watch
// sees it end.
type endedHints struct {
	c    *client.Client
	mu   sync.Mutex
	subs map[string]chan struct{}
}

func (h *endedHints) watch(t *testing.T) {
	h.subs = map[string]chan struct{}{}
	ctx, cancel := context.WithCancel(context.Background())
	snapshot, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		_ = h.c.Watch(ctx, nil, func(m *taskhubv1.WatchTasksResponse) error {
			if m.GetSnapshot() != nil {
				close(snapshot)
			}
			if e := m.GetEvent(); e != nil && taskhub.Terminal(e.Task.State) {
				h.mu.Lock()
				if ch, ok := h.subs[e.Task.Id]; ok {
					close(ch)
					delete(h.subs, e.Task.Id)
				}
				h.mu.Unlock()
			}
			return nil
		})
	}()
	<-snapshot
	t.Cleanup(func() { cancel(); <-done })
}

func (h *endedHints) ended(id string) (<-chan struct{}, func()) {
	h.mu.Lock()
	defer h.mu.Unlock()
	ch := make(chan struct{})
	h.subs[id] = ch
	return ch, func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		if h.subs[id] == ch {
			delete(h.subs, id)
		}
	}
}
