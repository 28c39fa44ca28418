// Rolling one-minute windows over requests and tokens, the way OpenAI meters an API key: a request
// is admitted when the last 60 s plus this request stay within both limits. Refused requests are
// not recorded, so a client hammering on 429s does not push its own recovery further away.
export const WINDOW_MS = 60_000;

export interface Limits {
  requestsPerMinute?: number | undefined;
  tokensPerMinute?: number | undefined;
}

export type Verdict =
  | { ok: true; headers: Record<string, string> }
  | {
      ok: false;
      headers: Record<string, string>;
      kind: 'requests' | 'tokens';
      limit: number;
      used: number;
      requested: number;
      /** The request alone exceeds the limit: no amount of waiting helps. */
      tooLarge: boolean;
      /** When the request would fit, from the window as it stands (at least 1 ms). */
      retryAfterMs: number;
    };

interface Entry { at: number; tokens: number }

/** The admitted requests of one key in the last minute, oldest first, with their token total. */
class Window {
  entries: Entry[] = [];
  head = 0;
  tokens = 0;

  get count(): number {
    return this.entries.length - this.head;
  }

  entry(i: number): Entry {
    return this.entries[this.head + i]!;
  }

  prune(now: number): void {
    while (this.head < this.entries.length && this.entries[this.head]!.at <= now - WINDOW_MS) {
      this.tokens -= this.entries[this.head]!.tokens;
      this.head++;
    }
    // Compact now and then instead of shift()ing each entry out.
    if (this.head > 1024 && this.head * 2 > this.entries.length) {
      this.entries = this.entries.slice(this.head);
      this.head = 0;
    }
  }
}

export class RateLimiter {
  limits: Limits;
  private windows = new Map<string, Window>();

  constructor(limits: Limits = {}) {
    this.limits = { ...limits };
  }

  /** Admits (and records) a request of `tokens` for `key`, or says why not and for how long. */
  admit(key: string, tokens: number, now = Date.now()): Verdict {
    const window = this.window(key, now);
    const { requestsPerMinute: rpm, tokensPerMinute: tpm } = this.limits;
    let refusal: Extract<Verdict, { ok: false }> | undefined;
    if (rpm !== undefined && window.count + 1 > rpm) {
      // The request fits once enough of the oldest requests have left the window.
      const freeing = window.count - rpm;
      const wait = rpm < 1 ? WINDOW_MS : window.entry(freeing).at + WINDOW_MS - now;
      refusal = this.refusal('requests', rpm, window.count, 1, rpm < 1, wait, window, now);
    }
    if (tpm !== undefined && window.tokens + tokens > tpm) {
      const tooLarge = tokens > tpm;
      let wait = WINDOW_MS;
      if (!tooLarge) {
        let freed = 0;
        for (let i = 0; i < window.count; i++) {
          freed += window.entry(i).tokens;
          if (window.tokens - freed + tokens <= tpm) {
            wait = window.entry(i).at + WINDOW_MS - now;
            break;
          }
        }
      }
      // Both limits exceeded: name the one that takes longer, since that decides the wait.
      if (!refusal || wait > refusal.retryAfterMs) {
        refusal = this.refusal('tokens', tpm, window.tokens, tokens, tooLarge, wait, window, now);
      }
    }
    if (refusal) return refusal;
    window.entries.push({ at: now, tokens });
    window.tokens += tokens;
    return { ok: true, headers: this.headers(window, now) };
  }

  reset(): void {
    this.windows.clear();
  }

  private window(key: string, now: number): Window {
    let window = this.windows.get(key);
    if (!window) this.windows.set(key, (window = new Window()));
    window.prune(now);
    return window;
  }

  private refusal(kind: 'requests' | 'tokens', limit: number, used: number, requested: number, tooLarge: boolean,
                  wait: number, window: Window, now: number): Extract<Verdict, { ok: false }> {
    return { ok: false, kind, limit, used, requested, tooLarge, retryAfterMs: Math.max(1, Math.ceil(wait)),
             headers: this.headers(window, now) };
  }

  /**
   * OpenAI's x-ratelimit-* headers. "reset" is documented as the time until the limit is back at its
   * initial state; in a rolling window that is when the newest recorded request leaves it.
   * A limit that is not set gets no headers: "unlimited" has no spelling in them.
   */
  private headers(window: Window, now: number): Record<string, string> {
    const headers: Record<string, string> = {};
    const newest = window.count ? window.entry(window.count - 1).at : now - WINDOW_MS;
    const reset = formatDuration(Math.max(0, newest + WINDOW_MS - now));
    const { requestsPerMinute: rpm, tokensPerMinute: tpm } = this.limits;
    if (rpm !== undefined) {
      headers['x-ratelimit-limit-requests'] = String(rpm);
      headers['x-ratelimit-remaining-requests'] = String(Math.max(0, rpm - window.count));
      headers['x-ratelimit-reset-requests'] = reset;
    }
    if (tpm !== undefined) {
      headers['x-ratelimit-limit-tokens'] = String(tpm);
      headers['x-ratelimit-remaining-tokens'] = String(Math.max(0, tpm - window.tokens));
      headers['x-ratelimit-reset-tokens'] = window.tokens ? reset : '0s';
    }
    return headers;
  }
}

/** A duration as OpenAI writes it (Go's time.Duration format at millisecond precision): 20ms, 1.5s, 6m0s. */
export function formatDuration(ms: number): string {
  const total = Math.max(0, Math.ceil(ms));
  if (total === 0) return '0s';
  if (total < 1000) return `${total}ms`;
  const hours = Math.floor(total / 3_600_000);
  const minutes = Math.floor((total % 3_600_000) / 60_000);
  const seconds = `${Number(((total % 60_000) / 1000).toFixed(3))}s`;
  if (hours) return `${hours}h${minutes}m${seconds}`;
  return minutes ? `${minutes}m${seconds}` : seconds;
}
