// A local stand-in for OpenAI's POST /v1/embeddings, for tests, benchmarks and the demo. It answers
// the official `openai` client the way the real API does, failures included: OpenAI-shaped error
// bodies, 400s for whole requests, per-key rolling rate limits with OpenAI's headers, and injectable
// faults (5xx, hung requests, wrong-length vectors, NaN) drawn from a seeded PRNG for repeatable runs.
// Two embedders: 'hashed' (default; deterministic bag-of-words vectors of any length, for speed) and
// 'use-lite' (Universal Sentence Encoder Lite, a real 512-dimension model from npm, for relevance).
// It also serves the Batch API for embeddings (files and batches, provider-server/batches.ts).
import http from 'node:http';
import { randomUUID } from 'node:crypto';
import { endianness } from 'node:os';
import { Command, InvalidArgumentError, Option } from 'commander';
import { countTokens } from './tokens.ts';
import { ApiError, invalidInput, parseRequest, type EmbeddingRequest } from './provider-server/request.ts';
import { RateLimiter, formatDuration } from './provider-server/rate-limit.ts';
import { hashedEmbedding } from './provider-server/hashed-embedding.ts';
import { USE_LITE_DIMENSIONS, checkUseLiteRequest, loadUseLite } from './provider-server/model-embedding.ts';
import { mulberry32 } from './prng.ts';
import { BatchApi, type BatchOptions, type BatchStats } from './provider-server/batches.ts';

export { hashedEmbedding };

export type EmbedderName = 'hashed' | 'use-lite';
type Embed = (texts: string[], dimensions: number) => Promise<Float32Array[]> | Float32Array[];

export interface EmbeddingServerOptions {
  port?: number;                 // default 0: any free port on 127.0.0.1
  dimensions?: number;           // default 1536 (use-lite: 512, the only size it has); a request's `dimensions` overrides it
  latencyMs?: number;            // added before every answer except 429s, which OpenAI gives at once
  requestsPerMinute?: number;    // undefined: unlimited
  tokensPerMinute?: number;
  apiKeys?: string[];            // when set, `Authorization: Bearer <key>` must be one of them, else 401
  // 'use-lite' loads the model (about a second, once per process) before the server listens. Any
  // `model` name is accepted and echoed; the vectors come from the chosen embedder whatever it says.
  embedder?: EmbedderName;       // default 'hashed'
  embed?: Embed;                 // a custom embedder instead (not together with `embedder`)
  faults?: Faults;
  seed?: number;                 // for the fault PRNG
  // A slow self-hosted model: msPerInput of compute per input, and with oneAtATime (the default for
  // use-lite, whose model serves one request at a time) requests computed one after another, in
  // arrival order. A request whose client has gone (timed out, cancelled) is not computed, or
  // stops being computed (msPerInput), and is logged as 499.
  msPerInput?: number;
  oneAtATime?: boolean;
  batches?: BatchOptions;        // the Batch API's expiry, pace and line faults
}

/** Rates are fractions of admitted requests (those that passed validation and the rate limits). */
export interface Faults {
  serverErrorRate?: number;      // answered 500, 502 or 503
  timeoutRate?: number;          // never answered; the socket is held until the client gives up or close()
  wrongDimensionsRate?: number;  // every vector of the response is one dimension short
  // One vector gets a NaN. base64 carries it as is; in float JSON it arrives as null, since JSON has no NaN.
  nanRate?: number;
  badInputs?: (text: string) => boolean;  // such an input fails the whole request with 400, naming its index
}

export interface RequestLogEntry {
  at: number;                    // ms since the epoch, when answered (or held, for timeouts)
  key: string;                   // the bearer token presented, '' for none
  inputs: number;                // inputs and tokens of the request as parsed (0 if it never parsed)
  tokens: number;
  status: number;                // 0 for a held "timeout"
}

export interface ServerStats {
  requests: number;              // all, = ok + status429 + status4xx + status5xx + timeouts + in flight
  ok: number;
  status429: number;
  status4xx: number;             // other than 429; 499 = the client left before its answer (its compute stopped)
  status5xx: number;
  timeouts: number;
  inputs: number;                // embedded in 200 responses
  tokens: number;
  byKey: Record<string, { requests: number; inputs: number; tokens: number }>;
  texts: Map<string, number>;    // times each input was embedded (token arrays by their JSON text)
  peakConcurrency: number;
  log: RequestLogEntry[];        // the last 10,000 requests
}

