package main

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protojson"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"
	"github.com/taskhub/taskhub/gen/taskhub/v1/taskhubv1connect"
)

// TestWebhook_DeliveredAfterKillNine: a task completes while its webhook's receiver is down;
// the server, having tried and failed, is killed with SIGKILL. Restarted on the same data, it
// delivers the completion (signed, the same webhook-id) once the receiver is back.
func TestWebhook_DeliveredAfterKillNine(t *testing.T) {
	t.Parallel()
	const secret = "whsec_" + "C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
	verifier, err := standardwebhooks.NewWebhook(secret)
	require.NoError(t, err)
	var up atomic.Bool
	var mu sync.Mutex
	var attempts []string // webhook-id and the answer, in order
	var delivered *taskhubv1.TaskEvent
	rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if err := verifier.Verify(body, r.Header); err != nil {
			t.Errorf("signature: %v", err)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		mu.Lock()
		defer mu.Unlock()
		code := http.StatusServiceUnavailable
		if up.Load() {
			code = http.StatusOK
			delivered = &taskhubv1.TaskEvent{}
			if err := protojson.Unmarshal(body, delivered); err != nil {
				t.Errorf("not a TaskEvent: %v", err)
			}
		}
		attempts = append(attempts, fmt.Sprintf("%s %d", r.Header.Get("webhook-id"), code))
		w.WriteHeader(code)
	}))
	t.Cleanup(rcv.Close)
	u, _ := url.Parse(rcv.URL)
	secretFile := filepath.Join(t.TempDir(), "secret")
	require.NoError(t, os.WriteFile(secretFile, []byte(secret), 0o600))

	c := startChild(t, t.TempDir(), fmt.Sprintf("--webhook-allow %s --webhook-secret-file %s", u.Host, secretFile))
	hc := &http.Client{Timeout: 10 * time.Second}
	tasks := taskhubv1connect.NewTaskServiceClient(hc, c.url)
	work := taskhubv1connect.NewWorkerServiceClient(hc, c.url)
	ctx := t.Context()
	res, err := tasks.CreateTask(ctx, connect.NewRequest(&taskhubv1.CreateTaskRequest{Prompt: "hooked", Mode: "render",
		Webhook: &taskhubv1.Webhook{Url: rcv.URL + "/done"}}))
	require.NoError(t, err)
	id := res.Msg.Task.Id
	claim, err := work.ClaimTask(ctx, connect.NewRequest(&taskhubv1.ClaimTaskRequest{WorkerId: "w", Modes: []string{"render"}, WaitSeconds: 5}))
	require.NoError(t, err)
	require.Equal(t, id, claim.Msg.Task.GetId())
	_, err = work.CompleteTask(ctx, connect.NewRequest(&taskhubv1.CompleteTaskRequest{TaskId: id, LeaseToken: claim.Msg.LeaseToken, Result: "made"}))
	require.NoError(t, err)

	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(attempts) > 0
	}, 20*time.Second, 10*time.Millisecond, "the server tries to deliver the completion")
	c.kill()
	up.Store(true)
	c.start()

	require.Eventually(t, func() bool {
		g, err := tasks.GetTask(ctx, connect.NewRequest(&taskhubv1.GetTaskRequest{Id: id}))
		return err == nil && g.Msg.Task.WebhookStatus.GetDone()
	}, 30*time.Second, 20*time.Millisecond, "the restarted server delivers it")
	mu.Lock()
	defer mu.Unlock()
	require.NotNil(t, delivered)
	require.Equal(t, taskhubv1.EventKind_EVENT_KIND_COMPLETED, delivered.Kind)
	require.Equal(t, "made", delivered.Task.Result)
	want := fmt.Sprintf("%s.%d", id, delivered.Seq)
	for i, a := range attempts {
		code := http.StatusServiceUnavailable
		if i == len(attempts)-1 {
			code = http.StatusOK
		}
		require.Equal(t, fmt.Sprintf("%s %d", want, code), a, "every attempt is of the one event, the last one answered OK")
	}
}

// TestWebhook_NodeLoss: in a 3-node cluster, the node delivering a task's webhook is killed
// while its receiver fails; another node takes the deliveries over from the stored cursor and
// delivers the completion once the receiver is back.
func TestWebhook_NodeLoss(t *testing.T) {
	t.Parallel()
	const secret = "whsec_" + "C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
	verifier, err := standardwebhooks.NewWebhook(secret)
	require.NoError(t, err)
	var up atomic.Bool
	var tries, oks atomic.Int32
	rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if err := verifier.Verify(body, r.Header); err != nil {
			t.Errorf("signature: %v", err)
		}
		tries.Add(1)
		if !up.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		oks.Add(1)
	}))
	t.Cleanup(rcv.Close)
	u, _ := url.Parse(rcv.URL)
	secretFile := filepath.Join(t.TempDir(), "secret")
	require.NoError(t, os.WriteFile(secretFile, []byte(secret), 0o600))
	nodes := startCluster(t, 3, fmt.Sprintf("--webhook-allow %s --webhook-secret-file %s", u.Host, secretFile))

	hc := &http.Client{Timeout: 10 * time.Second}
	ctx := t.Context()
	tasks := taskhubv1connect.NewTaskServiceClient(hc, nodes[0].url)
	work := taskhubv1connect.NewWorkerServiceClient(hc, nodes[1].url)
	res, err := tasks.CreateTask(ctx, connect.NewRequest(&taskhubv1.CreateTaskRequest{Prompt: "hooked", Mode: "render",
		Webhook: &taskhubv1.Webhook{Url: rcv.URL}}))
	require.NoError(t, err)
	id := res.Msg.Task.Id
	claim, err := work.ClaimTask(ctx, connect.NewRequest(&taskhubv1.ClaimTaskRequest{WorkerId: "w", Modes: []string{"render"}, WaitSeconds: 5}))
	require.NoError(t, err)
	_, err = work.CompleteTask(ctx, connect.NewRequest(&taskhubv1.CompleteTaskRequest{TaskId: id, LeaseToken: claim.Msg.LeaseToken, Result: "made"}))
	require.NoError(t, err)

	// The node whose metrics count failed deliveries is the one delivering.
	failedOn := func(c *child) bool {
		res, err := hc.Get(c.url + "/metrics")
		if err != nil {
			return false
		}
		defer res.Body.Close()
		body, _ := io.ReadAll(res.Body)
		return regexp.MustCompile(`(?m)^taskhub_webhook_deliveries_total\{result="failed"\} [1-9]`).Match(body)
	}
	delivering := -1
	require.Eventually(t, func() bool {
		for i, c := range nodes {
			if failedOn(c) {
				delivering = i
				return true
			}
		}
		return false
	}, 30*time.Second, 50*time.Millisecond, "a node tries to deliver")
	nodes[delivering].kill()
	up.Store(true)
	killed := time.Now()

	other := nodes[(delivering+1)%3]
	tasks = taskhubv1connect.NewTaskServiceClient(hc, other.url)
	require.Eventually(t, func() bool {
		g, err := tasks.GetTask(ctx, connect.NewRequest(&taskhubv1.GetTaskRequest{Id: id}))
		return err == nil && g.Msg.Task.WebhookStatus.GetDone()
	}, 60*time.Second, 100*time.Millisecond, "another node delivers it")
	require.Equal(t, int32(1), oks.Load(), "delivered once")
	t.Logf("%d attempts before and after node %d was killed; delivered %v after", tries.Load(), delivering+1, time.Since(killed).Round(time.Second))
}
