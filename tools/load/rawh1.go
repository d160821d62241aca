package main

import (
	"bufio"
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/valyala/fastjson"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"
)

// h1Config is what a watcher needs to read its stream over HTTP/1.1 itself (--http1 with
// --client raw): one connection per watcher, as a browser's page or curl holds, read on the
// watcher's goroutine without connect-go, so that the tool's own cost stays small beside the
// server's.
type h1Config struct {
	addr      string // host:port to dial
	authority string
	codec     string // codecProto or codecJSON
	dial      func(ctx context.Context, network, addr string) (net.Conn, error)
}

// newH1Watcher makes a watcher that reads its stream over HTTP/1.1 itself.
func newH1Watcher(id int, cfg *h1Config, spec *watchSpec, user watchUser, slow bool) *watcher {
	w := newWatcher(id, nil, spec, user, slow)
	w.h1 = cfg
	return w
}

// runH1 opens w's stream on a connection of its own and reads it until ctx ends.
func (w *watcher) runH1(ctx context.Context) {
	defer w.finish()
	w.start = time.Now()
	conn, err := w.h1.dial(ctx, "tcp", w.h1.addr)
	if err != nil {
		w.err = err
		return
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	err = w.readH1(conn)
	if ctx.Err() == nil {
		w.err = cmp.Or(err, errors.New("the server ended the stream"))
	}
}

// readH1 sends the WatchTasks request on conn and reads the response's messages.
func (w *watcher) readH1(conn net.Conn) error {
	cfg := w.h1
	body := watchRequest
	if cfg.codec == codecJSON {
		body = []byte{0, 0, 0, 0, 2, '{', '}'}
	}
	var req strings.Builder
	req.WriteString("POST /taskhub.v1.TaskService/WatchTasks HTTP/1.1\r\nHost: " + cfg.authority +
		"\r\nContent-Type: application/connect+" + cfg.codec +
		"\r\nConnect-Protocol-Version: 1\r\nUser-Agent: taskhub-load\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n")
	if w.token != "" {
		req.WriteString("Authorization: Bearer " + w.token + "\r\n")
	}
	req.WriteString("\r\n")
	req.Write(body)
	if _, err := io.WriteString(conn, req.String()); err != nil {
		return err
	}

	br := bufio.NewReaderSize(conn, 16<<10)
	res, err := http.ReadResponse(br, &http.Request{Method: http.MethodPost})
	if err != nil {
		return err
	}
	defer res.Body.Close()
	w.contentType = res.Header.Get("Content-Type")
	if res.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(res.Body, 1<<10))
		return fmt.Errorf("%s: %s", res.Status, b)
	}
	if want := "application/connect+" + cfg.codec; w.contentType != want {
		return fmt.Errorf("the response is %q, not %q", w.contentType, want)
	}
	var buf []byte
	var jp fastjson.Parser
	for {
		b, err := nextEnvelope(res.Body, &buf)
		if err != nil {
			return err
		}
		m, err := decodeMessage(cfg.codec, b, &jp)
		if err != nil {
			return err
		}
		now := time.Now()
		w.receive(m, now)
		if w.stopsReading() {
			// Stop reading: the socket's buffers fill and the server must hold or drop what it
			// has for this watcher.
			time.Sleep(w.spec.slowFor)
			w.stoppedFor = time.Since(now)
		}
	}
}

// nextEnvelope reads the next message of a Connect stream from r into *buf (grown as needed)
// and returns it. The stream's end is returned as its error, and so is a compressed message (no
// request here accepts compression).
func nextEnvelope(r io.Reader, buf *[]byte) ([]byte, error) {
	var head [5]byte
	if _, err := io.ReadFull(r, head[:]); err != nil {
		return nil, err
	}
	size := binary.BigEndian.Uint32(head[1:])
	if size > maxMessage {
		return nil, fmt.Errorf("a message of %d bytes, above the %d allowed", size, maxMessage)
	}
	if cap(*buf) < int(size) {
		*buf = make([]byte, size)
	}
	b := (*buf)[:size]
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, err
	}
	switch {
	case head[0]&flagEndStream != 0:
		return nil, endStreamError(b)
	case head[0]&flagCompressed != 0:
		return nil, errors.New("a compressed message, though the request did not accept compression")
	}
	return b, nil
}

// decodeMessage decodes a WatchTasksResponse. A JSON progress event, nearly every message of a
// load, and a created or started one, is read into just the fields the watcher checks, with
// fastjson: protojson takes 11 µs a message and encoding/json 7 µs, which at 100,000
// deliveries a second would be the tool's whole core. Every other JSON message is read whole, with protojson. jp is the watcher's own.
func decodeMessage(codec string, b []byte, jp *fastjson.Parser) (*taskhubv1.WatchTasksResponse, error) {
	m := &taskhubv1.WatchTasksResponse{}
	if codec == codecProto {
		if err := proto.Unmarshal(b, m); err != nil {
			return nil, fmt.Errorf("decoding a message: %w", err)
		}
		return m, nil
	}
	if e, ok := leanEvent(b, jp); ok {
		m.Message = &taskhubv1.WatchTasksResponse_Event{Event: e}
		return m, nil
	}
	if err := protojson.Unmarshal(b, m); err != nil {
		return nil, fmt.Errorf("decoding a message: %w", err)
	}
	return m, nil
}

// leanEvent reads a progress, created or started event in Connect's JSON into the fields the
// watcher checks: the event's kind, seq and time, and its task's id, mode, prompt, state,
// progress and seq. It reports false for any other message, or one it cannot read so. (Read
// whole with protojson, the created and started events, a fifth of the messages at 5000
// watchers of 10 tasks, were a sixth of the tool's CPU.)
func leanEvent(b []byte, jp *fastjson.Parser) (*taskhubv1.TaskEvent, bool) {
	v, err := jp.ParseBytes(b)
	if err != nil {
		return nil, false
	}
	e := v.Get("event")
	if e == nil {
		return nil, false
	}
	// Not the completion, whose whole task the watcher compares with what CompleteTask
	// returned, nor kinds the load does not cause.
	kind := taskhubv1.EventKind(taskhubv1.EventKind_value[string(e.GetStringBytes("kind"))])
	switch kind {
	case taskhubv1.EventKind_EVENT_KIND_PROGRESS, taskhubv1.EventKind_EVENT_KIND_CREATED, taskhubv1.EventKind_EVENT_KIND_STARTED:
	default:
		return nil, false
	}
	t := e.Get("task")
	at, err1 := time.Parse(time.RFC3339Nano, string(e.GetStringBytes("time")))
	seq, err2 := strconv.ParseUint(string(e.GetStringBytes("seq")), 10, 64)
	tseq, err3 := strconv.ParseUint(string(t.GetStringBytes("seq")), 10, 64)
	state, ok := taskhubv1.TaskState_value[string(t.GetStringBytes("state"))]
	if t == nil || err1 != nil || err2 != nil || err3 != nil || !ok {
		return nil, false
	}
	return &taskhubv1.TaskEvent{
		Kind: kind, Seq: seq, Time: timestamppb.New(at),
		Task: &taskhubv1.Task{
			Id: string(t.GetStringBytes("id")), Mode: string(t.GetStringBytes("mode")), Prompt: string(t.GetStringBytes("prompt")),
			State: taskhubv1.TaskState(state), Progress: t.GetFloat64("progress"), Seq: tseq,
		},
	}, true
}
