package rpc_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/taskhub/taskhub/rpc"
)

func TestCheckOrigins(t *testing.T) {
	require.NoError(t, rpc.CheckOrigins(nil))
	require.NoError(t, rpc.CheckOrigins([]string{"https://app.example", "http://127.0.0.1:5173"}))
	for _, bad := range []string{"*", "app.example", "https://app.example/", "https://app.example/path", "ftp://app.example", "https://", "https://u@app.example", "https://app.example?x=1"} {
		require.Error(t, rpc.CheckOrigins([]string{bad}), bad)
	}
}
