package views

import (
	"cmp"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/types/known/timestamppb"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"

	"github.com/taskhub/taskhub"
)

// The page's script (assets/src/format.ts) formats the same way; keep the two in step.

// percent is progress as the page shows it: a whole number, halves rounded up.
func percent(p float64) string { return strconv.FormatFloat(math.Round(p), 'f', 0, 64) }

// badge is the word on a task's badge: its state, or "stalled" for a running task that has
// made no progress for the stall timeout.
func badge(t *taskhubv1.Task) string {
	if t.Stalled && t.State == taskhubv1.TaskState_TASK_STATE_RUNNING {
		return "stalled"
	}
	return taskhub.StateName(t.State)
}

func stateClass(s taskhubv1.TaskState) string { return "state-" + taskhub.StateName(s) }

func active(s taskhubv1.TaskState) bool {
	return s == taskhubv1.TaskState_TASK_STATE_QUEUED || s == taskhubv1.TaskState_TASK_STATE_RUNNING
}

// isImage reports whether a result is shown as an image: a data URL of an image, or an http(s)
// URL ending in an image extension.
func isImage(r string) bool {
	if strings.HasPrefix(r, "data:image/") {
		return true
	}
	if !strings.HasPrefix(r, "https://") && !strings.HasPrefix(r, "http://") || strings.ContainsAny(r, " \n\"'<>") {
		return false
	}
	path, _, _ := strings.Cut(r, "?")
	for _, ext := range []string{".png", ".jpg", ".jpeg", ".gif", ".webp", ".svg", ".avif"} {
		if strings.HasSuffix(strings.ToLower(path), ext) {
			return true
		}
	}
	return false
}

// millis is a timestamp as Unix milliseconds for the script, "" when unset.
func millis(ts *timestamppb.Timestamp) string {
	if ts == nil {
		return ""
	}
	return strconv.FormatInt(ts.AsTime().UnixMilli(), 10)
}

// duration formats d the way a person reads it: "0 s", "42 s", "3 min 5 s", "2 h 7 min".
func duration(d time.Duration) string {
	s := max(int64(d/time.Second), 0)
	switch {
	case s < 60:
		return fmt.Sprintf("%d s", s)
	case s < 3600:
		return fmt.Sprintf("%d min %d s", s/60, s%60)
	default:
		return fmt.Sprintf("%d h %d min", s/3600, s%3600/60)
	}
}

// timing says how long a task has been where it is, and for a running task with some progress
// how long it has left at its pace so far: "running for 12 s · about 8 s left".
func timing(t *taskhubv1.Task, now time.Time) string {
	since := func(ts *timestamppb.Timestamp) time.Duration {
		if ts == nil {
			return 0
		}
		return now.Sub(ts.AsTime())
	}
	between := func(from, to *timestamppb.Timestamp) time.Duration {
		if from == nil || to == nil {
			return 0
		}
		return to.AsTime().Sub(from.AsTime())
	}
	start := t.StartedAt
	if start == nil {
		start = t.CreatedAt
	}
	switch t.State {
	case taskhubv1.TaskState_TASK_STATE_QUEUED:
		return "queued for " + duration(since(t.UpdatedAt))
	case taskhubv1.TaskState_TASK_STATE_RUNNING:
		elapsed := since(t.StartedAt)
		s := "running for " + duration(elapsed)
		if t.Stalled {
			return s + " · no progress for " + duration(since(cmp.Or(t.ProgressedAt, t.StartedAt)))
		}
		if left, ok := eta(elapsed, t.Progress); ok {
			s += " · about " + duration(left) + " left"
		}
		return s
	case taskhubv1.TaskState_TASK_STATE_COMPLETED:
		return "took " + duration(between(start, t.FinishedAt))
	case taskhubv1.TaskState_TASK_STATE_FAILED:
		return "failed after " + duration(between(start, t.FinishedAt))
	case taskhubv1.TaskState_TASK_STATE_CANCELLED:
		return "cancelled after " + duration(between(t.CreatedAt, t.FinishedAt))
	}
	return ""
}

// eta estimates the time left of a task elapsed into its run at progress percent, assuming it
// keeps its pace. It needs at least 1% and a second of work to say anything.
func eta(elapsed time.Duration, progress float64) (time.Duration, bool) {
	if progress < 1 || progress >= 100 || elapsed < time.Second {
		return 0, false
	}
	return time.Duration(float64(elapsed) * (100 - progress) / progress), true
}

// clock is a timestamp as the page shows it before the script localises it.
func clock(ts *timestamppb.Timestamp) string {
	if ts == nil {
		return ""
	}
	return ts.AsTime().UTC().Format("Jan 2, 15:04 UTC")
}

func isoTime(ts *timestamppb.Timestamp) string {
	if ts == nil {
		return ""
	}
	return ts.AsTime().UTC().Format(time.RFC3339)
}

// promptCount is the text of the prompt's character count.
func promptCount(prompt string) string {
	return strconv.Itoa(utf8.RuneCountInString(prompt)) + " / " + strconv.Itoa(maxPromptChars)
}
