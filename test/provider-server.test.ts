// The local embeddings server, seen through the real `openai` client: results, limits, failures, stats.
// No database: everything here talks HTTP to a server on 127.0.0.1.
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import OpenAI, { type APIError } from 'openai';
import { afterEach, describe, expect, it } from 'vitest';
import { cosine, failure } from './support/assertions.ts';
import {
  hashedEmbedding, startEmbeddingServer, type EmbeddingServer, type EmbeddingServerOptions,
} from '../src/provider-server.ts';
import { RateLimiter, formatDuration } from '../src/provider-server/rate-limit.ts';

const MODEL = 'text-embedding-3-small';
const SERVER_FILE = fileURLToPath(new URL('../src/provider-server.ts', import.meta.url));

const servers: EmbeddingServer[] = [];
afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => s.close()));
});

async function serve(options: EmbeddingServerOptions = {}): Promise<EmbeddingServer> {
  const server = await startEmbeddingServer({ dimensions: 64, ...options });
  servers.push(server);
  return server;
}

function client(server: EmbeddingServer, options: { apiKey?: string; timeout?: number; fetch?: typeof fetch } = {}): OpenAI {
  return new OpenAI({ apiKey: 'sk-test-key', baseURL: server.url, maxRetries: 0, ...options });
}

function decodeBase64(text: string): number[] {
  const bytes = Buffer.from(text, 'base64');
  return Array.from({ length: bytes.length / 4 }, (_, i) => bytes.readFloatLE(i * 4));
}

