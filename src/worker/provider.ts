// The embedding call: the official `openai` client against OpenAI or any compatible endpoint.
// Transient failures (429, 5xx, timeouts, dropped connections) are retried with exponential backoff
// and jitter, honouring retry-after; a 400 is split in halves until the offending inputs stand
// alone, so one poison input fails alone and its neighbours are embedded. A request that timed out
// is split in halves too before it is sent again, and the adaptive limits (adaptive.ts) shrink.
import OpenAI from 'openai';
import type { Adaptive } from './adaptive.ts';
import type { Pacer } from './pacer.ts';

export interface EmbedRequest {
  model: string;
  dimensions: number;
  sendDimensions: boolean;
  texts: string[];
  tokens: number[];          // per text, for pacing
}

export type EmbedOutcome =
  | { ok: true; embedding: number[] }
  | { ok: false; reason: string };

export interface ProviderEvents {
  onRequest?(info: { status: number | 'error'; seconds: number; inputs: number; tokens: number }): void;
  onRateLimited?(): void;
}

/** A failure that retrying this request cannot fix (after the attempts were spent, or a bad key). */
export class ProviderUnavailable extends Error {
  override name = 'ProviderUnavailable';
}

/** Where the API key comes from: asked before every request, and again after a 401 (a rotated secret). */
export interface ApiKey {
  /** The key to use now; throws when there is none. */
  current(): string;
  /** After the provider refused `used`: the key read afresh from its source, or undefined when it is the same. */
  reread(used: string): string | undefined;
}

export interface ProviderOptions {
  apiKey: string | ApiKey;
  baseURL: string | undefined;
  timeoutMs: number;
  maxAttempts: number;
  pacer: Pacer;
  /** The endpoint's adaptive limits (requests in flight, inputs per request), shared by the worker's providers. */
  adaptive?: Adaptive;
  events?: ProviderEvents;
  signal?: AbortSignal;
}

const sleep = (ms: number, signal?: AbortSignal) => new Promise<void>((resolve, reject) => {
  if (signal?.aborted) return reject(signal.reason);
  const timer = setTimeout(resolve, ms);
  signal?.addEventListener('abort', () => { clearTimeout(timer); reject(signal.reason); }, { once: true });
});

/** A request of several inputs timed out: embed() splits it in halves and sends those. */
class SplitAfterTimeout extends Error {
  override name = 'SplitAfterTimeout';
}

/** Full jitter: a random wait up to min(cap, base * 2^attempt). */
export function backoffMs(attempt: number, baseMs = 500, capMs = 30_000): number {
  return Math.random() * Math.min(capMs, baseMs * 2 ** attempt);
}

export class Provider {
  private client: OpenAI | undefined;
  private clientKey: string | undefined;
  private readonly key: ApiKey;
  private readonly options: ProviderOptions;

  constructor(options: ProviderOptions) {
    this.options = options;
    const { apiKey } = options;
    this.key = typeof apiKey === 'string' ? { current: () => apiKey, reread: () => undefined } : apiKey;
  }

  /** A client for the current key: a new one when the key changed (a rotated secret file). */
  private clientNow(): { client: OpenAI; key: string } {
    const key = this.key.current();
    if (!this.client || key !== this.clientKey) {
      // Retries are ours (paced, bisecting 400s), so the client makes exactly one attempt.
      this.client = new OpenAI({ apiKey: key, baseURL: this.options.baseURL, maxRetries: 0, timeout: this.options.timeoutMs });
      this.clientKey = key;
    }
    return { client: this.client, key };
  }

  /**
   * One outcome per text, in order. Throws ProviderUnavailable when the provider cannot be used now.
   * `signal` (besides the worker's own) cancels the request: its batch ran out of time, or lost its jobs.
   */
  async embed(request: EmbedRequest, signal?: AbortSignal): Promise<EmbedOutcome[]> {
    try {
      const vectors = await this.attempt(request, signal);
      return vectors.map((embedding) => ({ ok: true, embedding }));
    } catch (err) {
      const split = err instanceof SplitAfterTimeout;
      if (!split && (!(err instanceof OpenAI.BadRequestError) || err.status !== 400)) throw err;
      if (request.texts.length === 1) return [{ ok: false, reason: `provider refused the input: ${(err as Error).message}` }];
      const half = Math.ceil(request.texts.length / 2);
      const [left, right] = await Promise.all([
        this.embed({ ...request, texts: request.texts.slice(0, half), tokens: request.tokens.slice(0, half) }, signal),
        this.embed({ ...request, texts: request.texts.slice(half), tokens: request.tokens.slice(half) }, signal),
      ]);
      return [...left, ...right];
    }
  }

