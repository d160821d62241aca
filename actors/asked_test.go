package actors

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/taskhub/taskhub"
)

// TestAsked_AnswerTakesAReplyThatCame: a reply already in its channel is the answer, though the
// call's expiry (shared by a batch) or the hub's Close came first; without one, the expiry says
// DeadlineExceeded and Close says Unavailable.
func TestAsked_AnswerTakesAReplyThatCame(t *testing.T) {
	t.Parallel()
	closed := make(chan struct{})
	close(closed)
	open := make(chan struct{})
	for range 200 { // select picks among ready cases at random
		for _, c := range []struct{ expired, stopped chan struct{} }{{closed, open}, {open, closed}, {closed, closed}} {
			want := &taskReply{}
			a := asked{id: "T", reply: make(chan *taskReply, 1), stopped: c.stopped}
			a.reply <- want
			require.Same(t, want, a.answer(c.expired))
		}
	}
	a := asked{id: "T", reply: make(chan *taskReply, 1), stopped: open}
	require.Equal(t, taskhub.DeadlineExceeded, taskhub.ErrorCode(a.answer(closed).err))
	a.stopped = closed
	require.Equal(t, taskhub.Unavailable, taskhub.ErrorCode(a.answer(open).err))
}
