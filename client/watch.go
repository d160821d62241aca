package client

import (
	"context"
	"errors"
	"time"

	"connectrpc.com/connect"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"
)

// Watch calls fn with every message of the caller's WatchTasks stream: a snapshot first, then
// every event and heartbeat. A snapshot the server sends in parts (more set) reaches fn whole,
// as one message: a stream cut between its parts starts over, and fn never holds half of one. It starts where from says (its epoch and after_seq, from an
// earlier snapshot, event or heartbeat; nil or zero: a fresh snapshot of the active tasks).
// When the stream drops it resumes after the last seq it saw (the snapshot then says
// recovered, and the missed events follow), backing off from half a second to 10 s while the
// server cannot be reached. It returns when ctx ends (ctx's error), fn returns an error (which
// it returns), or the server refuses the watch for a reason retrying cannot mend (a bad token,
// say: that *connect.Error).
func (c *Client) Watch(ctx context.Context, from *taskhubv1.WatchTasksRequest, fn func(*taskhubv1.WatchTasksResponse) error) error {
	epoch, last := from.GetEpoch(), from.GetAfterSeq()
	backoff := 500 * time.Millisecond
	for {
		stream, err := c.tasks.WatchTasks(ctx, connect.NewRequest(&taskhubv1.WatchTasksRequest{Epoch: epoch, AfterSeq: last}))
		if err == nil {
			var parts []*taskhubv1.Task // of a snapshot not yet whole
			for stream.Receive() {
				m := stream.Msg()
				if s := m.GetSnapshot(); s != nil && s.More {
					parts = append(parts, s.Tasks...)
					continue
				} else if s != nil && parts != nil {
					s.Tasks = append(parts, s.Tasks...)
					parts = nil
				}
				switch {
				case m.GetSnapshot() != nil:
					epoch, last = m.GetSnapshot().Epoch, m.GetSnapshot().Seq
				case m.GetEvent() != nil:
					last = m.GetEvent().Seq
				case m.GetHeartbeat() != nil:
					last = max(last, m.GetHeartbeat().Seq)
				}
				backoff = 500 * time.Millisecond // it works again
				if err := fn(m); err != nil {
					stream.Close()
					return err
				}
			}
			err = stream.Err()
			stream.Close()
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		switch connect.CodeOf(err) {
		case connect.CodeUnauthenticated, connect.CodePermissionDenied, connect.CodeInvalidArgument, connect.CodeResourceExhausted:
			if !errors.Is(err, context.Canceled) {
				return err
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 10*time.Second)
	}
}
