// @taskhub/client: taskhub's API for TypeScript, in browsers and Node. The generated messages
// and service descriptors (TaskService for people and pages, WorkerService for workers), to
// use with createClient and a Connect transport, and watchTasks, the task stream as an async
// iterator that resumes after a dropped connection.

export * from "./gen/taskhub/v1/task_pb.js";
export * from "./gen/taskhub/v1/task_service_pb.js";
export * from "./gen/taskhub/v1/worker_service_pb.js";
export { backoff, retryable, TaskWatch, watchTasks, type Position, type Retry, type TaskClient, type WatchOptions } from "./watch.js";
