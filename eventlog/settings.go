package eventlog

import (
	"context"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// settingsPrefix is where each node sharing the log records its settings (subject
// taskhub.settings.<node> of the meta stream), for the others to compare with theirs.
const settingsPrefix = "taskhub.settings."

// PutSettings records this node's settings, a line of text.
func (l *Log) PutSettings(ctx context.Context, text string) error {
	if err := l.writable("put settings"); err != nil {
		return err
	}
	if _, err := l.js.Publish(ctx, settingsPrefix+l.node, []byte(text)); err != nil {
		return l.writeErr(ctx, "put settings", err)
	}
	return nil
}

// Settings returns the settings each node recorded within maxAge, by node name: a node that
// has left stops counting once its record is that old.
func (l *Log) Settings(ctx context.Context, maxAge time.Duration) (map[string]string, error) {
	info, err := l.meta.Info(ctx, jetstream.WithSubjectFilter(settingsPrefix+">"))
	if err != nil {
		return nil, l.unavailable("settings", err)
	}
	out := map[string]string{}
	for subj := range info.State.Subjects {
		m, err := l.meta.GetLastMsgForSubject(ctx, subj)
		if err != nil {
			return nil, l.getErr("settings", err)
		}
		if time.Since(m.Time) <= maxAge {
			out[strings.TrimPrefix(subj, settingsPrefix)] = string(m.Data)
		}
	}
	return out, nil
}
