// Invariant 5: killing the worker at any moment, restarting PostgreSQL, or a misbehaving provider
// (429, 5xx, timeouts, wrong dimensions, NaN) never loses work and never stores a wrong vector; the
// system converges to gap = 0, or to explicit failed items with their reasons.
//
// Each scenario rebuilds 1,200 documents of four tenants (one to three chunks each) with the real
// worker binary, edits, deletes and inserts documents while it runs, and then judges the end state
// against the documents' current texts, vector by vector (checkEndState in test/support/chaos.ts).
// Random choices (kill points, edits) come from a seeded PRNG: the seed is printed, and
// CHAOS_SEED=<n> replays a run (as far as timing allows: the workers' timing is not seeded).
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { install } from '../src/install.ts';
import { startLocalPostgres } from '../src/local-postgres.ts';
import { startEmbeddingServer, type EmbeddingServer } from '../src/provider-server.ts';
import type { Db } from '../src/db.ts';
import { freshDatabase, keepOnFailure, type TestDatabase } from './support/db.ts';
import {
  activeJobs, alive, checkEndState, createDocs, deadlockedWrites, DIMS, docsGap, dripRequests, editRound, explainRows, jobStates, killHard,
  rebuild, seededRandom, sleep, SOURCE, started, stopWorker, throttleBriefly, tuneQueue, dbNow, waitForDrainedQueue, workerGroup,
  type EndState,
} from './support/chaos.ts';
import { assertStoreConsistent, waitFor, waitForClosedGap, workerEnv } from './support/worker.ts';

const SEED = Number(process.env.CHAOS_SEED ?? Math.floor(Math.random() * 2 ** 31));
const log = (line: string) => process.stderr.write(`chaos: ${line}\n`);
const ROWS = 1200;
// One job (64 rows) per fetch and request, two requests in flight: a rebuild of ROWS lasts long
// enough to be killed many times over. A worker that only has to finish takes more at once.
const SLOW = { REGEN_JOBS_PER_FETCH: '1', REGEN_CONCURRENCY: '2', REGEN_LOG_LEVEL: 'info' };
const FAST = { REGEN_JOBS_PER_FETCH: '4', REGEN_CONCURRENCY: '8', REGEN_LOG_LEVEL: 'info' };

/** waitForClosedGap, telling what the items still open are waiting for when it times out. */
async function waitForConvergence(db: Db, timeoutMs: number): Promise<void> {
  try {
    await waitForClosedGap(db, SOURCE, timeoutMs);
  } catch (error) {
    const { rows } = await db.query<{ row_id: string }>(`select row_id from regen._items
      where regen._state(content_hash, embedded_hash, failed_hash, has_legacy) not in ('current', 'failed') limit 3`);
    log(`seed ${SEED}: ${JSON.stringify(await docsGap(db))}; jobs ${JSON.stringify(await jobStates(db))}; open items: `
      + JSON.stringify(await explainRows(db, rows.map((r) => r.row_id))));
    throw error;
  }
}

/** Waits for the queue to drain, then checks the end state; prints the rows in question if it is wrong. */
async function expectConverged(db: Db, { failedAllowed }: { failedAllowed: boolean }): Promise<EndState> {
  await waitForDrainedQueue(db, 60_000);
  const end = await checkEndState(db);
  if (end.problems.length > 0) {
    const rows = [...new Set(end.problems.map((p) => /^row (\d+)/.exec(p)?.[1]).filter((r) => r !== undefined))].slice(0, 3);
    log(`seed ${SEED}: what regen and the queue know of rows ${rows.join(', ')}: ${JSON.stringify(await explainRows(db, rows))}`);
  }
  expect(end.problems).toEqual([]);
  if (!failedAllowed) expect(end.failed).toEqual([]);
  // The public view agrees, item for item and reason for reason.
  const { rows: failedItems } = await db.query<{ rowId: string; error: string }>(
    `select row_id as "rowId", error from regen.failed_items where source = $1`, [SOURCE]);
  const byRow = (a: { rowId: string }, b: { rowId: string }) => Number(a.rowId) - Number(b.rowId);
  expect(failedItems.sort(byRow)).toEqual([...end.failed].sort(byRow));
  const gap = await docsGap(db);
  expect(gap).toEqual({ expected: end.items, current: end.current, open: 0, failed: end.failed.length, queued: 0 });
  await assertStoreConsistent(db);
  return end;
}

const seconds = (since: number) => `${Math.round((Date.now() - since) / 100) / 10} s`;

type Counts = Pick<EmbeddingServer['stats'], 'ok' | 'status429' | 'status5xx' | 'timeouts' | 'inputs'>;
const counts = ({ ok, status429, status5xx, timeouts, inputs }: Counts): Counts => ({ ok, status429, status5xx, timeouts, inputs });