describe('embeddings through the openai client', () => {
  it('round-trips vectors exactly: SDK default (base64 on the wire), float and explicit base64', async () => {
    const server = await serve();
    const sent: Record<string, unknown>[] = [];
    const spying = client(server, {
      fetch: (url, init) => {
        sent.push(JSON.parse(String(init?.body)));
        return fetch(url, init);
      },
    });
    const texts = ['The quick brown fox', 'jumps over the lazy dog', 'Ünïcödé wörds and 数字 123'];
    const expected = hashedEmbedding(texts, 64).map((v) => Array.from(v));

    const byDefault = await spying.embeddings.create({ model: MODEL, input: texts });
    expect(sent[0]).toMatchObject({ encoding_format: 'base64' });  // the SDK asks for base64 unless told...
    expect(byDefault.data.map((d) => d.embedding)).toEqual(expected);  // ...and hands back number[]
    expect(byDefault).toMatchObject({ object: 'list', model: MODEL, usage: { prompt_tokens: expect.any(Number) } });
    expect(byDefault.data.map((d) => [d.object, d.index])).toEqual([['embedding', 0], ['embedding', 1], ['embedding', 2]]);

    const floats = await spying.embeddings.create({ model: MODEL, input: texts, encoding_format: 'float' });
    expect(sent[1]).toMatchObject({ encoding_format: 'float' });
    expect(floats.data.map((d) => d.embedding)).toEqual(expected);

    // An explicit 'base64' is not decoded by the SDK: the caller gets the string.
    const raw = await spying.embeddings.create({ model: MODEL, input: texts, encoding_format: 'base64' });
    expect(raw.data.map((d) => decodeBase64(d.embedding))).toEqual(expected);
  });

  it('counts tokens with cl100k, honours `dimensions`, accepts token arrays', async () => {
    const server = await serve();
    const openai = client(server);
    const one = await openai.embeddings.create({ model: MODEL, input: 'hello world' });
    expect(one.data[0]!.embedding).toHaveLength(64);
    expect(one.usage).toEqual({ prompt_tokens: 2, total_tokens: 2 });
    const wide = await openai.embeddings.create({ model: MODEL, input: ['hello world'], dimensions: 256 });
    expect(wide.data[0]!.embedding).toEqual(Array.from(hashedEmbedding(['hello world'], 256)[0]!));
    const tokens = await openai.embeddings.create({ model: MODEL, input: [[15339, 1917], [15339]] });
    expect(tokens.usage.total_tokens).toBe(3);
    expect(tokens.data[0]!.embedding).toEqual(Array.from(hashedEmbedding(['[15339,1917]'], 64)[0]!));
    expect(server.stats.texts.get('[15339]')).toBe(1);
  });

  it('puts texts that share words closer than unrelated ones', async () => {
    const server = await serve({ dimensions: 512 });
    const { data } = await client(server).embeddings.create({
      model: MODEL,
      input: ['How do I reset my password?', 'Password reset instructions for your account', 'Quarterly revenue grew in the northern region'],
    });
    const [question, answer, unrelated] = data.map((d) => d.embedding);
    expect(cosine(question!, answer!)).toBeGreaterThan(0.3);
    expect(cosine(question!, answer!)).toBeGreaterThan(cosine(question!, unrelated!) + 0.2);
  });

  it('refuses invalid requests with 400 as OpenAI does, for the whole request', async () => {
    const openai = client(await serve());
    const tooMany = await failure<APIError>(openai.embeddings.create({ model: MODEL, input: Array.from({ length: 2049 }, (_, i) => `text ${i}`) }));
    expect(tooMany).toBeInstanceOf(OpenAI.BadRequestError);
    expect(tooMany).toMatchObject({ status: 400, type: 'invalid_request_error' });
    expect(tooMany.message).toMatch(/^400 '\$\.input' is invalid/);
    const empty = await failure<APIError>(openai.embeddings.create({ model: MODEL, input: ['fine', ''] }));
    expect(empty).toBeInstanceOf(OpenAI.BadRequestError);
    expect(empty.message).toMatch(/'\$\.input\[1\]' is invalid/);
    expect(await failure<APIError>(openai.embeddings.create({ model: MODEL, input: [] }))).toBeInstanceOf(OpenAI.BadRequestError);
    // Models without a known tokenizer count one token per 3 bytes: 40 x 7,500 = 300,000 + 40 tokens.
    const huge = await failure<APIError>(openai.embeddings.create({ model: 'local-model', input: Array.from({ length: 40 }, (_, i) => `${i}`.padEnd(22_502, 'x')) }));
    expect(huge).toBeInstanceOf(OpenAI.BadRequestError);
    expect(huge).toMatchObject({ code: 'max_tokens_per_request', message: '400 Requested 300040 tokens, max 300000 tokens per request' });
    const long = await failure<APIError>(openai.embeddings.create({ model: 'local-model', input: 'x'.repeat(30_000) }));
    expect(long.message).toMatch(/maximum context length is 8192 tokens, however you requested 10000 tokens/);
  });

  it('answers 404, malformed JSON and missing keys in OpenAI error shape', async () => {
    const server = await serve({ apiKeys: ['sk-good-key-1234'] });
    const notFound = await fetch(`${server.url}/chat/completions`, { method: 'POST', headers: { authorization: 'Bearer sk-good-key-1234' } });
    expect(notFound.status).toBe(404);
    expect(await notFound.json()).toEqual({ error: { message: 'Invalid URL (POST /v1/chat/completions)', type: 'invalid_request_error', param: null, code: null } });
    const malformed = await fetch(`${server.url}/embeddings`, { method: 'POST', headers: { authorization: 'Bearer sk-good-key-1234' }, body: '{"model":' });
    expect(malformed.status).toBe(400);
    expect((await malformed.json()).error).toMatchObject({ type: 'invalid_request_error', message: expect.stringMatching(/could not parse the JSON body/) });

    const wrongKey = await failure<APIError>(client(server, { apiKey: 'sk-wrong-key-5678' }).embeddings.create({ model: MODEL, input: 'hi' }));
    expect(wrongKey).toBeInstanceOf(OpenAI.AuthenticationError);
    expect(wrongKey).toMatchObject({ status: 401, code: 'invalid_api_key' });
    expect(wrongKey.message).toMatch(/Incorrect API key provided: sk-\*+5678/);
    const ok = await client(server, { apiKey: 'sk-good-key-1234' }).embeddings.create({ model: MODEL, input: 'hi' });
    expect(ok.data).toHaveLength(1);
    expect(server.stats).toMatchObject({ requests: 4, ok: 1, status4xx: 3 });
  });
});

