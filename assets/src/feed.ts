// The feed is one WatchTasks stream per browser, shared by every tab of the origin. The tabs
// elect a leader with the Web Locks API: the tab holding the lock runs the stream and
// broadcasts every message to the others over a BroadcastChannel; when it closes, the lock
// passes to another tab, which resumes the stream from its own position. So any number of tabs
// costs the server one stream and the browser one connection (Chromium allows six per host
// over HTTP/1.1). Where the APIs are missing, each tab runs its own stream.
//
// A tab that opens while another leads says hello with the position it was rendered at; the
// leader answers with the events after it from a ring of recent events, or tells the tab to
// reload its list when the ring does not reach back that far. Duplicates are harmless: cards
// ignore states older than their own (see board.ts).
//
// The leader's stream is the client package's watchTasks (clients/ts): it reconnects forever
// (here even when signed out, since a sign-in in another tab mends that), waiting 1 s doubling to
// 30 s with jitter between attempts, resumes from the last seq it saw, and takes a stream that is
// silent for two heartbeat intervals and more as dead.

import { fromBinary, toBinary } from "@bufbuild/protobuf";
import { Code, type Client } from "@connectrpc/connect";
import { watchTasks, WatchTasksResponseSchema, type TaskService, type TaskWatch, type WatchTasksResponse } from "@taskhub/client";

/** Position is where a tab is in the event log: it has seen everything up to seq. */
export interface Position {
  epoch: string;
  seq: bigint;
}

/** Status is the state of the shared stream, as the connection indicator shows it. */
export interface Status {
  state: "connecting" | "live" | "reconnecting" | "offline";
  /** On reaching live after trouble: connected (first time), recovered (nothing missed) or reloaded (history was gone). */
  note?: "connected" | "recovered" | "reloaded";
  /** When the next attempt starts (Unix ms), while not live. */
  retryAt?: number;
  /** Why the last attempt ended, while not live. */
  reason?: string;
}

/** Tab is what the feed feeds: the page's state. */
export interface Tab {
  position(): Position;
  /** deliver hands over a stream message, in stream order. */
  deliver(m: WatchTasksResponse): void;
  /**
   * adopt says the tab now has everything up to p (it leads from there, or the leader has
   * replayed what it missed); with resync, the leader could not, and the tab must reload its
   * tasks to get there.
   */
  adopt(p: Position, resync: boolean): void;
  status(s: Status): void;
  /** leading says this tab now runs the stream for every tab. */
  leading(): void;
}

type Wire =
  | { type: "hello"; tab: string; epoch: string; seq: bigint }
  | { type: "leader"; tab: string }
  | { type: "msgs"; data: Uint8Array[] }
  | { type: "welcome"; to: string; epoch: string; head: bigint; replay: Uint8Array[]; resync: boolean; status: Status }
  | { type: "status"; status: Status };

/** How many recent events the leader keeps for tabs that join. */
const ringSize = 2000;
/** After how long without a live stream the indicator says offline rather than reconnecting. */
const offlineAfter = 30_000;

export class Feed {
  private readonly id = randomID();
  private chan: BroadcastChannel | null = null;
  private leading = false;
  // The leader's ring: every event after covered.from, in order.
  private ring: { seq: bigint; data: Uint8Array }[] = [];
  private covered: Position = { epoch: "", seq: 0n };
  private current: Status = { state: "connecting" };
  private watch: TaskWatch | null = null;

  constructor(
    private readonly client: Client<typeof TaskService>,
    private readonly tab: Tab,
    private readonly name: string,
    private readonly heartbeatMs: number,
  ) {}

  start(): void {
    // Back online: try at once rather than at the end of the wait. Gone offline: drop the
    // stream now (the browser may keep a dead one for a long time); the attempt that follows
    // fails, and the wait begins.
    window.addEventListener("online", () => {
      if (this.current.state !== "live") this.watch?.reconnect();
    });
    window.addEventListener("offline", () => this.watch?.reconnect());
    if (!navigator.locks || typeof BroadcastChannel === "undefined") {
      void this.lead();
      return;
    }
    this.chan = new BroadcastChannel(this.name);
    this.chan.onmessage = (e: MessageEvent<Wire>) => this.receive(e.data);
    this.tab.status(this.current);
    void navigator.locks.request(this.name, () => this.lead());
    this.hello();
  }

  private post(m: Wire): void {
    this.chan?.postMessage(m);
  }

