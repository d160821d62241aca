package server_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"

	"github.com/taskhub/taskhub/server"
)

// postJSON posts body as application/json to a procedure, as curl would, and returns the status
// and the response body.
func postJSON(t *testing.T, b *bundle, procedure, body string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, b.srv.URL()+procedure, strings.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	res, err := b.http.Do(req)
	require.NoError(t, err)
	defer res.Body.Close()
	data, err := io.ReadAll(res.Body)
	require.NoError(t, err)
	if res.StatusCode == http.StatusOK {
		require.Equal(t, "application/json", res.Header.Get("Content-Type"))
	}
	return res.StatusCode, data
}

// callJSON posts req as JSON and decodes a 200 response into res.
func callJSON(t *testing.T, b *bundle, procedure string, req, res proto.Message) {
	t.Helper()
	body, err := protojson.Marshal(req)
	require.NoError(t, err)
	status, data := postJSON(t, b, procedure, string(body))
	require.Equal(t, http.StatusOK, status, "body: %s", data)
	require.NoError(t, protojson.Unmarshal(data, res))
}

// connectError is the JSON body of a Connect unary error.
type connectError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func TestJSON_CreateTaskAsCurl(t *testing.T) {
	t.Parallel()
	b := setup(t, server.Config{DemoWorkers: 1})

	status, data := postJSON(t, b, "/taskhub.v1.TaskService/CreateTask",
		`{"prompt":"a lighthouse at dawn","mode":"demo","params":{"steps":"3","step_ms":"10"}}`)
	require.Equal(t, http.StatusOK, status, "body: %s", data)
	var created taskhubv1.CreateTaskResponse
	require.NoError(t, protojson.Unmarshal(data, &created))
	task := created.Task
	require.NotEmpty(t, task.Id)
	require.Equal(t, "local", task.Owner)
	require.Equal(t, "a lighthouse at dawn", task.Prompt)
	require.Equal(t, "demo", task.Mode)
	require.Equal(t, map[string]string{"steps": "3", "step_ms": "10"}, task.Params)
	require.Equal(t, taskhubv1.TaskState_TASK_STATE_QUEUED, task.State)
	require.EqualValues(t, 1, task.Attempt)
	require.NotNil(t, task.CreatedAt)
	// protojson spells enums by name and int64s as strings, as curl users see them.
	require.Contains(t, string(data), `"state":"TASK_STATE_QUEUED"`)

	// The demo executor runs it; poll GetTask with a GET, as its idempotency level allows.
	deadline := time.Now().Add(5 * time.Second)
	for {
		q := url.Values{"encoding": {"json"}, "message": {`{"id":"` + task.Id + `"}`}}
		res, err := b.http.Get(b.srv.URL() + "/taskhub.v1.TaskService/GetTask?" + q.Encode())
		require.NoError(t, err)
		data, err := io.ReadAll(res.Body)
		res.Body.Close()
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, res.StatusCode, "body: %s", data)
		var got taskhubv1.GetTaskResponse
		require.NoError(t, protojson.Unmarshal(data, &got))
		if got.Task.State == taskhubv1.TaskState_TASK_STATE_COMPLETED {
			require.EqualValues(t, 100, got.Task.Progress)
			require.True(t, strings.HasPrefix(got.Task.Result, "data:image/svg+xml;base64,"), "result: %.60s", got.Task.Result)
			break
		}
		require.False(t, finished(got.Task), "the task ended %v", got.Task.State)
		require.False(t, time.Now().After(deadline), "the demo task did not complete: %v", got.Task)
		time.Sleep(10 * time.Millisecond)
	}
}

