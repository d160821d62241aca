package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"
	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"
	"golang.org/x/term"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/taskhub/taskhub"
	"github.com/taskhub/taskhub/client"
	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"
)

// The exit codes of create --wait, beside 0 for a completed task (and 2 for any error).
const (
	exitFailed    = 3
	exitCancelled = 4
)

// exitCode is an error that makes the process exit with a code of its own.
type exitCode struct {
	code int
	msg  string
}

func (e exitCode) Error() string { return e.msg }

// cli is what the client commands share: where the server is, who calls, how to print.
type cli struct {
	client *client.Client
	json   bool
	out    io.Writer
	tty    bool // out is a terminal: draw progress bars
}

// clientFlags adds the flags every client command has to fs.
func clientFlags(fs *flag.FlagSet, server, token *string, asJSON *bool) {
	fs.StringVar(server, "server", "http://127.0.0.1:8080", "taskhub's `URL`")
	fs.StringVar(token, "token", "", "a user's bearer `token` (with --auth-file or minted tokens)")
	fs.BoolVar(asJSON, "json", false, "print JSON: a task, or one event a line")
}

// runClient runs a client command: create, get, list, cancel or watch.
func runClient(ctx context.Context, command string, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("taskhub "+command, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var server, token, mode, key, state, hookURL, hookEvents string
	var asJSON, wait bool
	var params []string
	var limit int
	clientFlags(fs, &server, &token, &asJSON)
	switch command {
	case "create":
		fs.StringVar(&mode, "mode", "", "the task's `mode` (default: demo)")
		fs.Func("param", "a `key=value` param (repeatable)", func(v string) error { params = append(params, v); return nil })
		fs.StringVar(&key, "idempotency-key", "", "a `key` that makes a retried create return the first task")
		fs.BoolVar(&wait, "wait", false, "watch the task until it ends: exit 0 completed, 3 failed, 4 cancelled")
		fs.StringVar(&hookURL, "webhook", "", "POST the task's events to this `URL` (the server's --webhook-allow must name its host)")
		fs.StringVar(&hookEvents, "webhook-events", "", "the `kinds` of event to POST, comma-separated: created, started, progress, completed, failed, cancelled, requeued, stalled (default: the last three)")
	case "list":
		fs.StringVar(&state, "state", "", "only tasks in this `state` (queued, running, completed, failed, cancelled)")
		fs.IntVar(&limit, "limit", 100, "list at most `N` tasks, the newest; 0 lists them all")
	}
	if err := fromEnv(fs); err != nil {
		return err
	}
	if err := fs.Parse(interleave(fs, args)); err != nil {
		return err
	}
	opts := []client.Option{client.WithToken(token)}
	if asJSON {
		opts = append(opts, client.WithConnectOptions(connect.WithProtoJSON()))
	}
	c := &cli{client: client.New(server, opts...), json: asJSON, out: stdout, tty: isTerminal(stdout)}
	rest := fs.Args()
	switch command {
	case "create":
		if len(rest) != 1 {
			return errors.New("create: give the prompt, one argument (quote it)")
		}
		p := map[string]string{}
		for _, kv := range params {
			k, v, ok := strings.Cut(kv, "=")
			if !ok {
				return fmt.Errorf("create: --param %q: want key=value", kv)
			}
			p[k] = v
		}
		req := &taskhubv1.CreateTaskRequest{Prompt: rest[0], Mode: mode, Params: p, IdempotencyKey: key}
		if hookURL != "" {
			req.Webhook = &taskhubv1.Webhook{Url: hookURL}
			for k := range strings.SplitSeq(hookEvents, ",") {
				if k = strings.TrimSpace(k); k == "" {
					continue
				}
				v, ok := taskhubv1.EventKind_value["EVENT_KIND_"+strings.ToUpper(k)]
				if !ok {
					return fmt.Errorf("create: --webhook-events: %q is not a kind of event", k)
				}
				req.Webhook.Events = append(req.Webhook.Events, taskhubv1.EventKind(v))
			}
		} else if hookEvents != "" {
			return errors.New("create: --webhook-events without --webhook")
		}
		t, err := c.client.Create(ctx, req)
		if err != nil {
			return err
		}
		if !wait {
			return c.printTask(t)
		}
		return c.watch(ctx, []string{t.Id}, true)
	case "get", "cancel":
		if len(rest) != 1 {
			return fmt.Errorf("%s: give the task's id", command)
		}
		call := c.client.Get
		if command == "cancel" {
			call = c.client.Cancel
		}
		t, err := call(ctx, rest[0])
		if err != nil {
			return err
		}
		return c.printTask(t)
	case "list":
		if limit < 0 {
			return fmt.Errorf("list: --limit must be 0 or more: got %d", limit)
		}
		req := &taskhubv1.ListTasksRequest{PageSize: 100}
		if state != "" {
			s, ok := taskhubv1.TaskState_value["TASK_STATE_"+strings.ToUpper(state)]
			if !ok {
				return fmt.Errorf("list: --state %q: want queued, running, completed, failed or cancelled", state)
			}
			req.States = []taskhubv1.TaskState{taskhubv1.TaskState(s)}
		}
		n := 0
		for t, err := range c.client.List(ctx, req) {
			if err != nil {
				return err
			}
			if limit > 0 && n == limit {
				break
			}
			if err := c.printTask(t); err != nil {
				return err
			}
			n++
		}
		return nil
	case "watch":
		return c.watch(ctx, rest, false)
	}
	return fmt.Errorf("unknown command %q", command)
}

// interleave lets flags follow the positional arguments (taskhub create "a prompt" --wait), as
// the flag package stops at the first argument that is not one. Whether a flag takes the next
// argument as its value is fs's to say: its boolean flags do not.
func interleave(fs *flag.FlagSet, args []string) []string {
	var flags, positional []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--":
			positional = append(positional, args[i+1:]...)
			i = len(args)
		case strings.HasPrefix(a, "-") && len(a) > 1:
			flags = append(flags, a)
			if !strings.Contains(a, "=") && i+1 < len(args) && !isBool(fs, strings.TrimLeft(a, "-")) {
				flags = append(flags, args[i+1])
				i++
			}
		default:
			positional = append(positional, a)
		}
	}
	return append(flags, positional...)
}

