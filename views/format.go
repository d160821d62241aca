package views

import (
	"strconv"
	"strings"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"
)

func percent(p float64) string { return strconv.FormatFloat(p, 'f', 0, 64) }

func stateLabel(s taskhubv1.TaskState) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "TASK_STATE_"))
}

func stateClass(s taskhubv1.TaskState) string { return "state-" + stateLabel(s) }

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
