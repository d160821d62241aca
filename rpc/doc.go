// Package rpc serves the Connect API (Connect, gRPC and gRPC-Web on one handler; JSON and
// binary): TaskService for people and pages, WorkerService for workers. Handlers are thin: they
// take the caller's identity from the auth interceptor, call the hub, and map its errors to
// Connect codes in one place (errors.go).
//
// Handlers are safe for concurrent use. A WatchTasks stream runs on its request's goroutine and
// only ever blocks itself: the hub queues its events in a bounded outbox, and a stream that
// cannot keep up costs the hub nothing but that outbox.
package rpc
