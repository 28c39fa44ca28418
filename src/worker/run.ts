// `pgregen worker`: a pg-boss consumer. Wires the queue, the provider clients, the health and
// metrics endpoints and graceful shutdown around the fetch loops (loop.ts) and processBatch();
// holds no decisions of its own.
import OpenAI from 'openai';
import pg from 'pg';
import { PgBoss } from 'pg-boss';
import pino from 'pino';
import { connect, requireSchema } from '../connect.ts';
import { PgregenError } from '../errors.ts';
import { compactGap, enqueueFresh, freshPriority, recover, syncMirrors, versionInfo, versionQueues, type VersionInfo } from '../store.ts';
import { Adaptive } from './adaptive.ts';
import { processBatch } from './batch.ts';
import type { WorkerConfig } from './config.ts';
import { startHealthServer, type HealthServer } from './http.ts';
import { KeySource } from './keys.ts';
import { runLoop, type FetchedJob } from './loop.ts';
import { createMetrics } from './metrics.ts';
import { listen, Wakeup } from './notifications.ts';
import { Pacer } from './pacer.ts';
import { Provider } from './provider.ts';
import { inBatchMode, pollProviderBatches, submitBackfill, type ProviderBatchDeps } from './provider-batches.ts';

export interface RunningWorker {
  port: number;
  /** Stops fetching, lets in-flight batches finish within the shutdown timeout, hands back the rest. */
  stop(): Promise<void>;
  done: Promise<void>;
}

/**
 * Checks what can be checked before taking work, so bad configuration fails at once and clearly;
 * returns the priority that fresh-edit jobs start at.
 */
async function preflight(config: WorkerConfig): Promise<number> {
  const client = await connect(config.databaseUrl, 'pgregen worker');
  try {
    await requireSchema(client);
    for (const tag of config.versions) {
      if (!(await versionInfo(client, tag))) {
        throw new PgregenError(`unknown version '${tag}' in REGEN_VERSIONS`, 'list the versions with: select tag from regen.versions');
      }
    }
    return await freshPriority(client).catch((err: { code?: string }) => {
      if (err.code !== '42883') throw err;   // undefined function: an older schema
      throw new PgregenError('the pgregen schema in this database is older than this worker', 'run: pgregen install');
    });
  } finally {
    await client.end();
  }
}

