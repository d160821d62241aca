package main

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/taskhub/taskhub/rpc"
)

// runUsers is the users command: it writes an auth file of --users users (load-u0, load-u1,
// ...) and one worker (load-worker), each with a random token, for a server that push --users
// then runs against, as many users of an app each watch their own tasks.
func runUsers(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("taskhub-load users", flag.ContinueOnError)
	fs.SetOutput(stderr)
	n := fs.Int("users", 1000, "how many users")
	out := fs.String("out", "", "`file` to write; it must not exist")
	if err := fs.Parse(args); err != nil {
		return err
	}
	switch {
	case fs.NArg() > 0:
		return fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	case *out == "":
		return errors.New("users: --out is required")
	case *n < 1 || *n > maxUsers:
		return fmt.Errorf("--users must be 1..%d: got %d", maxUsers, *n)
	}
	f := rpc.AuthFile{Workers: []rpc.Principal{{Name: "load-worker", Token: rand.Text()}}}
	for i := range *n {
		f.Users = append(f.Users, rpc.Principal{Name: fmt.Sprintf("load-u%d", i), Token: rand.Text()})
	}
	b, err := json.MarshalIndent(f, "", " ")
	if err != nil {
		return err
	}
	file, err := os.OpenFile(*out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := file.Write(append(b, '\n')); err != nil {
		file.Close()
		return err
	}
	if err := file.Close(); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s: %d users and a worker; start taskhub with --auth-file %s, then push --users %d --auth-file %s\n", *out, *n, *out, *n, *out)
	return nil
}
