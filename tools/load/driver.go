package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"
	"github.com/taskhub/taskhub/gen/taskhub/v1/taskhubv1connect"

	"github.com/taskhub/taskhub/client"
)

// driver plays the user and the workers: it creates the load tasks, claims them, reports
// progress on them at a steady rate and completes them, and records every change it made.
type driver struct {
	tasks       taskhubv1connect.TaskServiceClient
	work        taskhubv1connect.WorkerServiceClient
	http        *http.Client
	mode        string
	prefix      string   // of the prompts of this run's tasks
	promptBytes int      // --prompt-bytes
	users       []string // tokens: task j belongs to user j % len(users); nil: --token's user owns all
	notes       io.Writer
	// reporters, one per worker process with --batch-workers, send task j's reports through
	// reporters[j % len]; nil: a ReportProgress call per report.
	reporters []*client.Reporter

	ids      []string
	leases   []string
	done     []bool
	changes  [][]change        // per task, in order: created, started, progress..., completed
	progress []int64           // accepted progress reports per task
	final    []*taskhubv1.Task // as CompleteTask returned it

	mu        sync.Mutex
	failures  int
	firstErr  error
	calls     []time.Duration // how long each accepted progress report took to answer
	reportCPU time.Duration   // the server's CPU while the tasks reported; 0: unknown
}

// change is one change the driver made to a task, and when the call that made it returned.
type change struct {
	at       time.Time
	state    taskhubv1.TaskState
	progress float64
}

// newDriver makes the driver. Its calls speak cfg.codec: over one HTTP/2 connection (TLS with an
// https URL, else cleartext),
// as one Go program's workers share one; or with cfg.http1 over HTTP/1.1, a kept-alive
// connection per task, as separate worker processes (or curl in a loop) report.
func newDriver(cfg config, prefix string, users []string, notes io.Writer) *driver {
	n := cfg.tasks
	protocols := new(http.Protocols)
	tr := &http.Transport{Protocols: protocols, TLSClientConfig: cfg.tls}
	switch {
	case cfg.http1:
		protocols.SetHTTP1(true)
		tr.MaxIdleConnsPerHost = n + 1       // a task's reports are sequential: each keeps its connection
		tr.MaxConnsPerHost = cfg.workerConns // 0: no bound
	case cfg.tls != nil:
		protocols.SetHTTP2(true)
	default:
		protocols.SetUnencryptedHTTP2(true)
	}
	hc := &http.Client{Transport: tr}
	var reporters []*client.Reporter
	if cfg.batchWorkers > 0 {
		c := client.New(cfg.url, client.WithHTTPClient(hc), client.WithConnectOptions(clientOptions(cfg.workerToken, false, cfg.codec)...))
		for range cfg.batchWorkers {
			reporters = append(reporters, c.Reporter(client.BatchDelay(cfg.batchDelay)))
		}
	}
	return &driver{
		reporters:   reporters,
		tasks:       taskhubv1connect.NewTaskServiceClient(hc, cfg.url, clientOptions(cfg.token, false, cfg.codec)...),
		work:        taskhubv1connect.NewWorkerServiceClient(hc, cfg.url, clientOptions(cfg.workerToken, false, cfg.codec)...),
		http:        hc,
		mode:        cfg.mode,
		prefix:      prefix,
		promptBytes: cfg.promptBytes,
		users:       users,
		notes:       notes,
		ids:         make([]string, n),
		leases:      make([]string, n),
		done:        make([]bool, n),
		changes:     make([][]change, n),
		progress:    make([]int64, n),
		final:       make([]*taskhubv1.Task, n),
	}
}

// asOwner makes req a call of task j's user, with --users.
func asOwner[T any](d *driver, j int, req *connect.Request[T]) *connect.Request[T] {
	if d.users != nil {
		req.Header().Set("Authorization", "Bearer "+d.users[j%len(d.users)])
	}
	return req
}

// taskIndex returns which of this run's tasks t is, from its prompt.
func taskIndex(t *taskhubv1.Task, mode, prefix string, n int) (int, bool) {
	if t.GetMode() != mode {
		return 0, false
	}
	rest, ok := strings.CutPrefix(t.GetPrompt(), prefix)
	if !ok {
		return 0, false
	}
	rest, _, _ = strings.Cut(rest, " ") // the padding of --prompt-bytes
	j, err := strconv.Atoi(rest)
	return j, err == nil && j >= 0 && j < n
}

