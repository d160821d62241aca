package actors

import (
	"time"

	"testing"

	"github.com/stretchr/testify/require"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"

	"github.com/taskhub/taskhub"
)

// TestCreating_CountsEachCreateOnce steps creates through admission, the log and the feed: a
// create counts once against its owner's limit and its mode at every step, including between
// the feed applying its event and the creator learning that it has.
func TestCreating_CountsEachCreateOnce(t *testing.T) {
	t.Parallel()
	f := &feed{active: map[string]map[string]*taskhubv1.Task{}, modes: map[string]int{}, compactor: &compactor{}}
	c := &creating{}
	admit := func(mode string) error {
		return c.start(creatingParams{owner: "alice", mode: mode, feed: f, maxActive: 2, maxModes: 1})
	}
	apply := func(seq uint64, id string, state taskhubv1.TaskState) {
		f.track(&taskhubv1.Task{Id: id, Owner: "alice", Mode: "paint", State: state}, seq, time.Now())
		f.pos = seq
	}
	const queued, completed = taskhubv1.TaskState_TASK_STATE_QUEUED, taskhubv1.TaskState_TASK_STATE_COMPLETED
	refused := func(err error) bool { return taskhub.ErrorCode(err) == taskhub.ResourceExhausted }

	require.NoError(t, admit("paint"))
	require.True(t, refused(admit("draw")), "paint, under way, is the one mode allowed")
	c.written("alice", "paint", 1)
	require.True(t, refused(admit("draw")), "written, not yet applied")
	apply(1, "a", queued)
	require.NoError(t, admit("paint"), "applied, its creator not yet told: a counts once, as active")
	require.True(t, refused(admit("paint")), "a and the create under way fill the limit of 2")
	require.True(t, refused(admit("draw")), "paint is active")
	c.done("alice", "paint", 1)
	c.written("alice", "paint", 2)
	apply(2, "b", queued)
	c.done("alice", "paint", 2)
	require.True(t, refused(admit("paint")), "two active tasks")

	apply(3, "a", completed)
	apply(4, "b", completed)
	require.NoError(t, admit("draw"), "paint has nothing unfinished")
	c.failed("alice", "draw")
	require.Empty(t, c.byOwner, "nothing under way is remembered")
	require.Empty(t, c.byMode)
}
