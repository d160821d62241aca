package eventlog

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	storagev1 "github.com/taskhub/taskhub/gen/taskhub/storage/v1"
)

// sessionBucket is the key-value bucket of browser sessions. It is replicated with the rest of
// the log, so a session made on one node is known on every other, and signing out anywhere ends
// it everywhere.
const sessionBucket = "taskhub_sessions"

// sessionKey is the key of a session: the SHA-256 of its cookie, so that the bucket holds nothing
// a browser could present.
func sessionKey(cookie string) string {
	sum := sha256.Sum256([]byte(cookie))
	return hex.EncodeToString(sum[:])
}

// PutSession stores a session under its cookie. It expires after SessionTTL.
func (l *Log) PutSession(ctx context.Context, cookie string, s *storagev1.Session) error {
	if err := l.writable("put session"); err != nil {
		return err
	}
	data, err := proto.Marshal(s)
	if err != nil {
		return fmt.Errorf("eventlog: encode session: %w", err)
	}
	if _, err := l.sessions.Put(ctx, sessionKey(cookie), data); err != nil {
		return l.writeErr(ctx, "put session", err)
	}
	return nil
}

// Session returns the session of a cookie; ErrNotFound if there is none (never made, ended, or
// expired).
func (l *Log) Session(ctx context.Context, cookie string) (*storagev1.Session, error) {
	e, err := l.sessions.Get(ctx, sessionKey(cookie))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, l.unavailable("get session", err)
	}
	s := &storagev1.Session{}
	if err := proto.Unmarshal(e.Value(), s); err != nil {
		return nil, fmt.Errorf("eventlog: decode session: %w", err)
	}
	return s, nil
}

// DeleteSession ends the session of a cookie. Ending one that does not exist is not an error.
func (l *Log) DeleteSession(ctx context.Context, cookie string) error {
	if err := l.writable("delete session"); err != nil {
		return err
	}
	if err := l.sessions.Purge(ctx, sessionKey(cookie)); err != nil {
		return l.writeErr(ctx, "delete session", err)
	}
	return nil
}
