// The task page's script: it keeps the server-rendered page live. It resumes the task stream
// from the position the page was rendered at, patches cards as tasks change, and turns the
// page's forms (create, cancel, older tasks) into calls that need no reload. Without it the
// page still works: the forms post and redirect back.

import { createClient, ConnectError, type Client } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import { TaskService } from "@taskhub/client";

import { Board } from "./board";
import { Feed } from "./feed";
import { parseParams } from "./format";
import { callTimeoutMs, Connection, Page, reloadedKey } from "./page";
import { Toaster } from "./toasts";

type TaskClient = Client<typeof TaskService>;

function boot(): void {
  const list = document.querySelector<HTMLElement>('[data-testid="task-list"]');
  if (!list) return;
  const client = createClient(TaskService, createConnectTransport({ baseUrl: location.origin, useBinaryFormat: true }));
  const toasts = new Toaster(document.querySelector<HTMLElement>('[data-testid="toasts"]')!);
  const board = new Board(list, document.querySelector<HTMLElement>('[data-testid="empty"]'), () => moreLink() !== null);
  const conn = new Connection(document.querySelector<HTMLElement>('[data-testid="connection"]')!, toasts);
  const page = new Page(board, client, conn, list.dataset.epoch ?? "", BigInt(list.dataset.seq || "0"));
  new Feed(client, page, "taskhub/" + (list.dataset.user ?? ""), Number(list.dataset.heartbeatMs) || 15_000).start();
  window.setInterval(() => board.tick(), 1000);
  if (sessionStorage.getItem(reloadedKey)) {
    sessionStorage.removeItem(reloadedKey);
    toasts.show("reloaded", "The server's task history was reset, so the page was reloaded.", "info", 6000);
  }

  createForm(client, board);
  list.addEventListener("submit", (e) => cancel(e, client, board, toasts));
  moreLink()?.addEventListener("click", (e) => void loadMore(e, client, board, toasts));
}

function moreLink(): HTMLAnchorElement | null {
  return document.querySelector<HTMLAnchorElement>('[data-testid="load-more"]');
}

function message(err: unknown): string {
  return ConnectError.from(err).rawMessage || "something went wrong; try again";
}

// createForm creates tasks without a reload, keeps a live character count of the prompt, and
// sends an idempotency key per draft, so submitting the same draft twice (a retry after a lost
// answer, a double click) makes one task.
function createForm(client: TaskClient, board: Board): void {
  const form = document.querySelector<HTMLFormElement>('[data-testid="create-form"]')!;
  const prompt = form.querySelector<HTMLTextAreaElement>('[name="prompt"]')!;
  const mode = form.querySelector<HTMLSelectElement>('[name="mode"]')!;
  const params = form.querySelector<HTMLInputElement>('[name="params"]')!;
  const submit = form.querySelector<HTMLButtonElement>('[type="submit"]')!;
  const error = form.querySelector<HTMLElement>('[data-testid="form-error"]')!;
  const count = document.getElementById("prompt-count")!;
  const max = Number(count.dataset.max);
  const encoder = new TextEncoder();
  let draft = randomKey();
  let busy = false;

  const counted = () => {
    const chars = [...prompt.value].length;
    const over = encoder.encode(prompt.value).length > max;
    count.textContent = over ? `${chars} / ${max}: too long` : `${chars} / ${max}`;
    count.classList.toggle("over", over);
  };
  const fail = (text: string) => {
    error.textContent = text;
    error.hidden = text === "";
  };
  form.addEventListener("input", () => {
    draft = randomKey();
    counted();
  });
  counted();

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    if (busy) return;
    let p: Record<string, string>;
    try {
      p = parseParams(params.value);
    } catch (err) {
      fail((err as Error).message);
      return;
    }
    busy = true;
    submit.disabled = true;
    try {
      const res = await client.createTask({ prompt: prompt.value, mode: mode.value, params: p, idempotencyKey: draft }, { timeoutMs: callTimeoutMs });
      if (res.task) board.apply(res.task, "always");
      fail("");
      prompt.value = "";
      draft = randomKey();
      counted();
      prompt.focus();
    } catch (err) {
      fail(message(err));
    } finally {
      busy = false;
      submit.disabled = false;
    }
  });
}

// cancel cancels a task from its card's button without a reload.
function cancel(e: SubmitEvent, client: TaskClient, board: Board, toasts: Toaster): void {
  const form = e.target as HTMLFormElement;
  if (!form.classList.contains("cancel")) return;
  e.preventDefault();
  const id = form.closest<HTMLElement>('[data-testid="task-card"]')?.dataset.taskId;
  if (!id) return;
  board.cancelling(id, true);
  client.cancelTask({ id }, { timeoutMs: callTimeoutMs }).then(
    (res) => {
      if (res.task) board.apply(res.task);
    },
    async (err) => {
      board.cancelling(id, false);
      // It finished meanwhile: the stream brings its end, but show it at once.
      const got = await client.getTask({ id }, { timeoutMs: callTimeoutMs }).catch(() => null);
      if (got?.task && board.apply(got.task)) return;
      toasts.show("cancel-" + id, "Could not cancel: " + message(err), "error");
    },
  );
}

// loadMore appends the next page of older tasks.
async function loadMore(e: MouseEvent, client: TaskClient, board: Board, toasts: Toaster): Promise<void> {
  e.preventDefault();
  const link = e.currentTarget as HTMLAnchorElement;
  if (link.getAttribute("aria-busy") === "true") return;
  link.setAttribute("aria-busy", "true");
  try {
    const res = await client.listTasks({ pageSize: 50, pageToken: link.dataset.pageToken }, { timeoutMs: callTimeoutMs });
    for (const t of res.tasks) board.apply(t, "always");
    if (res.nextPageToken) {
      link.dataset.pageToken = res.nextPageToken;
      link.href = "/?page=" + encodeURIComponent(res.nextPageToken);
    } else {
      link.remove();
    }
  } catch (err) {
    toasts.show("more", "Could not load older tasks: " + message(err), "error");
  } finally {
    link.removeAttribute("aria-busy");
  }
}

function randomKey(): string {
  const b = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

boot();