export interface EmbeddingServer {
  url: string;                   // base URL for the openai client: http://127.0.0.1:PORT/v1
  port: number;
  embedder: EmbedderName | 'custom';
  dimensions: number;            // what a request without `dimensions` gets
  stats: ServerStats;            // the same object throughout; resetStats() refills it
  batchStats: BatchStats;        // what the Batch API embedded (not in `stats`)
  setBatchOptions(options: BatchOptions): void;
  setFaults(faults: Faults): void;
  setLimits(limits: { requestsPerMinute?: number; tokensPerMinute?: number }): void;  // the window's history stays
  setLatency(ms: number): void;
  resetStats(): void;
  close(): Promise<void>;        // also drops held and in-flight connections
}

const LOG_SIZE = 10_000;

/** Little-endian float32 bytes, which is what the SDK decodes (Buffer's own order is the host's). */
function toBase64(vector: Float32Array): string {
  if (endianness() === 'LE') return Buffer.from(vector.buffer, vector.byteOffset, vector.byteLength).toString('base64');
  const bytes = Buffer.alloc(vector.length * 4);
  vector.forEach((x, i) => bytes.writeFloatLE(x, i * 4));
  return bytes.toString('base64');
}

const prng = mulberry32;   // decides which requests fail

/** The body of a 200 answer of POST /v1/embeddings. */
function embeddingBody(request: EmbeddingRequest, vectors: Float32Array[]) {
  const tokens = request.tokens.reduce((a, t) => a + t, 0);
  const data = vectors.map((v, index) => ({
    object: 'embedding', index,
    embedding: request.encoding === 'base64' ? toBase64(v) : Array.from(v, (x) => (Number.isNaN(x) ? null : x)),
  }));
  return { object: 'list', data, model: request.model, usage: { prompt_tokens: tokens, total_tokens: tokens } };
}

function redactKey(key: string): string {
  return key.length > 8 ? `${key.slice(0, 3)}${'*'.repeat(Math.min(key.length - 7, 20))}${key.slice(-4)}` : key;
}

function emptyStats(): ServerStats {
  return { requests: 0, ok: 0, status429: 0, status4xx: 0, status5xx: 0, timeouts: 0, inputs: 0, tokens: 0,
           byKey: {}, texts: new Map(), peakConcurrency: 0, log: [] };
}

interface Embedder {
  name: EmbedderName | 'custom';
  dimensions: number;
  embed: Embed;
  check?: (input: unknown, dimensions: number) => void;  // refuses what this embedder cannot do, before the limits
}

async function chooseEmbedder(options: EmbeddingServerOptions): Promise<Embedder> {
  const name = options.embedder ?? 'hashed';
  if (options.embed) {
    if (options.embedder) throw new Error(`give either embed or embedder, not both (embedder: '${options.embedder}')`);
    return { name: 'custom', dimensions: options.dimensions ?? 1536, embed: options.embed };
  }
  if (name === 'hashed') return { name, dimensions: options.dimensions ?? 1536, embed: hashedEmbedding };
  if (name !== 'use-lite') throw new Error(`unknown embedder '${String(name)}': expected 'hashed' or 'use-lite'`);
  if (options.dimensions !== undefined && options.dimensions !== USE_LITE_DIMENSIONS) {
    throw new Error(`the use-lite embedder gives ${USE_LITE_DIMENSIONS} dimensions, not ${options.dimensions}: ` +
      `leave dimensions out or set it to ${USE_LITE_DIMENSIONS}`);
  }
  const model = await loadUseLite();
  return { name, dimensions: USE_LITE_DIMENSIONS, embed: (texts) => model.embed(texts), check: checkUseLiteRequest };
}