describe('rate limits', () => {
  it('refuses over the request limit with 429, retry-after and x-ratelimit headers; 429s are free', async () => {
    const server = await serve({ requestsPerMinute: 2, tokensPerMinute: 1_000, apiKeys: ['sk-a', 'sk-b'] });
    const a = client(server, { apiKey: 'sk-a' });
    const first = await a.embeddings.create({ model: MODEL, input: 'hello world' }).withResponse();
    expect(Object.fromEntries([...first.response.headers].filter(([name]) => name.startsWith('x-ratelimit-')))).toEqual({
      'x-ratelimit-limit-requests': '2', 'x-ratelimit-remaining-requests': '1', 'x-ratelimit-reset-requests': expect.stringMatching(/^(59\.\d+s|1m0s)$/),
      'x-ratelimit-limit-tokens': '1000', 'x-ratelimit-remaining-tokens': '998', 'x-ratelimit-reset-tokens': expect.stringMatching(/^(59\.\d+s|1m0s)$/),
    });
    expect(first.response.headers.get('x-request-id')).toMatch(/^req_[0-9a-f]{32}$/);
    await a.embeddings.create({ model: MODEL, input: 'hello world' });
    for (let attempt = 0; attempt < 2; attempt++) {
      const limited = await failure<APIError>(a.embeddings.create({ model: MODEL, input: 'hello world' }));
      expect(limited).toBeInstanceOf(OpenAI.RateLimitError);
      expect(limited).toMatchObject({ status: 429, type: 'requests', code: 'rate_limit_exceeded' });
      expect(limited.message).toMatch(/^429 Rate limit reached for text-embedding-3-small on requests per min \(RPM\): Limit 2, Used 2, Requested 1\. Please try again in 59\.\d+s/);
      expect(Number(limited.headers!.get('retry-after'))).toBe(60);
      expect(Number(limited.headers!.get('retry-after-ms'))).toBeGreaterThan(58_000);
      expect(limited.headers!.get('x-ratelimit-remaining-requests')).toBe('0');
    }
    // each key has its own window
    await client(server, { apiKey: 'sk-b' }).embeddings.create({ model: MODEL, input: 'hello world' });
    expect(server.stats).toMatchObject({ requests: 5, ok: 3, status429: 2, tokens: 6 });
    expect(server.stats.byKey).toEqual({ 'sk-a': { requests: 4, inputs: 2, tokens: 4 }, 'sk-b': { requests: 1, inputs: 1, tokens: 2 } });
  });

  it('refuses over the token limit with 429 type tokens, and setLimits applies at once', async () => {
    const server = await serve({ tokensPerMinute: 10 });
    const openai = client(server);
    await openai.embeddings.create({ model: MODEL, input: 'one two three four five six' });  // 6 tokens
    const limited = await failure<APIError>(openai.embeddings.create({ model: MODEL, input: 'seven eight nine ten eleven' }));
    expect(limited).toBeInstanceOf(OpenAI.RateLimitError);
    expect(limited).toMatchObject({ type: 'tokens', code: 'rate_limit_exceeded' });
    expect(limited.message).toMatch(/on tokens per min \(TPM\): Limit 10, Used 6, Requested 5\./);
    expect(limited.headers!.get('x-ratelimit-remaining-tokens')).toBe('4');
    expect(Number(limited.headers!.get('retry-after'))).toBeGreaterThanOrEqual(1);
    const tooLarge = await failure<APIError>(openai.embeddings.create({ model: MODEL, input: 'a b c d e f g h i j k l' }));
    expect(tooLarge.message).toMatch(/^429 Request too large for text-embedding-3-small on tokens per min/);
    server.setLimits({ tokensPerMinute: 100 });
    await openai.embeddings.create({ model: MODEL, input: 'seven eight nine ten eleven' });
  });

  it('keeps a rolling one-minute window', () => {
    const limiter = new RateLimiter({ requestsPerMinute: 2, tokensPerMinute: 100 });
    expect(limiter.admit('k', 10, 0).ok).toBe(true);
    expect(limiter.admit('k', 80, 30_000).ok).toBe(true);
    expect(limiter.admit('k', 1, 59_000)).toMatchObject({ ok: false, kind: 'requests', retryAfterMs: 1_000 });
    // the first entry left at 60 s (windows are half-open), the second holds 80 of 100 tokens until 90 s
    expect(limiter.admit('k', 21, 60_000)).toMatchObject({ ok: false, kind: 'tokens', retryAfterMs: 30_000 });
    expect(limiter.admit('k', 10, 60_000)).toMatchObject({ ok: true, headers: { 'x-ratelimit-remaining-tokens': '10', 'x-ratelimit-reset-requests': '1m0s' } });
    expect(limiter.admit('other', 10, 60_000).ok).toBe(true);
    expect([0, 20, 1_000, 8_640, 60_000, 86_400, 3_600_000].map(formatDuration)).toEqual(['0s', '20ms', '1s', '8.64s', '1m0s', '1m26.4s', '1h0m0s']);
  });
});

