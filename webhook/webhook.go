// Package webhook checks the webhooks tasks ask for and sends their events: each a POST of the
// event as JSON (the TaskEvent shape of the stream), signed by the Standard Webhooks scheme
// (webhook-id, webhook-timestamp and webhook-signature headers: HMAC-SHA256 with the server's
// secret). It only ever posts to a host and port the server's allow-list names: it follows no
// redirect and uses no proxy, so a user cannot make the server call an address of their choice.
package webhook

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
	"google.golang.org/protobuf/encoding/protojson"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"

	"github.com/taskhub/taskhub"
)

// Limits and defaults of a task's webhook.
const (
	MaxURLBytes             = 2048
	DefaultProgressInterval = 5 * time.Second
	MaxProgressInterval     = time.Hour
)

// MaxPosts bounds the deliveries in flight at once; MaxPostsPerHost those to one host.
const (
	MaxPosts        = 64
	MaxPostsPerHost = 8
)

// Defaults of Config.
const (
	DefaultTimeout     = 10 * time.Second
	DefaultRetryMin    = time.Second
	DefaultRetryMax    = 10 * time.Minute
	DefaultGiveUpAfter = 24 * time.Hour
)

// Config is what a server's webhooks may do. Zero durations take the defaults.
type Config struct {
	// Allow names the hosts webhooks may post to, each HOST (the scheme's default port) or
	// HOST:PORT. A URL whose host and port are not named is refused.
	Allow []string
	// Secret signs every delivery: a Standard Webhooks secret, "whsec_" and base64.
	Secret string
	// Timeout bounds each delivery [10s].
	Timeout time.Duration
	// RetryMin is the wait after a failed delivery; it doubles with each failure, up to
	// RetryMax [1s, 10m], with jitter.
	RetryMin, RetryMax time.Duration
	// GiveUpAfter is how long an event is retried before its task's deliveries stop [24h].
	GiveUpAfter time.Duration
}

// Sender checks webhook specs and delivers events.
type Sender struct {
	cfg    Config
	allow  map[string]bool // host:port
	signer *standardwebhooks.Webhook
	client *http.Client
	posts  chan struct{} // a slot per delivery in flight

	hostsMu sync.Mutex
	hosts   map[string]chan struct{} // host:port -> its slots
}

// New returns a Sender, or an error that says what is wrong with cfg.
func New(cfg Config) (*Sender, error) {
	if len(cfg.Allow) == 0 {
		return nil, fmt.Errorf("webhook: the allow-list names no host")
	}
	signer, err := standardwebhooks.NewWebhook(strings.TrimSpace(cfg.Secret))
	if err != nil {
		return nil, fmt.Errorf("webhook: the secret must be a Standard Webhooks secret (whsec_ and base64): %w", err)
	}
	cfg.Timeout = cmp.Or(cfg.Timeout, DefaultTimeout)
	cfg.RetryMin = cmp.Or(cfg.RetryMin, DefaultRetryMin)
	cfg.RetryMax = max(cmp.Or(cfg.RetryMax, DefaultRetryMax), cfg.RetryMin)
	cfg.GiveUpAfter = cmp.Or(cfg.GiveUpAfter, DefaultGiveUpAfter)
	s := &Sender{cfg: cfg, allow: map[string]bool{}, signer: signer,
		posts: make(chan struct{}, MaxPosts), hosts: map[string]chan struct{}{}}
	for _, a := range cfg.Allow {
		a = strings.ToLower(strings.TrimSpace(a))
		if a == "" || strings.ContainsAny(a, "/@?#") {
			return nil, fmt.Errorf("webhook: allow-list entry %q: want HOST or HOST:PORT", a)
		}
		if _, _, err := net.SplitHostPort(a); err == nil {
			s.allow[a] = true
			continue
		}
		s.allow[net.JoinHostPort(strings.Trim(a, "[]"), "80")] = true
		s.allow[net.JoinHostPort(strings.Trim(a, "[]"), "443")] = true
	}
	s.client = &http.Client{
		Timeout: cfg.Timeout,
		// A redirect could lead anywhere: its answer is the delivery's answer, a failure.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Transport: &http.Transport{
			Proxy:               nil, // never through a proxy the environment names
			MaxIdleConnsPerHost: 16,
			IdleConnTimeout:     90 * time.Second,
			TLSHandshakeTimeout: cfg.Timeout,
		},
	}
	return s, nil
}

