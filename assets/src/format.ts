// Formatting and parsing that must match the server's (views/format.go, views/params.go), so a
// card reads the same whether the server rendered it or the script patched it.

/** The times and progress of a task, in Unix milliseconds (0: unset). */
export interface Times {
  state: string; // "queued", "running", ...
  created: number;
  updated: number;
  started: number;
  finished: number;
  progressed: number;
  progress: number;
  stalled: boolean;
}

/** percent is progress as the page shows it: a whole number, halves rounded up. */
export function percent(p: number): string {
  return String(Math.round(p));
}

/** duration formats milliseconds the way a person reads them: "42 s", "3 min 5 s", "2 h 7 min". */
export function duration(ms: number): string {
  const s = Math.max(Math.trunc(ms / 1000), 0);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

/**
 * eta estimates the time left of a task elapsed milliseconds into its run at progress percent,
 * at its pace so far; null until it has 1% and a second of work to go by.
 */
export function eta(elapsed: number, progress: number): number | null {
  if (progress < 1 || progress >= 100 || elapsed < 1000) return null;
  return (elapsed * (100 - progress)) / progress;
}

/** timing says how long a task has been where it is: "running for 12 s · about 8 s left". */
export function timing(t: Times, now: number): string {
  const since = (at: number) => (at ? now - at : 0);
  const between = (from: number, to: number) => (from && to ? to - from : 0);
  const start = t.started || t.created;
  switch (t.state) {
    case "queued":
      return "queued for " + duration(since(t.updated));
    case "running": {
      const elapsed = since(t.started);
      const s = "running for " + duration(elapsed);
      if (t.stalled) return s + " · no progress for " + duration(since(t.progressed || t.started));
      const left = eta(elapsed, t.progress);
      return left === null ? s : s + " · about " + duration(left) + " left";
    }
    case "completed":
      return "took " + duration(between(start, t.finished));
    case "failed":
      return "failed after " + duration(between(start, t.finished));
    case "cancelled":
      return "cancelled after " + duration(between(t.created, t.finished));
  }
  return "";
}

/** isImage reports whether a result is shown as an image: an image data URL, or an http(s) URL of an image file. */
export function isImage(r: string): boolean {
  if (r.startsWith("data:image/")) return true;
  if (!(r.startsWith("https://") || r.startsWith("http://")) || /[ \n"'<>]/.test(r)) return false;
  const path = r.split("?", 1)[0].toLowerCase();
  return [".png", ".jpg", ".jpeg", ".gif", ".webp", ".svg", ".avif"].some((ext) => path.endsWith(ext));
}

/** parseParams reads "steps=40, step_ms=100": key=value pairs separated by commas or new lines. */
export function parseParams(s: string): Record<string, string> {
  const params: Record<string, string> = {};
  for (let pair of s.split(/[,\n]/)) {
    pair = pair.trim();
    if (pair === "") continue;
    const i = pair.indexOf("=");
    const k = i < 0 ? "" : pair.slice(0, i).trim();
    if (k === "") {
      throw new Error(`params: write key=value pairs separated by commas, such as steps=40: got "${pair}"`);
    }
    params[k] = pair.slice(i + 1).trim();
  }
  return params;
}

/** clock formats a time as the cards show it, in the reader's time zone. */
export function clock(ms: number): string {
  return new Date(ms).toLocaleString([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
}
