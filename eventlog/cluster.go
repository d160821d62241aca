package eventlog

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/nats-io/nats-server/v2/server"
)

// Cluster makes the embedded NATS server one node of a NATS cluster: the nodes' servers connect
// to each other (routes), JetStream replicates the streams across them (Config.Replicas), and
// each stream has a leader that orders its writes, elected again when its node is lost.
type Cluster struct {
	// Addr is the host:port this node listens on for its peers.
	Addr string
	// Peers are the cluster addresses of the nodes, this node's own among them or not.
	Peers []string
	// Name names this node, unique in the cluster [derived from Addr].
	Name string
	// Secret authenticates the nodes to each other; every node has the same one. It or TLS is
	// required unless Addr and every peer are loopback addresses: anyone who can reach a route
	// could otherwise read and write every stream.
	Secret string
	// TLSCert and TLSKey are PEM files of this node's certificate and key, and TLSCA of the
	// certificate authority every node's certificate is signed by: with them, the routes are
	// encrypted and each node verifies the other's certificate (mutual TLS). A certificate
	// must name the host of its node's Addr (an IP SAN for an IP).
	TLSCert, TLSKey, TLSCA string
}

// tls reports whether the routes use TLS.
func (c Cluster) tls() bool { return c.TLSCert != "" || c.TLSKey != "" || c.TLSCA != "" }

// Enabled reports whether the node is to join a cluster.
func (c Cluster) Enabled() bool { return c.Addr != "" }

// nodes is how many nodes the cluster has: this one and its distinct peers.
func (c Cluster) nodes() int {
	n := 1
	for i, p := range c.Peers {
		if p != c.Addr && !slices.Contains(c.Peers[:i], p) {
			n++
		}
	}
	return n
}

// minSecret is the shortest Secret accepted: a guessable one protects nothing.
const minSecret = 16

// validate checks the addresses and the secret, and fills in Name.
func (c *Cluster) validate() error {
	loopback := true
	for _, a := range append([]string{c.Addr}, c.Peers...) {
		host, port, err := net.SplitHostPort(a)
		if err != nil {
			return fmt.Errorf("eventlog: cluster address %q: want host:port", a)
		}
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("eventlog: cluster address %q: port %q is not a number from 1 to 65535", a, port)
		}
		ip, err := netip.ParseAddr(host)
		loopback = loopback && (host == "localhost" || err == nil && ip.IsLoopback())
	}
	if len(c.Peers) == 0 {
		return errors.New("eventlog: a cluster needs its peers' addresses")
	}
	switch {
	case c.tls() && (c.TLSCert == "" || c.TLSKey == "" || c.TLSCA == ""):
		return errors.New("eventlog: cluster TLS needs this node's certificate, its key, and the certificate authority of every node")
	case c.Secret == "" && !c.tls() && !loopback:
		return errors.New("eventlog: a cluster on addresses other than loopback needs a secret shared by its nodes, or TLS")
	case c.Secret != "" && len(c.Secret) < minSecret:
		return fmt.Errorf("eventlog: the cluster secret has %d characters; it needs at least %d", len(c.Secret), minSecret)
	}
	if c.Name == "" {
		c.Name = "taskhub-" + strings.NewReplacer(".", "-", ":", "-", "[", "", "]", "").Replace(c.Addr)
	}
	if !validNodeName(c.Name) {
		return fmt.Errorf("eventlog: node name %q: use letters, digits, '-' and '_'", c.Name)
	}
	return nil
}

func validNodeName(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, r := range s {
		if !(r == '-' || r == '_' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
			return false
		}
	}
	return true
}

// clusterName is the NATS cluster's name: the same on every node.
const clusterName = "taskhub"

// routeUser is the user name the nodes present to each other, with Secret as the password.
const routeUser = "taskhub"

// configure sets the server options that make o a node of the cluster.
func (c Cluster) configure(o *server.Options) error {
	host, port, err := net.SplitHostPort(c.Addr)
	if err != nil {
		return err
	}
	o.Cluster.Port, err = strconv.Atoi(port)
	if err != nil {
		return err
	}
	o.ServerName = c.Name
	o.Cluster.Name, o.Cluster.Host = clusterName, host
	// A lost peer is retried every second; its first failure is logged, then one in a minute
	// (NATS logs every one by default: lines per second per route for as long as it is down).
	o.ReconnectErrorReports = 60
	if c.Secret != "" {
		o.Cluster.Username, o.Cluster.Password = routeUser, c.Secret
	}
	if c.tls() {
		tc, err := server.GenTLSConfig(&server.TLSConfigOpts{CertFile: c.TLSCert, KeyFile: c.TLSKey, CaFile: c.TLSCA, Verify: true})
		if err != nil {
			return fmt.Errorf("cluster TLS: %w", err)
		}
		tc.RootCAs = tc.ClientCAs // a node dialing a peer verifies it against the same authority
		o.Cluster.TLSConfig, o.Cluster.TLSTimeout = tc, 2
	}
	for _, p := range c.Peers {
		if p == c.Addr {
			continue
		}
		u := &url.URL{Scheme: "nats-route", Host: p}
		if c.Secret != "" {
			u.User = url.UserPassword(routeUser, c.Secret)
		}
		o.Routes = append(o.Routes, u)
	}
	return nil
}
