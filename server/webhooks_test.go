package server_test

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protojson"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"

	"github.com/taskhub/taskhub/server"
	"github.com/taskhub/taskhub/webhook"
)

const testWebhookSecret = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

// delivery is one POST a receiver got.
type delivery struct {
	id     string // webhook-id
	event  *taskhubv1.TaskEvent
	answer int
}

// receiver is a webhook receiver on loopback that verifies each delivery's signature with the
// Standard Webhooks library, answers what answer says for the nth attempt of a webhook-id
// (from 1), and records what it got.
type receiver struct {
	t      *testing.T
	srv    *httptest.Server
	answer func(attempt int) int

	mu    sync.Mutex
	got   []delivery
	tries map[string]int
}

func newReceiver(t *testing.T, answer func(attempt int) int) *receiver {
	r := &receiver{t: t, answer: answer, tries: map[string]int{}}
	verifier, err := standardwebhooks.NewWebhook(testWebhookSecret)
	require.NoError(t, err)
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, err := io.ReadAll(req.Body)
		if err != nil {
			return
		}
		if err := verifier.Verify(body, req.Header); err != nil {
			t.Errorf("a delivery's signature does not verify: %v", err)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		ev := &taskhubv1.TaskEvent{}
		if err := protojson.Unmarshal(body, ev); err != nil {
			t.Errorf("a delivery is not a TaskEvent: %v: %s", err, body)
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		r.mu.Lock()
		id := req.Header.Get("webhook-id")
		r.tries[id]++
		code := r.answer(r.tries[id])
		r.got = append(r.got, delivery{id: id, event: ev, answer: code})
		r.mu.Unlock()
		w.WriteHeader(code)
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *receiver) host() string {
	u, _ := url.Parse(r.srv.URL)
	return u.Host
}

func (r *receiver) deliveries() []delivery {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]delivery(nil), r.got...)
}

func webhookSecretFile(t *testing.T) string {
	p := filepath.Join(t.TempDir(), "webhook-secret")
	require.NoError(t, os.WriteFile(p, []byte(testWebhookSecret+"\n"), 0o600))
	return p
}

func always(code int) func(int) int { return func(int) int { return code } }

// runTask claims the task of mode, reports progress steps, and completes it with result.
func runTask(t *testing.T, b *bundle, mode string, steps int, result string) {
	t.Helper()
	ctx := t.Context()
	claim := claimTask(t, b.work, "w1", mode)
	for i := 1; i <= steps; i++ {
		_, err := b.work.ReportProgress(ctx, connect.NewRequest(&taskhubv1.ReportProgressRequest{
			TaskId: claim.Task.Id, LeaseToken: claim.LeaseToken, Progress: float64(i * 100 / (steps + 1))}))
		require.NoError(t, err)
	}
	_, err := b.work.CompleteTask(ctx, connect.NewRequest(&taskhubv1.CompleteTaskRequest{TaskId: claim.Task.Id, LeaseToken: claim.LeaseToken, Result: result}))
	require.NoError(t, err)
}

