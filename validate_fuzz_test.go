package taskhub_test

import (
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/taskhub/taskhub"
)

// FuzzTaskSpec: whatever a caller sends, Validate either refuses it with Invalid or the spec
// keeps every limit: what reaches the event log is bounded and well-formed.
func FuzzTaskSpec(f *testing.F) {
	f.Add("a red fox", "demo", "steps", "20", "key-1")
	f.Add("", "demo", "", "", "")
	f.Add("x", "Bad Mode", "k", "v", "")
	f.Add("x", "tasks.>", "a.b", "\xff", "")
	f.Add(strings.Repeat("p", taskhub.MaxPromptBytes+1), "render", "", "", "")
	f.Fuzz(func(t *testing.T, prompt, mode, key, value, idem string) {
		spec := taskhub.TaskSpec{Prompt: prompt, Mode: mode, IdempotencyKey: idem}
		if key != "" {
			spec.Params = map[string]string{key: value}
		}
		err := spec.Validate()
		if err != nil {
			if taskhub.ErrorCode(err) != taskhub.Invalid || err.Error() == "" {
				t.Fatalf("want an Invalid error with a message, got %v", err)
			}
			return
		}
		switch {
		case prompt == "" || len(prompt) > taskhub.MaxPromptBytes || !utf8.ValidString(prompt):
			t.Fatalf("accepted prompt %q", prompt)
		case len(idem) > taskhub.MaxIdempotencyKeyBytes || !utf8.ValidString(idem):
			t.Fatalf("accepted idempotency key %q", idem)
		case strings.ContainsAny(mode, ".*> \t") || mode == "" || len(mode) > taskhub.MaxModeLen:
			t.Fatalf("accepted mode %q, which would break a queue subject", mode)
		case key != "" && (len(value) > taskhub.MaxParamValueBytes || !utf8.ValidString(value) || strings.ContainsAny(key, "*> ")):
			t.Fatalf("accepted param %q=%q", key, value)
		}
	})
}

// FuzzIDs: a task id or a user name that passes validation is safe to put in a subject token,
// and a worker id has no spaces or control characters.
func FuzzIDs(f *testing.F) {
	f.Add("01KABCDEFGHJKMNPQRSTVWXYZ0")
	f.Add("alice")
	f.Add("a.b")
	f.Add("*")
	f.Fuzz(func(t *testing.T, s string) {
		for _, check := range []func(string) error{taskhub.ValidateTaskID, taskhub.ValidateName} {
			if check(s) == nil && (s == "" || strings.ContainsAny(s, ".*> \t\r\n") || !utf8.ValidString(s)) {
				t.Fatalf("%q passed validation but is not a safe subject token", s)
			}
		}
		if taskhub.ValidateWorkerID(s) == nil && (s == "" || strings.ContainsAny(s, " \t\r\n*>") || !utf8.ValidString(s)) {
			t.Fatalf("%q passed as a worker id", s)
		}
	})
}