func TestJSON_BadRequests(t *testing.T) {
	t.Parallel()
	b := setup(t, server.Config{})
	createTask(t, b.tasks, "already here", "render")

	cases := []struct {
		name string
		body string
		code string
		msg  string
	}{
		// A typo must not silently create a task in the default mode. Fails today: see the report.
		{"unknown field", `{"prompt":"p","mdoe":"render"}`, "invalid_argument", "mdoe"},
		{"prompt of the wrong type", `{"prompt":5,"mode":"render"}`, "invalid_argument", "prompt"},
		{"params of the wrong type", `{"prompt":"p","mode":"render","params":["steps"]}`, "invalid_argument", "unmarshal"},
		{"param value of the wrong type", `{"prompt":"p","mode":"render","params":{"steps":3}}`, "invalid_argument", "unmarshal"},
		{"not JSON", `{"prompt":`, "invalid_argument", "unmarshal"},
		{"empty prompt", `{"mode":"render"}`, "invalid_argument", "prompt"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := listTasks(t, b.tasks, "")
			status, data := postJSON(t, b, "/taskhub.v1.TaskService/CreateTask", tc.body)
			require.Equal(t, http.StatusBadRequest, status, "body: %s", data)
			var e connectError
			require.NoError(t, json.Unmarshal(data, &e), "body: %s", data)
			require.Equal(t, tc.code, e.Code)
			require.NotEmpty(t, e.Message)
			require.Contains(t, e.Message, tc.msg)
			requireSameTasks(t, before, listTasks(t, b.tasks, ""))
		})
	}

	t.Run("unknown id", func(t *testing.T) {
		status, data := postJSON(t, b, "/taskhub.v1.TaskService/GetTask", `{"id":"01ARZ3NDEKTSV4RRFFQ69G5FAV"}`)
		require.Equal(t, http.StatusNotFound, status, "body: %s", data)
		var e connectError
		require.NoError(t, json.Unmarshal(data, &e))
		require.Equal(t, "not_found", e.Code)
	})
}

// frame is one enveloped message of a Connect streaming response.
type frame struct {
	flags byte
	data  []byte
}

// endStream marks the last frame of a Connect stream: its data is the end-of-stream JSON.
const endStream = 0x02

func readFrame(r io.Reader) (frame, error) {
	var head [5]byte
	if _, err := io.ReadFull(r, head[:]); err != nil {
		return frame{}, err
	}
	f := frame{flags: head[0], data: make([]byte, binary.BigEndian.Uint32(head[1:]))}
	_, err := io.ReadFull(r, f.data)
	return f, err
}

func envelope(msg string) []byte {
	out := make([]byte, 5, 5+len(msg))
	binary.BigEndian.PutUint32(out[1:], uint32(len(msg)))
	return append(out, msg...)
}

// watchJSON opens WatchTasks as a Connect streaming call with JSON over HTTP/1.1.
func watchJSON(t *testing.T, b *bundle, ctx context.Context, msg string) *http.Response {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, b.srv.URL()+"/taskhub.v1.TaskService/WatchTasks", bytes.NewReader(envelope(msg)))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/connect+json")
	req.Header.Set("Connect-Protocol-Version", "1")
	res, err := b.http.Do(req)
	require.NoError(t, err)
	t.Cleanup(func() { res.Body.Close() })
	require.Equal(t, http.StatusOK, res.StatusCode)
	require.Equal(t, "application/connect+json", res.Header.Get("Content-Type"))
	require.Equal(t, "HTTP/1.1", res.Proto)
	return res
}

