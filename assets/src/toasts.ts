// Toasts are short notes in a corner, announced politely to screen readers. Each has a key, and
// a new toast replaces the one with the same key instead of piling up: however often the
// connection flaps, there is at most one toast about it. At most three show at once.

const maxToasts = 3;

export type Tone = "info" | "ok" | "warn" | "error";

export class Toaster {
  private readonly timers = new Map<string, number>();

  constructor(private readonly region: HTMLElement) {}

  show(key: string, message: string, tone: Tone = "info", ms = 4000): void {
    let el = this.find(key);
    if (!el) {
      el = document.createElement("div");
      el.className = "toast";
      el.dir = "auto"; // messages may quote user text
      el.dataset.key = key;
      el.dataset.testid = "toast";
      this.region.append(el);
      while (this.region.children.length > maxToasts) this.drop(this.region.firstElementChild as HTMLElement);
    }
    el.dataset.tone = tone;
    el.textContent = message;
    clearTimeout(this.timers.get(key));
    if (ms > 0) this.timers.set(key, window.setTimeout(() => this.hide(key), ms));
  }

  hide(key: string): void {
    const el = this.find(key);
    if (el) this.drop(el);
  }

  private drop(el: HTMLElement): void {
    clearTimeout(this.timers.get(el.dataset.key!));
    this.timers.delete(el.dataset.key!);
    el.remove();
  }

  private find(key: string): HTMLElement | null {
    for (const el of this.region.children) {
      if ((el as HTMLElement).dataset.key === key) return el as HTMLElement;
    }
    return null;
  }
}