// TestWebhooks_SignedInOrder: a task's webhook gets the kinds of event it asked for, each signed
// (verified by the Standard Webhooks library), in seq order, the progress reports in between
// thinned to one per interval; the task then shows its deliveries done.
func TestWebhooks_SignedInOrder(t *testing.T) {
	t.Parallel()
	rcv := newReceiver(t, always(http.StatusNoContent))
	b := setup(t, server.Config{WebhookSecretFile: webhookSecretFile(t), Webhooks: webhook.Config{Allow: []string{rcv.host()}}})
	ctx := t.Context()

	res, err := b.tasks.CreateTask(ctx, connect.NewRequest(&taskhubv1.CreateTaskRequest{Prompt: "hooked", Mode: "render",
		Webhook: &taskhubv1.Webhook{Url: rcv.srv.URL + "/hooks/taskhub", ProgressIntervalSeconds: 60,
			Events: []taskhubv1.EventKind{taskhubv1.EventKind_EVENT_KIND_STARTED, taskhubv1.EventKind_EVENT_KIND_PROGRESS, taskhubv1.EventKind_EVENT_KIND_COMPLETED}}}))
	require.NoError(t, err)
	id := res.Msg.Task.Id
	runTask(t, b, "render", 5, "done")

	var task *taskhubv1.Task
	require.Eventually(t, func() bool {
		task = getTask(t, b.tasks, id, "")
		return task.WebhookStatus.GetDone()
	}, 20*time.Second, 20*time.Millisecond, "the task's deliveries end")
	got := rcv.deliveries()
	var kinds []taskhubv1.EventKind
	for i, d := range got {
		kinds = append(kinds, d.event.Kind)
		require.Equal(t, id, d.event.Task.Id)
		if i > 0 {
			require.Greater(t, d.event.Seq, got[i-1].event.Seq, "in seq order")
		}
	}
	// The first progress report goes; the next four come within the interval, each with a
	// later event stored, so they are skipped.
	require.Equal(t, []taskhubv1.EventKind{taskhubv1.EventKind_EVENT_KIND_STARTED, taskhubv1.EventKind_EVENT_KIND_PROGRESS,
		taskhubv1.EventKind_EVENT_KIND_COMPLETED}, kinds)
	last := got[len(got)-1].event
	require.Equal(t, "done", last.Task.Result)
	require.Equal(t, task.Seq, last.Seq)
	require.Equal(t, last.Seq, task.WebhookStatus.DeliveredSeq)
	require.Zero(t, task.WebhookStatus.FailedAttempts)
	require.False(t, task.WebhookStatus.GaveUp)
}

// TestWebhooks_RetriedInOrder: a receiver that fails each event twice gets it a third time, and
// the next event only after that: at least once, in order. While it fails, the task shows it.
func TestWebhooks_RetriedInOrder(t *testing.T) {
	t.Parallel()
	rcv := newReceiver(t, func(attempt int) int {
		if attempt <= 2 {
			return http.StatusServiceUnavailable
		}
		return http.StatusOK
	})
	b := setup(t, server.Config{WebhookSecretFile: webhookSecretFile(t),
		Webhooks: webhook.Config{Allow: []string{rcv.host()}, RetryMin: 300 * time.Millisecond, RetryMax: 300 * time.Millisecond}})
	ctx := t.Context()
	res, err := b.tasks.CreateTask(ctx, connect.NewRequest(&taskhubv1.CreateTaskRequest{Prompt: "hooked", Mode: "render",
		Webhook: &taskhubv1.Webhook{Url: rcv.srv.URL, Events: []taskhubv1.EventKind{taskhubv1.EventKind_EVENT_KIND_CREATED, taskhubv1.EventKind_EVENT_KIND_COMPLETED}}}))
	require.NoError(t, err)
	id := res.Msg.Task.Id
	require.Eventually(t, func() bool {
		st := getTask(t, b.tasks, id, "").WebhookStatus
		if st.GetFailedAttempts() > 0 {
			require.Contains(t, st.LastError, "503")
			require.NotNil(t, st.FailingSince)
			return true
		}
		return false
	}, 20*time.Second, 10*time.Millisecond, "the task shows its failing deliveries")
	runTask(t, b, "render", 0, "ok")
	require.Eventually(t, func() bool { return getTask(t, b.tasks, id, "").WebhookStatus.GetDone() },
		20*time.Second, 20*time.Millisecond)

	var seen []string
	for _, d := range rcv.deliveries() {
		seen = append(seen, d.event.Kind.String()+"/"+http.StatusText(d.answer))
	}
	unavailable, ok := "/"+http.StatusText(http.StatusServiceUnavailable), "/"+http.StatusText(http.StatusOK)
	created, completed := taskhubv1.EventKind_EVENT_KIND_CREATED.String(), taskhubv1.EventKind_EVENT_KIND_COMPLETED.String()
	require.Equal(t, []string{created + unavailable, created + unavailable, created + ok,
		completed + unavailable, completed + unavailable, completed + ok}, seen)
	st := getTask(t, b.tasks, id, "").WebhookStatus
	require.Zero(t, st.FailedAttempts)
	require.Empty(t, st.LastError)
}

