// The board is the list of task cards. Every source of task state (the server's render, stream
// events, snapshots, the answers of create, cancel and list calls) goes through apply, which
// keeps for each card the state with the highest seq: a card at seq S ignores anything at S or
// before, so replays and out-of-order answers are harmless. apply patches only the card that
// changed, in place.

import type { Timestamp } from "@bufbuild/protobuf/wkt";

import { TaskState, type Task } from "@taskhub/client";
import { clock, isImage, percent, timing, type Times } from "./format";

const ms = (ts?: Timestamp) => (ts ? Number(ts.seconds) * 1000 + Math.floor(ts.nanos / 1e6) : 0);
const attr = (n: number) => (n ? String(n) : "");

/** Where apply may add a card for a task the board does not show. */
export type Insert = "auto" | "always";

export class Board {
  private readonly cards = new Map<string, HTMLElement>();
  private readonly firstPage: boolean;
  /** The server's clock minus ours, so elapsed times do not depend on the reader's clock. */
  private readonly skew: number;

  constructor(
    private readonly list: HTMLElement,
    private readonly empty: HTMLElement | null,
    private readonly more: () => boolean,
  ) {
    this.firstPage = list.dataset.firstPage !== "false";
    this.skew = Number(list.dataset.now || Date.now()) - Date.now();
    for (const card of list.querySelectorAll<HTMLElement>('[data-testid="task-card"]')) {
      this.cards.set(card.dataset.taskId!, card);
      const created = card.querySelector("time.created");
      if (created && card.dataset.created) created.textContent = clock(Number(card.dataset.created));
    }
  }

  now(): number {
    return Date.now() + this.skew;
  }

  /** apply shows t unless its card already shows it or something newer; it reports whether the board changed. */
  apply(t: Task, insert: Insert = "auto"): boolean {
    let card = this.cards.get(t.id);
    if (card) {
      if (t.seq <= BigInt(card.dataset.seq || "0")) return false;
    } else {
      if (!this.accepts(t.id, insert)) return false;
      card = this.create(t);
    }
    this.patch(card, t);
    return true;
  }

  /** remove takes a task's card away (the task no longer exists). */
  remove(id: string): void {
    this.cards.get(id)?.remove();
    this.cards.delete(id);
    if (this.empty) this.empty.hidden = this.cards.size > 0;
  }

  /** ids of the tasks shown; active only those queued or running. */
  ids(active = false): string[] {
    const ids: string[] = [];
    for (const [id, card] of this.cards) {
      if (!active || isActive(card.dataset.state)) ids.push(id);
    }
    return ids;
  }

  /** tick brings the elapsed times and estimates of active tasks up to date. */
  tick(): void {
    const now = this.now();
    for (const card of this.cards.values()) {
      if (isActive(card.dataset.state)) text(card, ".timing", timing(times(card), now));
    }
  }

  /** cancelling shows that a cancel of task id is under way (or no longer). */
  cancelling(id: string, on: boolean): void {
    const button = this.cards.get(id)?.querySelector<HTMLButtonElement>('[data-testid="task-cancel"]');
    if (button) {
      button.disabled = on;
      button.textContent = on ? "Cancelling…" : "Cancel";
    }
  }

  // A task the board does not show gets a card if it belongs in the range of tasks shown: not
  // older than the oldest card while older pages are not shown, not newer than the newest card
  // on a page of older tasks.
  private accepts(id: string, insert: Insert): boolean {
    if (insert === "always") return true;
    let oldest = "";
    let newest = "";
    for (const k of this.cards.keys()) {
      if (!oldest || k < oldest) oldest = k;
      if (k > newest) newest = k;
    }
    return !(id < oldest && this.more()) && !(id > newest && !this.firstPage);
  }

  private create(t: Task): HTMLElement {
    const card = clone<HTMLElement>("tpl-card");
    card.dataset.taskId = t.id;
    const prompt = card.querySelector<HTMLElement>(".prompt")!;
    prompt.id = "prompt-" + t.id;
    card.setAttribute("aria-labelledby", prompt.id);
    // Cards are sorted newest first, and task ids sort by creation time.
    let next: Element | null = null;
    for (const c of this.list.children) {
      if ((c as HTMLElement).dataset.taskId! < t.id) {
        next = c;
        break;
      }
    }
    this.list.insertBefore(card, next);
    this.cards.set(t.id, card);
    if (this.empty) this.empty.hidden = true;
    return card;
  }

