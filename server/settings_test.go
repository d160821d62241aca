package server_test

import (
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/taskhub/taskhub/actors"
	"github.com/taskhub/taskhub/eventlog"
	"github.com/taskhub/taskhub/internal/freeport"
	"github.com/taskhub/taskhub/server"
)

// TestSettings_NodesThatDisagree: nodes of a cluster whose shared settings differ (each runs
// the lease timers with its own) stay ready, and /readyz on each says how they differ, and
// which node leads each stream.
func TestSettings_NodesThatDisagree(t *testing.T) {
	t.Parallel()
	peers := []string{freeport.Addr(t), freeport.Addr(t)}
	leases := []time.Duration{30 * time.Second, 10 * time.Second}
	var cfgs []server.Config
	for i := range 2 {
		cfgs = append(cfgs, server.Config{Addr: "127.0.0.1:0", DataDir: t.TempDir(), DemoWorkers: -1,
			Cluster: eventlog.Cluster{Addr: peers[i], Peers: peers, Name: []string{"one", "two"}[i]},
			Options: actors.Options{LeaseTimeout: leases[i]}})
	}
	srvs := openAll(t, cfgs)

	readyz := func(s *server.Server) string {
		res, err := http.Get(s.URL() + "/readyz")
		require.NoError(t, err)
		defer res.Body.Close()
		body, err := io.ReadAll(res.Body)
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, res.StatusCode, "%s", body)
		return string(body)
	}
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		require.Contains(c, readyz(srvs[0]), `settings differ: node two has --lease-timeout "10s", this node "30s"`)
		require.Contains(c, readyz(srvs[1]), `settings differ: node one has --lease-timeout "30s", this node "10s"`)
	}, 20*time.Second, 100*time.Millisecond)
	require.NotContains(t, readyz(srvs[0]), "--max-attempts", "only what differs")
	// Which node leads each stream: its loss pauses the writes that stream takes.
	for _, stream := range []string{"TASKS", "TASKQ", "TASKHUB", "KV_taskhub_idempotency", "KV_taskhub_sessions"} {
		require.Regexp(t, `(?m)^`+stream+` leader (one|two)$`, readyz(srvs[1]))
	}
}
