// Package servertest opens taskhub servers for tests.
package servertest

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/taskhub/taskhub/server"
)

// OpenAll opens a server for each of cfgs at once, as the nodes of a cluster must be (each waits
// for the others before it serves), and closes them when the test ends.
func OpenAll(t testing.TB, cfgs []server.Config) []*server.Server {
	t.Helper()
	srvs := make([]*server.Server, len(cfgs))
	errs := make([]error, len(cfgs))
	var wg sync.WaitGroup
	for i, cfg := range cfgs {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			srvs[i], errs[i] = server.Open(ctx, cfg)
		})
	}
	wg.Wait()
	t.Cleanup(func() {
		for _, s := range srvs {
			if s != nil {
				_ = s.Close()
			}
		}
	})
	require.NoError(t, errors.Join(errs...))
	return srvs
}