export async function startEmbeddingServer(options: EmbeddingServerOptions = {}): Promise<EmbeddingServer> {
  const embedder = await chooseEmbedder(options);
  const defaultDimensions = embedder.dimensions;
  const embed = embedder.embed;
  const apiKeys = options.apiKeys ? new Set(options.apiKeys) : undefined;
  const limiter = new RateLimiter({ requestsPerMinute: options.requestsPerMinute, tokensPerMinute: options.tokensPerMinute });
  const random = prng(options.seed ?? Date.now());
  let faults: Faults = { ...options.faults };
  let latencyMs = options.latencyMs ?? 0;
  const msPerInput = options.msPerInput ?? 0;
  const oneAtATime = options.oneAtATime ?? embedder.name === 'use-lite';
  let computing: Promise<unknown> = Promise.resolve();   // the queue of oneAtATime
  const batches = new BatchApi(async (request) => {
    embedder.check?.(request.inputs, request.dimensions);
    return embeddingBody(request, await embed(request.inputs, request.dimensions));
  }, embedder.dimensions, options.batches);
  const stats = emptyStats();
  let inFlight = 0;
  let closed = false;
  const sleepers = new Map<NodeJS.Timeout, () => void>();

  function sleep(ms: number): Promise<void> {
    if (ms <= 0 || closed) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(() => { sleepers.delete(timer); resolve(); }, ms);
      sleepers.set(timer, resolve);
    });
  }

  function byKey(key: string) {
    return (stats.byKey[key] ??= { requests: 0, inputs: 0, tokens: 0 });
  }

  function record(key: string, inputs: number, tokens: number, status: number): void {
    if (status === 200) stats.ok++;
    else if (status === 429) stats.status429++;
    else if (status >= 500) stats.status5xx++;
    else if (status >= 400) stats.status4xx++;
    else stats.timeouts++;
    stats.log.push({ at: Date.now(), key, inputs, tokens, status });
    if (stats.log.length > LOG_SIZE) stats.log.shift();
  }

  function write(res: http.ServerResponse, status: number, body: unknown, headers: Record<string, string>): void {
    if (res.destroyed || res.writableEnded) return;  // the client gave up, or close() ran meanwhile
    const text = JSON.stringify(body);
    res.writeHead(status, { ...headers, 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(text)) });
    res.end(text);
  }

  async function handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const key = /^Bearer\s+(.+)$/i.exec(req.headers.authorization ?? '')?.[1]?.trim() ?? '';
    stats.requests++;
    byKey(key).requests++;
    stats.peakConcurrency = Math.max(stats.peakConcurrency, ++inFlight);
    res.on('close', () => inFlight--);
    res.setHeader('x-request-id', `req_${randomUUID().replaceAll('-', '')}`);
    let request: EmbeddingRequest | undefined;
    let tokens = 0;
    let rateHeaders: Record<string, string> = {};
    try {
      const path = new URL(req.url ?? '/', 'http://localhost').pathname;
      if (apiKeys && !apiKeys.has(key)) {
        throw key
          ? new ApiError(401, `Incorrect API key provided: ${redactKey(key)}. You can find your API key at https://platform.openai.com/account/api-keys.`,
            'invalid_request_error', null, 'invalid_api_key')
          : new ApiError(401, "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).");
      }
      const batch = await batches.route(req.method ?? 'GET', path, req);
      if (batch) {
        if (batch.raw === undefined) return write(res, batch.status, batch.body, {});
        res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(Buffer.byteLength(batch.raw)) });
        res.end(batch.raw);
        return;
      }
      if (req.method !== 'POST' || path !== '/v1/embeddings') throw new ApiError(404, `Invalid URL (${req.method} ${path})`);
      const chunks: Buffer[] = [];
      for await (const chunk of req) chunks.push(chunk as Buffer);
      let body: unknown;
      try {
        body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
      } catch {
        throw new ApiError(400, 'We could not parse the JSON body of your request. (HINT: This likely means you aren\'t using your HTTP library correctly. ' +
          'The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)');
      }
      request = parseRequest(body, defaultDimensions);
      embedder.check?.((body as { input: unknown }).input, request.dimensions);
      tokens = request.tokens.reduce((a, t) => a + t, 0);
      const bad = faults.badInputs ? request.inputs.findIndex(faults.badInputs) : -1;
      if (bad >= 0) throw invalidInput(Array.isArray((body as { input: unknown }).input) ? `$.input[${bad}]` : '$.input');

      const verdict = limiter.admit(apiKeys ? key : '', tokens);
      rateHeaders = verdict.headers;
      if (!verdict.ok) {
        const per = verdict.kind === 'requests' ? 'requests per min (RPM)' : 'tokens per min (TPM)';
        const message = verdict.tooLarge
          ? `Request too large for ${request.model} on ${per}: Limit ${verdict.limit}, Requested ${verdict.requested}. ` +
            'The input or output tokens must be reduced in order to run successfully.'
          : `Rate limit reached for ${request.model} on ${per}: Limit ${verdict.limit}, Used ${verdict.used}, Requested ${verdict.requested}. ` +
            `Please try again in ${formatDuration(verdict.retryAfterMs)}. Visit https://platform.openai.com/account/rate-limits to learn more.`;
        write(res, 429, new ApiError(429, message, verdict.kind, null, 'rate_limit_exceeded').body, {
          ...rateHeaders,
          'retry-after': String(Math.max(1, Math.ceil(verdict.retryAfterMs / 1000))),
          'retry-after-ms': String(verdict.retryAfterMs),
        });
        record(key, request.inputs.length, tokens, 429);
        return;
      }

      // Always five draws per admitted request, so toggling one fault does not reshuffle the others.
      const [timeoutRoll, errorRoll, dimensionRoll, nanRoll, pick] = [random(), random(), random(), random(), random()] as const;
      if (timeoutRoll < (faults.timeoutRate ?? 0)) {
        record(key, request.inputs.length, tokens, 0);  // held: answered by nobody, closed by the client or close()
        return;
      }
      if (errorRoll < (faults.serverErrorRate ?? 0)) {
        const [status, message] = ([
          [500, 'The server had an error while processing your request. Sorry about that!'],
          [502, 'Bad gateway.'],
          [503, 'The server is overloaded or not ready yet.'],
        ] as const)[Math.floor(pick * 3)]!;
        throw new ApiError(status, message, 'server_error', null, null, rateHeaders);
      }

      // the compute: skipped, or cut short, once the client has gone
      const inputs = request.inputs;
      const dimensions = request.dimensions;
      const compute = async () => {
        for (let left = msPerInput * inputs.length; left > 0 && !res.destroyed; left -= 50) await sleep(Math.min(50, left));
        if (res.destroyed) throw new Error('the client has gone');
        return embed(inputs, dimensions);
      };
      let vectors: Float32Array[];
      if (oneAtATime) {
        const turn = computing.then(compute);
        computing = turn.catch(() => {});
        vectors = await turn;
      } else {
        vectors = await compute();
      }
      if (vectors.length !== request.inputs.length) throw new Error(`embed returned ${vectors.length} vectors for ${request.inputs.length} inputs`);
      if (dimensionRoll < (faults.wrongDimensionsRate ?? 0)) vectors = vectors.map((v) => v.subarray(0, Math.max(0, v.length - 1)));
      if (nanRoll < (faults.nanRate ?? 0)) {
        const i = Math.floor(pick * vectors.length);
        const poisoned = Float32Array.from(vectors[i]!);  // a copy: a custom embed may hand out cached arrays
        poisoned[Math.floor(pick * 7919) % Math.max(1, poisoned.length)] = NaN;
        vectors = vectors.with(i, poisoned);
      }
      await sleep(latencyMs);
      write(res, 200, embeddingBody(request, vectors), rateHeaders);
      record(key, request.inputs.length, tokens, 200);
      stats.inputs += request.inputs.length;
      stats.tokens += tokens;
      const mine = byKey(key);
      mine.inputs += request.inputs.length;
      mine.tokens += tokens;
      for (const text of request.inputs) stats.texts.set(text, (stats.texts.get(text) ?? 0) + 1);
    } catch (err) {
      // The body never arrived whole: the client went away (or close() ran). Not the server's fault,
      // so not a 5xx; nginx's 499 "client closed request" keeps the counters adding up.
      if (!(err instanceof ApiError) && res.destroyed) return record(key, request?.inputs.length ?? 0, 0, 499);
      const error = err instanceof ApiError
        ? err
        : new ApiError(500, `The server had an error processing your request: ${(err as Error).message}`, 'server_error', null, null, rateHeaders);
      await sleep(latencyMs);
      write(res, error.status, error.body, error.headers);
      record(key, request?.inputs.length ?? 0, tokens, error.status);
    }
  }

  // Building the cl100k tokenizer takes about a second of CPU; pay it now, not inside the first
  // request, where it would look like latency and could trip a client's short timeout.
  countTokens('warm up', 'text-embedding-3-small');
  const server = http.createServer((req, res) => void handle(req, res));
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port ?? 0, '127.0.0.1', () => resolve());
  });
  const port = (server.address() as { port: number }).port;

  return {
    url: `http://127.0.0.1:${port}/v1`,
    port,
    embedder: embedder.name,
    dimensions: defaultDimensions,
    stats,
    setFaults(next) { faults = { ...next }; },
    setLimits(limits) { limiter.limits = { ...limits }; },
    setLatency(ms) { latencyMs = ms; },
    batchStats: batches.stats,
    setBatchOptions(next) { batches.setOptions(next); },
    resetStats() { Object.assign(stats, emptyStats(), { peakConcurrency: inFlight }); },
    async close() {
      closed = true;
      batches.close();
      for (const [timer, wake] of sleepers) { clearTimeout(timer); wake(); }
      sleepers.clear();
      await new Promise<void>((resolve) => {
        server.close(() => resolve());  // calls back with an error if already closed: either way it is down
        server.closeAllConnections();
      });
    },
  };
}

