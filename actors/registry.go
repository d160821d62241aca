package actors

import (
	"fmt"
	"sync"

	cmap "github.com/orcaman/concurrent-map"
)

// registryShards is the number of Go maps in each of the 1024 concurrent maps of protoactor's
// process registry (concurrent-map's SHARD_COUNT, a package variable, 32 by default). With 32,
// the registry has 32,768 maps and nearly every actor (one per open watch) gets a map of its
// own, about 250 bytes; with 1, the registry's locks are still spread over 1024 maps.
const registryShards = 1

var (
	tuneOnce sync.Once
	tuneErr  error
)

// tuneRegistry sets concurrent-map's SHARD_COUNT before the first actor system exists, once per
// process. It is a global: concurrent-map reads it on every call, so it must be set before any
// map is made and never changed, and it applies to every concurrent map in the process. In the
// taskhub binary only protoactor's actor package makes them (TestRegistryTuning checks that it
// stays so). A value someone else set is left alone, with an error: the hub cannot know whether
// maps made with it exist.
func tuneRegistry() error {
	tuneOnce.Do(func() {
		switch cmap.SHARD_COUNT {
		case registryShards:
		case 32: // concurrent-map's default: nobody else tuned it
			cmap.SHARD_COUNT = registryShards
		default:
			tuneErr = fmt.Errorf("actors: concurrent-map's SHARD_COUNT is %d: something else in this process set it", cmap.SHARD_COUNT)
		}
	})
	return tuneErr
}