// isBool reports whether fs's flag name is a boolean one (it takes no value).
func isBool(fs *flag.FlagSet, name string) bool {
	f := fs.Lookup(name)
	if f == nil {
		return false // unknown: Parse says so
	}
	b, ok := f.Value.(interface{ IsBoolFlag() bool })
	return ok && b.IsBoolFlag()
}

// printTask prints a task: its JSON, or a line.
func (c *cli) printTask(t *taskhubv1.Task) error {
	if c.json {
		b, err := protojson.Marshal(t)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(c.out, "%s\n", b)
		return err
	}
	_, err := fmt.Fprintln(c.out, taskLine(t))
	return err
}

// taskLine is a task in one line: id, state, progress, mode, prompt, and its message, result
// or error.
func taskLine(t *taskhubv1.Task) string {
	line := fmt.Sprintf("%s  %-9s %5.1f%%  %s  %q", t.Id, taskhub.StateName(t.State), t.Progress, t.Mode, clip(t.Prompt, 60))
	switch {
	case t.Error != "":
		line += "  error: " + clip(t.Error, 200)
	case t.Result != "":
		line += "  result: " + clip(t.Result, 200)
	case t.Message != "":
		line += "  " + clip(t.Message, 80)
	}
	return line
}

func clip(s string, n int) string {
	r := []rune(strings.ReplaceAll(s, "\n", " "))
	if len(r) <= n {
		return string(r)
	}
	return string(r[:n-1]) + "…"
}

