// Pacing of provider requests: requests- and tokens-per-minute budgets, a concurrency limit, and the
// provider's own signals (429 retry-after, x-ratelimit-* headers). One pacer per API key, since
// limits are per key.
//
// The budgets are token buckets refilled continuously at 95% of the configured limit, holding at
// most one second's worth, and allowed to go into debt for a request larger than that: any
// sixty-second window then carries at most 0.95 * limit + limit / 60 < limit, so a provider with a
// rolling one-minute window never has to answer 429 because of us.

const HEADROOM = 0.95;

class Bucket {
  private level: number;
  private last: number;
  private readonly perMs: number;
  private readonly capacity: number;

  constructor(perMinute: number, now: number) {
    this.perMs = (perMinute * HEADROOM) / 60_000;
    this.capacity = perMinute / 60;
    this.level = this.capacity;
    this.last = now;
  }

  /** Milliseconds until `amount` may be taken (0: now). */
  waitFor(now: number): number {
    this.refill(now);
    return this.level >= 0 ? 0 : Math.ceil(-this.level / this.perMs);
  }

  take(amount: number, now: number): void {
    this.refill(now);
    this.level -= amount;
  }

  private refill(now: number): void {
    this.level = Math.min(this.capacity, this.level + (now - this.last) * this.perMs);
    this.last = now;
  }
}

/** Parses OpenAI's durations: "20ms", "1s", "6m0s", "1h2m3.5s". */
export function parseDuration(text: string | null | undefined): number | undefined {
  if (!text) return undefined;
  let ms = 0;
  let matched = false;
  for (const [, n, unit] of text.matchAll(/(\d+(?:\.\d+)?)(ms|h|m|s)/g)) {
    matched = true;
    ms += Number(n) * ({ ms: 1, s: 1000, m: 60_000, h: 3_600_000 } as Record<string, number>)[unit!]!;
  }
  return matched ? ms : undefined;
}

export interface PacerOptions {
  requestsPerMinute?: number;
  tokensPerMinute?: number;
  concurrency: number;
}

export class Pacer {
  private readonly requests: Bucket | undefined;
  private readonly tokens: Bucket | undefined;
  private readonly concurrency: number;
  private inFlight = 0;
  private pausedUntil = 0;
  private readonly waiting: Array<() => void> = [];
  private chain: Promise<void> = Promise.resolve();

  constructor(options: PacerOptions, now = Date.now()) {
    this.requests = options.requestsPerMinute ? new Bucket(options.requestsPerMinute, now) : undefined;
    this.tokens = options.tokensPerMinute ? new Bucket(options.tokensPerMinute, now) : undefined;
    this.concurrency = options.concurrency;
  }

  /** Waits for a slot and budget for a request of `tokens`, runs it, and frees the slot. */
  async run<T>(tokens: number, fn: () => Promise<T>): Promise<T> {
    await this.slot();
    try {
      // Budgets are granted in arrival order: a chain, so a large request is not overtaken forever.
      const granted = this.chain.then(() => this.budget(tokens));
      this.chain = granted.catch(() => {});
      await granted;
      return await fn();
    } finally {
      this.inFlight--;
      this.waiting.shift()?.();
    }
  }

  /** The provider said 429: nobody sends before `ms` from now. */
  pause(ms: number): void {
    this.pausedUntil = Math.max(this.pausedUntil, Date.now() + ms);
  }

  /**
   * Reads x-ratelimit-* headers: when the provider says a budget is spent (remaining 0), nobody
   * sends before its reset. Our own buckets keep below the limit, so this only happens when
   * something else shares the key.
   */
  observe(headers: { get(name: string): string | null } | undefined): void {
    if (!headers) return;
    for (const kind of ['requests', 'tokens']) {
      const remaining = headers.get(`x-ratelimit-remaining-${kind}`);
      const reset = parseDuration(headers.get(`x-ratelimit-reset-${kind}`));
      if (remaining !== null && remaining.trim() !== '' && Number(remaining) <= 0 && reset !== undefined) this.pause(reset);
    }
  }

  private async slot(): Promise<void> {
    if (this.inFlight >= this.concurrency) await new Promise<void>((resolve) => this.waiting.push(resolve));
    this.inFlight++;
  }

  private async budget(tokens: number): Promise<void> {
    for (;;) {
      const now = Date.now();
      const wait = Math.max(this.pausedUntil - now, this.requests?.waitFor(now) ?? 0, this.tokens?.waitFor(now) ?? 0);
      if (wait <= 0) break;
      await new Promise((resolve) => setTimeout(resolve, wait));
    }
    const now = Date.now();
    this.requests?.take(1, now);
    this.tokens?.take(tokens, now);
  }
}
