package rpc

import (
	"context"
	"net/http"
	"testing"

	"google.golang.org/protobuf/proto"

	storagev1 "github.com/taskhub/taskhub/gen/taskhub/storage/v1"
	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"

	"github.com/taskhub/taskhub/eventlog"
)

// FuzzStrictJSON decodes any body into every request message as the JSON codec does: it must
// return an error or a message that encodes and decodes back to itself, and never panic.
func FuzzStrictJSON(f *testing.F) {
	f.Add([]byte(`{"prompt":"a red fox","mode":"demo","params":{"steps":"3"}}`))
	f.Add([]byte(`{"mdoe":"demo"}`))
	f.Add([]byte(`{"states":["TASK_STATE_QUEUED",2],"pageSize":10}`))
	f.Add([]byte(`{"taskId":"x","leaseToken":"y","progress":"NaN"}`))
	f.Add([]byte(`{"afterSeq":"18446744073709551615","epoch":"TASKS.1"}`))
	f.Add([]byte(``))
	f.Add([]byte(`[`))
	codec := strictJSON{"json"}
	f.Fuzz(func(t *testing.T, body []byte) {
		for _, m := range []proto.Message{
			&taskhubv1.CreateTaskRequest{}, &taskhubv1.GetTaskRequest{}, &taskhubv1.ListTasksRequest{},
			&taskhubv1.CancelTaskRequest{}, &taskhubv1.WatchTasksRequest{}, &taskhubv1.ClaimTaskRequest{},
			&taskhubv1.ReportProgressRequest{}, &taskhubv1.RenewLeaseRequest{}, &taskhubv1.CompleteTaskRequest{},
			&taskhubv1.FailTaskRequest{},
		} {
			if err := codec.Unmarshal(body, m); err != nil {
				continue
			}
			out, err := codec.Marshal(m)
			if err != nil {
				t.Fatalf("%T decoded from %q but does not encode: %v", m, body, err)
			}
			again := m.ProtoReflect().New().Interface()
			if err := codec.Unmarshal(out, again); err != nil || !proto.Equal(m, again) {
				t.Fatalf("%T: %q -> %q does not decode back: %v", m, body, out, err)
			}
		}
	})
}

// FuzzAuthorization: only the exact bearer token of a principal names it; anything else is an
// error, never another principal.
func FuzzAuthorization(f *testing.F) {
	a, err := NewAuth(AuthFile{
		Users:   []Principal{{Name: "alice", Token: "alice-token-0123456789"}},
		Workers: []Principal{{Name: "gpu-1", Token: "worker-token-0123456789"}},
	}, nil)
	if err != nil {
		f.Fatal(err)
	}
	f.Add("Bearer alice-token-0123456789")
	f.Add("Bearer worker-token-0123456789")
	f.Add("bearer alice-token-0123456789")
	f.Add("Bearer ")
	f.Add("Basic YWxpY2U6eA==")
	f.Fuzz(func(t *testing.T, value string) {
		h := http.Header{}
		h.Set("Authorization", value)
		if user, err := a.User(&http.Request{Method: http.MethodPost, Header: h}); err == nil && (user != "alice" || h.Get("Authorization") != "Bearer alice-token-0123456789") {
			t.Fatalf("%q authenticated as user %q", value, user)
		}
		if worker, err := a.Worker(h); err == nil && (worker != "gpu-1" || h.Get("Authorization") != "Bearer worker-token-0123456789") {
			t.Fatalf("%q authenticated as worker %q", value, worker)
		}
	})
}

// memSessions is a Sessions in memory, for tests.
type memSessions map[string]*storagev1.Session

func (m memSessions) PutSession(_ context.Context, cookie string, s *storagev1.Session) error {
	m[cookie] = s
	return nil
}

func (m memSessions) Session(_ context.Context, cookie string) (*storagev1.Session, error) {
	if s, ok := m[cookie]; ok {
		return s, nil
	}
	return nil, eventlog.ErrNotFound
}

func (m memSessions) DeleteSession(_ context.Context, cookie string) error {
	delete(m, cookie)
	return nil
}

// FuzzSessionCookie: whatever a Cookie header holds, it never crashes the server, and only the
// exact cookie of a live session names its user.
func FuzzSessionCookie(f *testing.F) {
	sessions := memSessions{}
	a, err := NewAuth(AuthFile{Users: []Principal{{Name: "alice", Token: "alice-token-0123456789"}}}, sessions)
	if err != nil {
		f.Fatal(err)
	}
	c, err := a.SignIn(f.Context(), "alice-token-0123456789", false)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(SessionCookie + "=" + c.Value)
	f.Add("other=1; " + SessionCookie + "=" + c.Value)
	f.Add("x" + SessionCookie + "=1")
	f.Add(SessionCookie + `=a"b`)
	f.Add(SessionCookie + "=")
	f.Add(SessionCookie)
	f.Fuzz(func(t *testing.T, header string) {
		h := http.Header{}
		h.Set("Cookie", header)
		user, err := a.User(&http.Request{Method: http.MethodPost, Header: h})
		if err == nil {
			got, _ := (&http.Request{Header: h}).Cookie(SessionCookie)
			if user != "alice" || got == nil || got.Value != c.Value {
				t.Fatalf("%q authenticated as user %q", header, user)
			}
		}
	})
}
