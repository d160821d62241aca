// Package natstest starts an external NATS cluster with JetStream on loopback for tests: what
// taskhub's --nats-url points at in a deployment that runs its own NATS.
package natstest

import (
	"net"
	"net/url"
	"strconv"
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"

	"github.com/taskhub/taskhub/internal/freeport"
)

// Cluster starts n NATS servers with JetStream, clustered on loopback, each with its own store
// in a temporary directory, and returns them and their client URLs once all are ready. They
// shut down when the test ends.
func Cluster(t testing.TB, n int) ([]*natsserver.Server, []string) {
	t.Helper()
	routes := make([]*url.URL, n)
	routeAddrs := make([]string, n)
	for i := range n {
		routeAddrs[i] = freeport.Addr(t)
		routes[i] = &url.URL{Scheme: "nats-route", Host: routeAddrs[i]}
	}
	nss := make([]*natsserver.Server, n)
	urls := make([]string, n)
	for i := range n {
		host, port, _ := net.SplitHostPort(routeAddrs[i])
		cport, _ := strconv.Atoi(port)
		client := freeport.Addr(t)
		_, clientPort, _ := net.SplitHostPort(client)
		p, _ := strconv.Atoi(clientPort)
		ns, err := natsserver.NewServer(&natsserver.Options{
			ServerName: "nats" + strconv.Itoa(i+1), Host: "127.0.0.1", Port: p,
			JetStream: true, StoreDir: t.TempDir(), NoSigs: true, NoLog: true,
			Cluster: natsserver.ClusterOpts{Name: "external", Host: host, Port: cport},
			Routes:  routes,
		})
		if err != nil {
			t.Fatal(err)
		}
		ns.Start()
		t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
		nss[i], urls[i] = ns, "nats://"+client
	}
	for _, ns := range nss {
		if !ns.ReadyForConnections(30 * time.Second) {
			t.Fatalf("NATS server %s not ready in 30 s", ns.Name())
		}
	}
	return nss, urls
}

// Single returns a function that starts a NATS server with JetStream on 127.0.0.1:port, with its
// store in dir, and waits until it is ready: called again after a Shutdown, it starts the server
// again on the same port and store, as an operator restarting NATS would.
func Single(t testing.TB, port int, dir string) func() *natsserver.Server {
	return func() *natsserver.Server {
		t.Helper()
		ns, err := natsserver.NewServer(&natsserver.Options{Host: "127.0.0.1", Port: port, JetStream: true, StoreDir: dir, NoSigs: true, NoLog: true})
		if err != nil {
			t.Fatal(err)
		}
		ns.Start()
		if !ns.ReadyForConnections(10 * time.Second) {
			t.Fatalf("NATS server on port %d not ready in 10 s", port)
		}
		return ns
	}
}
