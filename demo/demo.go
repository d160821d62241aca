// Package demo is the built-in executor of mode "demo": it runs tasks in-process the way an AI
// generation would, step by step with messages such as "denoising 12/50", and completes them with
// a generated image (an SVG data URL). It claims and reports through the hub like any worker.
//
// Params: steps (1..1000, default 20) and step_ms (0..60000, default 250). A prompt containing
// "fail" fails part-way through. A cancelled task stops at once.
//
// An Executor's workers each run one task at a time; Stop waits for them to return.
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

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"

	"github.com/taskhub/taskhub"
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

// Hub is what the executor needs from the hub: the worker's side of it, and a way to hear at
// once that a task ended (a cancel), which a remote worker learns at its next report.
type Hub interface {
	taskhub.WorkerService
	TaskEnded(id string) (ended <-chan struct{}, release func())
}

// Executor runs demo tasks.
type Executor struct {
	hub    Hub
	logger *slog.Logger
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// Start starts n workers claiming demo tasks from hub.
func Start(hub Hub, n int, logger *slog.Logger) *Executor {
	ctx, cancel := context.WithCancel(context.Background())
	e := &Executor{hub: hub, logger: cmp.Or(logger, slog.Default()), cancel: cancel}
	for i := range n {
		e.wg.Add(1)
		go e.work(ctx, fmt.Sprintf("demo-%d", i+1))
	}
	return e
}

// Stop stops the workers. A task one of them was running keeps its lease until it expires, then
// goes back to the queue.
func (e *Executor) Stop() {
	e.cancel()
	e.wg.Wait()
}

func (e *Executor) work(ctx context.Context, id string) {
	defer e.wg.Done()
	for ctx.Err() == nil {
		c, err := e.hub.ClaimTask(ctx, taskhub.ClaimParams{WorkerID: id, Modes: []string{Mode}, Wait: 30 * time.Second})
		if err != nil {
			if ctx.Err() == nil {
				e.logger.Warn("demo executor: claim failed", "worker", id, "err", err)
				sleep(ctx, nil, time.Second)
			}
			continue
		}
		if c != nil {
			e.run(ctx, id, c)
		}
	}
}

// run executes one claimed task.
func (e *Executor) run(ctx context.Context, worker string, c *taskhub.Claim) {
	t := c.Task
	lease := taskhub.Lease{TaskID: t.Id, Token: c.LeaseToken}
	steps, stepMS, err := params(t.Params)
	if err != nil { // checked at create; an older task may still have them wrong
		e.finish(e.hub.FailTask(ctx, lease, taskhub.Failure{Error: err.Error()}))
		return
	}
	failAt := 0
	if strings.Contains(strings.ToLower(t.Prompt), "fail") {
		failAt = steps*6/10 + 1
	}
	ended, release := e.hub.TaskEnded(t.Id)
	defer release()
	for step := 1; step <= steps; step++ {
		if !sleep(ctx, ended, time.Duration(stepMS)*time.Millisecond) {
			return // stopping, or the task was cancelled
		}
		if step == failAt {
			e.finish(e.hub.FailTask(ctx, lease, taskhub.Failure{
				Error: fmt.Sprintf("the demo model gave up at step %d of %d: the prompt asks it to fail", step, steps)}))
			return
		}
		st, err := e.hub.ReportProgress(ctx, taskhub.Report{Lease: lease,
			Progress: math.Round(float64(step*1000)/float64(steps)) / 10, Message: fmt.Sprintf("denoising %d/%d", step, steps)})
		if err != nil {
			e.logger.Warn("demo executor: report failed; dropping the task", "task", t.Id, "worker", worker, "err", err)
			return
		}
		if st.CancelRequested {
			return
		}
	}
	e.finish(e.hub.CompleteTask(ctx, lease, Render(t.Prompt)))
}

func (e *Executor) finish(_ *taskhubv1.Task, err error) {
	if err != nil {
		e.logger.Warn("demo executor: could not finish a task", "err", err)
	}
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

// sleep waits for d and reports true, or reports false as soon as ctx ends or ended is closed.
func sleep(ctx context.Context, ended <-chan struct{}, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	case <-ended:
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
