// Package fdtest runs a test process out of file descriptors, for tests of what happens to the
// event log when its store cannot open a file.
package fdtest

import (
	"os"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
)

// Exhaust opens /dev/null until the process has no file descriptor left, and returns a function
// that closes them again. While they are held, every file JetStream opens fails with "too many
// open files": its periodic sync of a stream's state file does, and that sets the store's write
// error, after which the store refuses every write until it is reopened. A soft limit above
// 65,536 is lowered to it first (and restored when the test ends), so that filling it is quick.
// Tests that call it must not run in parallel with others of their process.
func Exhaust(t testing.TB) (release func()) {
	t.Helper()
	var rl syscall.Rlimit
	require.NoError(t, syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl))
	if rl.Cur > 1<<16 {
		low := rl
		low.Cur = 1 << 16
		require.NoError(t, syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low))
		t.Cleanup(func() { _ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl) })
	}
	var files []*os.File
	for {
		f, err := os.Open(os.DevNull)
		if err != nil {
			require.ErrorIs(t, err, syscall.EMFILE)
			break
		}
		files = append(files, f)
	}
	return func() {
		for _, f := range files {
			f.Close()
		}
		files = nil
	}
}
