package clientaddr_test

import (
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/taskhub/taskhub/internal/clientaddr"
)

func TestOf(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ in, want string }{
		{"127.0.0.1:80", "127.0.0.1"},
		{"[::ffff:10.0.0.7]:443", "10.0.0.7"},
		{"[2001:db8:1:2:3:4:5:6]:80", "2001:db8:1:2::"},
		{"[2001:db8:1:2:ffff::1%eth0]:80", "2001:db8:1:2::"},
		{"[::1]:80", "::"},
	} {
		require.Equal(t, netip.MustParseAddr(c.want), clientaddr.Of(c.in), c.in)
	}
	require.Equal(t, clientaddr.Of("[2001:db8:1:2::1]:1"), clientaddr.Of("[2001:db8:1:2:aaaa::9]:2"), "one /64, one client")
	require.NotEqual(t, clientaddr.Of("[2001:db8:1:2::1]:1"), clientaddr.Of("[2001:db8:1:3::1]:1"))
	require.False(t, clientaddr.Of("not an address").IsValid())
}
