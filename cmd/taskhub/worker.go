package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/taskhub/taskhub/client"
)

// exitPermanent is the exit code with which a command fails its task for good; any other
// non-zero exit fails it retryably.
const exitPermanent = 100

// runWorker is `taskhub worker`: it makes any program a worker. It claims tasks of --mode and
// runs the command once per task, with the task as JSON on stdin and in environment variables
// (TASKHUB_TASK_ID, TASKHUB_PROMPT, TASKHUB_MODE, TASKHUB_PARAM_<NAME>). The command's stdout
// lines "progress 40 a message" (or {"progress": 40, "message": "..."}) report progress, "result
// TEXT" sets the result (else its last other line is the result); exit 0 completes the task, exit
// 100 fails it for good, any other exit fails it retryably with the end of stderr. The lease is
// renewed while the command is silent; when the task is cancelled or the lease lost the command
// gets SIGTERM, then SIGKILL after --grace, and the task is not completed. SIGTERM to the worker
// stops its claims and lets the commands under way finish.
func runWorker(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("taskhub worker", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		server, token, mode, id string
		concurrency             int
		grace, batchDelay       time.Duration
	)
	fs.StringVar(&server, "server", "http://127.0.0.1:8080", "taskhub's `URL`")
	fs.StringVar(&token, "token", "", "a worker's bearer `token` (with --auth-file)")
	fs.StringVar(&mode, "mode", "", "the `mode` of the tasks to claim (required)")
	fs.StringVar(&id, "worker-id", "", "the worker_id to claim as (default: taskhub-worker-<host>-<pid>)")
	fs.IntVar(&concurrency, "concurrency", 1, "tasks run at once")
	fs.DurationVar(&grace, "grace", 10*time.Second, "how long a command has to stop after SIGTERM before SIGKILL")
	fs.DurationVar(&batchDelay, "batch-delay", 0, "how long a batch of the commands' progress reports waits after its first for more (0: it goes when no other is on its way): with many commands at once, fewer and larger batches cost the server less, but each command's progress lines are then read one per delay at most")
	if err := fromEnv(fs); err != nil {
		return err
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	command := fs.Args()
	switch {
	case mode == "":
		return errors.New("worker: --mode is required")
	case len(command) == 0:
		return errors.New("worker: give the command to run after --, such as: taskhub worker --mode import -- python3 import.py")
	case concurrency < 1 || concurrency > 1000:
		return fmt.Errorf("worker: --concurrency must be 1..1000: got %d", concurrency)
	case batchDelay < 0 || batchDelay > 10*time.Second:
		return fmt.Errorf("worker: --batch-delay must be 0..10s: got %v", batchDelay)
	}
	if id == "" {
		host, _ := os.Hostname()
		id = fmt.Sprintf("taskhub-worker-%s-%d", host, os.Getpid())
	}
	logger := slog.New(slog.NewTextHandler(stderr, nil))
	w := &client.Worker{Client: client.New(server, client.WithToken(token)), ID: id, Concurrency: concurrency, BatchDelay: batchDelay, Logger: logger}
	logger.Info("worker claiming", "mode", mode, "command", command)
	err := w.Run(ctx, []string{mode}, func(ctx context.Context, job *client.Job) (string, error) {
		return runCommand(ctx, job, command, grace, stderr)
	})
	if errors.Is(err, context.Canceled) {
		return nil // stopped: the drain is done
	}
	return err
}

// runCommand runs command for job and turns what it prints and how it exits into the task's
// progress and end.
func runCommand(ctx context.Context, job *client.Job, command []string, grace time.Duration, logs io.Writer) (string, error) {
	t := job.Task
	input, err := protojson.Marshal(t)
	if err != nil {
		return "", err
	}
	cmd := exec.CommandContext(ctx, command[0], command[1:]...)
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = grace
	cmd.Stdin = bytes.NewReader(input)
	cmd.Env = append(os.Environ(), "TASKHUB_TASK_ID="+t.Id, "TASKHUB_PROMPT="+t.Prompt, "TASKHUB_MODE="+t.Mode)
	for k, v := range t.Params {
		cmd.Env = append(cmd.Env, "TASKHUB_PARAM_"+strings.ToUpper(k)+"="+v)
	}
	stderr := &tail{max: 4000}
	cmd.Stderr = io.MultiWriter(stderr, logs)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return "", err
	}
	if err := cmd.Start(); err != nil {
		return "", client.Permanent(fmt.Errorf("cannot start %s: %w", command[0], err))
	}
	var result, last string
	explicit := false
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		if p, msg, ok := progressLine(line); ok {
			if err := job.Report(ctx, p, msg); err != nil && ctx.Err() == nil {
				fmt.Fprintf(logs, "taskhub worker: reporting progress on %s: %v\n", t.Id, err)
			}
			continue
		}
		if r, ok := strings.CutPrefix(line, "result "); ok {
			result, explicit = r, true
			continue
		}
		last = line
	}
	err = cmd.Wait()
	if !explicit {
		result = last
	}
	var exit *exec.ExitError
	switch {
	case err == nil:
		return result, nil
	case errors.As(err, &exit) && exit.ExitCode() == exitPermanent:
		return "", fmt.Errorf("%w: exit %d: %s", client.ErrPermanent, exitPermanent, stderr)
	case errors.As(err, &exit):
		return "", fmt.Errorf("exit %d: %s", exit.ExitCode(), stderr)
	}
	return "", err
}

// progressLine reads "progress 40 a message" or {"progress": 40, "message": "..."}.
func progressLine(line string) (progress float64, message string, ok bool) {
	if strings.HasPrefix(line, "{") {
		var p struct {
			Progress *float64 `json:"progress"`
			Message  string   `json:"message"`
		}
		if json.Unmarshal([]byte(line), &p) != nil || p.Progress == nil {
			return 0, "", false
		}
		return *p.Progress, p.Message, true
	}
	rest, ok := strings.CutPrefix(line, "progress ")
	if !ok {
		return 0, "", false
	}
	num, msg, _ := strings.Cut(rest, " ")
	p, err := strconv.ParseFloat(num, 64)
	if err != nil {
		return 0, "", false
	}
	return p, msg, true
}

// tail keeps the last max bytes written to it.
type tail struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = t.b[len(t.b)-t.max:]
	}
	return len(p), nil
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.TrimSpace(strings.ToValidUTF8(string(t.b), ""))
}