  private patch(card: HTMLElement, t: Task): void {
    const label = (TaskState[t.state] ?? "UNSPECIFIED").toLowerCase();
    const stalled = t.stalled && t.state === TaskState.RUNNING;
    card.className = "card state-" + label + (stalled ? " stalled" : "");
    const d = card.dataset;
    d.state = "TASK_STATE_" + (TaskState[t.state] ?? "UNSPECIFIED");
    d.seq = t.seq.toString();
    d.created = attr(ms(t.createdAt));
    d.updated = attr(ms(t.updatedAt));
    d.started = attr(ms(t.startedAt));
    d.finished = attr(ms(t.finishedAt));
    d.progressed = attr(ms(t.progressedAt));
    d.progress = String(t.progress);

    text(card, ".prompt", t.prompt);
    text(card, '[data-testid="task-state"]', stalled ? "stalled" : label);
    text(card, ".mode", t.mode);
    const created = card.querySelector<HTMLTimeElement>("time.created")!;
    created.dateTime = t.createdAt ? new Date(ms(t.createdAt)).toISOString().slice(0, 19) + "Z" : "";
    text(card, "time.created", t.createdAt ? clock(ms(t.createdAt)) : "");
    const attempt = card.querySelector<HTMLElement>(".attempt")!;
    attempt.hidden = t.attempt <= 1;
    text(card, ".attempt", "attempt " + t.attempt);

    const pct = percent(t.progress);
    const bar = card.querySelector<HTMLElement>('[role="progressbar"]')!;
    if (bar.getAttribute("aria-valuenow") !== pct) {
      bar.setAttribute("aria-valuenow", pct);
      bar.querySelector<HTMLElement>(".fill")!.style.width = pct + "%";
    }
    text(card, ".pct", pct + "%");
    text(card, '[data-testid="task-message"]', t.message);
    text(card, ".timing", timing(times(card), this.now()));

    // A card has at most one of these parts: the result of a completed task, the error of a
    // failed one, the cancel button of an active one.
    const want =
      t.state === TaskState.COMPLETED ? "result" : t.state === TaskState.FAILED ? "error" : isActive(d.state) ? "cancel" : "";
    for (const part of card.querySelectorAll<HTMLElement>(":scope > .result, :scope > .error, :scope > .cancel")) {
      if (!part.classList.contains(want)) part.remove();
    }
    if (!want) return;
    const part = card.querySelector<HTMLElement>(":scope > ." + want) ?? card.appendChild(clone<HTMLElement>("tpl-" + want));
    if (want === "result") showResult(part, t);
    if (want === "error") text(part, ":scope", t.error);
    if (want === "cancel") {
      part.setAttribute("action", `/tasks/${encodeURIComponent(t.id)}/cancel`);
      part.querySelector("button")!.setAttribute("aria-describedby", "prompt-" + t.id);
    }
  }
}

function showResult(el: HTMLElement, t: Task): void {
  if (isImage(t.result)) {
    let img = el.querySelector("img");
    if (!img) {
      img = document.createElement("img");
      el.replaceChildren(img);
    }
    if (img.getAttribute("src") !== t.result) img.src = t.result;
    img.alt = "Result of " + t.prompt;
  } else {
    let p = el.querySelector<HTMLElement>(".result-text");
    if (!p) {
      p = document.createElement("p");
      p.className = "result-text";
      p.dir = "auto"; // user text: its direction must not reorder what is around it
      el.replaceChildren(p);
    }
    text(p, ":scope", t.result);
  }
}

function isActive(state?: string): boolean {
  return state === "TASK_STATE_QUEUED" || state === "TASK_STATE_RUNNING";
}

function times(card: HTMLElement): Times {
  const d = card.dataset;
  return {
    state: (d.state ?? "").replace("TASK_STATE_", "").toLowerCase(),
    created: Number(d.created || 0),
    updated: Number(d.updated || 0),
    started: Number(d.started || 0),
    finished: Number(d.finished || 0),
    progressed: Number(d.progressed || 0),
    progress: Number(d.progress || 0),
    stalled: card.classList.contains("stalled"),
  };
}

/** text sets the text of the element sel finds in el, if it differs (no needless DOM writes). */
function text(el: HTMLElement, sel: string, value: string): void {
  const target = sel === ":scope" ? el : el.querySelector(sel);
  if (target && target.textContent !== value) target.textContent = value;
}

const templates = new Map<string, HTMLTemplateElement>();

// clone makes an element from one of the page's inert templates (views/index.templ, partTemplates).
function clone<T extends Element>(id: string): T {
  let tpl = templates.get(id);
  if (!tpl) {
    tpl = document.createElement("template");
    tpl.innerHTML = document.getElementById(id)!.textContent!;
    templates.set(id, tpl);
  }
  return tpl.content.firstElementChild!.cloneNode(true) as T;
}
