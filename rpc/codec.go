package rpc

import (
	"bytes"
	"errors"
	"fmt"

	"connectrpc.com/connect"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"

	"github.com/taskhub/taskhub"
)

// strictJSON is Connect's JSON codec, except that a field the schema does not know is an error
// (invalid_argument) instead of being dropped. JSON is what people and scripts type, and a
// misspelt field ("mdoe") would otherwise be silently ignored. The binary codec, which
// generated clients use, stays tolerant, so clients and servers of different versions mix.
type strictJSON struct{ name string }

func (c strictJSON) Name() string { return c.name }

func (c strictJSON) IsBinary() bool { return false }

func (c strictJSON) Marshal(message any) ([]byte, error) {
	m, ok := message.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("%T is not a protobuf message", message)
	}
	if b, ok := appendReportJSON(nil, m); ok {
		return b, nil
	}
	return protojson.Marshal(m)
}

func (c strictJSON) MarshalAppend(dst []byte, message any) ([]byte, error) {
	m, ok := message.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("%T is not a protobuf message", message)
	}
	if b, ok := appendReportJSON(dst, m); ok {
		return b, nil
	}
	return protojson.MarshalOptions{}.MarshalAppend(dst, m)
}

func (c strictJSON) Unmarshal(data []byte, message any) error {
	m, ok := message.(proto.Message)
	if !ok {
		return fmt.Errorf("%T is not a protobuf message", message)
	}
	if len(data) == 0 {
		return errors.New("zero-length payload is not a valid JSON object")
	}
	switch r := m.(type) { // progress reports in their plain form (reportjson.go)
	case *taskhubv1.ReportProgressRequest:
		if decodeReport(data, r) {
			return nil
		}
		proto.Reset(r)
	case *taskhubv1.BatchReportProgressRequest:
		if decodeBatch(data, r) {
			return nil
		}
		proto.Reset(r)
	}
	if err := protojson.Unmarshal(data, m); err != nil {
		return fmt.Errorf("unmarshal into %T: %w", message, err)
	}
	return nil
}

// appendCodec is a connect.Codec that can marshal into a buffer connect owns.
type appendCodec interface {
	connect.Codec
	MarshalAppend(dst []byte, message any) ([]byte, error)
}

// messageCodec sends a watch's *taskhub.Message in its shared encoding, made by the first
// stream that sends it (see taskhub.Message), and everything else as its base codec does. The
// bytes are copied into connect's own buffer: connect recycles the buffers it sends from.
type messageCodec struct {
	appendCodec
	json bool
}

func (c messageCodec) MarshalAppend(dst []byte, message any) ([]byte, error) {
	m, ok := message.(*taskhub.Message)
	if !ok {
		return c.appendCodec.MarshalAppend(dst, message)
	}
	b, err := m.Encoded(c.json, c.encode)
	if err != nil {
		return nil, err
	}
	return append(dst, b...), nil
}

func (c messageCodec) Marshal(message any) ([]byte, error) { return c.MarshalAppend(nil, message) }

// encode makes a message's shared encoding; its JSON by appendWatchJSON, which writes what
// protojson would, five times faster, into a pooled buffer, then copied to one of its size:
// the encoding is kept while the message's watchers send it, and a buffer grown as it was
// written cost an event twice to three times its size.
func (c messageCodec) encode(m proto.Message) ([]byte, error) {
	if r, ok := m.(*taskhubv1.WatchTasksResponse); ok && c.json {
		b, ok := appendWatchJSON(getBuffer(), r)
		defer putBuffer(b)
		if ok {
			return bytes.Clone(b), nil
		}
	}
	return c.appendCodec.MarshalAppend(nil, m)
}

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

// codecs are the handlers' codecs: binary and strict JSON, each sending a watch's messages in
// their shared encodings.
func codecs() []connect.HandlerOption {
	return []connect.HandlerOption{
		connect.WithCodec(messageCodec{binaryCodec{}, false}),
		connect.WithCodec(messageCodec{strictJSON{"json"}, true}),
		connect.WithCodec(messageCodec{strictJSON{"json; charset=utf-8"}, true}),
	}
}