// prompt is task j's prompt: prefix and j, padded with spaces and words to size bytes.
func prompt(prefix string, j, size int) string {
	p := prefix + strconv.Itoa(j)
	if pad := size - len(p); pad > 0 {
		p += " " + strings.Repeat("a watercolor fox ", pad/17+1)[:pad-1]
	}
	return p
}

// create creates the tasks, one after the other.
func (d *driver) create(ctx context.Context) error {
	for j := range d.ids {
		res, err := d.tasks.CreateTask(ctx, asOwner(d, j, connect.NewRequest(&taskhubv1.CreateTaskRequest{
			Prompt: prompt(d.prefix, j, d.promptBytes), Mode: d.mode,
		})))
		if err != nil {
			return fmt.Errorf("create task %d: %w", j, err)
		}
		d.ids[j] = res.Msg.Task.Id
		d.changes[j] = append(d.changes[j], change{at: time.Now(), state: taskhubv1.TaskState_TASK_STATE_QUEUED})
	}
	return nil
}

// claim claims every task. A task of the mode that is not this run's was left queued by an
// earlier run that was killed; it is failed so that it stops coming back.
func (d *driver) claim(ctx context.Context) error {
	for claimed := 0; claimed < len(d.ids); {
		res, err := d.work.ClaimTask(ctx, connect.NewRequest(&taskhubv1.ClaimTaskRequest{
			WorkerId: "taskhub-load", Modes: []string{d.mode}, WaitSeconds: 10,
		}))
		if err != nil {
			return fmt.Errorf("claim: %w", err)
		}
		t := res.Msg.Task
		if t == nil {
			return fmt.Errorf("claim: no task of mode %q came within 10s after %d of %d: does another worker claim mode %q? (pick another --mode)", d.mode, claimed, len(d.ids), d.mode)
		}
		j, ok := taskIndex(t, d.mode, d.prefix, len(d.ids))
		if !ok || t.Id != d.ids[j] || d.leases[j] != "" {
			fmt.Fprintf(d.notes, "failing task %s (%q): left in mode %q by an earlier run\n", t.Id, t.Prompt, d.mode)
			_, err := d.work.FailTask(ctx, connect.NewRequest(&taskhubv1.FailTaskRequest{
				TaskId: t.Id, LeaseToken: res.Msg.LeaseToken, Error: "left over by an earlier taskhub-load run",
			}))
			if err != nil {
				return fmt.Errorf("fail left-over task %s: %w", t.Id, err)
			}
			continue
		}
		d.leases[j] = res.Msg.LeaseToken
		d.changes[j] = append(d.changes[j], change{at: time.Now(), state: taskhubv1.TaskState_TASK_STATE_RUNNING})
		claimed++
	}
	return nil
}

// drive reports progress on every task for dur at rate reports/s in total: task j reports at
// start + (j + k*n)/rate for k = 0, 1, ..., so the reports are spread evenly. Each task's
// reports are sequential, as a worker's are: a task that falls behind (the server answers
// slower than its interval) reports again at once, and reports end at dur whatever the count.
func (d *driver) drive(ctx context.Context, rate float64, dur time.Duration) {
	n := len(d.ids)
	perTask := int(float64(dur) / float64(time.Second) * rate / float64(n)) // at most this + 1 each
	start := time.Now()
	var wg sync.WaitGroup
	calls := make([][]time.Duration, n)
	for j := range n {
		wg.Go(func() {
			timer := time.NewTimer(0)
			defer timer.Stop()
			<-timer.C
			for k := 0; ; k++ {
				at := time.Duration(float64(j+k*n) / rate * float64(time.Second))
				if at >= dur || time.Since(start) >= dur {
					return
				}
				if wait := time.Until(start.Add(at)); wait > 0 {
					timer.Reset(wait)
					select {
					case <-timer.C:
					case <-ctx.Done():
						return
					}
				}
				// Strictly increasing and below 100, so a task's progress names its change.
				p := 100 * float64(k+1) / float64(perTask+2)
				asked := time.Now()
				err := d.report(ctx, j, &taskhubv1.ReportProgressRequest{
					TaskId: d.ids[j], LeaseToken: d.leases[j], Progress: p, Message: "step " + strconv.Itoa(k+1),
				})
				if err != nil {
					if ctx.Err() != nil {
						return
					}
					d.fail(fmt.Errorf("report progress on task %d: %w", j, err))
					continue
				}
				now := time.Now()
				d.progress[j]++
				d.changes[j] = append(d.changes[j], change{at: now, state: taskhubv1.TaskState_TASK_STATE_RUNNING, progress: p})
				calls[j] = append(calls[j], now.Sub(asked))
			}
		})
	}
	wg.Wait()
	d.calls = slices.Concat(calls...)
}