  private async attempt(request: EmbedRequest, batchSignal?: AbortSignal): Promise<number[][]> {
    const { pacer, events, maxAttempts, adaptive } = this.options;
    const signals = [this.options.signal, batchSignal].filter((s): s is AbortSignal => s !== undefined);
    const signal = signals.length > 1 ? AbortSignal.any(signals) : signals[0];
    const tokens = request.tokens.reduce((a, b) => a + b, 0);
    let reread = false;
    for (let attempt = 0; ; attempt++) {
      // Outside the try: a missing key is not a transient failure to retry here.
      const { client, key } = this.clientNow();
      // The request's own time: from when the pacer lets it go, not from when it began to wait.
      let started = performance.now();
      const release = adaptive ? await adaptive.slot(signal) : () => {};
      try {
        const { data, response } = await pacer.run(tokens, () => {
          started = performance.now();
          return client.embeddings.create({
            model: request.model,
            input: request.texts,
            ...(request.sendDimensions ? { dimensions: request.dimensions } : {}),
          }, { signal }).withResponse();
        }).finally(release);
        pacer.observe(response.headers);
        const seconds = (performance.now() - started) / 1000;
        adaptive?.answered(request.texts.length, seconds);
        events?.onRequest?.({ status: response.status, seconds, inputs: request.texts.length, tokens });
        const byIndex = [...data.data].sort((a, b) => a.index - b.index).map((d) => d.embedding as number[]);
        if (byIndex.length !== request.texts.length) {
          throw new ProviderUnavailable(`provider returned ${byIndex.length} embeddings for ${request.texts.length} inputs`);
        }
        return byIndex;
      } catch (err) {
        const status = err instanceof OpenAI.APIError ? err.status : undefined;
        events?.onRequest?.({ status: status ?? 'error', seconds: (performance.now() - started) / 1000, inputs: request.texts.length, tokens });
        if (signal?.aborted) throw err;
        if (status === 400) throw err;   // bisected by embed()
        if (err instanceof OpenAI.APIConnectionTimeoutError) {
          adaptive?.timedOut();
          // too much for the endpoint at once: sent again in halves (a single input is retried as it is)
          if (request.texts.length > 1) throw new SplitAfterTimeout(`request of ${request.texts.length} inputs timed out`);
        }
        // A refused key may have been rotated since it was read: read it again once, and retry with a new one.
        if (status === 401 && !reread) {
          reread = true;
          if (this.key.reread(key) !== undefined) continue;
        }
        if (status === 401 || status === 403 || status === 404) {
          throw new ProviderUnavailable(`provider answered ${status}: ${(err as Error).message} (check the API key, base URL and model)`);
        }
        const transient = status === undefined || status === 408 || status === 409 || status === 429 || status >= 500
          || err instanceof OpenAI.APIConnectionError;
        if (!transient) throw new ProviderUnavailable(`provider answered ${status}: ${(err as Error).message}`);
        if (attempt + 1 >= maxAttempts) {
          throw new ProviderUnavailable(`provider unavailable after ${maxAttempts} attempts: ${(err as Error).message}`);
        }
        let wait = backoffMs(attempt);
        if (status === 429) {
          events?.onRateLimited?.();
          const headers = (err as InstanceType<typeof OpenAI.APIError>).headers;
          const after = Number(headers?.get('retry-after-ms')) || Number(headers?.get('retry-after')) * 1000;
          if (after > 0) wait = after + Math.random() * 250;
          pacer.pause(wait);
        }
        await sleep(wait, signal);
      }
    }
  }
}
