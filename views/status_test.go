package views

import (
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/taskhub/taskhub"
)

// TestStatusOf: every domain error code has its HTTP status on the pages.
func TestStatusOf(t *testing.T) {
	t.Parallel()
	want := map[taskhub.Code]int{
		taskhub.Internal:           http.StatusInternalServerError,
		taskhub.Invalid:            http.StatusBadRequest,
		taskhub.NotFound:           http.StatusNotFound,
		taskhub.FailedPrecondition: http.StatusConflict,
		taskhub.PermissionDenied:   http.StatusForbidden,
		taskhub.Unauthenticated:    http.StatusUnauthorized,
		taskhub.ResourceExhausted:  http.StatusTooManyRequests,
		taskhub.Unavailable:        http.StatusServiceUnavailable,
		taskhub.DeadlineExceeded:   http.StatusGatewayTimeout,
	}
	for c := taskhub.Code(0); !strings.HasPrefix(c.String(), "code("); c++ {
		require.Contains(t, want, c, "a new taskhub.Code needs its HTTP status, here and in statusOf")
		require.Equal(t, want[c], statusOf(taskhub.Errorf(c, "x")), c.String())
	}
}