/** What the provider answered since `since` (a snapshot of its counters), and texts it embedded more than once. */
function providerSummary(provider: EmbeddingServer, since: Counts = counts({ ok: 0, status429: 0, status5xx: 0, timeouts: 0, inputs: 0 })): string {
  const now = counts(provider.stats);
  const again = [...provider.stats.texts].filter(([text, n]) => n > 1 && text !== 'drip').length;
  return `provider: ${now.ok - since.ok} × 200, ${now.status429 - since.status429} × 429, ${now.status5xx - since.status5xx} × 5xx, `
    + `${now.timeouts - since.timeouts} timeouts, ${now.inputs - since.inputs} inputs embedded, ${again} texts embedded more than once`;
}

describe('chaos (invariant 5)', () => {
  let killDb: TestDatabase | undefined;
  let faultDb: TestDatabase | undefined;
  keepOnFailure(() => killDb);
  keepOnFailure(() => faultDb);

  // The fault scenario's provider starts first and gets one request a second, so that by the time
  // that scenario throttles it its one-minute rate window is full, and its 429s are short.
  let faulty: EmbeddingServer;
  let drip: ReturnType<typeof dripRequests>;
  beforeAll(async () => {
    log(`seed ${SEED} (replay with CHAOS_SEED=${SEED})`);
    faulty = await startEmbeddingServer({ dimensions: DIMS, latencyMs: 150, seed: SEED });
    drip = dripRequests(faulty);
  });
  afterAll(async () => {
    drip?.stop();
    await faulty?.close();
    if (deadlockedWrites.count > 0) log(`${deadlockedWrites.count} edits were deadlock victims of the worker (retried)`);
  });

  it('kill -9 of the worker at random points of a rebuild, with edits meanwhile, loses nothing', async () => {
    const random = seededRandom(SEED);
    const db = killDb = await freshDatabase('chaos_kill');
    const provider = await startEmbeddingServer({ dimensions: DIMS, latencyMs: 200, seed: SEED });
    const env = workerEnv(db.url, provider, SLOW);
    const workers = workerGroup('kill', env);
    try {
      const t0 = Date.now();
      await createDocs(db, ROWS);
      await tuneQueue(db);
      await rebuild(db);

      const kills: string[] = [];
      for (let round = 0; round < 5; round++) {
        const since = await dbNow(db);
        const worker = workers.spawn();
        await started(worker);
        const runMs = Math.round(500 + random() * 2500);
        const editing = round % 2 === 1 ? sleep(random() * runMs).then(() => editRound(db, random, 100)) : undefined;
        await sleep(runMs);
        // A kill between two batches proves little: wait for one of this worker's batches, and kill it
        // at a random point of it (a batch takes a few hundred milliseconds).
        // The jobs the last one held come back after the 10-second heartbeat: allow for that on a busy machine.
        await waitFor('a batch of this worker', async () => (await activeJobs(db, since)) > 0, 30_000, 20);
        const intoBatchMs = Math.round(random() * 500);
        await sleep(intoBatchMs);
        await killHard(worker);
        await editing;
        kills.push(`${runMs} + ${intoBatchMs} ms`);
      }
      const before = await docsGap(db);
      log(`kill: SIGKILLed after ${kills.join(', ')}; ${before.current} of ${before.expected} items current then, `
        + `${await activeJobs(db)} jobs left active by the dead`);
      expect(before.current).toBeLessThan(before.expected);   // the last worker has work left

      const last = workers.spawn({ ...env, ...FAST });
      await started(last);
      await editRound(db, random, 100);
      await waitForConvergence(db, 100_000);
      const end = await expectConverged(db, { failedAllowed: false });
      expect(await stopWorker(last)).toBe(0);
      log(`kill: converged in ${seconds(t0)}: ${end.current} items, ${end.vectors} vectors checked; `
        + `jobs ${JSON.stringify(await jobStates(db))}; ${providerSummary(provider)}`);
    } finally {
      await workers.end();
      await provider.close();
    }
  }, 150_000);

  it('a PostgreSQL restart in the middle of a rebuild loses nothing', async () => {
    const random = seededRandom(SEED + 1);
    const server = await startLocalPostgres();
    const url = server.url.replace(/\/postgres$/, '/chaos');
    const admin = new pg.Client({ connectionString: server.url });
    await admin.connect();
    await admin.query('create database chaos');
    await admin.end();
    const db = new pg.Pool({ connectionString: url, max: 4 });
    db.on('error', () => {});   // idle connections die with the restart; the pool replaces them
    const provider = await startEmbeddingServer({ dimensions: DIMS, latencyMs: 200, seed: SEED });
    const workers = workerGroup('restart', workerEnv(url, provider, { ...FAST, REGEN_JOBS_PER_FETCH: '2' }));
    try {
      const t0 = Date.now();
      await db.query('create extension vector');
      await install({ connectionString: url });
      await createDocs(db, ROWS);
      await tuneQueue(db);
      await rebuild(db);

      const worker = workers.spawn();
      await started(worker);
      await editRound(db, random, 100);
      await waitFor('the worker to be mid-rebuild', async () =>
        (await docsGap(db)).current >= ROWS / 4 && (await activeJobs(db)) > 0, 60_000, 20);
      await sleep(random() * 500);
      const down = Date.now();
      await server.restart();
      log(`restart: PostgreSQL restarted in ${seconds(down)}, ${seconds(t0)} into the scenario`);

      await editRound(db, random, 100);
      await sleep(3_000);
      log(`restart: 3 s after the restart the worker is ${alive(worker) ? 'running' : `gone (exit ${worker.child.exitCode})`}`);
      expect(alive(worker)).toBe(true);
      await waitForConvergence(db, 100_000);
      const end = await expectConverged(db, { failedAllowed: false });
      expect(await stopWorker(worker)).toBe(0);
      const errors = worker.output().split('\n').filter((l) => /"level":(40|50)/.test(l));
      expect(errors.length).toBeGreaterThan(0);   // it did see the restart
      log(`restart: converged in ${seconds(t0)}: ${end.current} items, ${end.vectors} vectors checked; `
        + `jobs ${JSON.stringify(await jobStates(db))}; the worker logged ${errors.length} warnings and errors, first: `
        + `${errors.slice(0, 3).map((l) => JSON.parse(l).msg + ': ' + (JSON.parse(l).err ?? '')).join(' | ')}`);
    } finally {
      await workers.end();
      await provider.close();
      await db.end();
      await server.stop();
    }
  }, 150_000);

  it('a provider with 429s, 5xx, timeouts, wrong dimensions and NaN: failed items with reasons, then gap 0 after retry_failed', async () => {
    const random = seededRandom(SEED + 2);
    const db = faultDb = await freshDatabase('chaos_faults');
    // Requests of at most 40 inputs (a job makes three or four): some hundred requests draw the faults.
    const workers = workerGroup('faults', workerEnv(db.url, faulty,
      { ...SLOW, REGEN_REQUEST_TIMEOUT_MS: '1500', REGEN_MAX_INPUTS_PER_REQUEST: '40' }));
    try {
      await createDocs(db, ROWS);
      await tuneQueue(db);
      await rebuild(db);

      // Short 429s need a full one-minute window (see dripRequests); after the other scenarios it is.
      await waitFor('a minute of drip requests', async () => drip.ageMs() >= 60_000, 70_000, 500);
      drip.stop();
      const t0 = Date.now();
      const before = counts(faulty.stats);
      faulty.setFaults({ serverErrorRate: 0.2, timeoutRate: 0.05, wrongDimensionsRate: 0.05, nanRate: 0.05 });
      const both = [workers.spawn(), workers.spawn()];
      await Promise.all(both.map((w) => started(w)));
      await sleep(2_000);
      const throttled = await throttleBriefly(faulty);
      log(`faults: ${throttled.refused} requests refused with 429 while the limit was ${throttled.rpm} requests/minute`);
      await editRound(db, random, 100);

      await waitForConvergence(db, 100_000);
      const failedEnd = await expectConverged(db, { failedAllowed: true });
      const reasons = new Map<string, number>();
      for (const { error } of failedEnd.failed) reasons.set(error, (reasons.get(error) ?? 0) + 1);
      log(`faults: gap closed ${seconds(t0)} after the faults began, with ${failedEnd.failed.length} failed items `
        + `(${[...reasons].map(([reason, n]) => `${n} × '${reason}'`).join(', ')}); ${providerSummary(faulty, before)}`);
      expect(faulty.stats.status429 - before.status429).toBeGreaterThan(0);
      expect(faulty.stats.status5xx - before.status5xx).toBeGreaterThan(0);
      expect(failedEnd.failed.length).toBeGreaterThan(0);
      for (const reason of reasons.keys()) {
        expect(reason).toMatch(/^expected 16 dimensions, not 15$|^NaN or infinity not allowed in vector$/);
      }

      faulty.setFaults({});
      const { rows } = await db.query<{ n: string }>('select regen.retry_failed() as n');
      expect(Number(rows[0]!.n)).toBe(failedEnd.failed.length);
      await waitForConvergence(db, 60_000);
      const end = await expectConverged(db, { failedAllowed: false });
      for (const w of both) expect(await stopWorker(w)).toBe(0);
      log(`faults: after retry_failed, gap 0 at ${seconds(t0)}: ${end.current} items, ${end.vectors} vectors checked; `
        + `jobs ${JSON.stringify(await jobStates(db))}`);
    } finally {
      await workers.end();
    }
  }, 150_000);
});