// TestWebhooks_Refused: without an allow-list, or to a host it does not name, or asking for
// an event that is never sent, a create is refused as invalid and makes nothing.
func TestWebhooks_Refused(t *testing.T) {
	t.Parallel()
	rcv := newReceiver(t, always(http.StatusOK))
	off := setup(t, server.Config{})
	on := setup(t, server.Config{WebhookSecretFile: webhookSecretFile(t), Webhooks: webhook.Config{Allow: []string{rcv.host()}}})
	ctx := t.Context()
	create := func(b *bundle, w *taskhubv1.Webhook) error {
		_, err := b.tasks.CreateTask(ctx, connect.NewRequest(&taskhubv1.CreateTaskRequest{Prompt: "p", Mode: "render", Webhook: w}))
		return err
	}
	requireCode(t, create(off, &taskhubv1.Webhook{Url: rcv.srv.URL}), connect.CodeInvalidArgument, "not enabled", "--webhook-allow")
	requireCode(t, create(on, &taskhubv1.Webhook{Url: "http://169.254.169.254/latest/meta-data"}), connect.CodeInvalidArgument, "169.254.169.254:80", "--webhook-allow")
	_, port, err := net.SplitHostPort(rcv.host())
	require.NoError(t, err)
	requireCode(t, create(on, &taskhubv1.Webhook{Url: "http://localhost:" + port + "/"}), connect.CodeInvalidArgument, "--webhook-allow")
	requireCode(t, create(on, &taskhubv1.Webhook{Url: "file:///etc/passwd"}), connect.CodeInvalidArgument, "http or https")
	requireCode(t, create(on, &taskhubv1.Webhook{Url: "http://user:pw@" + rcv.host() + "/"}), connect.CodeInvalidArgument, "user info")
	requireCode(t, create(on, &taskhubv1.Webhook{Url: rcv.srv.URL, Events: []taskhubv1.EventKind{taskhubv1.EventKind_EVENT_KIND_LEASE_RENEWED}}), connect.CodeInvalidArgument, "cannot be sent")
	requireCode(t, create(on, &taskhubv1.Webhook{Url: rcv.srv.URL, ProgressIntervalSeconds: 7200}), connect.CodeInvalidArgument, "progress_interval_seconds")
	require.Empty(t, listTasks(t, off.tasks, ""))
	require.Empty(t, listTasks(t, on.tasks, ""))

	_, err = server.Open(ctx, server.Config{Addr: "127.0.0.1:0", DataDir: t.TempDir(), Webhooks: webhook.Config{Allow: []string{rcv.host()}}})
	require.ErrorContains(t, err, "--webhook-secret-file")
	bad := filepath.Join(t.TempDir(), "secret")
	require.NoError(t, os.WriteFile(bad, []byte("not base64!"), 0o600))
	_, err = server.Open(ctx, server.Config{Addr: "127.0.0.1:0", DataDir: t.TempDir(), WebhookSecretFile: bad, Webhooks: webhook.Config{Allow: []string{rcv.host()}}})
	require.ErrorContains(t, err, "whsec_")
}

// TestWebhooks_NoRedirects: a receiver that redirects to a host the allow-list does not name
// is not followed there; the delivery fails, and once failing longer than the give-up time
// the task's deliveries stop, the task shows why, and the metric counts it.
func TestWebhooks_NoRedirects(t *testing.T) {
	t.Parallel()
	var hits atomic.Int32
	internal := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { hits.Add(1) }))
	t.Cleanup(internal.Close)
	redirector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, internal.URL+"/admin", http.StatusTemporaryRedirect)
	}))
	t.Cleanup(redirector.Close)
	u, _ := url.Parse(redirector.URL)
	b := setup(t, server.Config{WebhookSecretFile: webhookSecretFile(t), Webhooks: webhook.Config{Allow: []string{u.Host},
		RetryMin: 50 * time.Millisecond, RetryMax: 50 * time.Millisecond, GiveUpAfter: 500 * time.Millisecond}})
	res, err := b.tasks.CreateTask(t.Context(), connect.NewRequest(&taskhubv1.CreateTaskRequest{Prompt: "p", Mode: "render",
		Webhook: &taskhubv1.Webhook{Url: redirector.URL, Events: []taskhubv1.EventKind{taskhubv1.EventKind_EVENT_KIND_CREATED}}}))
	require.NoError(t, err)
	var st *taskhubv1.WebhookStatus
	require.Eventually(t, func() bool {
		st = getTask(t, b.tasks, res.Msg.Task.Id, "").WebhookStatus
		return st.GetGaveUp()
	}, 20*time.Second, 20*time.Millisecond, "deliveries stop after failing for the give-up time")
	require.True(t, st.Done)
	require.Contains(t, st.LastError, "redirect")
	require.GreaterOrEqual(t, st.FailedAttempts, uint32(2))
	require.Zero(t, hits.Load(), "the redirect was not followed")

	metrics := scrape(t, b.srv.URL())
	require.Equal(t, 1.0, metrics[`taskhub_webhook_deliveries_total{result="gave_up"}`])
	require.GreaterOrEqual(t, metrics[`taskhub_webhook_deliveries_total{result="failed"}`], 2.0)
	require.Zero(t, metrics[`taskhub_webhooks_failing`])
}