  private hello(): void {
    const p = this.tab.position();
    this.post({ type: "hello", tab: this.id, epoch: p.epoch, seq: p.seq });
  }

  private receive(m: Wire): void {
    if (this.leading) {
      if (m.type === "hello") this.welcome(m);
      return;
    }
    switch (m.type) {
      case "leader": // a new leader: make sure it knows where we are
        this.hello();
        break;
      case "msgs":
        for (const d of m.data) deliver(this.tab, fromBinary(WatchTasksResponseSchema, d));
        break;
      case "welcome":
        if (m.to !== this.id) break;
        for (const d of m.replay) deliver(this.tab, fromBinary(WatchTasksResponseSchema, d));
        this.tab.adopt({ epoch: m.epoch, seq: m.head }, m.resync);
        this.tab.status(m.status);
        break;
      case "status":
        this.tab.status(m.status);
        break;
    }
  }

  // welcome answers a tab's hello with what it missed since its position, if the ring has it.
  private welcome(h: { tab: string; epoch: string; seq: bigint }): void {
    const head = this.tab.position();
    const covers = h.epoch === this.covered.epoch && h.seq >= this.covered.seq;
    this.post({
      type: "welcome",
      to: h.tab,
      epoch: head.epoch,
      head: head.seq,
      replay: covers ? this.ring.filter((e) => e.seq > h.seq).map((e) => e.data) : [],
      resync: !covers,
      status: { ...this.current, note: undefined }, // a note is news only when it happens
    });
  }

  private setStatus(s: Status): void {
    this.current = s;
    this.tab.status(s);
    this.post({ type: "status", status: s });
  }

  // publish hands a stream message to this tab and the others, and keeps events in the ring.
  private publish(m: WatchTasksResponse): void {
    deliver(this.tab, m);
    if (!this.chan) return;
    const data = toBinary(WatchTasksResponseSchema, m);
    if (m.message.case === "event") {
      this.ring.push({ seq: m.message.value.seq, data });
      if (this.ring.length > ringSize) this.covered.seq = this.ring.shift()!.seq;
    }
    this.post({ type: "msgs", data: [data] });
  }

  private async lead(): Promise<void> {
    this.leading = true;
    this.tab.leading();
    this.covered = { ...this.tab.position() };
    this.tab.adopt(this.tab.position(), false);
    this.post({ type: "leader", tab: this.id });
    let failures = 0;
    let everLive = false;
    let downSince = Date.now();
    const from = this.tab.position();
    this.watch = watchTasks(
      this.client,
      { epoch: from.epoch, afterSeq: from.seq },
      {
        idleTimeoutMs: this.heartbeatMs * 2 + 5000,
        retry: () => true,
        onRetry: ({ error, delayMs }) => {
          if (this.current.state === "live") downSince = Date.now();
          failures++;
          const signedOut = error.code === Code.Unauthenticated;
          const offline = signedOut || !navigator.onLine || Date.now() - downSince >= offlineAfter;
          this.setStatus({
            state: offline ? "offline" : everLive ? "reconnecting" : "connecting",
            retryAt: Date.now() + delayMs,
            reason: signedOut
              ? "signed out: sign in again"
              : !navigator.onLine
                ? "the browser is offline"
                : error.rawMessage || "the connection failed",
          });
        },
      },
    );
    for await (const m of this.watch) {
      if (m.message.case === "snapshot") {
        const s = m.message.value;
        if (!s.recovered || s.epoch !== this.covered.epoch) {
          this.ring = [];
          this.covered = { epoch: s.epoch, seq: s.seq };
        }
        this.publish(m);
        if (s.more) continue; // live once the snapshot is whole
        const note = everLive ? (s.recovered ? "recovered" : "reloaded") : failures > 0 ? "connected" : undefined;
        everLive = true;
        failures = 0;
        this.setStatus({ state: "live", note });
        continue;
      }
      this.publish(m);
    }
  }
}

// deliver hands m to the tab. A failure to show one message is the page's bug, not the stream's:
// it is reported, and the stream goes on rather than reconnecting over and over.
function deliver(tab: Tab, m: WatchTasksResponse): void {
  try {
    tab.deliver(m);
  } catch (err) {
    console.error("taskhub: showing a stream message failed", err, m);
  }
}

function randomID(): string {
  const b = crypto.getRandomValues(new Uint8Array(8));
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}
