package rpc

import (
	"compress/gzip"
	"encoding/binary"
	"fmt"
	"io"
	"net/http"
	"strings"

	"connectrpc.com/connect"
)

// checkEnvelopes makes a malformed request body answer invalid_argument. The bodies of Connect
// streaming, gRPC and gRPC-Web requests are sequences of enveloped messages (a flags byte, a
// 4-byte length, the message); connect-go answers a body that breaks that framing with
// internal, a code that blames the server. The request's body is read through a check of the
// framing, whose errors connect passes on as they are.
func checkEnvelopes(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ct := r.Header.Get("Content-Type")
		var encoding string
		switch {
		case strings.HasPrefix(ct, "application/connect+"):
			encoding = r.Header.Get("Connect-Content-Encoding")
		case strings.HasPrefix(ct, "application/grpc"): // gRPC and gRPC-Web
			encoding = r.Header.Get("Grpc-Encoding")
		default: // Connect unary: the body is the message
			next.ServeHTTP(w, r)
			return
		}
		if r.Body != nil && r.Body != http.NoBody {
			r.Body = &envelopeBody{ReadCloser: r.Body, compressed: encoding != "" && encoding != "identity"}
		}
		next.ServeHTTP(w, r)
	})
}

// envelopeBody follows the framing of the enveloped messages read through it.
type envelopeBody struct {
	io.ReadCloser
	compressed bool    // the request names a message encoding: the compressed flag is allowed
	head       [5]byte // the prefix being read
	n          int     // bytes of head read
	left       uint32  // bytes of the current message still to come
}

func (b *envelopeBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if ferr := b.follow(p[:n]); ferr != nil {
		// No bytes with it: a reader that got what it asked for would drop the error.
		return 0, ferr
	}
	if err == io.EOF && (b.n > 0 || b.left > 0) {
		return n, connect.NewError(connect.CodeInvalidArgument,
			fmt.Errorf("the request body ended inside a message: %d bytes of its 5-byte prefix and %d bytes of the message are missing", (5-b.n)%5, b.left))
	}
	return n, err
}

func (b *envelopeBody) follow(data []byte) error {
	for len(data) > 0 {
		if b.left > 0 {
			skip := min(uint32(len(data)), b.left)
			b.left -= skip
			data = data[skip:]
			continue
		}
		c := copy(b.head[b.n:], data)
		b.n += c
		data = data[c:]
		if b.n < len(b.head) {
			continue
		}
		b.n = 0
		switch flags := b.head[0]; {
		case flags&^1 != 0:
			return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("envelope flags %#02x are not valid in a request: use 0, or 1 for a compressed message", flags))
		case flags == 1 && !b.compressed:
			return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("a message is marked compressed, but the request names no encoding"))
		}
		b.left = binary.BigEndian.Uint32(b.head[1:])
	}
	return nil
}

// boundedGzip is the gzip decompressor of requests. When a message inflates past
// MaxRequestBytes it fails at once, where connect-go's would inflate the rest (a gigabyte, for
// a megabyte of "gzip bomb") only to report its size.
type boundedGzip struct {
	gzip.Reader
	left int64
}

func (d *boundedGzip) Read(p []byte) (int, error) {
	if d.left <= 0 {
		return 0, connect.NewError(connect.CodeResourceExhausted,
			fmt.Errorf("the message inflates to more than %d bytes", MaxRequestBytes))
	}
	if int64(len(p)) > d.left {
		p = p[:d.left]
	}
	n, err := d.Reader.Read(p)
	d.left -= int64(n)
	return n, err
}

// Reset starts decompressing r. Connect reads one byte past its limit to see that a message is
// too large, so that byte is allowed too.
func (d *boundedGzip) Reset(r io.Reader) error {
	d.left = MaxRequestBytes + 1
	return d.Reader.Reset(r)
}

func gzipCompression() connect.HandlerOption {
	return connect.WithCompression("gzip",
		func() connect.Decompressor { return &boundedGzip{} },
		func() connect.Compressor { return gzip.NewWriter(io.Discard) })
}
