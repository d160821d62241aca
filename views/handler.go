// Package views renders taskhub's pages with templ and serves them. Pages are complete without
// JavaScript: forms post and redirect back. With JavaScript, the page's script (assets/src)
// keeps them live.
//
// A Handler is safe for concurrent use.
package views

import (
	"cmp"
	"context"
	"errors"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/a-h/templ"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"

	"github.com/taskhub/taskhub"
)

// Hub is what the pages need: the task service.
type Hub = taskhub.TaskService

// Users finds the user a request acts for, and turns a user token into a browser session.
// *rpc.Auth implements it; a nil *rpc.Auth is auth off.
type Users interface {
	// User returns the user of a request (by its bearer token or its session cookie).
	User(r *http.Request) (string, error)
	// Enabled reports whether requests must authenticate.
	Enabled() bool
	// SignIn starts a session for a user's token and returns its cookie.
	SignIn(ctx context.Context, token string, secure bool) (*http.Cookie, error)
	// SignOut ends the request's session and returns a cookie that removes it.
	SignOut(r *http.Request, secure bool) (*http.Cookie, error)
}

// Config configures a Handler.
type Config struct {
	Hub   Hub
	Users Users
	// Modes, when set, are the only modes tasks may use: the form offers exactly these. Otherwise
	// it offers DefaultMode and the modes of the user's recent tasks.
	Modes []string
	// Heartbeat is the heartbeat interval of the hub's watch streams: the page's script takes a
	// stream silent for two of them as dead.
	Heartbeat time.Duration
	Logger    *slog.Logger // [slog.Default()]
}

// Handler serves the pages.
type Handler struct {
	cfg     Config
	mux     *http.ServeMux
	signIns *addrLimiter
}

// PageSize is how many tasks a page shows.
const PageSize = 50

// Limits on what the forms take. A task form carries at most a prompt of 16 KiB and 32 params
// of 1 KiB, percent-encoded (up to three bytes a byte); a sign-in form a token.
const (
	MaxTaskFormBytes   = 256 << 10
	MaxSignInFormBytes = 4 << 10
)

// Sign-in attempts allowed per client address: SignInBurst at once, then one every SignInEvery.
const (
	SignInBurst = 10
	SignInEvery = 6 * time.Second
)

// NewHandler returns the page handler.
func NewHandler(cfg Config) *Handler {
	cfg.Logger = cmp.Or(cfg.Logger, slog.Default())
	h := &Handler{cfg: cfg, mux: http.NewServeMux(), signIns: newAddrLimiter(SignInEvery, SignInBurst)}
	h.mux.HandleFunc("GET /{$}", h.index)
	h.mux.HandleFunc("POST /tasks", h.create)
	h.mux.HandleFunc("POST /tasks/{id}/cancel", h.cancel)
	h.mux.HandleFunc("GET /signin", h.signInPage)
	h.mux.HandleFunc("POST /signin", h.signIn)
	h.mux.HandleFunc("POST /signout", h.signOut)
	return h
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// The pages show user content (prompts, results): nothing but our own script may run, and
	// no other site may frame them.
	w.Header().Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data: https: http:; "+
		"style-src 'self' 'unsafe-inline'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
	w.Header().Set("Referrer-Policy", "same-origin")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	h.mux.ServeHTTP(w, r)
}

// user returns the user of the request, or answers it: a browser without a session is sent to
// sign in; a script gets 401.
func (h *Handler) user(w http.ResponseWriter, r *http.Request) (string, bool) {
	user, err := h.cfg.Users.User(r)
	if err == nil {
		return user, true
	}
	if r.Method == http.MethodGet && r.Header.Get("Authorization") == "" && strings.Contains(r.Header.Get("Accept"), "text/html") {
		http.Redirect(w, r, "/signin", http.StatusSeeOther)
		return "", false
	}
	http.Error(w, err.Error()+"; or sign in at /signin", http.StatusUnauthorized)
	return "", false
}

func (h *Handler) index(w http.ResponseWriter, r *http.Request) {
	user, ok := h.user(w, r)
	if !ok {
		return
	}
	h.render(w, r, http.StatusOK, IndexData{User: user, Page: r.URL.Query().Get("page")})
}

func (h *Handler) render(w http.ResponseWriter, r *http.Request, status int, d IndexData) {
	// The position is read before the tasks, so a script resuming from it misses nothing.
	var err error
	if d.Epoch, d.Seq, err = h.cfg.Hub.Position(r.Context()); err != nil {
		h.fail(w, err)
		return
	}
	d.Now = time.Now()
	page, err := h.cfg.Hub.ListTasks(r.Context(), taskhub.ListQuery{Owner: d.User, PageSize: PageSize, PageToken: d.Page})
	if err != nil {
		h.fail(w, err)
		return
	}
	d.Tasks, d.NextPage = page.Tasks, page.NextPageToken
	d.Modes = h.modes(page.Tasks)
	d.SignOut = h.cfg.Users.Enabled()
	d.Heartbeat = h.cfg.Heartbeat
	h.write(w, r, status, Index(d))
}

func (h *Handler) write(w http.ResponseWriter, r *http.Request, status int, c templ.Component) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	if err := c.Render(r.Context(), w); err != nil {
		h.cfg.Logger.Warn("render a page", "err", err)
	}
}

