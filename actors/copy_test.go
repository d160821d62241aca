package actors

import (
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	storagev1 "github.com/taskhub/taskhub/gen/taskhub/storage/v1"
	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"
)

// fill sets every field of m, recursively, to a value that is not the zero one.
func fill(m protoreflect.Message) {
	fields := m.Descriptor().Fields()
	for i := range fields.Len() {
		f := fields.Get(i)
		switch {
		case f.IsMap():
			mp := m.Mutable(f).Map()
			mp.Set(protoreflect.ValueOfString("k").MapKey(), scalar(f.MapValue(), mp.NewValue()))
		case f.IsList():
			l := m.Mutable(f).List()
			l.Append(scalar(f, l.NewElement()))
		case f.Message() != nil:
			fill(m.Mutable(f).Message())
		default:
			m.Set(f, scalar(f, m.NewField(f)))
		}
	}
}

// scalar is a value of f's kind that is not the zero one (a message's: filled).
func scalar(f protoreflect.FieldDescriptor, v protoreflect.Value) protoreflect.Value {
	switch f.Kind() {
	case protoreflect.StringKind:
		return protoreflect.ValueOfString("x")
	case protoreflect.BytesKind:
		return protoreflect.ValueOfBytes([]byte{1})
	case protoreflect.BoolKind:
		return protoreflect.ValueOfBool(true)
	case protoreflect.DoubleKind:
		return protoreflect.ValueOfFloat64(1.5)
	case protoreflect.FloatKind:
		return protoreflect.ValueOfFloat32(1.5)
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		return protoreflect.ValueOfUint32(7)
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		return protoreflect.ValueOfUint64(7)
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		return protoreflect.ValueOfInt32(7)
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		return protoreflect.ValueOfInt64(7)
	case protoreflect.EnumKind:
		return protoreflect.ValueOfEnum(1)
	case protoreflect.MessageKind:
		fill(v.Message())
		return v
	}
	panic("a field kind fill does not know: " + f.Kind().String())
}

// TestCopyTask: the copies a task actor changes into the next state have every field of the
// original (a field added to Task or Lease and not to copyTask or copyLease fails this).
func TestCopyTask(t *testing.T) {
	task := &taskhubv1.Task{}
	fill(task.ProtoReflect())
	require.Equal(t, task.ProtoReflect().Descriptor().Fields().Len(), countSet(task.ProtoReflect()), "fill left a field unset")
	require.True(t, proto.Equal(task, copyTask(task)), "copyTask misses a field:\n got %v\nwant %v", copyTask(task), task)
	require.NotSame(t, task, copyTask(task))

	lease := &storagev1.Lease{}
	fill(lease.ProtoReflect())
	require.Equal(t, lease.ProtoReflect().Descriptor().Fields().Len(), countSet(lease.ProtoReflect()), "fill left a field unset")
	require.True(t, proto.Equal(lease, copyLease(lease)), "copyLease misses a field:\n got %v\nwant %v", copyLease(lease), lease)

	require.Nil(t, copyTask(nil))
	require.Nil(t, copyLease(nil))
}

func countSet(m protoreflect.Message) int {
	n := 0
	m.Range(func(protoreflect.FieldDescriptor, protoreflect.Value) bool { n++; return true })
	return n
}
