// Package taskhub holds the domain vocabulary every other package shares: the errors the hub
// returns (mapped to Connect codes in one place, package rpc), the limits on what callers may
// send, and the validation of it.
//
// The task itself is the generated taskhub.v1.Task: it is what is stored in the event log and
// what watchers receive, so there is no second copy of it to keep in step.
package taskhub