// modes are the modes the form offers: the configured ones, or the default mode and those of
// the tasks shown; the default mode first.
func (h *Handler) modes(tasks []*taskhubv1.Task) []string {
	var modes []string
	if len(h.cfg.Modes) > 0 {
		modes = slices.Clone(h.cfg.Modes)
	} else {
		modes = []string{taskhub.DefaultMode}
		for _, t := range tasks {
			modes = append(modes, t.Mode)
		}
		slices.Sort(modes)
		modes = slices.Compact(modes)
	}
	if i := slices.Index(modes, taskhub.DefaultMode); i > 0 {
		modes = slices.Insert(slices.Delete(modes, i, i+1), 0, taskhub.DefaultMode)
	}
	return modes
}

func (h *Handler) create(w http.ResponseWriter, r *http.Request) {
	user, ok := h.user(w, r)
	if !ok {
		return
	}
	if !parseForm(w, r, MaxTaskFormBytes) {
		return
	}
	spec := taskhub.TaskSpec{Prompt: r.PostFormValue("prompt"), Mode: r.PostFormValue("mode")}
	rawParams := r.PostFormValue("params")
	params, err := ParseParams(rawParams)
	if err == nil {
		spec.Params = params
		_, err = h.cfg.Hub.CreateTask(r.Context(), user, spec)
	}
	if err != nil {
		// What the person can fix is shown above the form, with what they typed.
		if code := taskhub.ErrorCode(err); code == taskhub.Invalid || code == taskhub.ResourceExhausted {
			status := http.StatusUnprocessableEntity
			if code == taskhub.ResourceExhausted {
				status = http.StatusTooManyRequests
			}
			h.render(w, r, status, IndexData{
				User: user, Error: err.Error(), Prompt: spec.Prompt, Mode: spec.Mode, Params: rawParams,
			})
			return
		}
		h.fail(w, err)
		return
	}
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

func (h *Handler) cancel(w http.ResponseWriter, r *http.Request) {
	user, ok := h.user(w, r)
	if !ok {
		return
	}
	if _, err := h.cfg.Hub.CancelTask(r.Context(), user, r.PathValue("id")); err != nil &&
		taskhub.ErrorCode(err) != taskhub.FailedPrecondition { // finished meanwhile: show it
		h.fail(w, err)
		return
	}
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

func (h *Handler) signInPage(w http.ResponseWriter, r *http.Request) {
	if !h.cfg.Users.Enabled() {
		http.Redirect(w, r, "/", http.StatusSeeOther)
		return
	}
	h.write(w, r, http.StatusOK, SignIn(SignInData{}))
}

func (h *Handler) signIn(w http.ResponseWriter, r *http.Request) {
	if !h.cfg.Users.Enabled() {
		http.Redirect(w, r, "/", http.StatusSeeOther)
		return
	}
	if wait := h.signIns.wait(r.RemoteAddr); wait > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(int(wait.Round(time.Second)/time.Second)+1))
		h.write(w, r, http.StatusTooManyRequests, SignIn(SignInData{
			Error: "Too many sign-in attempts from your address: try again in " + wait.Round(time.Second).String() + ".",
		}))
		return
	}
	if !parseForm(w, r, MaxSignInFormBytes) {
		return
	}
	cookie, err := h.cfg.Users.SignIn(r.Context(), strings.TrimSpace(r.PostFormValue("token")), r.TLS != nil)
	if err != nil {
		h.write(w, r, statusOf(err), SignIn(SignInData{Error: message(err)}))
		return
	}
	http.SetCookie(w, cookie)
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

func (h *Handler) signOut(w http.ResponseWriter, r *http.Request) {
	cookie, err := h.cfg.Users.SignOut(r, r.TLS != nil)
	if err != nil {
		h.fail(w, err)
		return
	}
	http.SetCookie(w, cookie)
	http.Redirect(w, r, "/signin", http.StatusSeeOther)
}

// parseForm reads a form post of at most limit bytes, or answers 413 (or 400 for a malformed
// one) and reports false.
func parseForm(w http.ResponseWriter, r *http.Request, limit int64) bool {
	r.Body = http.MaxBytesReader(w, r.Body, limit)
	err := r.ParseForm()
	if err == nil && strings.HasPrefix(r.Header.Get("Content-Type"), "multipart/form-data") {
		err = r.ParseMultipartForm(limit)
	}
	if err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			http.Error(w, "the form is larger than "+strconv.FormatInt(limit, 10)+" bytes", http.StatusRequestEntityTooLarge)
			return false
		}
		http.Error(w, "the form cannot be read: "+err.Error(), http.StatusBadRequest)
		return false
	}
	return true
}

func (h *Handler) fail(w http.ResponseWriter, err error) {
	http.Error(w, message(err), statusOf(err))
}

// statusOf is the HTTP status of a domain error: one mapping for every code.
func statusOf(err error) int {
	switch taskhub.ErrorCode(err) {
	case taskhub.Invalid:
		return http.StatusBadRequest
	case taskhub.NotFound:
		return http.StatusNotFound
	case taskhub.FailedPrecondition:
		return http.StatusConflict
	case taskhub.PermissionDenied:
		return http.StatusForbidden
	case taskhub.Unauthenticated:
		return http.StatusUnauthorized
	case taskhub.ResourceExhausted:
		return http.StatusTooManyRequests
	case taskhub.Unavailable:
		return http.StatusServiceUnavailable
	case taskhub.DeadlineExceeded:
		return http.StatusGatewayTimeout
	}
	return http.StatusInternalServerError
}

// message is what a person may read of err: the message of a domain error, nothing internal.
func message(err error) string {
	var e *taskhub.Error
	if errors.As(err, &e) {
		return e.Message
	}
	return "internal error"
}