// Config returns the sender's configuration, defaults filled in.
func (s *Sender) Config() Config { return s.cfg }

// allowed reports whether a URL may be posted to: http or https, no user info, and a host and
// port the allow-list names; it returns that host:port.
func (s *Sender) allowed(raw string) (string, error) {
	if len(raw) > MaxURLBytes {
		return "", fmt.Errorf("webhook url is %d bytes; at most %d", len(raw), MaxURLBytes)
	}
	u, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("webhook url: %v", err)
	}
	port := u.Port()
	switch u.Scheme {
	case "http":
		port = cmp.Or(port, "80")
	case "https":
		port = cmp.Or(port, "443")
	default:
		return "", fmt.Errorf("webhook url %q: the scheme must be http or https", clip(raw))
	}
	if u.User != nil || u.Hostname() == "" {
		return "", fmt.Errorf("webhook url %q: want http(s)://HOST[:PORT]/PATH without user info", clip(raw))
	}
	host := net.JoinHostPort(strings.ToLower(u.Hostname()), port)
	if !s.allow[host] {
		return "", fmt.Errorf("webhook url %q: host %s is not in this server's --webhook-allow", clip(raw), net.JoinHostPort(u.Hostname(), port))
	}
	return host, nil
}

func clip(s string) string {
	if len(s) > 100 {
		return s[:100] + "…"
	}
	return s
}

// sendable are the kinds of event a webhook may ask for.
var sendable = []taskhubv1.EventKind{
	taskhubv1.EventKind_EVENT_KIND_CREATED, taskhubv1.EventKind_EVENT_KIND_STARTED,
	taskhubv1.EventKind_EVENT_KIND_PROGRESS, taskhubv1.EventKind_EVENT_KIND_COMPLETED,
	taskhubv1.EventKind_EVENT_KIND_FAILED, taskhubv1.EventKind_EVENT_KIND_CANCELLED,
	taskhubv1.EventKind_EVENT_KIND_REQUEUED, taskhubv1.EventKind_EVENT_KIND_STALLED,
}

// Check validates a task's webhook (nil: none) and returns it with its defaults filled in, or
// an Invalid error. A nil Sender (webhooks off) refuses every webhook.
func (s *Sender) Check(w *taskhubv1.Webhook) (*taskhubv1.Webhook, error) {
	if w == nil {
		return nil, nil
	}
	if s == nil {
		return nil, taskhub.Errorf(taskhub.Invalid, "webhooks are not enabled on this server (see --webhook-allow)")
	}
	if _, err := s.allowed(w.Url); err != nil {
		return nil, taskhub.Errorf(taskhub.Invalid, "%v", err)
	}
	out := &taskhubv1.Webhook{Url: w.Url, ProgressIntervalSeconds: w.ProgressIntervalSeconds}
	for _, k := range w.Events {
		if !slices.Contains(sendable, k) {
			return nil, taskhub.Errorf(taskhub.Invalid, "webhook events: %s cannot be sent; choose from CREATED, STARTED, PROGRESS, COMPLETED, FAILED, CANCELLED, REQUEUED, STALLED", k)
		}
		if !slices.Contains(out.Events, k) {
			out.Events = append(out.Events, k)
		}
	}
	if len(out.Events) == 0 {
		out.Events = []taskhubv1.EventKind{taskhubv1.EventKind_EVENT_KIND_COMPLETED,
			taskhubv1.EventKind_EVENT_KIND_FAILED, taskhubv1.EventKind_EVENT_KIND_CANCELLED}
	}
	slices.Sort(out.Events)
	if out.ProgressIntervalSeconds == 0 {
		out.ProgressIntervalSeconds = uint32(DefaultProgressInterval / time.Second)
	}
	if time.Duration(out.ProgressIntervalSeconds)*time.Second > MaxProgressInterval {
		return nil, taskhub.Errorf(taskhub.Invalid, "webhook progress_interval_seconds is %d; at most %d", out.ProgressIntervalSeconds, int(MaxProgressInterval/time.Second))
	}
	return out, nil
}

