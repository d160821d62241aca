package taskhub

import (
	"crypto/rand"
	"math"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/oklog/ulid/v2"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"
)

// Limits on what callers may send. A field over its limit is rejected with Invalid.
const (
	MaxPromptBytes         = 16 << 10
	MaxParams              = 32
	MaxParamKeyLen         = 64
	MaxParamValueBytes     = 1 << 10
	MaxIdempotencyKeyBytes = 128
	MaxModeLen             = 64
	MaxMessageBytes        = 1 << 10
	MaxResultBytes         = 256 << 10
	MaxErrorBytes          = 4 << 10
	MaxWorkerIDLen         = 128
	MaxNameLen             = 64
	MaxClaimModes          = 16
	MaxClaimWait           = 60 * time.Second
	MaxBatchReports        = 1000
)

// DefaultMode is the mode of a task created without one: the built-in demo executor runs it.
const DefaultMode = "demo"

// TaskSpec is what a caller asks for when creating a task.
type TaskSpec struct {
	Prompt         string
	Mode           string
	Params         map[string]string
	IdempotencyKey string
	// Webhook, if set, is checked against the server's webhook settings (webhook.Sender.Check).
	Webhook *taskhubv1.Webhook
}

// Validate checks every field of s. It does not check whether the mode is enabled.
func (s TaskSpec) Validate() error {
	switch {
	case s.Prompt == "":
		return Errorf(Invalid, "prompt is required")
	case len(s.Prompt) > MaxPromptBytes:
		return Errorf(Invalid, "prompt is %d bytes; the limit is %d", len(s.Prompt), MaxPromptBytes)
	case !utf8.ValidString(s.Prompt):
		return Errorf(Invalid, "prompt is not valid UTF-8")
	case len(s.Params) > MaxParams:
		return Errorf(Invalid, "%d params; the limit is %d", len(s.Params), MaxParams)
	case len(s.IdempotencyKey) > MaxIdempotencyKeyBytes:
		return Errorf(Invalid, "idempotency_key is %d bytes; the limit is %d", len(s.IdempotencyKey), MaxIdempotencyKeyBytes)
	case !utf8.ValidString(s.IdempotencyKey):
		return Errorf(Invalid, "idempotency_key is not valid UTF-8")
	}
	if err := ValidateMode(s.Mode); err != nil {
		return err
	}
	for k, v := range s.Params {
		if !isToken(k, MaxParamKeyLen, true) {
			return Errorf(Invalid, "param name %q: use 1 to %d letters, digits, '.', '-' or '_'", clip(k), MaxParamKeyLen)
		}
		if len(v) > MaxParamValueBytes || !utf8.ValidString(v) {
			return Errorf(Invalid, "param %q: the value must be valid UTF-8 of at most %d bytes", k, MaxParamValueBytes)
		}
	}
	return nil
}

// ValidateMode checks that mode is a well-formed mode name: 1 to 64 lowercase letters, digits,
// '-' or '_', starting with a letter or digit.
func ValidateMode(mode string) error {
	ok := mode != "" && len(mode) <= MaxModeLen && mode[0] != '-' && mode[0] != '_'
	for i := 0; ok && i < len(mode); i++ {
		c := mode[i]
		ok = c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_'
	}
	if !ok {
		return Errorf(Invalid, "mode %q: use 1 to %d lowercase letters, digits, '-' or '_', starting with a letter or digit", clip(mode), MaxModeLen)
	}
	return nil
}

// ValidateName checks a user or worker name from the auth file: 1 to 64 letters, digits, '-' or
// '_'. User names become part of event log subjects, so nothing else is allowed.
func ValidateName(name string) error {
	if !isToken(name, MaxNameLen, false) {
		return Errorf(Invalid, "name %q: use 1 to %d letters, digits, '-' or '_'", clip(name), MaxNameLen)
	}
	return nil
}

// ValidateWorkerID checks a worker_id: 1 to 128 letters, digits, '.', '-', '_' or ':'.
func ValidateWorkerID(id string) error {
	ok := id != "" && len(id) <= MaxWorkerIDLen
	for i := 0; ok && i < len(id); i++ {
		ok = isTokenByte(id[i], true) || id[i] == ':'
	}
	if !ok {
		return Errorf(Invalid, "worker_id %q: use 1 to %d letters, digits, '.', '-', '_' or ':'", clip(id), MaxWorkerIDLen)
	}
	return nil
}

// ValidateTaskID checks that id has the form of a task id (a ULID).
func ValidateTaskID(id string) error {
	if id == "" {
		return Errorf(Invalid, "task id is required")
	}
	if _, err := ulid.ParseStrict(id); err != nil {
		return Errorf(Invalid, "task id %q is malformed: task ids are 26-character ULIDs", clip(id))
	}
	return nil
}

// ValidateProgress checks a progress report: progress in 0..100 and a message of at most 1 KiB.
func ValidateProgress(progress float64, message string) error {
	if math.IsNaN(progress) || progress < 0 || progress > 100 {
		return Errorf(Invalid, "progress must be 0..100: got %v", progress)
	}
	return validateText("message", message, MaxMessageBytes)
}

// ValidateBatch checks the number of reports of a batch.
func ValidateBatch(n int) error {
	if n < 1 || n > MaxBatchReports {
		return Errorf(Invalid, "a batch has 1..%d reports: got %d", MaxBatchReports, n)
	}
	return nil
}

// ValidateResult checks a completed task's result.
func ValidateResult(result string) error { return validateText("result", result, MaxResultBytes) }

// ValidateFailure checks a failed task's error text, which must not be empty.
func ValidateFailure(text string) error {
	if text == "" {
		return Errorf(Invalid, "error is required: say what went wrong")
	}
	return validateText("error", text, MaxErrorBytes)
}

func validateText(field, s string, limit int) error {
	if len(s) > limit {
		return Errorf(Invalid, "%s is %d bytes; the limit is %d", field, len(s), limit)
	}
	if !utf8.ValidString(s) {
		return Errorf(Invalid, "%s is not valid UTF-8", field)
	}
	return nil
}

func isToken(s string, max int, dot bool) bool {
	if s == "" || len(s) > max {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isTokenByte(s[i], dot) {
			return false
		}
	}
	return true
}

func isTokenByte(c byte, dot bool) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || dot && c == '.'
}

// clip shortens s for an error message.
func clip(s string) string {
	if len(s) <= 40 {
		return s
	}
	return s[:40] + "..."
}

var (
	idMu      sync.Mutex
	idEntropy = ulid.Monotonic(rand.Reader, 0)
)

// StateName names a state in lowercase, for sentences and labels: "completed", "running".
func StateName(s taskhubv1.TaskState) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "TASK_STATE_"))
}

// Terminal reports whether a task in state s has ended: completed, failed or cancelled.
func Terminal(s taskhubv1.TaskState) bool {
	return s == taskhubv1.TaskState_TASK_STATE_COMPLETED || s == taskhubv1.TaskState_TASK_STATE_FAILED ||
		s == taskhubv1.TaskState_TASK_STATE_CANCELLED
}

// NewTaskID returns a new task id: a ULID, so ids sort by creation time.
func NewTaskID(now time.Time) string {
	idMu.Lock()
	defer idMu.Unlock()
	return ulid.MustNew(ulid.Timestamp(now), idEntropy).String()
}
