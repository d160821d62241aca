package taskhub

import (
	"sync"

	"google.golang.org/protobuf/proto"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"
)

// Message is a message of a watch stream, made once for every stream it goes to: an event is
// one Message, shared read-only by all the watches of its owner. Each of its wire encodings is
// made by the first stream that sends it in that encoding and kept with it for the others, so an
// event to a thousand watchers is encoded once, not a thousand times.
type Message struct {
	*taskhubv1.WatchTasksResponse
	// Replayed marks an event read back from the log for one watch (a client that resumed,
	// or fell behind) rather than delivered as it happened: its age says how long the client
	// was away, not how fast the server is.
	Replayed bool

	binary, json encoding
}

type encoding struct {
	once sync.Once
	b    []byte
	err  error
}

// NewMessage wraps m, which must not be changed afterwards.
func NewMessage(m *taskhubv1.WatchTasksResponse) *Message { return &Message{WatchTasksResponse: m} }

// Encoded returns the message's binary (protobuf) or JSON encoding, made with encode the first
// time it is asked for. The bytes are shared: the caller must not change them.
func (m *Message) Encoded(json bool, encode func(proto.Message) ([]byte, error)) ([]byte, error) {
	e := &m.binary
	if json {
		e = &m.json
	}
	e.once.Do(func() { e.b, e.err = encode(m.WatchTasksResponse) })
	return e.b, e.err
}
