package taskhub

import (
	"errors"
	"fmt"
)

// Code classifies an Error. Package rpc maps each to a Connect code.
type Code int

// The error codes, named after what went wrong from the caller's side.
const (
	// Internal is a bug or an unexpected failure; the caller cannot fix it.
	Internal Code = iota
	// Invalid means a field is malformed, missing or too large.
	Invalid
	// NotFound means no task with that id belongs to the caller.
	NotFound
	// FailedPrecondition means the call is illegal in the task's current state.
	FailedPrecondition
	// PermissionDenied means the caller may not do this (for example, not the lease holder).
	PermissionDenied
	// Unauthenticated means the caller did not say who it is.
	Unauthenticated
	// ResourceExhausted means a limit was reached.
	ResourceExhausted
	// Unavailable means the hub cannot serve the call now (shutting down, event log down) and
	// changed nothing; retry.
	Unavailable
	// DeadlineExceeded means the call's deadline passed before the hub knew whether its change
	// was stored: it may or may not have been. Look (GetTask), or retry with the same
	// idempotency key.
	DeadlineExceeded
)

var codeNames = [...]string{"internal", "invalid", "not found", "failed precondition",
	"permission denied", "unauthenticated", "resource exhausted", "unavailable", "deadline exceeded"}

func (c Code) String() string {
	if c < 0 || int(c) >= len(codeNames) {
		return fmt.Sprintf("code(%d)", int(c))
	}
	return codeNames[c]
}

// Error is an error a caller can act on: a code and a message a person understands.
type Error struct {
	Code    Code
	Message string
}

func (e *Error) Error() string { return e.Message }

// Errorf returns an *Error with the given code and a formatted message.
func Errorf(code Code, format string, args ...any) error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// ErrorCode returns the code of the first *Error in err's chain, or Internal.
func ErrorCode(err error) Code {
	if e, ok := errors.AsType[*Error](err); ok {
		return e.Code
	}
	return Internal
}