// report sends one report of task j: through its worker's Reporter with --batch-workers.
func (d *driver) report(ctx context.Context, j int, req *taskhubv1.ReportProgressRequest) error {
	if d.reporters != nil {
		_, err := d.reporters[j%len(d.reporters)].Report(ctx, req)
		return err
	}
	_, err := d.work.ReportProgress(ctx, connect.NewRequest(req))
	return err
}

// complete completes every task.
func (d *driver) complete(ctx context.Context) error {
	for j := range d.ids {
		res, err := d.work.CompleteTask(ctx, connect.NewRequest(&taskhubv1.CompleteTaskRequest{
			TaskId: d.ids[j], LeaseToken: d.leases[j], Result: "done",
		}))
		if err != nil {
			return fmt.Errorf("complete task %d: %w", j, err)
		}
		d.done[j], d.final[j] = true, res.Msg.Task
		d.changes[j] = append(d.changes[j], change{at: time.Now(), state: taskhubv1.TaskState_TASK_STATE_COMPLETED, progress: res.Msg.Task.Progress})
	}
	return nil
}

// abandon ends the tasks a failed run leaves behind: it fails the claimed ones and cancels
// the queued ones, so the next run does not find them.
func (d *driver) abandon() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for j, id := range d.ids {
		switch {
		case id == "" || d.done[j]:
		case d.leases[j] != "":
			d.work.FailTask(ctx, connect.NewRequest(&taskhubv1.FailTaskRequest{TaskId: id, LeaseToken: d.leases[j], Error: "the load run was stopped"}))
		default:
			d.tasks.CancelTask(ctx, asOwner(d, j, connect.NewRequest(&taskhubv1.CancelTaskRequest{Id: id})))
		}
	}
}

func (d *driver) close() { d.http.CloseIdleConnections() }

func (d *driver) fail(err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.failures == 0 {
		d.firstErr = err
	}
	d.failures++
}

// publishedOf is the number of events the driver made the hub publish on the tasks of user u
// of users: those that user's watchers get.
func (d *driver) publishedOf(u, users int) int64 {
	var n int64
	for j := u; j < len(d.ids); j += users {
		n += int64(len(d.changes[j]))
	}
	return n
}

// published is the number of events the driver made the hub publish: created, started and
// completed per task, and every accepted progress report.
func (d *driver) published() (progress, lifecycle int64) {
	for j := range d.ids {
		progress += d.progress[j]
		lifecycle += int64(len(d.changes[j])) - d.progress[j]
	}
	return progress, lifecycle
}

// version returns which of task j's changes a task in state with progress shows, or false
// when it shows none the driver made.
func (d *driver) version(j int, state taskhubv1.TaskState, progress float64) (int, bool) {
	ch := d.changes[j]
	switch state {
	case taskhubv1.TaskState_TASK_STATE_QUEUED:
		return 0, true
	case taskhubv1.TaskState_TASK_STATE_RUNNING:
		if progress == 0 {
			return 1, len(ch) > 1
		}
		// The progress reports are ch[2:] up to the completion, in increasing progress.
		end := len(ch)
		if d.done[j] {
			end--
		}
		if end < 2 {
			return 0, false
		}
		i, ok := slices.BinarySearchFunc(ch[2:end], progress, func(c change, p float64) int {
			switch {
			case c.progress < p:
				return -1
			case c.progress > p:
				return 1
			}
			return 0
		})
		return i + 2, ok
	case taskhubv1.TaskState_TASK_STATE_COMPLETED:
		return len(ch) - 1, d.done[j]
	}
	return 0, false
}

// stats sums up what the driver did, and reports its failed calls as a violation.
func (d *driver) stats(took time.Duration, pr *problems) *eventStats {
	progress, lifecycle := d.published()
	if d.failures > 0 {
		pr.addf("the driver had %d failed calls; the first: %v", d.failures, d.firstErr)
	}
	e := &eventStats{
		Published: progress + lifecycle, Progress: progress, Lifecycle: lifecycle,
		ProgressPerSec: float64(progress) / took.Seconds(), DriverErrors: d.failures,
		Calls: newDist(d.calls),
	}
	if d.reportCPU > 0 && progress > 0 {
		e.ReportCPUSec = d.reportCPU.Seconds()
		e.ReportCPUShare = e.ReportCPUSec / took.Seconds()
		e.CPUPerProgressUs = 1e6 * e.ReportCPUSec / float64(progress)
	}
	if d.firstErr != nil {
		e.FirstError = d.firstErr.Error()
	}
	return e
}
