// The page is one tab's state: its board of cards, its position in the event log, and the
// connection indicator. The feed (feed.ts) delivers the shared stream's messages to it.

import { Code, ConnectError, type Client } from "@connectrpc/connect";
import type { TaskService, WatchTasksResponse } from "@taskhub/client";

import type { Board } from "./board";
import type { Position, Status, Tab } from "./feed";
import type { Toaster } from "./toasts";

/**
 * callTimeoutMs bounds every unary call the page makes. A call that reuses a pooled connection
 * the network silently dropped would otherwise wait forever; after it, the call is retried (or
 * reported) and the browser dials afresh.
 */
export const callTimeoutMs = 10_000;

/** The session storage key that tells a page it was reloaded because the event log was recreated. */
export const reloadedKey = "taskhub:reloaded";

export class Page implements Tab {
  // The tab has every event up to seq once it is synced: from the start when it leads, or once
  // the leader has replayed what it missed since the tab was rendered. Until then, broadcast
  // events are applied but do not move the position.
  private synced = false;
  private resyncing = false;
  private resyncAgain = false;

  constructor(
    private readonly board: Board,
    private readonly client: Client<typeof TaskService>,
    private readonly conn: Connection,
    private epoch: string,
    private seq: bigint,
  ) {}

  position(): Position {
    return { epoch: this.epoch, seq: this.seq };
  }

  deliver(m: WatchTasksResponse): void {
    switch (m.message.case) {
      case "snapshot": {
        const s = m.message.value;
        if (s.recovered && s.epoch === this.epoch) {
          this.advance(s.seq);
          return;
        }
        // A fresh snapshot: the stream could not resume from where we were (a new event log,
        // or history compacted away). It holds only active tasks, so reload the list too:
        // tasks that finished meanwhile are not in it. A large one comes in parts (more): the
        // tab has it all, and takes its position, with the last.
        if (s.epoch !== this.epoch) {
          this.adopt({ epoch: s.epoch, seq: s.seq }, true); // a new event log: the page reloads
          return;
        }
        for (const t of s.tasks) this.board.apply(t);
        if (!s.more) this.adopt({ epoch: s.epoch, seq: s.seq }, true);
        return;
      }
      case "event":
        if (m.message.value.task) this.board.apply(m.message.value.task);
        this.advance(m.message.value.seq);
        return;
      case "heartbeat":
        this.advance(m.message.value.seq);
        return;
    }
  }

  adopt(p: Position, resync: boolean): void {
    if (p.epoch !== this.epoch) {
      // The event log was recreated: its seqs start over, and no card on the page can be taken
      // to exist. Start afresh, and say so on the new page.
      sessionStorage.setItem(reloadedKey, "1");
      location.reload();
      return;
    }
    if (p.seq > this.seq) this.seq = p.seq;
    this.synced = true;
    if (resync) void this.resync();
  }

  status(s: Status): void {
    this.conn.show(s);
  }

  leading(): void {
    this.conn.leading();
  }

  private advance(seq: bigint): void {
    if (this.synced && seq > this.seq) this.seq = seq;
  }

  // resync reloads the newest page of tasks, and asks for each active card not on it: after it,
  // with the live events that arrive meanwhile, every card is up to date.
  private async resync(): Promise<void> {
    if (this.resyncing) {
      this.resyncAgain = true;
      return;
    }
    this.resyncing = true;
    try {
      for (let attempt = 1; ; attempt++) {
        this.resyncAgain = false;
        try {
          const res = await this.client.listTasks({ pageSize: 50 }, { timeoutMs: callTimeoutMs });
          const listed = new Set<string>();
          for (const t of res.tasks) {
            listed.add(t.id);
            this.board.apply(t);
          }
          for (const id of this.board.ids(true)) {
            if (listed.has(id)) continue;
            try {
              const got = await this.client.getTask({ id }, { timeoutMs: callTimeoutMs });
              if (got.task) this.board.apply(got.task);
            } catch (err) {
              if (ConnectError.from(err).code !== Code.NotFound) throw err;
              this.board.remove(id);
            }
          }
          if (!this.resyncAgain) return;
        } catch {
          await new Promise((r) => setTimeout(r, Math.min(30_000, 1000 * 2 ** attempt)));
        }
      }
    } finally {
      this.resyncing = false;
    }
  }
}

/** Connection is the connection indicator in the header, and the toasts about the connection. */
export class Connection {
  private last: Status["state"] = "connecting";
  private lostTimer = 0;

  constructor(
    private readonly el: HTMLElement,
    private readonly toasts: Toaster,
  ) {}

  /** leading marks the tab that runs the shared stream (data-leader, for tests and curious people). */
  leading(): void {
    this.el.dataset.leader = "true";
  }

  show(s: Status): void {
    const labels = { live: "Live", connecting: "Connecting…", reconnecting: "Reconnecting…", offline: "Offline" };
    this.el.hidden = false;
    this.el.dataset.status = s.state === "live" || s.state === "offline" ? s.state : "reconnecting";
    this.el.querySelector(".conn-text")!.textContent = labels[s.state];
    let title = "Updates are live";
    if (s.state !== "live") {
      title = labels[s.state] + (s.reason ? ` (${s.reason})` : "");
      if (s.retryAt) title += `: next try at ${new Date(s.retryAt).toLocaleTimeString()}`;
    }
    this.el.title = title;

    // One toast about the connection at a time, and none for a blip: a drop is told only if it
    // lasts two seconds, and then the reconnection replaces it.
    const was = this.last;
    this.last = s.state;
    if (s.state === "live") {
      if (was === "live") return;
      clearTimeout(this.lostTimer);
      const notes = {
        connected: "Connected: updates are live.",
        recovered: "Reconnected: caught up, nothing was missed.",
        reloaded: "Reconnected: the missed history was gone, so the task list was reloaded.",
      };
      if (s.note) this.toasts.show("connection", notes[s.note], "ok");
      else this.toasts.hide("connection");
    } else if (s.state === "offline" && was !== "offline") {
      clearTimeout(this.lostTimer);
      const signedOut = s.reason?.startsWith("signed out");
      this.toasts.show("connection", signedOut ? "Signed out: sign in again for live updates." : "Offline: still trying to reconnect.", "warn", 0);
    } else if (was === "live") {
      this.lostTimer = window.setTimeout(() => this.toasts.show("connection", "Connection lost: reconnecting…", "warn", 0), 2000);
    }
  }
}
