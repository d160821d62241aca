package actors

import (
	"testing"
	"time"

	"github.com/taskhub/taskhub"
)

// FuzzPageToken: a page token from a client is either refused with Invalid or names a task id,
// and the token of that id is the token given.
func FuzzPageToken(f *testing.F) {
	f.Add("")
	f.Add(encodePageToken(taskhub.NewTaskID(time.Unix(1700000000, 0))))
	f.Add("forged")
	f.Add("MDFIUVg=")
	f.Fuzz(func(t *testing.T, token string) {
		id, err := decodePageToken(token)
		if err != nil {
			if taskhub.ErrorCode(err) != taskhub.Invalid {
				t.Fatalf("%q: want Invalid, got %v", token, err)
			}
			return
		}
		if token == "" {
			if id != "" {
				t.Fatalf("no token gave id %q", id)
			}
			return
		}
		if taskhub.ValidateTaskID(id) != nil {
			t.Fatalf("%q decoded to a malformed id %q", token, id)
		}
		if again := encodePageToken(id); again != token {
			t.Fatalf("%q decoded to %q, which encodes to %q", token, id, again)
		}
	})
}
