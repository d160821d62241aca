// watch.mjs BASE_URL: a Node program on the installed @taskhub/client package, as an app would
// write it. It watches the caller's tasks with watchTasks and prints one JSON line per stream
// message and per retry; when its standard input closes, it aborts the watch and prints the
// position the watch ended at. ts_test.go drives it.

import { Code, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { EventKind, TaskService, watchTasks } from "@taskhub/client";

const [baseUrl] = process.argv.slice(2);
const client = createClient(TaskService, createConnectTransport({ baseUrl, httpVersion: "1.1" }));
const print = (line) => process.stdout.write(JSON.stringify(line) + "\n");

const controller = new AbortController();
process.stdin.on("end", () => controller.abort());
process.stdin.resume();

const watch = watchTasks(
  client,
  {},
  {
    signal: controller.signal,
    minDelayMs: 200,
    maxDelayMs: 1000,
    onRetry: ({ attempt, delayMs, error }) => print({ kind: "retry", attempt, delayMs, code: Code[error.code], error: error.rawMessage }),
  },
);
for await (const m of watch) {
  const v = m.message.value;
  switch (m.message.case) {
    case "snapshot":
      print({ kind: "snapshot", epoch: v.epoch, seq: String(v.seq), recovered: v.recovered, more: v.more, tasks: v.tasks.map((t) => t.id) });
      break;
    case "event":
      print({ kind: "event", seq: String(v.seq), event: EventKind[v.kind], task: v.task?.id, progress: v.task?.progress });
      break;
    case "heartbeat":
      print({ kind: "heartbeat", seq: String(v.seq) });
      break;
  }
}
print({ kind: "end", epoch: watch.position.epoch, seq: String(watch.position.afterSeq) });