// Wants reports whether a webhook asks for events of a kind.
func Wants(w *taskhubv1.Webhook, k taskhubv1.EventKind) bool {
	return slices.Contains(w.GetEvents(), k)
}

// ProgressInterval is the least time between two PROGRESS deliveries of a webhook.
func ProgressInterval(w *taskhubv1.Webhook) time.Duration {
	return time.Duration(w.GetProgressIntervalSeconds()) * time.Second
}

// Send POSTs an event to its task's webhook and returns nil if the receiver answered 2xx. The
// webhook-id, "<task id>.<seq>", is the same on every attempt, so a receiver can drop repeats.
// It first waits for a slot: at most MaxPostsPerHost deliveries are in flight to one host and
// MaxPosts in all, so that a receiver that answers slowly leaves the others their turn.
func (s *Sender) Send(ctx context.Context, e *taskhubv1.TaskEvent) error {
	w := e.GetTask().GetWebhook()
	host, err := s.allowed(w.GetUrl())
	if err != nil {
		return &Refused{err}
	}
	release, err := s.slot(ctx, host)
	if err != nil {
		return err
	}
	defer release()
	body, err := protojson.Marshal(e)
	if err != nil {
		return &Refused{err}
	}
	id := fmt.Sprintf("%s.%d", e.Task.Id, e.Seq)
	now := time.Now()
	sig, err := s.signer.Sign(id, now, body)
	if err != nil {
		return &Refused{err}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.Url, bytes.NewReader(body))
	if err != nil {
		return &Refused{err}
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "taskhub-webhooks")
	req.Header.Set(standardwebhooks.HeaderWebhookID, id)
	req.Header.Set(standardwebhooks.HeaderWebhookTimestamp, fmt.Sprint(now.Unix()))
	req.Header.Set(standardwebhooks.HeaderWebhookSignature, sig)
	res, err := s.client.Do(req)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(res.Body, 64<<10)) // to reuse the connection
	if res.StatusCode/100 != 2 {
		if loc := res.Header.Get("Location"); res.StatusCode/100 == 3 && loc != "" {
			return fmt.Errorf("the receiver answered %s, a redirect to %q, which webhooks do not follow", res.Status, clip(loc))
		}
		return fmt.Errorf("the receiver answered %s", res.Status)
	}
	return nil
}

// slot waits for a delivery slot to host and returns its release.
func (s *Sender) slot(ctx context.Context, host string) (release func(), err error) {
	s.hostsMu.Lock()
	slots := s.hosts[host]
	if slots == nil {
		slots = make(chan struct{}, MaxPostsPerHost)
		s.hosts[host] = slots // hosts are the allow-list's: few
	}
	s.hostsMu.Unlock()
	select {
	case slots <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	select {
	case s.posts <- struct{}{}:
	case <-ctx.Done():
		<-slots
		return nil, ctx.Err()
	}
	return func() { <-s.posts; <-slots }, nil
}

// Refused is a delivery that cannot succeed however often it is tried: its URL is no longer
// allowed, or the event cannot be encoded.
type Refused struct{ Err error }

func (r *Refused) Error() string { return r.Err.Error() }
func (r *Refused) Unwrap() error { return r.Err }

// Backoff is the wait before the next attempt after n failures (n >= 1).
func (s *Sender) Backoff(n uint32) time.Duration {
	d := s.cfg.RetryMin
	for i := uint32(1); i < n && d < s.cfg.RetryMax; i++ {
		d *= 2
	}
	d = min(d, s.cfg.RetryMax)
	return d - time.Duration(rand.Int64N(int64(d)/5+1)) // up to 20% less, so that retries spread
}