func TestJSON_WatchTasksStream(t *testing.T) {
	t.Parallel()
	b := setup(t, server.Config{DemoWorkers: 1})
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()

	res := watchJSON(t, b, ctx, `{}`)
	body := bufio.NewReader(res.Body)
	next := func() *taskhubv1.WatchTasksResponse {
		t.Helper()
		for {
			f, err := readFrame(body)
			require.NoError(t, err)
			require.Zero(t, f.flags&endStream, "the stream ended: %s", f.data)
			require.Zero(t, f.flags, "uncompressed data frames only")
			var m taskhubv1.WatchTasksResponse
			require.NoError(t, protojson.Unmarshal(f.data, &m), "frame: %s", f.data)
			if m.GetHeartbeat() == nil {
				return &m
			}
		}
	}

	first := next()
	snap := first.GetSnapshot()
	require.NotNil(t, snap, "the first frame is a snapshot: %v", first)
	require.NotEmpty(t, snap.Epoch)
	require.Empty(t, snap.Tasks)

	var created taskhubv1.CreateTaskResponse
	callJSON(t, b, "/taskhub.v1.TaskService/CreateTask", &taskhubv1.CreateTaskRequest{
		Prompt: "a lighthouse at dawn", Mode: "demo", Params: map[string]string{"steps": "3", "step_ms": "10"},
	}, &created)
	id := created.Task.Id

	var events []*taskhubv1.TaskEvent
	for len(events) == 0 || events[len(events)-1].Kind != taskhubv1.EventKind_EVENT_KIND_COMPLETED {
		m := next()
		e := m.GetEvent()
		require.NotNil(t, e, "after the snapshot only events: %v", m)
		require.Equal(t, id, e.Task.Id)
		events = append(events, e)
	}
	kinds := kindsOf(events)
	// The outbox may coalesce progress events a slow reader has not taken, so there are 1 to 3.
	require.GreaterOrEqual(t, len(kinds), 4, "kinds: %v", kinds)
	require.LessOrEqual(t, len(kinds), 6, "kinds: %v", kinds)
	require.Equal(t, taskhubv1.EventKind_EVENT_KIND_CREATED, kinds[0])
	require.Equal(t, taskhubv1.EventKind_EVENT_KIND_STARTED, kinds[1])
	for i, e := range events[2 : len(events)-1] {
		require.Equal(t, taskhubv1.EventKind_EVENT_KIND_PROGRESS, e.Kind)
		require.Greater(t, e.Task.Progress, float64(0))
		if i > 0 {
			require.Greater(t, e.Task.Progress, events[1+i].Task.Progress)
		}
	}
	require.EqualValues(t, 100, events[len(events)-2].Task.Progress, "the last progress is kept")
	require.Equal(t, "denoising 3/3", events[len(events)-2].Task.Message)
	for i, e := range events {
		require.Greater(t, e.Seq, snap.Seq)
		if i > 0 {
			require.Greater(t, e.Seq, events[i-1].Seq)
		}
	}

	done := events[len(events)-1].Task
	require.Equal(t, taskhubv1.TaskState_TASK_STATE_COMPLETED, done.State)
	require.Equal(t, "demo-1", done.WorkerId)
	const prefix = "data:image/svg+xml;base64,"
	require.True(t, strings.HasPrefix(done.Result, prefix), "result: %.60s", done.Result)
	svg, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(done.Result, prefix))
	require.NoError(t, err)
	require.Contains(t, string(svg), "<svg")
	require.Contains(t, string(svg), "a lighthouse at dawn")
}

func TestJSON_WatchTasksStreamError(t *testing.T) {
	t.Parallel()
	b := setup(t, server.Config{})
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()

	// A malformed request message ends the stream at once with an end-of-stream frame.
	res := watchJSON(t, b, ctx, `{"after_seq":"many"}`)
	f, err := readFrame(res.Body)
	require.NoError(t, err)
	require.Equal(t, byte(endStream), f.flags, "frame: %s", f.data)
	var end struct {
		Error *connectError `json:"error"`
	}
	require.NoError(t, json.Unmarshal(f.data, &end), "frame: %s", f.data)
	require.NotNil(t, end.Error, "frame: %s", f.data)
	require.Equal(t, "invalid_argument", end.Error.Code)
	require.NotEmpty(t, end.Error.Message)
	_, err = readFrame(res.Body)
	require.ErrorIs(t, err, io.EOF)
}

func TestJSON_DemoFailure(t *testing.T) {
	t.Parallel()
	b := setup(t, server.Config{DemoWorkers: 1})

	var created taskhubv1.CreateTaskResponse
	callJSON(t, b, "/taskhub.v1.TaskService/CreateTask", &taskhubv1.CreateTaskRequest{
		Prompt: "please fail at this", Params: map[string]string{"steps": "3", "step_ms": "10"},
	}, &created)
	require.Equal(t, "demo", created.Task.Mode, "the default mode")

	deadline := time.Now().Add(5 * time.Second)
	var got taskhubv1.GetTaskResponse
	for {
		callJSON(t, b, "/taskhub.v1.TaskService/GetTask", &taskhubv1.GetTaskRequest{Id: created.Task.Id}, &got)
		if finished(got.Task) {
			break
		}
		require.False(t, time.Now().After(deadline), "the demo task did not finish: %v", got.Task)
		time.Sleep(10 * time.Millisecond)
	}
	require.Equal(t, taskhubv1.TaskState_TASK_STATE_FAILED, got.Task.State)
	require.NotEmpty(t, got.Task.Error)
	require.Contains(t, got.Task.Error, "fail")
	require.Empty(t, got.Task.Result)
	require.NotNil(t, got.Task.FinishedAt)
}
