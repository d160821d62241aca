// watchTasks: the caller's WatchTasks stream as an async iterator that outlives the connection.

import type { MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError, type Client } from "@connectrpc/connect";

import type { TaskService, WatchTasksRequestSchema, WatchTasksResponse } from "./gen/taskhub/v1/task_service_pb.js";

/** TaskClient is a Connect client of TaskService: `createClient(TaskService, transport)`. */
export type TaskClient = Client<typeof TaskService>;

/** Position is where a watcher is in the event log: it has seen every event up to afterSeq. */
export interface Position {
  epoch: string;
  afterSeq: bigint;
}

/** Retry tells why a stream ended and when the next attempt starts. */
export interface Retry {
  /** How many attempts in a row have failed: 1 for the first. */
  attempt: number;
  /** How long until the next attempt, in milliseconds. */
  delayMs: number;
  /** Why the stream ended (or could not start). */
  error: ConnectError;
}

/** WatchOptions tune watchTasks. Every field is optional. */
export interface WatchOptions {
  /** Aborting it ends the iteration cleanly: the loop over the watch ends, and nothing throws. */
  signal?: AbortSignal;
  /** Headers sent with every attempt, such as Authorization. */
  headers?: HeadersInit;
  /** The wait after the first failure [1000]; it doubles with every failure in a row. */
  minDelayMs?: number;
  /** The longest wait between attempts [30000]. */
  maxDelayMs?: number;
  /**
   * How long a stream may stay silent before it is taken as dead and replaced [35000: two of
   * the server's 15 s heartbeats and 5 s]; 0 waits forever. A network path that died without a
   * word (a laptop's sleep, a NAT's timeout) shows only this way.
   */
  idleTimeoutMs?: number;
  /**
   * Whether to try again after error [retryable: all but errors retrying cannot mend]. When it
   * says no, the iteration throws error.
   */
  retry?: (error: ConnectError) => boolean;
  /** Called when a stream has ended and the next attempt is scheduled (for a status line). */
  onRetry?: (r: Retry) => void;
}

/**
 * retryable is the default of WatchOptions.retry: every error is worth another try, except a
 * refused token or permission (unauthenticated, permission_denied), a bad request
 * (invalid_argument) and a limit reached (resource_exhausted), as with the Go client's Watch.
 */
export function retryable(error: ConnectError): boolean {
  switch (error.code) {
    case Code.Unauthenticated:
    case Code.PermissionDenied:
    case Code.InvalidArgument:
    case Code.ResourceExhausted:
      return false;
  }
  return true;
}

/**
 * backoff is the wait before attempt n (1, 2, ...) after failures: minMs doubling up to maxMs,
 * less up to half of it at random, so that clients cut off together do not come back together.
 */
export function backoff(n: number, minMs = 1000, maxMs = 30_000, random: () => number = Math.random): number {
  const cap = Math.min(maxMs, minMs * 2 ** Math.max(n - 1, 0));
  return cap / 2 + (random() * cap) / 2;
}

/**
 * watchTasks streams every change to the caller's tasks: a snapshot first, then every event
 * and heartbeat, in seq order, for as long as the caller iterates.
 *
 * When the stream drops, it opens another from where it was: with the epoch of the last whole
 * snapshot and the seq of the last event or heartbeat it handed out. The server then replays
 * what was missed, after a snapshot that says recovered, so nothing is lost or repeated. If the
 * server cannot (its event log was recreated, with another epoch, or no longer reaches that
 * far), the new stream starts with a fresh snapshot (recovered false): replace what you hold
 * with it, as on the first one; the watcher then goes on from the new epoch. A snapshot in
 * parts (more) counts only once whole, so a stream that drops halfway starts it again.
 *
 * Between attempts it waits as backoff says (1 s doubling to 30 s, with jitter), from the
 * first wait again once a stream delivers. Errors that retrying cannot mend end the iteration
 * with that error (see WatchOptions.retry); aborting options.signal, or leaving the loop, ends
 * it cleanly and closes the stream.
 *
 * request is where to start: `{}` for a fresh snapshot, or the epoch and afterSeq of an earlier
 * watch to resume it (as the page does from the position it was rendered at).
 *
 *	for await (const m of watchTasks(client, {}, { signal })) {
 *	  if (m.message.case === "event") console.log(m.message.value.kind, m.message.value.task?.id);
 *	}
 */
