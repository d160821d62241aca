package server_test

import (
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/stretchr/testify/require"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"

	"github.com/taskhub/taskhub/server"
)

func TestLimits_WatchStreams(t *testing.T) {
	t.Parallel()
	b := setup(t, server.Config{MaxWatchesPerUser: 2})
	first := watch(t, b.tasks, &taskhubv1.WatchTasksRequest{}, "")
	first.wait(0)
	second := watch(t, b.grpcTasks(), &taskhubv1.WatchTasksRequest{}, "")
	second.wait(0)

	third := watch(t, b.tasks, &taskhubv1.WatchTasksRequest{}, "")
	err := third.end()
	require.Equal(t, connect.CodeResourceExhausted, connect.CodeOf(err), err)
	require.Contains(t, err.Error(), "open watches")

	// Closing a stream gives its place back.
	first.cancel()
	first.end()
	require.Eventually(t, func() bool {
		again := watch(t, b.tasks, &taskhubv1.WatchTasksRequest{}, "")
		defer again.cancel()
		for range 200 {
			again.mu.Lock()
			snap, err := again.snap, again.err
			again.mu.Unlock()
			if snap != nil || err != nil {
				return snap != nil
			}
			time.Sleep(5 * time.Millisecond)
		}
		return false
	}, 5*time.Second, 50*time.Millisecond, "a closed stream did not give its place back")
}
