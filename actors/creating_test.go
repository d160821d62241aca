package actors

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/types/known/timestamppb"

	storagev1 "github.com/taskhub/taskhub/gen/taskhub/storage/v1"
	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"

	"github.com/taskhub/taskhub"
	"github.com/taskhub/taskhub/eventlog"
)

// TestFeed_CountsEachCreateOnce steps creates through admission and the feed: a create counts
// once against its owner's limit and its mode from admission on, including the moment the feed
// applies it, and a retry of a create under way is not counted again.
func TestFeed_CountsEachCreateOnce(t *testing.T) {
	t.Parallel()
	f := &feed{active: map[string]map[string]*taskhubv1.Task{}, owners: map[string]string{}, modes: map[string]int{}, compactor: &compactor{}}
	admit := func(id, mode string) error {
		return f.admit(admission{owner: "alice", mode: mode, id: id, maxActive: 2, maxModes: 1})
	}
	var seq uint64
	apply := func(id, mode string, state taskhubv1.TaskState) {
		seq++
		f.apply(&eventlog.Entry{Seq: seq, Record: &storagev1.Record{Event: &taskhubv1.TaskEvent{
			Task: &taskhubv1.Task{Id: id, Owner: "alice", Mode: mode, State: state},
			Time: timestamppb.New(time.Now()),
		}}}, 1)
	}
	const queued, completed = taskhubv1.TaskState_TASK_STATE_QUEUED, taskhubv1.TaskState_TASK_STATE_COMPLETED
	refused := func(err error) bool { return taskhub.ErrorCode(err) == taskhub.ResourceExhausted }

	require.NoError(t, admit("a", "paint"))
	require.True(t, refused(admit("x", "draw")), "paint, under way, is the one mode allowed")
	apply("a", "paint", queued)
	require.NoError(t, admit("b", "paint"), "a counts once, as active")
	require.True(t, refused(admit("c", "paint")), "a and b under way fill the limit of 2")
	require.True(t, refused(admit("x", "draw")), "paint is active")

	require.NoError(t, admit("b", "paint"), "a retry of b, under way, is admitted: it adds nothing")
	f.abandon("b")
	require.True(t, refused(admit("c", "paint")), "b is still under way in its other call")
	f.abandon("b")
	require.NoError(t, admit("c", "paint"), "b failed in both calls")
	apply("c", "paint", queued)
	require.True(t, refused(admit("d", "paint")), "a and c are active")

	apply("a", "paint", completed)
	apply("c", "paint", completed)
	require.NoError(t, admit("x", "draw"), "paint has nothing unfinished")
	apply("x", "draw", completed) // created and finished before its creator heard back
	require.Empty(t, f.creating.tasks, "nothing under way is remembered")
	require.Empty(t, f.creating.byOwner)
	require.Empty(t, f.creating.byMode)
	f.abandon("x") // a late failure report of an applied create changes nothing
	require.Empty(t, f.active["alice"])
}