export async function startWorker(config: WorkerConfig, log = pino({ level: config.logLevel })): Promise<RunningWorker> {
  const freshBand = await preflight(config);
  const pool = new pg.Pool({ connectionString: config.databaseUrl, max: 8, application_name: 'pgregen worker' });
  pool.on('error', (err) => log.warn({ err: err.message }, 'idle database connection failed'));
  const metrics = createMetrics(pool);
  const abort = new AbortController();      // the shutdown timeout: in-flight batches are cancelled
  const halt = new AbortController();       // stop: no more fetches
  let stopping = false;

  // The health port first: a worker that cannot be probed must not take work (a taken port exits at once).
  let health: HealthServer;
  try {
    health = await startHealthServer(config.port, metrics.registry, async () => {
      if (stopping) return false;
      try {
        await pool.query('select 1');
        return true;
      } catch {
        return false;
      }
    });
  } catch (err) {
    await pool.end();
    throw err;
  }

  // One pacer and client per API key reference: limits are per key. The key itself is read when a
  // request is made (a rotated secret file is picked up without a restart). What the endpoint can
  // take at once (requests in flight, inputs per request) is learned, for all keys together.
  const adaptive = new Adaptive({ maxInputs: config.maxInputsPerRequest, maxConcurrency: config.concurrency, timeoutMs: config.requestTimeoutMs,
    adapt: config.adaptive });
  const providers = new Map<string, Provider>();
  const providerFor = (keyRef: string | null): Provider => {
    const id = keyRef ?? '';
    let provider = providers.get(id);
    if (!provider) {
      provider = new Provider({
        apiKey: new KeySource(keyRef, config.openaiApiKey, config.secretsDir),
        baseURL: config.openaiBaseUrl,
        timeoutMs: config.requestTimeoutMs,
        maxAttempts: config.maxAttempts,
        pacer: new Pacer({ requestsPerMinute: config.requestsPerMinute, tokensPerMinute: config.tokensPerMinute, concurrency: config.concurrency }),
        adaptive,
        signal: abort.signal,
        events: {
          onRequest: ({ status, seconds, tokens }) => {
            metrics.requests.inc({ status: String(status) });
            metrics.latency.observe({ status: String(status) }, seconds);
            if (status === 200) metrics.tokens.inc(tokens);
          },
          onRateLimited: () => metrics.rateLimited.inc(),
        },
      });
      providers.set(id, provider);
    }
    return provider;
  };
  const versions = new Map<string, VersionInfo>();
  const version = async (tag: string): Promise<VersionInfo> => {
    let info = versions.get(tag);
    if (!info) {
      info = await versionInfo(pool, tag);
      if (!info) throw new PgregenError(`unknown version '${tag}' in a queued job`);
      versions.set(tag, info);
    }
    return info;
  };

  const boss = new PgBoss({ connectionString: config.databaseUrl, max: 4, supervise: true, schedule: false, migrate: false,
    superviseIntervalSeconds: config.superviseIntervalSeconds, monitorIntervalSeconds: config.superviseIntervalSeconds,
    application_name: 'pgregen worker (pg-boss)' });
  boss.on('error', (err: Error) => log.error({ err: err.message }, 'queue error'));
  try {
    await boss.start();
  } catch (err) {
    await health.close();
    await pool.end();
    throw err;
  }
  // Batch mode: the backfill of a version in batch mode goes to the provider's Batch API.
  const defaultKey = new KeySource(null, config.openaiApiKey, config.secretsDir);
  const batchDeps: ProviderBatchDeps = {
    pool, version,
    client: () => new OpenAI({ apiKey: defaultKey.current(), baseURL: config.openaiBaseUrl, maxRetries: 2, timeout: config.requestTimeoutMs }),
    onError: (err, what) => log.warn({ err: err.message }, what),
  };
  let polling = false;
  const pollBatches = () => {
    if (polling || stopping) return;
    polling = true;
    pollProviderBatches(batchDeps).catch((err: Error) => log.warn({ err: err.message }, 'checking provider batches failed'))
      .finally(() => { polling = false; });
  };

  const handle = async (fetched: FetchedJob[], signal: AbortSignal) => {
    const started = performance.now();
    let wanted = fetched;
    const toBatches: FetchedJob[] = [];
    for (const job of fetched) if (await inBatchMode(pool, job)) toBatches.push(job);
    if (toBatches.length > 0) {
      // submitted, their jobs complete; rows another batch was embedding go the synchronous way
      const deferred = await submitBackfill(toBatches, batchDeps).catch((err: Error) => {
        log.warn({ jobs: toBatches.map((j) => j.id), err: err.message }, 'submitting provider batches failed; the jobs go back to the queue');
        throw err;
      });
      log.info({ jobs: toBatches.length, deferredRows: deferred.reduce((n, j) => n + j.data.rows.length, 0) }, 'backfill submitted as provider batches');
      const left = new Map(deferred.map((d) => [d.id, d.data]));
      wanted = [...fetched.filter((j) => !toBatches.includes(j)),
        ...toBatches.filter((j) => left.has(j.id)).map((j) => ({ ...j, data: left.get(j.id)! }))];
      if (wanted.length === 0) return;
    }
    const fresh = wanted.filter((j) => j.data.fresh).length;
    metrics.jobs.inc({ kind: 'fresh' }, fresh);
    metrics.jobs.inc({ kind: 'backfill' }, wanted.length - fresh);
    try {
      const result = await processBatch(wanted, {
        db: pool, version, provider: providerFor,
        get maxInputsPerRequest() { return adaptive.inputs; }, maxTokensPerRequest: config.maxTokensPerRequest,
        onStored: (tag, n) => metrics.vectors.inc({ version: tag }, n),
        onRefused: (kind, n) => metrics.failures.inc({ kind }, n),
      }, signal);
      metrics.deferred.inc(result.deferred);
      const { inputs, concurrency } = adaptive.state();
      log.info({ jobs: wanted.length, fresh, ...result, ms: Math.round(performance.now() - started), limits: { inputs, concurrency } }, 'batch done');
    } catch (err) {
      metrics.failures.inc({ kind: 'batch' });
      log.warn({ jobs: wanted.map((j) => j.id), err: (err as Error).message }, 'batch handed back to the queue');
      throw err;
    }
  };
  // One pg-boss queue per version: this worker serves those of REGEN_VERSIONS, or every version's,
  // looking for new versions as it goes. Its fetch loops take work from all of them (so the
  // backfill share holds for the worker as a whole); each loop works one batch at a time, and each
  // version served adds as many loops. REGEN_BACKFILL_SHARE of the loops take the backfill first.
  const loopsPerQueue = Math.max(1, Math.min(4, Math.ceil(config.concurrency / 2)));
  const loops: Array<Promise<void>> = [];
  const serving = new Set<string>();
  const wakeup = new Wakeup();
  const subscribe = async () => {
    for (const { version: tag, queue } of await versionQueues(pool, config.versions.length ? config.versions : null)) {
      if (serving.has(queue) || stopping) continue;
      serving.add(queue);
      for (let i = 0; i < loopsPerQueue; i++) {
        loops.push(runLoop({
          boss, queues: () => [...serving], index: loops.length, loops: () => loops.length,
          jobsPerFetch: config.jobsPerFetch, backfillShare: config.backfillShare,
          freshPriority: freshBand, pollIntervalMs: config.pollIntervalSeconds * 1000, stopping: halt.signal, cancel: abort.signal,
          sleep: (ms, signal) => wakeup.sleep(ms, signal), found: () => wakeup.wakeOne(),
          handle, onError: (err, what) => log.warn({ err: err.message }, what),
        }));
      }
      log.info({ version: tag, queue }, 'serving version');
    }
  };
  await subscribe();
  const lookForVersions = () => {
    if (config.versions.length === 0 && !stopping) subscribe().catch((err: Error) => log.warn({ err: err.message }, 'looking for new versions failed'));
  };
  // New versions and new jobs wake the worker at once (sql/0025_notify.sql); the polling below stays
  // as the fallback. On every (re)connection it looks again, for what it may have missed meanwhile.
  const listener = listen({
    connectionString: config.databaseUrl,
    // new jobs wake one loop, which fetches what it can take and wakes the next (not all at once:
    // loops fetching at the same moment would split the hottest jobs between them)
    channels: { regen_versions: lookForVersions, regen_work: () => wakeup.wakeOne() },
    onListening: () => { lookForVersions(); wakeup.wakeOne(); },
    onError: (err, what) => log.warn({ err: err.message }, what),
  });

  // Vectors lost while no worker ran (a restore without them, a truncate) come back by themselves.
  const recoverLost = () => recover(pool).then((rows) => {
    for (const row of rows) log.info(row, row.source ? 'lost vectors enqueued again' : 'store reconciled');
  }).catch((err: Error) => log.warn({ err: err.message }, 'recovery check failed'));
  await recoverLost();
  pollBatches();   // provider batches a stopped worker left in flight

  // Fresh edits: the capture triggers only mark them; they reach the queue here, set-based; then
  // the mirror columns due.
  let enqueuing = false;
  const freshEdits = setInterval(() => {
    if (enqueuing || stopping) return;
    enqueuing = true;
    enqueueFresh(pool).catch((err: Error) => log.warn({ err: err.message }, 'enqueueing fresh edits failed'))
      // and the mirror columns (regen.set_mirror) of what was written since, in a transaction of their own
      .then(() => syncMirrors(pool)).catch((err: Error) => log.warn({ err: err.message }, 'writing mirror columns failed'))
      .finally(() => { enqueuing = false; });
  }, config.enqueueIntervalMs);
  freshEdits.unref();

  const housekeeping = setInterval(() => {
    compactGap(pool).catch((err: Error) => log.warn({ err: err.message }, 'gap compaction failed'));
    void recoverLost();
    lookForVersions();
    pollBatches();
  }, 10_000);
  housekeeping.unref();

  log.info({ port: health.port, queues: [...serving], concurrency: config.concurrency, backfillShare: config.backfillShare, rpm: config.requestsPerMinute, tpm: config.tokensPerMinute,
    versions: config.versions.length ? config.versions : 'all' }, 'worker started');

  let resolveDone!: () => void;
  const done = new Promise<void>((resolve) => { resolveDone = resolve; });
  let stopped: Promise<void> | undefined;
  const stop = () => (stopped ??= (async () => {
    stopping = true;
    log.info({ timeoutMs: config.shutdownTimeoutMs }, 'stopping: no new batches; in-flight batches may finish');
    // After the timeout, in-flight provider calls are cancelled: their batches fail and pg-boss
    // retries them on another worker. Nothing is lost either way.
    halt.abort();
    await listener.close();
    const timer = setTimeout(() => abort.abort(new Error('worker shutting down')), config.shutdownTimeoutMs);
    await Promise.all(loops);
    clearTimeout(timer);
    await boss.stop({ graceful: false, timeout: 2_000 }).catch((err: Error) => log.warn({ err: err.message }, 'queue stop'));
    clearInterval(housekeeping);
    clearInterval(freshEdits);
    await health.close();
    await pool.end();
    log.info('worker stopped');
    resolveDone();
  })());
  return { port: health.port, stop, done };
}
