// Package views renders taskhub's pages with templ and serves them. Pages are complete without
// JavaScript: forms post and redirect back.
package views

import (
	"context"
	"errors"
	"log/slog"
	"net/http"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"

	"github.com/taskhub/taskhub"
)

// Hub is what the pages need from the hub.
type Hub interface {
	CreateTask(ctx context.Context, owner string, spec taskhub.TaskSpec) (*taskhubv1.Task, error)
	ListTasks(ctx context.Context, owner string, states []taskhubv1.TaskState, pageSize int, pageToken string) ([]*taskhubv1.Task, string, error)
	CancelTask(ctx context.Context, owner, id string) (*taskhubv1.Task, error)
	Position() (epoch string, seq uint64)
}

// Users finds the user a request acts for.
type Users interface {
	User(h http.Header) (string, error)
}

// Handler serves the pages.
type Handler struct {
	hub    Hub
	users  Users
	modes  []string
	logger *slog.Logger
	mux    *http.ServeMux
}

// PageSize is how many tasks the page shows.
const PageSize = 50

// NewHandler returns the page handler. modes fill the form's mode select, first one selected.
func NewHandler(hub Hub, users Users, modes []string, logger *slog.Logger) *Handler {
	h := &Handler{hub: hub, users: users, modes: modes, logger: logger, mux: http.NewServeMux()}
	h.mux.HandleFunc("GET /{$}", h.index)
	h.mux.HandleFunc("POST /tasks", h.create)
	h.mux.HandleFunc("POST /tasks/{id}/cancel", h.cancel)
	return h
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

func (h *Handler) user(w http.ResponseWriter, r *http.Request) (string, bool) {
	user, err := h.users.User(r.Header)
	if err != nil {
		http.Error(w, err.Error(), http.StatusUnauthorized)
		return "", false
	}
	return user, true
}

func (h *Handler) index(w http.ResponseWriter, r *http.Request) {
	user, ok := h.user(w, r)
	if !ok {
		return
	}
	h.render(w, r, http.StatusOK, IndexData{User: user})
}

func (h *Handler) render(w http.ResponseWriter, r *http.Request, status int, d IndexData) {
	// The position is read before the tasks, so a script resuming from it misses nothing.
	d.Epoch, d.Seq = h.hub.Position()
	tasks, _, err := h.hub.ListTasks(r.Context(), d.User, nil, PageSize, "")
	if err != nil {
		h.fail(w, err)
		return
	}
	d.Tasks, d.Modes = tasks, h.modes
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	if err := Index(d).Render(r.Context(), w); err != nil {
		h.logger.Warn("render the task page", "err", err)
	}
}

func (h *Handler) create(w http.ResponseWriter, r *http.Request) {
	user, ok := h.user(w, r)
	if !ok {
		return
	}
	spec := taskhub.TaskSpec{Prompt: r.PostFormValue("prompt"), Mode: r.PostFormValue("mode")}
	if _, err := h.hub.CreateTask(r.Context(), user, spec); err != nil {
		if taskhub.ErrorCode(err) == taskhub.Invalid {
			h.render(w, r, http.StatusUnprocessableEntity, IndexData{User: user, Error: err.Error(), Prompt: spec.Prompt})
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
	if _, err := h.hub.CancelTask(r.Context(), user, r.PathValue("id")); err != nil &&
		taskhub.ErrorCode(err) != taskhub.FailedPrecondition { // finished meanwhile: show it
		h.fail(w, err)
		return
	}
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

func (h *Handler) fail(w http.ResponseWriter, err error) {
	status := http.StatusInternalServerError
	switch taskhub.ErrorCode(err) {
	case taskhub.Invalid:
		status = http.StatusBadRequest
	case taskhub.NotFound:
		status = http.StatusNotFound
	case taskhub.Unavailable:
		status = http.StatusServiceUnavailable
	}
	var e *taskhub.Error
	msg := "internal error"
	if errors.As(err, &e) {
		msg = e.Message
	}
	http.Error(w, msg, status)
}
