// The embedding call: the official `openai` client against OpenAI or any compatible endpoint.
// Transient failures (429, 5xx, timeouts, dropped connections) are retried with exponential backoff
// and jitter, honouring retry-after; a 400 is split in halves until the offending inputs stand
// alone, so one poison input fails alone and its neighbours are embedded.
import OpenAI from 'openai';
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

export interface ProviderOptions {
  apiKey: string;
  baseURL: string | undefined;
  timeoutMs: number;
  maxAttempts: number;
  pacer: Pacer;
  events?: ProviderEvents;
  signal?: AbortSignal;
}

const sleep = (ms: number, signal?: AbortSignal) => new Promise<void>((resolve, reject) => {
  if (signal?.aborted) return reject(signal.reason);
  const timer = setTimeout(resolve, ms);
  signal?.addEventListener('abort', () => { clearTimeout(timer); reject(signal.reason); }, { once: true });
});

/** Full jitter: a random wait up to min(cap, base * 2^attempt). */
export function backoffMs(attempt: number, baseMs = 500, capMs = 30_000): number {
  return Math.random() * Math.min(capMs, baseMs * 2 ** attempt);
}

export class Provider {
  private readonly client: OpenAI;
  private readonly options: ProviderOptions;

  constructor(options: ProviderOptions) {
    this.options = options;
    // Retries are ours (paced, bisecting 400s), so the client makes exactly one attempt.
    this.client = new OpenAI({ apiKey: options.apiKey, baseURL: options.baseURL, maxRetries: 0, timeout: options.timeoutMs });
  }

  /** One outcome per text, in order. Throws ProviderUnavailable when the provider cannot be used now. */
  async embed(request: EmbedRequest): Promise<EmbedOutcome[]> {
    try {
      const vectors = await this.attempt(request);
      return vectors.map((embedding) => ({ ok: true, embedding }));
    } catch (err) {
      if (!(err instanceof OpenAI.BadRequestError) || err.status !== 400) throw err;
      if (request.texts.length === 1) return [{ ok: false, reason: `provider refused the input: ${err.message}` }];
      const half = Math.ceil(request.texts.length / 2);
      const [left, right] = await Promise.all([
        this.embed({ ...request, texts: request.texts.slice(0, half), tokens: request.tokens.slice(0, half) }),
        this.embed({ ...request, texts: request.texts.slice(half), tokens: request.tokens.slice(half) }),
      ]);
      return [...left, ...right];
    }
  }

  private async attempt(request: EmbedRequest): Promise<number[][]> {
    const { pacer, events, signal, maxAttempts } = this.options;
    const tokens = request.tokens.reduce((a, b) => a + b, 0);
    for (let attempt = 0; ; attempt++) {
      // The request's own time: from when the pacer lets it go, not from when it began to wait.
      let started = performance.now();
      try {
        const { data, response } = await pacer.run(tokens, () => {
          started = performance.now();
          return this.client.embeddings.create({
            model: request.model,
            input: request.texts,
            ...(request.sendDimensions ? { dimensions: request.dimensions } : {}),
          }, { signal }).withResponse();
        });
        pacer.observe(response.headers);
        events?.onRequest?.({ status: response.status, seconds: (performance.now() - started) / 1000, inputs: request.texts.length, tokens });
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