// watch prints the caller's tasks' events (only ids', when given) until ctx ends; with until,
// until each of ids has ended, and the exit code then says how the last one ended. It resumes
// across dropped connections (client.Client.Watch).
func (c *cli) watch(ctx context.Context, ids []string, until bool) error {
	want, open := map[string]bool{}, map[string]bool{}
	for _, id := range ids {
		want[id], open[id] = true, true
	}
	var bars *barSet
	if c.tty && !c.json {
		bars = newBars(c.out)
		defer bars.wait() // once only: wait is idempotent
	}
	var last *taskhubv1.Task
	show := func(kind taskhubv1.EventKind, t *taskhubv1.Task) error {
		if len(want) > 0 && !want[t.Id] {
			return nil
		}
		switch {
		case c.json:
			b, err := protojson.Marshal(&taskhubv1.TaskEvent{Kind: kind, Task: t, Seq: t.Seq})
			if err != nil {
				return err
			}
			fmt.Fprintf(c.out, "%s\n", b)
		case bars != nil:
			bars.show(t)
		default:
			fmt.Fprintln(c.out, taskLine(t))
		}
		if taskhub.Terminal(t.State) && open[t.Id] {
			delete(open, t.Id)
			last = t
		}
		return nil
	}
	errDone := errors.New("done")
	err := c.client.Watch(ctx, nil, func(m *taskhubv1.WatchTasksResponse) error {
		if s := m.GetSnapshot(); s != nil && !s.Recovered {
			for _, t := range s.Tasks {
				if err := show(taskhubv1.EventKind_EVENT_KIND_UNSPECIFIED, t); err != nil {
					return err
				}
			}
			// A task that ended before the watch began is not among the snapshot's active ones.
			for id := range open {
				t, err := c.client.Get(ctx, id)
				if err != nil {
					return err
				}
				if taskhub.Terminal(t.State) {
					if err := show(taskhubv1.EventKind_EVENT_KIND_UNSPECIFIED, t); err != nil {
						return err
					}
				}
			}
		}
		if e := m.GetEvent(); e != nil && e.Kind != taskhubv1.EventKind_EVENT_KIND_LEASE_RENEWED {
			if err := show(e.Kind, e.Task); err != nil {
				return err
			}
		}
		if until && len(open) == 0 {
			return errDone
		}
		return nil
	})
	switch {
	case errors.Is(err, context.Canceled):
		return nil
	case !errors.Is(err, errDone):
		return err
	}
	if bars != nil {
		bars.wait()
		if last.State == taskhubv1.TaskState_TASK_STATE_COMPLETED {
			fmt.Fprintln(c.out, last.Result)
		}
	}
	switch last.State {
	case taskhubv1.TaskState_TASK_STATE_FAILED:
		return exitCode{exitFailed, "the task failed: " + last.Error}
	case taskhubv1.TaskState_TASK_STATE_CANCELLED:
		return exitCode{exitCancelled, "the task was cancelled"}
	}
	return nil
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// barSet draws a progress bar per task on a terminal, redrawn in place: its state, percent,
// message, elapsed time and an estimate of the time left.
type barSet struct {
	p    *mpb.Progress
	mu   sync.Mutex
	bars map[string]*taskBar
	done bool
}

type taskBar struct {
	bar  *mpb.Bar
	mu   sync.Mutex
	task *taskhubv1.Task
}

func newBars(out io.Writer) *barSet {
	return &barSet{p: mpb.New(mpb.WithOutput(out), mpb.WithWidth(30), mpb.WithRefreshRate(150*time.Millisecond)), bars: map[string]*taskBar{}}
}

func (s *barSet) show(t *taskhubv1.Task) {
	s.mu.Lock()
	b, ok := s.bars[t.Id]
	if !ok {
		b = &taskBar{task: t}
		text := func(fn func(t *taskhubv1.Task) string) decor.Decorator {
			return decor.Any(func(decor.Statistics) string {
				b.mu.Lock()
				defer b.mu.Unlock()
				return fn(b.task)
			})
		}
		// A total above 100: a task at 100 % has not ended until its last event says so.
		b.bar = s.p.New(101, mpb.BarStyle(),
			mpb.PrependDecorators(text(func(t *taskhubv1.Task) string {
				return fmt.Sprintf("%-24s %-9s", clip(t.Prompt, 24), taskhub.StateName(t.State))
			})),
			mpb.AppendDecorators(text(func(t *taskhubv1.Task) string {
				return fmt.Sprintf(" %5.1f%%  %s  %s", t.Progress, timing(t), clip(t.Message, 40))
			})))
		s.bars[t.Id] = b
	}
	s.mu.Unlock()
	b.mu.Lock()
	b.task = proto.CloneOf(t)
	b.mu.Unlock()
	b.bar.SetCurrent(int64(t.Progress))
	if taskhub.Terminal(t.State) {
		b.bar.SetTotal(-1, true)
	}
}

// wait waits until every bar is drawn for the last time. Later calls do nothing.
func (s *barSet) wait() {
	s.mu.Lock()
	if s.done {
		s.mu.Unlock()
		return
	}
	s.done = true
	for _, b := range s.bars {
		if !b.bar.Completed() {
			b.bar.Abort(false)
		}
	}
	s.mu.Unlock()
	s.p.Wait()
}

// timing is how long a task has run and, while it runs, about how long it has left.
func timing(t *taskhubv1.Task) string {
	if t.StartedAt == nil {
		return ""
	}
	end := time.Now()
	if t.FinishedAt != nil {
		end = t.FinishedAt.AsTime()
	}
	took := end.Sub(t.StartedAt.AsTime()).Round(time.Second)
	if t.FinishedAt != nil || t.Progress <= 0 || t.Progress >= 100 {
		return took.String()
	}
	left := time.Duration(float64(took) * (100 - t.Progress) / t.Progress).Round(time.Second)
	return fmt.Sprintf("%s, ~%s left", took, left)
}
