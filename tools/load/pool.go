package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"

	"github.com/taskhub/taskhub/client"
)

// pool spreads streams over HTTP/2 cleartext connections: one transport, so one connection,
// per perConn streams (Go's server allows 250 concurrent streams on a connection); or over
// HTTP/1.1 connections, one per stream; or over rawConns, perConn streams each. It counts the
// bytes its connections carry, framing and headers included.
type pool struct {
	perConn int
	tls     *tls.Config // nil: cleartext
	clients []*http.Client
	raw     []*rawConn
	dialer  net.Dialer
	in, out atomic.Int64 // bytes read and written
	conns   atomic.Int64 // connections dialed
}

// newPool makes a pool of HTTP clients for streams streams. h2, when set, tunes the HTTP/2
// client; http1 makes every stream an HTTP/1.1 request on a connection of its own, as a
// browser's page does without TLS (perConn must then be 1).
//
// With tlsConf the connections are TLS: HTTP/2 (or HTTP/1.1 with http1) as a browser speaks
// to a server behind HTTPS.
func newPool(streams, perConn int, h2 *http.HTTP2Config, http1 bool, tlsConf *tls.Config) *pool {
	p := &pool{perConn: perConn, tls: tlsConf, dialer: net.Dialer{Timeout: 10 * time.Second}}
	for range (streams + perConn - 1) / perConn {
		protocols := new(http.Protocols)
		switch {
		case http1:
			protocols.SetHTTP1(true)
		case tlsConf != nil:
			protocols.SetHTTP2(true)
		default:
			protocols.SetUnencryptedHTTP2(true)
		}
		p.clients = append(p.clients, &http.Client{Transport: &http.Transport{
			Protocols:       protocols,
			HTTP2:           h2,
			DialContext:     p.dial,
			TLSClientConfig: tlsConf,
		}})
	}
	return p
}

// newRawPool makes a pool of rawConns for streams streams; cfg.dial is the pool's.
func newRawPool(streams, perConn int, cfg rawConfig, tlsConf *tls.Config) *pool {
	p := &pool{perConn: perConn, tls: tlsConf, dialer: net.Dialer{Timeout: 10 * time.Second}}
	cfg.dial = p.dialFor("h2")
	for range (streams + perConn - 1) / perConn {
		p.raw = append(p.raw, newRawConn(&cfg))
	}
	return p
}

// dialFor returns how the tool's own clients dial for protocol proto (an ALPN name): the
// pool's dial, and a TLS handshake offering proto when the pool is TLS. The bytes counted
// are those on the wire, TLS records included.
func (p *pool) dialFor(proto string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	if p.tls == nil {
		return p.dial
	}
	conf := p.tls.Clone()
	conf.NextProtos = []string{proto}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := p.dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		host, _, _ := net.SplitHostPort(addr)
		withName := conf.Clone()
		withName.ServerName = host
		tc := tls.Client(c, withName)
		if err := tc.HandshakeContext(ctx); err != nil {
			c.Close()
			return nil, err
		}
		if got := tc.ConnectionState().NegotiatedProtocol; got != proto {
			c.Close()
			return nil, fmt.Errorf("the server chose protocol %q over TLS, not %q", got, proto)
		}
		return tc, nil
	}
}

func (p *pool) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	c, err := p.dialer.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	p.conns.Add(1)
	return &countingConn{Conn: c, p: p}, nil
}

// client returns the HTTP client of stream i.
func (p *pool) client(i int) *http.Client { return p.clients[i/p.perConn] }

// rawConn returns the rawConn of stream i.
func (p *pool) rawConn(i int) *rawConn { return p.raw[i/p.perConn] }

// close closes the pool's idle connections, and its rawConns: all of its connections once its
// streams have ended.
func (p *pool) close() {
	for _, c := range p.clients {
		c.CloseIdleConnections()
	}
	for _, c := range p.raw {
		c.close()
	}
}

type countingConn struct {
	net.Conn
	p *pool
}

func (c *countingConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.p.in.Add(int64(n))
	return n, err
}

func (c *countingConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.p.out.Add(int64(n))
	return n, err
}

// clientOptions are the Connect options of every client: the codec asked for (the binary one
// by default), gzip only when asked, and a bearer token when given.
func clientOptions(token string, gzip bool, codec string) []connect.ClientOption {
	var opts []connect.ClientOption
	if codec == codecJSON {
		opts = append(opts, connect.WithProtoJSON())
	}
	if !gzip {
		// Connect's Go client accepts gzip by default, and Connect's handler then compresses
		// every message; browsers' Connect clients do not ask for it.
		opts = append(opts, connect.WithAcceptCompression("gzip", nil, nil))
	}
	if token != "" {
		opts = append(opts, connect.WithInterceptors(client.Bearer(token)))
	}
	return opts
}
