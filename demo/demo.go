// Package demo is the built-in executor of mode "demo": it runs tasks in-process the way an AI
// generation would, step by step with messages such as "denoising 12/50", and completes them with
// a generated image (an SVG data URL). It is a worker like any other, written on client.Worker:
// it claims, reports and completes through the API.
//
// Params: steps (1..1000, default 20) and step_ms (0..60000, default 250). A prompt containing
// "fail" fails part-way through, for good. A cancelled task stops at once (with
// Config.TaskEnded; else at the next step's report).
//
// An Executor's workers each run one task at a time; Stop drops the tasks under way (they go
// back to the queue when their leases run out) and waits for the workers to return.
package demo

import (
	"cmp"
	"context"
	"encoding/base64"
	"fmt"
	"hash/fnv"
	"html"
	"log/slog"
	"math"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/taskhub/taskhub"
	"github.com/taskhub/taskhub/client"
)

// Mode is the mode the demo executor runs.
const Mode = taskhub.DefaultMode

// Defaults and limits of the params.
const (
	DefaultSteps  = 20
	DefaultStepMS = 250
	MaxSteps      = 1000
	MaxStepMS     = 60000
)

// Config is where an Executor finds its tasks and how many it runs at once.
type Config struct {
	// Client reaches the server's API, with a worker's token when auth is on.
	Client *client.Client
	// Workers is how many tasks run at once, each by a worker of its own (worker_id demo-1,
	// demo-2, ...).
	Workers int
	// TaskEnded, when set, tells the workers at once that a task ended (client.Worker.TaskEnded),
	// so that a cancelled task stops in the middle of a step.
	TaskEnded func(id string) (ended <-chan struct{}, release func())
	// Logger receives what goes wrong [slog.Default()].
	Logger *slog.Logger
}

// Executor runs demo tasks.
type Executor struct {
	logger *slog.Logger
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// Start starts cfg.Workers workers claiming demo tasks.
func Start(cfg Config) *Executor {
	ctx, cancel := context.WithCancel(context.Background())
	e := &Executor{logger: cmp.Or(cfg.Logger, slog.Default()).With("executor", "demo"), cancel: cancel}
	for i := range cfg.Workers {
		w := &client.Worker{
			Client: cfg.Client, ID: fmt.Sprintf("demo-%d", i+1), Concurrency: 1,
			DrainTimeout: -1, // a demo task may take hours: Stop does not wait for it
			Logger:       e.logger, TaskEnded: cfg.TaskEnded,
		}
		e.wg.Go(func() { _ = w.Run(ctx, []string{Mode}, e.run) })
	}
	return e
}

// Stop stops the workers and waits for them. A task one of them was running keeps its lease
// until it expires, then goes back to the queue.
func (e *Executor) Stop() {
	e.cancel()
	e.wg.Wait()
}

// run executes one claimed task: client.Worker completes it with the result, or fails it with
// the error; when ctx ends (a cancel, a lost lease, Stop) what it returns is dropped.
func (e *Executor) run(ctx context.Context, job *client.Job) (string, error) {
	t := job.Task
	steps, stepMS, err := params(t.Params)
	if err != nil { // checked at create; an older task may still have them wrong
		return "", client.Permanent(err)
	}
	failAt := 0
	if strings.Contains(strings.ToLower(t.Prompt), "fail") {
		failAt = steps*6/10 + 1
	}
	for step := 1; step <= steps; step++ {
		if !sleep(ctx, time.Duration(stepMS)*time.Millisecond) {
			return "", ctx.Err() // cancelled, the lease lost, or stopping
		}
		if step == failAt {
			return "", client.Permanent(fmt.Errorf("the demo model gave up at step %d of %d: the prompt asks it to fail", step, steps))
		}
		err := job.Report(ctx, math.Round(float64(step*1000)/float64(steps))/10, fmt.Sprintf("denoising %d/%d", step, steps))
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		if err != nil { // the worker keeps the lease meanwhile; the next report may get through
			e.logger.Warn("demo executor: report failed", "task", t.Id, "err", err)
		}
	}
	return Render(t.Prompt), nil
}

// CheckParams validates the params of a demo task.
func CheckParams(p map[string]string) error {
	_, _, err := params(p)
	return err
}

func params(p map[string]string) (steps, stepMS int, err error) {
	steps, err = intParam(p, "steps", DefaultSteps, 1, MaxSteps)
	if err != nil {
		return 0, 0, err
	}
	stepMS, err = intParam(p, "step_ms", DefaultStepMS, 0, MaxStepMS)
	return steps, stepMS, err
}

func intParam(p map[string]string, name string, def, lo, hi int) (int, error) {
	s, ok := p[name]
	if !ok {
		return def, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < lo || n > hi {
		return 0, taskhub.Errorf(taskhub.Invalid, "param %s must be a whole number in %d..%d: got %q", name, lo, hi, s)
	}
	return n, nil
}

// sleep waits for d and reports true, or reports false as soon as ctx ends.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// Render draws the demo's "generated image" of a prompt: an SVG data URL whose colours come
// from the prompt, so the same prompt gives the same picture.
func Render(prompt string) string {
	h := fnv.New32a()
	h.Write([]byte(prompt))
	n := h.Sum32()
	hue := n % 360
	caption := prompt
	if r := []rune(caption); len(r) > 32 {
		caption = string(r[:31]) + "…"
	}
	svg := fmt.Sprintf(`<svg xmlns="http://www.w3.org/2000/svg" width="256" height="256" viewBox="0 0 256 256">`+
		`<defs><linearGradient id="g" x1="0" y1="0" x2="1" y2="1">`+
		`<stop offset="0" stop-color="hsl(%d,70%%,60%%)"/><stop offset="1" stop-color="hsl(%d,65%%,30%%)"/>`+
		`</linearGradient></defs><rect width="256" height="256" fill="url(#g)"/>`+
		`<circle cx="%d" cy="%d" r="%d" fill="hsla(%d,90%%,85%%,0.6)"/>`+
		`<text x="128" y="236" font-family="sans-serif" font-size="14" fill="#fff" text-anchor="middle">%s</text></svg>`,
		hue, (hue+140)%360, 64+n%128, 48+(n>>8)%112, 24+(n>>16)%40, (hue+60)%360, html.EscapeString(caption))
	return "data:image/svg+xml;base64," + base64.StdEncoding.EncodeToString([]byte(svg))
}
