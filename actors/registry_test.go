package actors

import (
	"os/exec"
	"strings"
	"testing"

	cmap "github.com/orcaman/concurrent-map"
	"github.com/stretchr/testify/require"
)

// TestRegistryTuning guards the global that tuneRegistry sets: the hub sets it (and only once),
// and in the taskhub binary no package but protoactor's actor package and this one uses
// concurrent-map, whose every map it changes.
func TestRegistryTuning(t *testing.T) {
	t.Parallel()
	require.NoError(t, tuneRegistry())
	require.Equal(t, registryShards, cmap.SHARD_COUNT)

	out, err := exec.Command("go", "list", "-deps", "-f", `{{.ImportPath}}{{range .Imports}} {{.}}{{end}}`, "github.com/taskhub/taskhub/cmd/taskhub").Output()
	require.NoError(t, err)
	var users []string
	for _, line := range strings.Split(string(out), "\n") {
		pkg, imports, _ := strings.Cut(line, " ")
		if strings.Contains(" "+imports+" ", " github.com/orcaman/concurrent-map ") {
			users = append(users, pkg)
		}
	}
	require.ElementsMatch(t, []string{"github.com/asynkron/protoactor-go/actor", "github.com/taskhub/taskhub/actors"}, users,
		"another package uses concurrent-map: tuneRegistry's SHARD_COUNT changes its maps too")
}
