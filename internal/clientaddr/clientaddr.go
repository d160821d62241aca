// Package clientaddr tells clients apart by network address, for limits per client.
package clientaddr

import "net/netip"

// Of returns the client a peer address (host:port) counts as: its IPv4 address, or the /64 an
// IPv6 address is in (one host usually has a whole /64, so any address of it must count as the
// same client). An address that does not parse is the zero Addr: such clients share one
// allowance.
func Of(hostport string) netip.Addr {
	ap, err := netip.ParseAddrPort(hostport)
	if err != nil {
		return netip.Addr{}
	}
	a := ap.Addr().Unmap().WithZone("")
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p.Addr()
	}
	return a
}