export function watchTasks(
  client: TaskClient,
  request: MessageInitShape<typeof WatchTasksRequestSchema> = {},
  options: WatchOptions = {},
): TaskWatch {
  return new TaskWatch(client, request, options);
}

/** TaskWatch is the iterator watchTasks returns. Iterate it once. */
export class TaskWatch implements AsyncIterableIterator<WatchTasksResponse, undefined> {
  private epoch: string;
  private seq: bigint;
  private readonly messages: AsyncGenerator<WatchTasksResponse, undefined>;
  // kick ends the current attempt, or the wait before the next, and starts the next at once.
  private kick: (() => void) | null = null;

  constructor(
    private readonly client: TaskClient,
    private readonly request: MessageInitShape<typeof WatchTasksRequestSchema>,
    private readonly options: WatchOptions,
  ) {
    this.epoch = request.epoch ?? "";
    this.seq = request.afterSeq ?? 0n;
    this.messages = this.run();
  }

  /** position is where the next attempt would resume from. */
  get position(): Position {
    return { epoch: this.epoch, afterSeq: this.seq };
  }

  /**
   * reconnect replaces the stream at once, resuming where it was: while one is open, it is
   * closed; while waiting before the next attempt, the wait ends. For when the network is
   * back, say, or the headers changed.
   */
  reconnect(): void {
    this.kick?.();
  }

  next(): Promise<IteratorResult<WatchTasksResponse, undefined>> {
    return this.messages.next();
  }

  return(): Promise<IteratorResult<WatchTasksResponse, undefined>> {
    return this.messages.return(undefined);
  }

  [Symbol.asyncIterator](): this {
    return this;
  }

  private async *run(): AsyncGenerator<WatchTasksResponse, undefined> {
    const { signal, headers, minDelayMs = 1000, maxDelayMs = 30_000, idleTimeoutMs = 35_000, retry = retryable, onRetry } = this.options;
    let failures = 0;
    while (!signal?.aborted) {
      const attempt = new AbortController();
      let ended: ConnectError | null = null; // why we ended the attempt ourselves
      let kicked = false;
      const end = (why: ConnectError) => {
        ended ??= why;
        attempt.abort(why);
      };
      const onAbort = () => end(new ConnectError("the watch was aborted", Code.Canceled));
      signal?.addEventListener("abort", onAbort);
      this.kick = () => {
        kicked = true;
        end(new ConnectError("reconnecting on request", Code.Canceled));
      };
      let timer: ReturnType<typeof setTimeout> | undefined;
      const idle = () => {
        clearTimeout(timer);
        if (idleTimeoutMs > 0) {
          timer = setTimeout(() => end(new ConnectError("no heartbeat from the server", Code.Unavailable)), idleTimeoutMs);
        }
      };
      let error: ConnectError;
      try {
        idle();
        const stream = this.client.watchTasks({ ...this.request, epoch: this.epoch, afterSeq: this.seq }, { signal: attempt.signal, headers });
        for await (const m of stream) {
          clearTimeout(timer); // the caller's time is not the server's silence
          failures = 0;
          this.advance(m);
          yield m;
          idle();
        }
        error = new ConnectError("the server ended the stream", Code.Unavailable);
      } catch (err) {
        error = ended ?? ConnectError.from(err);
      } finally {
        clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
        this.kick = null;
        attempt.abort(); // closes the stream when the caller left the loop
      }
      if (signal?.aborted) break;
      if (kicked) continue;
      if (!retry(error)) throw error;
      failures++;
      const delayMs = backoff(failures, minDelayMs, maxDelayMs);
      onRetry?.({ attempt: failures, delayMs, error });
      await this.sleep(delayMs, signal);
    }
    return undefined;
  }

  // advance moves the position past m: a whole snapshot sets it, and events and heartbeats
  // move it on.
  private advance(m: WatchTasksResponse): void {
    switch (m.message.case) {
      case "snapshot":
        if (!m.message.value.more) {
          this.epoch = m.message.value.epoch;
          this.seq = m.message.value.seq;
        }
        return;
      case "event":
      case "heartbeat":
        if (m.message.value.seq > this.seq) this.seq = m.message.value.seq;
        return;
    }
  }

  // sleep waits ms, or until the signal aborts or reconnect is called.
  private sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        signal?.removeEventListener("abort", done);
        this.kick = null;
        resolve();
      };
      const timer = setTimeout(done, ms);
      signal?.addEventListener("abort", done);
      this.kick = done;
    });
  }
}