describe('fault injection', () => {
  it('answers 5xx that the SDK raises as InternalServerError', async () => {
    const server = await serve({ faults: { serverErrorRate: 1 }, seed: 1 });
    const errors = await Promise.all([1, 2, 3, 4, 5, 6].map(() => failure<APIError>(client(server).embeddings.create({ model: MODEL, input: 'x' }))));
    for (const error of errors) {
      expect(error).toBeInstanceOf(OpenAI.InternalServerError);
      expect(error.type).toBe('server_error');
    }
    expect(new Set(errors.map((e) => e.status)).size).toBeGreaterThan(1);
    expect(server.stats).toMatchObject({ requests: 6, status5xx: 6, ok: 0 });
    server.setFaults({});
    await client(server).embeddings.create({ model: MODEL, input: 'x' });
  });

  it('holds "timeout" requests until the client gives up, and close() drops them', async () => {
    const server = await serve({ faults: { timeoutRate: 1 } });
    const started = Date.now();
    const timedOut = await failure<APIError>(client(server, { timeout: 300 }).embeddings.create({ model: MODEL, input: 'x' }));
    expect(timedOut).toBeInstanceOf(OpenAI.APIConnectionTimeoutError);
    expect(Date.now() - started).toBeGreaterThanOrEqual(290);
    expect(server.stats).toMatchObject({ requests: 1, timeouts: 1 });
    // A held request whose client never gives up ends when the server closes.
    const pending = failure<APIError>(client(server).embeddings.create({ model: MODEL, input: 'y' }));
    await expect.poll(() => server.stats.timeouts).toBe(2);
    await server.close();
    expect(await pending).toBeInstanceOf(OpenAI.APIConnectionError);
  });

  it('sends vectors one dimension short, or with a NaN (null in float JSON)', async () => {
    const server = await serve({ faults: { wrongDimensionsRate: 1 } });
    const openai = client(server);
    const short = await openai.embeddings.create({ model: MODEL, input: ['a', 'b'] });
    expect(short.data.map((d) => d.embedding.length)).toEqual([63, 63]);
    server.setFaults({ nanRate: 1 });
    const poisoned = await openai.embeddings.create({ model: MODEL, input: ['a', 'b', 'c'] });
    expect(poisoned.data.filter((d) => d.embedding.some(Number.isNaN))).toHaveLength(1);
    const asFloat = await openai.embeddings.create({ model: MODEL, input: ['a', 'b', 'c'], encoding_format: 'float' });
    expect(asFloat.data.flatMap((d) => d.embedding).filter((x) => x === null)).toHaveLength(1);
  });

  it('fails a whole request with 400 when one input is "bad", naming its index', async () => {
    const server = await serve({ faults: { badInputs: (text) => text.includes('poison') } });
    const bad = await failure<APIError>(client(server).embeddings.create({ model: MODEL, input: ['ok', 'fine', 'poison pill', 'ok too'] }));
    expect(bad).toBeInstanceOf(OpenAI.BadRequestError);
    expect(bad.message).toMatch(/^400 '\$\.input\[2\]' is invalid/);
    expect(server.stats.texts.size).toBe(0);
    expect(server.stats.inputs).toBe(0);
  });

  it('draws faults from a seeded PRNG: same seed, same failures', async () => {
    async function outcomes(seed: number): Promise<number[]> {
      const server = await serve({ seed, faults: { serverErrorRate: 0.5 } });
      const openai = client(server);
      const statuses: number[] = [];
      for (let i = 0; i < 12; i++) {
        statuses.push(await openai.embeddings.create({ model: MODEL, input: 'x' }).then(() => 200, (e: APIError) => e.status ?? 0));
      }
      return statuses;
    }
    const first = await outcomes(42);
    expect(await outcomes(42)).toEqual(first);
    expect(first).toContain(200);
    expect(first.some((s) => s >= 500)).toBe(true);
  });
});

