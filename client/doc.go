// Package client is taskhub's Go client, beside the generated code: a Client with typed calls
// for people's side of the API (create, get, list, cancel, and a watch that resumes by itself),
// and a Worker that claims tasks and runs a Handler for each, keeping its lease alive and ending
// its context when the task is cancelled or the lease is lost.
//
//	c := client.New("http://127.0.0.1:8080", client.WithToken(token))
//	task, err := c.Create(ctx, &taskhubv1.CreateTaskRequest{Prompt: "a red fox", Mode: "demo"})
//	if connect.CodeOf(err) == connect.CodeInvalidArgument { ... }
//
// Errors from the server are *connect.Error, so connect.CodeOf tells them apart.
//
// Concurrency: a Client is safe for concurrent use, and cheap to derive (OnBehalfOf) since its
// copies share its HTTP client. Watch calls its function on the caller's goroutine, one message
// at a time, in the stream's order. A Worker runs up to Concurrency handlers at once, each on
// its own goroutine; a Job's Report may be called from any goroutine.
package client
