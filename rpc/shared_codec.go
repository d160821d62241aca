package rpc

import (
	"fmt"
	"sync"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"
)

// appendCodec is a connect.Codec that can marshal into a buffer connect owns.
type appendCodec interface {
	connect.Codec
	MarshalAppend(dst []byte, message any) ([]byte, error)
}

// sharedEvents encodes each event once per codec, however many streams it goes to. The hub
// hands the same *WatchTasksResponse, read-only, to every watch of its owner, so the encoding is
// kept under that pointer for a couple of seconds, long enough for every stream that keeps up
// to send it. The map holds the pointer, so the message cannot be freed and its address reused
// while it is a key. Bytes are always copied into connect's own buffer (MarshalAppend): connect
// recycles the buffers it sends from.
type sharedEvents struct {
	appendCodec
	mu        sync.Mutex
	cur, prev map[*taskhubv1.WatchTasksResponse][]byte
	turned    time.Time
}

// keepFor is how long an encoding stays shared.
const keepFor = time.Second

func newSharedEvents(base appendCodec) *sharedEvents {
	return &sharedEvents{appendCodec: base, cur: map[*taskhubv1.WatchTasksResponse][]byte{}, turned: time.Now()}
}

func (c *sharedEvents) MarshalAppend(dst []byte, message any) ([]byte, error) {
	r, ok := message.(*taskhubv1.WatchTasksResponse)
	if !ok || r.GetEvent() == nil {
		return c.appendCodec.MarshalAppend(dst, message)
	}
	c.mu.Lock()
	b, ok := c.cur[r]
	if !ok {
		b, ok = c.prev[r]
	}
	c.mu.Unlock()
	if ok {
		return append(dst, b...), nil
	}
	b, err := c.appendCodec.MarshalAppend(nil, message)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	if now := time.Now(); now.Sub(c.turned) > keepFor {
		c.prev, c.cur, c.turned = c.cur, make(map[*taskhubv1.WatchTasksResponse][]byte, len(c.cur)), now
	}
	c.cur[r] = b
	c.mu.Unlock()
	return append(dst, b...), nil
}

// Marshal returns bytes the caller owns.
func (c *sharedEvents) Marshal(message any) ([]byte, error) { return c.MarshalAppend(nil, message) }

// binaryCodec is Connect's protobuf binary codec.
type binaryCodec struct{}

func (binaryCodec) Name() string   { return "proto" }
func (binaryCodec) IsBinary() bool { return true }

func (binaryCodec) Marshal(message any) ([]byte, error) {
	return binaryCodec{}.MarshalAppend(nil, message)
}

func (binaryCodec) MarshalAppend(dst []byte, message any) ([]byte, error) {
	m, ok := message.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("%T is not a protobuf message", message)
	}
	return proto.MarshalOptions{}.MarshalAppend(dst, m)
}

func (binaryCodec) Unmarshal(data []byte, message any) error {
	m, ok := message.(proto.Message)
	if !ok {
		return fmt.Errorf("%T is not a protobuf message", message)
	}
	return proto.Unmarshal(data, m)
}

// codecs are the handlers' codecs: binary and strict JSON, each sharing event encodings.
func codecs() []connect.HandlerOption {
	return []connect.HandlerOption{
		connect.WithCodec(newSharedEvents(binaryCodec{})),
		connect.WithCodec(newSharedEvents(strictJSON{"json"})),
		connect.WithCodec(newSharedEvents(strictJSON{"json; charset=utf-8"})),
	}
}
