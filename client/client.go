package client

import (
	"context"
	"iter"
	"net/http"
	"slices"
	"strings"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"
	"github.com/taskhub/taskhub/gen/taskhub/v1/taskhubv1connect"
)

// OnBehalfOfHeader is the header in which a service names the user it acts for (see
// WithOnBehalfOf).
const OnBehalfOfHeader = "Taskhub-On-Behalf-Of"

// Client calls a taskhub server. Its typed calls are TaskService's; Tasks and Work are the
// generated clients, for anything else; a Worker claims and runs tasks through it.
type Client struct {
	baseURL string
	o       options
	tasks   taskhubv1connect.TaskServiceClient
	work    taskhubv1connect.WorkerServiceClient
}

type options struct {
	http       connect.HTTPClient
	h2c        bool
	token      string
	onBehalfOf string
	connect    []connect.ClientOption
}

// Option configures a Client.
type Option func(*options)

// WithToken sends token as the bearer token of every call: a user's, a service's or a
// worker's, as the server's auth file or minted tokens say.
func WithToken(token string) Option { return func(o *options) { o.token = token } }

// WithHTTPClient makes calls with c [http.DefaultClient: HTTP/1.1, or HTTP/2 over TLS].
func WithHTTPClient(c connect.HTTPClient) Option { return func(o *options) { o.http = c } }

// WithH2C makes calls over unencrypted HTTP/2 (h2c), which the gRPC protocol needs on an
// http:// URL. It gives the Client an HTTP client of its own; WithHTTPClient overrides it.
func WithH2C() Option { return func(o *options) { o.h2c = true } }

// WithOnBehalfOf makes every TaskService call act for user: the token must be a service's (the
// auth file's "services"), and the events it causes record the service as acted_by.
func WithOnBehalfOf(user string) Option { return func(o *options) { o.onBehalfOf = user } }

// WithConnectOptions passes options to the generated clients: connect.WithProtoJSON() for
// JSON, connect.WithGRPC() for the gRPC protocol, interceptors, and so on.
func WithConnectOptions(opts ...connect.ClientOption) Option {
	return func(o *options) { o.connect = append(o.connect, opts...) }
}

// New returns a Client of the server at baseURL, such as http://127.0.0.1:8080.
func New(baseURL string, opts ...Option) *Client {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	if o.http == nil {
		o.http = http.DefaultClient
		if o.h2c {
			p := new(http.Protocols)
			p.SetUnencryptedHTTP2(true)
			o.http = &http.Client{Transport: &http.Transport{Protocols: p}}
		}
	}
	return newClient(strings.TrimSuffix(baseURL, "/"), o)
}

func newClient(baseURL string, o options) *Client {
	h := headers{}
	if o.token != "" {
		h["Authorization"] = "Bearer " + o.token
	}
	if o.onBehalfOf != "" {
		h[OnBehalfOfHeader] = o.onBehalfOf
	}
	opts := slices.Clone(o.connect)
	if len(h) > 0 {
		opts = append(opts, connect.WithInterceptors(h))
	}
	return &Client{
		baseURL: baseURL,
		o:       o,
		tasks:   taskhubv1connect.NewTaskServiceClient(o.http, baseURL, opts...),
		work:    taskhubv1connect.NewWorkerServiceClient(o.http, baseURL, opts...),
	}
}

// OnBehalfOf returns a Client like c that acts for user (WithOnBehalfOf). It shares c's HTTP
// client, so a service can make one per call.
func (c *Client) OnBehalfOf(user string) *Client {
	o := c.o
	o.onBehalfOf = user
	return newClient(c.baseURL, o)
}

// Tasks is the generated TaskService client, with c's options.
func (c *Client) Tasks() taskhubv1connect.TaskServiceClient { return c.tasks }

// Work is the generated WorkerService client, with c's options.
func (c *Client) Work() taskhubv1connect.WorkerServiceClient { return c.work }

// Create queues a task and returns it once it is durable. The same IdempotencyKey from the
// same user returns the task created first.
func (c *Client) Create(ctx context.Context, req *taskhubv1.CreateTaskRequest) (*taskhubv1.Task, error) {
	res, err := c.tasks.CreateTask(ctx, connect.NewRequest(req))
	if err != nil {
		return nil, err
	}
	return res.Msg.Task, nil
}

// Get returns a task; one that is not the caller's is connect.CodeNotFound.
func (c *Client) Get(ctx context.Context, id string) (*taskhubv1.Task, error) {
	res, err := c.tasks.GetTask(ctx, connect.NewRequest(&taskhubv1.GetTaskRequest{Id: id}))
	if err != nil {
		return nil, err
	}
	return res.Msg.Task, nil
}

// Cancel cancels a queued or running task and returns it. A running task's worker learns it at
// its next report or lease renewal.
func (c *Client) Cancel(ctx context.Context, id string) (*taskhubv1.Task, error) {
	res, err := c.tasks.CancelTask(ctx, connect.NewRequest(&taskhubv1.CancelTaskRequest{Id: id}))
	if err != nil {
		return nil, err
	}
	return res.Msg.Task, nil
}

// List iterates over the caller's tasks, newest first, in req's states (all when req is nil or
// has none), fetching a page of req.PageSize (the server's default when 0) at a time as the
// loop goes on. An error ends it: the loop gets it with a nil task.
//
//	for t, err := range c.List(ctx, &taskhubv1.ListTasksRequest{States: ...}) {
//		if err != nil { return err }
//		...
//	}
func (c *Client) List(ctx context.Context, req *taskhubv1.ListTasksRequest) iter.Seq2[*taskhubv1.Task, error] {
	return func(yield func(*taskhubv1.Task, error) bool) {
		page := &taskhubv1.ListTasksRequest{}
		if req != nil {
			page = proto.CloneOf(req)
		}
		for {
			res, err := c.tasks.ListTasks(ctx, connect.NewRequest(page))
			if err != nil {
				yield(nil, err)
				return
			}
			for _, t := range res.Msg.Tasks {
				if !yield(t, nil) {
					return
				}
			}
			if res.Msg.NextPageToken == "" {
				return
			}
			page.PageToken = res.Msg.NextPageToken
		}
	}
}