// scrape reads /metrics of a server without auth: "name" or `name{label="value"}` -> value,
// for counters and gauges with at most one label, and "name_count" for a histogram's count.
func scrape(t *testing.T, base string) map[string]float64 {
	t.Helper()
	res, err := http.Get(base + "/metrics")
	require.NoError(t, err)
	defer res.Body.Close()
	require.Equal(t, http.StatusOK, res.StatusCode)
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(res.Body)
	require.NoError(t, err)
	out := map[string]float64{}
	for name, f := range families {
		for _, m := range f.Metric {
			key := name
			for _, l := range m.Label {
				key = fmt.Sprintf("%s{%s=%q}", name, l.GetName(), l.GetValue())
			}
			switch {
			case m.Counter != nil:
				out[key] = m.Counter.GetValue()
			case m.Gauge != nil:
				out[key] = m.Gauge.GetValue()
			case m.Histogram != nil:
				out[key+"_count"] = float64(m.Histogram.GetSampleCount())
			}
		}
	}
	return out
}

// TestWebhooks_SlowHostWaitsAlone: a receiver that hangs holds at most 8 deliveries at once,
// however many of its tasks wait, and another host's deliveries go on meanwhile.
func TestWebhooks_SlowHostWaitsAlone(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	var mu sync.Mutex
	inFlight, most := 0, 0
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		inFlight++
		most = max(most, inFlight)
		mu.Unlock()
		select {
		case <-release:
		case <-r.Context().Done():
		}
		mu.Lock()
		inFlight--
		mu.Unlock()
	}))
	t.Cleanup(slow.Close)
	t.Cleanup(func() { close(release) })
	fast := newReceiver(t, always(http.StatusOK))
	su, _ := url.Parse(slow.URL)
	b := setup(t, server.Config{WebhookSecretFile: webhookSecretFile(t),
		Webhooks: webhook.Config{Allow: []string{su.Host, fast.host()}, Timeout: time.Minute}})
	ctx := t.Context()
	created := []taskhubv1.EventKind{taskhubv1.EventKind_EVENT_KIND_CREATED}
	for range 70 { // more than all hosts' deliveries in flight together (64)
		_, err := b.tasks.CreateTask(ctx, connect.NewRequest(&taskhubv1.CreateTaskRequest{Prompt: "slow", Mode: "render",
			Webhook: &taskhubv1.Webhook{Url: slow.URL, Events: created}}))
		require.NoError(t, err)
	}
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return inFlight == 8
	}, 20*time.Second, 10*time.Millisecond, "the slow host gets its share")
	res, err := b.tasks.CreateTask(ctx, connect.NewRequest(&taskhubv1.CreateTaskRequest{Prompt: "fast", Mode: "render",
		Webhook: &taskhubv1.Webhook{Url: fast.srv.URL, Events: created}}))
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		d := fast.deliveries()
		return len(d) == 1 && d[0].event.Task.Id == res.Msg.Task.Id
	}, 20*time.Second, 10*time.Millisecond, "the other host is delivered to meanwhile")
	mu.Lock()
	require.Equal(t, 8, most, "never more than 8 at once to one host")
	mu.Unlock()
}
