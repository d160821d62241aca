package eventlog

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	storagev1 "github.com/taskhub/taskhub/gen/taskhub/storage/v1"
)

// webhookBucket is the key-value bucket of webhook cursors: task id -> storage.v1.WebhookCursor.
// Replicated with the rest of the log, so that the node that delivers next (after a restart, or
// another node after this one's loss) resumes where the last delivery ended.
const webhookBucket = "taskhub_webhooks"

// webhookTTL is how long a cursor lasts without a write. A task's deliveries end well within it
// (a failing event is given up after a day); a cursor of a task that runs longer without an
// event to deliver expires, and its events are delivered again from the start: at least once.
const webhookTTL = 7 * 24 * time.Hour

// WebhookCursor returns the cursor of a task's webhook deliveries; ErrNotFound if none was
// written (nothing delivered yet).
func (l *Log) WebhookCursor(ctx context.Context, id string) (*storagev1.WebhookCursor, error) {
	e, err := l.webhooks.Get(ctx, id)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, l.unavailable("get webhook cursor", err)
	}
	c := &storagev1.WebhookCursor{}
	if err := proto.Unmarshal(e.Value(), c); err != nil {
		return nil, fmt.Errorf("eventlog: decode webhook cursor: %w", err)
	}
	return c, nil
}

// PutWebhookCursor records where a task's webhook deliveries are.
func (l *Log) PutWebhookCursor(ctx context.Context, id string, c *storagev1.WebhookCursor) error {
	if err := l.writable("put webhook cursor"); err != nil {
		return err
	}
	data, err := proto.Marshal(c)
	if err != nil {
		return fmt.Errorf("eventlog: encode webhook cursor: %w", err)
	}
	if _, err := l.webhooks.Put(ctx, id, data); err != nil {
		return l.writeErr(ctx, "put webhook cursor", err)
	}
	return nil
}