describe('stats', () => {
  it('counts texts, keys, tokens, concurrency and keeps a log', async () => {
    const server = await serve({ latencyMs: 150 });
    const openai = client(server);
    const started = Date.now();
    await Promise.all(['alpha', 'beta', 'gamma', 'delta', 'alpha'].map((text) => openai.embeddings.create({ model: MODEL, input: [text, 'shared'] })));
    expect(Date.now() - started).toBeGreaterThanOrEqual(150);
    expect(server.stats.peakConcurrency).toBe(5);
    expect(server.stats.texts).toEqual(new Map([['alpha', 2], ['beta', 1], ['gamma', 1], ['delta', 1], ['shared', 5]]));
    expect(server.stats).toMatchObject({ requests: 5, ok: 5, inputs: 10, tokens: 10, byKey: { 'sk-test-key': { requests: 5, inputs: 10, tokens: 10 } } });
    expect(server.stats.log).toHaveLength(5);
    expect(server.stats.log[0]).toEqual({ at: expect.any(Number), key: 'sk-test-key', inputs: 2, tokens: 2, status: 200 });

    server.resetStats();
    server.setLatency(0);
    await openai.embeddings.create({ model: MODEL, input: 'alpha' });
    expect(server.stats).toMatchObject({ requests: 1, ok: 1, peakConcurrency: 1, texts: new Map([['alpha', 1]]) });
  });
});

describe('hashedEmbedding', () => {
  it('is deterministic, unit length, and gives an empty bag a fixed unit vector', () => {
    const [a, again, empty, punctuation] = hashedEmbedding(['Same words here', 'same WORDS, here!', '', '... ?!'], 32);
    expect(again).toEqual(a);
    expect(Math.hypot(...a!)).toBeCloseTo(1, 5);
    expect(empty).toEqual(punctuation);
    expect(Math.hypot(...empty!)).toBeCloseTo(1, 5);
  });
});

describe('command line', () => {
  it('prints the base URL, serves, and stops on SIGTERM', async () => {
    const child = spawn(process.execPath, [SERVER_FILE, '--port', '0', '--dimensions', '12', '--rpm', '100'], { stdio: ['ignore', 'pipe', 'inherit'] });
    try {
      const [line] = (await once(child.stdout, 'data')) as [Buffer];
      const url = line.toString().trim();
      expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/v1$/);
      const openai = new OpenAI({ apiKey: 'sk-cli', baseURL: url, maxRetries: 0 });
      const { data, response } = await openai.embeddings.create({ model: MODEL, input: 'hello' }).withResponse();
      expect(data.data[0]!.embedding).toHaveLength(12);
      expect(response.headers.get('x-ratelimit-limit-requests')).toBe('100');
    } finally {
      child.kill('SIGTERM');
    }
    const [code] = await once(child, 'exit');
    expect(code).toBe(0);
  });
});
