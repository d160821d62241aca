package eventlog

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"

	"github.com/nats-io/nats.go/jetstream"
)

// idempotencyBucket maps a user's idempotency keys to the task ids their first create chose,
// for Config.Duplicates (24 h).
const idempotencyBucket = "taskhub_idempotency"

// ClaimKey binds owner's idempotency key to the task id id, unless it is bound already, and
// returns the id it is bound to: id for the first create that uses the key, the first create's
// id for every retry. The binding is made before the task exists; a retry whose task does not
// exist (the first create failed, or is still under way) creates it under that id, where the
// event log's fence lets only one create through. The binding lasts Config.Duplicates from its
// making.
func (l *Log) ClaimKey(ctx context.Context, owner, key, id string) (string, error) {
	k := idempotencyKey(owner, key)
	if err := l.writable("idempotency key"); err != nil {
		return "", err
	}
	// A key that exists may be gone when it is read: it expired in between. In an external
	// cluster whose leaders were being moved, a read right after such a Create was also once
	// answered "not found". Either way, try again.
	var err error
	for range 3 {
		if _, err = l.idempotency.Create(ctx, k, []byte(id)); err == nil {
			return id, nil
		} else if !errors.Is(err, jetstream.ErrKeyExists) {
			return "", l.writeErr(ctx, "idempotency key", err)
		}
		var e jetstream.KeyValueEntry
		if e, err = l.idempotency.Get(ctx, k); err == nil {
			return string(e.Value()), nil
		} else if !errors.Is(err, jetstream.ErrKeyNotFound) {
			break
		}
	}
	return "", l.unavailable("idempotency key", err)
}

func idempotencyKey(owner, key string) string {
	sum := sha256.Sum256([]byte(owner + "\x00" + key))
	return hex.EncodeToString(sum[:])
}