// `node src/provider-server.ts --port 8089 --dimensions 512 --latency 200 --rpm 3000 --tpm 1000000`
// `node src/provider-server.ts --embedder use-lite` (a real model, 512 dimensions)
if (import.meta.main) {
  const int = (value: string) => {
    const n = Number(value);
    if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError('expected a whole number');
    return n;
  };
  const rate = (value: string) => {
    const n = Number(value);
    if (!(n >= 0 && n <= 1)) throw new InvalidArgumentError('expected a fraction between 0 and 1');
    return n;
  };
  const opts = new Command('provider-server')
    .description('A local OpenAI-compatible /v1/embeddings server: hashed bag-of-words vectors, or a real small model.')
    .option('--port <n>', 'port on 127.0.0.1 (0: any free port)', int, 0)
    .addOption(new Option('--embedder <name>', 'hashed: fast deterministic vectors; use-lite: Universal Sentence Encoder Lite, 512 dimensions')
      .choices(['hashed', 'use-lite']).default('hashed'))
    .option('--dimensions <n>', 'default vector length (default: 1536; use-lite: 512 only)', int)
    .option('--latency <ms>', 'delay before each answer', int, 0)
    .option('--ms-per-input <ms>', 'compute time per input, as a slow self-hosted model takes (default: 0)', int, 0)
    .option('--one-at-a-time', 'compute one request at a time, in arrival order (the default for use-lite)')
    .option('--rpm <n>', 'requests per minute per key (default: unlimited)', int)
    .option('--tpm <n>', 'tokens per minute per key (default: unlimited)', int)
    .option('--api-key <key...>', 'accepted API keys (default: any)')
    .option('--error-rate <fraction>', 'share of requests answered 500/502/503', rate)
    .option('--timeout-rate <fraction>', 'share of requests never answered', rate)
    .option('--seed <n>', 'seed for the fault PRNG', int)
    .parse(process.argv)
    .opts<{ port: number; embedder: EmbedderName; dimensions?: number; latency: number; msPerInput: number; oneAtATime?: boolean;
            rpm?: number; tpm?: number; apiKey?: string[]; errorRate?: number; timeoutRate?: number; seed?: number }>();
  const server = await startEmbeddingServer({
    port: opts.port, embedder: opts.embedder, dimensions: opts.dimensions, latencyMs: opts.latency, requestsPerMinute: opts.rpm, tokensPerMinute: opts.tpm,
    apiKeys: opts.apiKey, seed: opts.seed, faults: { serverErrorRate: opts.errorRate, timeoutRate: opts.timeoutRate },
    msPerInput: opts.msPerInput, oneAtATime: opts.oneAtATime,
  }).catch((err: Error) => {
    process.stderr.write(`provider-server: ${err.message}\n`);
    process.exit(1);
  });
  process.stdout.write(`${server.url}\n`);
  const stop = () => void server.close().then(() => process.exit(0));
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
}
