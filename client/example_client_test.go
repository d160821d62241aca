package client_test

import (
	"context"
	"errors"
	"fmt"
	"log"

	"connectrpc.com/connect"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"

	"github.com/taskhub/taskhub/client"
)

func ExampleClient() {
	ctx := context.Background()
	c := client.New("http://127.0.0.1:8080", client.WithToken("a user's token"))
	task, err := c.Create(ctx, &taskhubv1.CreateTaskRequest{Prompt: "a red fox", Mode: "demo"})
	if connect.CodeOf(err) == connect.CodeResourceExhausted {
		log.Fatal("too many tasks under way: ", err)
	} else if err != nil {
		log.Fatal(err)
	}
	fmt.Println("created", task.Id)

	for t, err := range c.List(ctx, &taskhubv1.ListTasksRequest{States: []taskhubv1.TaskState{taskhubv1.TaskState_TASK_STATE_RUNNING}}) {
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(t.Id, t.Progress, t.Message)
	}

	// Every change to the caller's tasks, until ctx ends; it resumes after a dropped connection.
	err = c.Watch(ctx, nil, func(m *taskhubv1.WatchTasksResponse) error {
		if e := m.GetEvent(); e != nil {
			fmt.Println(e.Kind, e.Task.Id, e.Task.Progress)
		}
		return nil
	})
	log.Fatal(err)
}

func ExampleClient_OnBehalfOf() {
	backend := client.New("http://127.0.0.1:8080", client.WithToken("a service's token"))
	task, err := backend.OnBehalfOf("alice").Create(context.Background(), &taskhubv1.CreateTaskRequest{Prompt: "alice's report", Mode: "render"})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("created for alice:", task.Id)
}

func ExampleWorker() {
	w := &client.Worker{
		Client:      client.New("http://127.0.0.1:8080", client.WithToken("a worker's token")),
		ID:          "import-1",
		Concurrency: 4,
	}
	// Run claims until its context ends, then lets the tasks under way finish.
	err := w.Run(context.Background(), []string{"import"}, func(ctx context.Context, job *client.Job) (string, error) {
		rows := job.Task.Params["rows"]
		if rows == "" {
			return "", client.Permanent(errors.New("param rows is required")) // no retry
		}
		for i := range 10 {
			job.Report(ctx, float64(i*10), "importing") // renews the lease too
			if ctx.Err() != nil {
				return "", ctx.Err() // cancelled, or the lease lost: what it returns is dropped
			}
		}
		return "imported " + rows + " rows", nil
	})
	log.Fatal(err)
}
