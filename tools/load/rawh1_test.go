package main

import (
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/valyala/fastjson"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"
)

func progressMessage() *taskhubv1.WatchTasksResponse {
	at := timestamppb.New(time.Date(2026, 12, 6, 14, 0, 0, 123456789, time.UTC))
	return &taskhubv1.WatchTasksResponse{Message: &taskhubv1.WatchTasksResponse_Event{Event: &taskhubv1.TaskEvent{
		Kind: taskhubv1.EventKind_EVENT_KIND_PROGRESS, Seq: 1234567, Time: at,
		Task: &taskhubv1.Task{
			Id: "01JEXAMPLE0000000000000000", Owner: "local", Mode: "load", Prompt: "load-ab12-7",
			State: taskhubv1.TaskState_TASK_STATE_RUNNING, Progress: 42.5, Message: "step 17",
			Seq: 1234567, CreatedAt: at, UpdatedAt: at, StartedAt: at, ProgressedAt: at, WorkerId: "taskhub-load",
		},
	}}}
}

// TestDecodeMessage: a JSON progress, created or started event read into the fields the watcher
// checks says what protojson says of them; any other message is read whole.
func TestDecodeMessage(t *testing.T) {
	var jp fastjson.Parser
	full := progressMessage()
	for _, k := range []struct {
		kind  taskhubv1.EventKind
		state taskhubv1.TaskState
	}{
		{taskhubv1.EventKind_EVENT_KIND_PROGRESS, taskhubv1.TaskState_TASK_STATE_RUNNING},
		{taskhubv1.EventKind_EVENT_KIND_CREATED, taskhubv1.TaskState_TASK_STATE_QUEUED},
		{taskhubv1.EventKind_EVENT_KIND_STARTED, taskhubv1.TaskState_TASK_STATE_RUNNING},
	} {
		m := proto.CloneOf(full)
		m.GetEvent().Kind, m.GetEvent().Task.State = k.kind, k.state
		b, err := protojson.Marshal(m)
		require.NoError(t, err)
		got, err := decodeMessage(codecJSON, b, &jp)
		require.NoError(t, err)
		e, want := got.GetEvent(), m.GetEvent()
		require.Equal(t, want.Kind, e.Kind)
		require.Equal(t, want.Seq, e.Seq)
		require.True(t, want.Time.AsTime().Equal(e.Time.AsTime()))
		for _, f := range []struct{ got, want any }{
			{e.Task.Id, want.Task.Id}, {e.Task.Mode, want.Task.Mode}, {e.Task.Prompt, want.Task.Prompt},
			{e.Task.State, want.Task.State}, {e.Task.Progress, want.Task.Progress}, {e.Task.Seq, want.Task.Seq},
		} {
			require.Equal(t, f.want, f.got, k.kind)
		}
		require.Empty(t, e.Task.WorkerId, "read lean: only the fields the watcher checks")
	}

	completed := proto.CloneOf(full)
	completed.GetEvent().Kind = taskhubv1.EventKind_EVENT_KIND_COMPLETED
	completed.GetEvent().Task.State = taskhubv1.TaskState_TASK_STATE_COMPLETED
	b, err := protojson.Marshal(completed)
	require.NoError(t, err)
	got, err := decodeMessage(codecJSON, b, &jp)
	require.NoError(t, err)
	require.True(t, proto.Equal(completed, got), "a completion is read whole: the final task is compared")

	b, err = proto.Marshal(full)
	require.NoError(t, err)
	got, err = decodeMessage(codecProto, b, &jp)
	require.NoError(t, err)
	require.True(t, proto.Equal(full, got))

	_, err = decodeMessage(codecJSON, []byte(`{"event":`), &jp)
	require.Error(t, err)
}

func BenchmarkDecodeMessage(b *testing.B) {
	js, _ := protojson.Marshal(progressMessage())
	b.Run("lean", func(b *testing.B) {
		var jp fastjson.Parser
		for b.Loop() {
			if _, err := decodeMessage(codecJSON, js, &jp); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("protojson", func(b *testing.B) {
		for b.Loop() {
			if err := protojson.Unmarshal(js, &taskhubv1.WatchTasksResponse{}); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// TestPrompt: a padded prompt has the size asked, and still tells which task it is.
func TestPrompt(t *testing.T) {
	const prefix = "taskhub-load 0000abcd task "
	for _, size := range []int{0, 10, len(prefix) + 2, 1000, 4096} {
		for _, j := range []int{0, 7, 12345} {
			p := prompt(prefix, j, size)
			if size > len(prefix)+len(strconv.Itoa(j)) && len(p) != size {
				t.Errorf("prompt(%d, %d) is %d bytes", j, size, len(p))
			}
			got, ok := taskIndex(&taskhubv1.Task{Mode: "load", Prompt: p}, "load", prefix, 20000)
			if !ok || got != j {
				t.Errorf("taskIndex of prompt(%d, %d) = %d, %v", j, size, got, ok)
			}
		}
	}
}
