package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fastjson"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"

	"github.com/taskhub/taskhub/rpc"
)

// runResume is the resume command: many users' clients resume their watches at once, as a load
// balancer's restart or a network's blip makes every page reconnect, each after the seq it last
// saw. Each is a WatchTasks stream of its own, JSON over HTTP/1.1 as a page without TLS or curl
// opens it, resumed --back events before the log's end (the seq of a fresh snapshot), and read
// until it sends nothing for --quiet. It checks that each resumed (its snapshot recovered) and
// got its events in order, all after its seq, and that the streams of a user (--resumes over
// --users) got the same events; and reports the server's CPU a resume and an event.
func runResume(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("taskhub-load resume", flag.ContinueOnError)
	fs.SetOutput(stderr)
	rawURL := fs.String("url", "http://127.0.0.1:8080", "the taskhub server (on this machine, without TLS)")
	authFile := fs.String("auth-file", "", "the server's --auth-file: each resume is one of its users' (taskhub-load users writes one)")
	resumes := fs.Int("resumes", 2000, "how many streams resume, one user's each, round-robin over the users")
	concurrency := fs.Int("concurrency", 20, "how many resume at once")
	users := fs.Int("users", 1000, "how many of the auth file's users resume, each --resumes/--users times: the streams of a user must agree on its events")
	back := fs.Uint64("back", 50000, "each resumes after the seq this many events before the log's end")
	timeout := fs.Duration("timeout", 30*time.Second, "a stream that has not gone quiet by then fails")
	quiet := fs.Duration("quiet", 300*time.Millisecond, "a stream that sends nothing for this long has sent its replay")
	serverPID := fs.Int("server-pid", 0, "`pid` of the server, for its CPU (default: the process listening on the URL's port)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	u, err := url.Parse(*rawURL)
	switch {
	case fs.NArg() > 0:
		return fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	case err != nil || u.Scheme != "http" || u.Port() == "":
		return fmt.Errorf("--url must be http://host:port: got %q", *rawURL)
	case *authFile == "":
		return errors.New("resume: --auth-file is required")
	case *resumes < 1 || *resumes > maxWatchers:
		return fmt.Errorf("--resumes must be 1..%d: got %d", maxWatchers, *resumes)
	case *concurrency < 1 || *concurrency > *resumes:
		return fmt.Errorf("--concurrency must be 1..%d (--resumes): got %d", *resumes, *concurrency)
	case *quiet <= 0 || *quiet > time.Minute:
		return fmt.Errorf("--quiet must be above 0 and at most 1m: got %v", *quiet)
	case *timeout <= *quiet:
		return fmt.Errorf("--timeout must be above --quiet: got %v", *timeout)
	case *users < 1 || *users > *resumes:
		return fmt.Errorf("--users must be 1..%d (--resumes): got %d", *resumes, *users)
	}
	f, err := rpc.ReadAuthFile(*authFile)
	if err != nil {
		return err
	}
	if len(f.Users) < *users {
		return fmt.Errorf("--users %d: %s has %d users", *users, *authFile, len(f.Users))
	}
	pid := *serverPID
	if pid == 0 {
		port, _ := strconv.Atoi(u.Port())
		if pid, err = findListener(port); err != nil {
			return err
		}
	}
	srv := proc{pid}

	tr := &http.Transport{DisableKeepAlives: true, Protocols: new(http.Protocols)}
	tr.Protocols.SetHTTP1(true)
	hc := &http.Client{Transport: tr}
	var fresh resumed
	if err := readWatch(ctx, hc, *rawURL, f.Users[0].Token, `{}`, *quiet, *timeout, &fresh); err != nil {
		return fmt.Errorf("a fresh watch: %w", err)
	}
	after := uint64(1)
	if fresh.snapSeq > *back {
		after = fresh.snapSeq - *back
	}
	body := fmt.Sprintf(`{"epoch":%q,"afterSeq":"%d"}`, fresh.epoch, after)
	fmt.Fprintf(stderr, "resuming %d streams, %d at once, after seq %d (the log's end %d)\n", *resumes, *concurrency, after, fresh.snapSeq)

	// What the server spends idle (its probes, timers), for the reader to weigh: the window
	// below includes each stream's last quiet wait.
	idle0, err := srv.cpu()
	if err != nil {
		return err
	}
	time.Sleep(2 * time.Second)
	cpu0, err := srv.cpu()
	if err != nil {
		return err
	}
	idle := (cpu0 - idle0) / 2
	self0 := selfCPU()
	var events, afresh, failed atomic.Int64
	var mu sync.Mutex
	var violations []string
	seen := make([]*resumed, *users) // each user's first stream's, which the others must match
	work := make(chan int)
	var wg sync.WaitGroup
	began := time.Now()
	for range *concurrency {
		wg.Go(func() {
			for i := range work {
				var r resumed
				u := i % *users
				err := readWatch(ctx, hc, *rawURL, f.Users[u].Token, body, *quiet, *timeout, &r)
				switch {
				case err != nil:
					failed.Add(1)
					r.violation = err.Error()
				case !r.recovered:
					afresh.Add(1)
				}
				events.Add(int64(r.events))
				mu.Lock()
				if err == nil && r.recovered && r.violation == "" {
					if first := seen[u]; first == nil {
						seen[u] = &r
					} else if first.events != r.events || first.last != r.last {
						r.violation = fmt.Sprintf("user %d's streams disagree: %d events to seq %d, and %d to seq %d", u, first.events, first.last, r.events, r.last)
					}
				}
				if r.violation != "" {
					violations = append(violations, fmt.Sprintf("stream %d: %s", i, r.violation))
				}
				mu.Unlock()
			}
		})
	}
	for i := range *resumes {
		work <- i
	}
	close(work)
	wg.Wait()
	elapsed := time.Since(began)
	cpu1, err := srv.cpu()
	if err != nil {
		return err
	}
	cpu, self := cpu1-cpu0, selfCPU()-self0

	n, ev := *resumes, events.Load()
	fmt.Fprintf(stdout, "taskhub-load resume: %d streams of %d users, %d at a time, each after seq %d of %d, JSON over HTTP/1.1, against %s\n", n, *users, *concurrency, after, fresh.snapSeq, *rawURL)
	fmt.Fprintf(stdout, "streams            %d resumed, %d started afresh, %d failed; %d events (%.1f a stream: the replay, and any live ones), in %v (each stream's wait of %v until it was quiet included)\n", int64(n)-afresh.Load()-failed.Load(), afresh.Load(), failed.Load(), ev, float64(ev)/float64(n), elapsed.Round(time.Millisecond), *quiet)
	perEvent := "no events"
	if ev > 0 {
		perEvent = fmt.Sprintf("%v an event", (cpu / time.Duration(ev)).Round(100*time.Nanosecond))
	}
	fmt.Fprintf(stdout, "server             pid %d: %.2f CPU s: %v a resume, %s (idle it used %v a second)\n", pid, cpu.Seconds(), (cpu / time.Duration(n)).Round(time.Microsecond), perEvent, idle.Round(time.Millisecond))
	fmt.Fprintf(stdout, "this tool          %.2f CPU s\n", self.Seconds())
	if len(violations) > 0 || afresh.Load() > 0 {
		for _, v := range violations[:min(len(violations), 10)] {
			fmt.Fprintln(stdout, "violation         ", v)
		}
		return fmt.Errorf("%d streams did not resume, %d violations", afresh.Load()+failed.Load(), len(violations))
	}
	fmt.Fprintln(stdout, "result             OK: every stream resumed and got its events in order, all after its seq, and a user's streams the same events")
	return nil
}

// resumed is what one stream got.
type resumed struct {
	epoch     string
	snapSeq   uint64
	recovered bool
	events    int
	last      uint64 // the last event's seq
	violation string // the first thing wrong
}

// readWatch opens a WatchTasks stream with body (JSON) as token's user and reads it into r until
// it sends nothing for quiet, failing if it has not by timeout.
func readWatch(ctx context.Context, hc *http.Client, base, token, body string, quiet, timeout time.Duration, r *resumed) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var env bytes.Buffer
	env.WriteByte(0)
	env.Write(binary.BigEndian.AppendUint32(nil, uint32(len(body))))
	env.WriteString(body)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/taskhub.v1.TaskService/WatchTasks", &env)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/connect+json")
	req.Header.Set("Authorization", "Bearer "+token)
	res, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("HTTP %s", res.Status)
	}
	msgs, errs := make(chan *taskhubv1.WatchTasksResponse), make(chan error, 1)
	go func() { // it sends its one error, then closes msgs
		defer close(msgs)
		br := bufio.NewReader(res.Body)
		var buf []byte
		var jp fastjson.Parser
		for {
			b, err := nextEnvelope(br, &buf) // a watch does not end itself: its end is an error
			if err != nil {
				errs <- err
				return
			}
			m, err := decodeMessage(codecJSON, b, &jp)
			if err != nil {
				errs <- err
				return
			}
			select {
			case msgs <- m:
			case <-ctx.Done():
				errs <- ctx.Err()
				return
			}
		}
	}()
	t := time.NewTimer(quiet)
	defer t.Stop()
	for first := true; ; first = false {
		select {
		case m, ok := <-msgs:
			if !ok {
				return <-errs
			}
			snap, ev := m.GetSnapshot(), m.GetEvent()
			switch {
			case first && snap == nil:
				return errors.New("the first message is not a snapshot")
			case first:
				r.epoch, r.snapSeq, r.recovered, r.last = snap.Epoch, snap.Seq, snap.Recovered, snap.Seq
			case ev != nil:
				if ev.Seq <= r.last && r.violation == "" {
					r.violation = fmt.Sprintf("event seq %d after %d", ev.Seq, r.last)
				}
				r.events++
				r.last = ev.Seq
			}
			t.Reset(quiet)
		case <-t.C:
			if first {
				return fmt.Errorf("no snapshot within %v", quiet)
			}
			return nil
		case <-ctx.Done():
			return fmt.Errorf("not quiet within %v: %w", timeout, ctx.Err())
		}
	}
}
