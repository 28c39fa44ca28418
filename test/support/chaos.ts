// Helpers for test/chaos.test.ts: a seeded source of documents with one to three chunks each,
// random edits, and a check of the end state against the documents' current texts, vector by vector.
import { createHash } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { onTestFailed } from 'vitest';
import type { Db } from '../../src/db.ts';
import { hashedEmbedding, type EmbeddingServer } from '../../src/provider-server.ts';
import { spawnWorker, type SpawnedWorker } from './worker.ts';
import { mulberry32 } from '../../src/prng.ts';

export const SOURCE = 'docs';
export const VERSION = 'chaos@1';
export const DIMS = 16;
const CONTENT = `title || E'\\n\\n' || body`;

/** Seeded: the same seed replays the same kill points, edits and texts. */
export const seededRandom = mulberry32;

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

const SYLLABLES = ['ka', 'lo', 'mi', 'ne', 'ru', 'ta', 'vo', 'zi', 'pe', 'sha', 'dor', 'gul', 'fen', 'bri', 'cas', 'hu'];

/** A text of 120 to 1,000 characters in sentences: one to three chunks of 400 (overlap 40). */
export function bodyText(random: () => number, id: number, revision: number): string {
  const word = () => Array.from({ length: 1 + Math.floor(random() * 3) }, () => SYLLABLES[Math.floor(random() * SYLLABLES.length)]).join('');
  const target = 120 + Math.floor(random() * 880);
  let text = `Document ${id} revision ${revision}.`;
  while (text.length < target) {
    const words = Array.from({ length: 4 + Math.floor(random() * 10) }, word);
    text += ` ${words.join(' ')}.`;
    if (random() < 0.15) text += '\n\n';
  }
  return text.trim();
}

/**
 * Table `docs` (id, tenant, title, body) with `rows` documents over four tenants, version chaos@1
 * (local-hash, 16 dimensions, chunks of 400 with 40 overlap) and the source registered.
 */
export async function createDocs(db: Db, rows: number): Promise<void> {
  await db.query(`create table docs (id bigint primary key, tenant text not null, title text not null, body text not null)`);
  await insertDocs(db, Array.from({ length: rows }, (_, i) => i + 1), originalText);
  await db.query(`select regen.create_version($1, 'local-hash', $2,
                    settings => '{"send_dimensions": true, "chunk_chars": 400, "chunk_overlap": 40}')`, [VERSION, DIMS]);
  await db.query(`select regen.register_source($1, 'docs', 'id', $2, tenant_column => 'tenant', priority_expression => 'id',
                                               version => $3)`, [SOURCE, CONTENT, VERSION]);
}

/** The text a document is created with; the same for every seed, so a revert can find it again. */
const originalText = (id: number) => bodyText(seededRandom(id * 7919 + 17), id, 0);

async function insertDocs(db: Db, ids: number[], text: (id: number) => string): Promise<void> {
  await write(db, `insert into docs (id, tenant, title, body)
                  select u.id, 'tenant_' || (u.id % 4), 'Doc ' || u.id, u.body from unnest($1::bigint[], $2::text[]) u(id, body)`,
    [ids, ids.map(text)]);
}

// pgregen's pg-boss queues: `regen_embed`, or one per version, `regen_embed_v<id>`.
const QUEUES = `name like 'regen\\_embed%'`;

/**
 * Short heartbeat (pg-boss's minimum) so the jobs of a SIGKILLed worker come back within seconds,
 * quick plain retries, and enough of them. Jobs copy these when enqueued: call before rebuild().
 */
export async function tuneQueue(db: Db): Promise<void> {
  await db.query(`update pgboss.queue set heartbeat_seconds = 10, retry_delay = 1, retry_backoff = false, retry_limit = 50
                  where ${QUEUES}`);
}

export async function rebuild(db: Db): Promise<number> {
  const { rows } = await db.query<{ items: string }>('select items from regen.rebuild()');
  return rows.reduce((n, r) => n + Number(r.items), 0);
}

export interface Edits { updated: number; reverted: number; deleted: number; inserted: number }

let nextId = 1_000_000;
let revision = 1;

/**
 * Application writes that were chosen as the victim of a deadlock with the worker (and retried, as
 * an application would). Not what this file tests, but counted and printed: see the report.
 */
export const deadlockedWrites = { count: 0 };

async function write(db: Db, sql: string, values: unknown[]): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    try {
      await db.query(sql, values);
      return;
    } catch (error) {
      if ((error as { code?: string }).code !== '40P01' || attempt >= 5) throw error;
      deadlockedWrites.count++;
    }
  }
}

/**
 * One round of edits, each its own statement: new texts for `updates` random rows (some longer, some
 * shorter, so chunk counts change), a few rows back to their original text (cache hits), a few
 * deleted, a few inserted.
 */
export async function editRound(db: Db, random: () => number, updates: number): Promise<Edits> {
  const { rows } = await db.query<{ id: string }>('select id::text as id from docs order by id');
  const ids = rows.map((r) => Number(r.id));
  const pick = (n: number) => Array.from({ length: n }, () => ids[Math.floor(random() * ids.length)]!);
  const rev = revision++;
  const updated = [...new Set(pick(updates))];
  for (let i = 0; i < updated.length; i += 25) {
    const batch = updated.slice(i, i + 25);
    await write(db, `update docs d set body = u.body from unnest($1::bigint[], $2::text[]) u(id, body) where d.id = u.id`,
      [batch, batch.map((id) => bodyText(random, id, rev))]);
  }
  // Back to the text they were created with: their vectors come from the cache, not the provider.
  const reverted = [...new Set(pick(Math.ceil(updates / 10)))].filter((id) => id < 1_000_000);
  for (const id of reverted) {
    await write(db, `update docs set body = $2 where id = $1`, [id, originalText(id)]);
  }
  const deleted = [...new Set(pick(Math.ceil(updates / 10)))];
  await write(db, 'delete from docs where id = any($1::bigint[])', [deleted]);
  const inserted = Array.from({ length: Math.ceil(updates / 10) }, () => nextId++);
  await insertDocs(db, inserted, (id) => bodyText(random, id, rev));
  return { updated: updated.length, reverted: reverted.length, deleted: deleted.length, inserted: inserted.length };
}

/** Gap of the docs source. */
export async function docsGap(db: Db): Promise<{ expected: number; current: number; open: number; failed: number; queued: number }> {
  const { rows } = await db.query<Record<string, string>>(
    `select expected, current, missing + stale + outdated as open, failed, queued from regen.embedding_gap where source = $1`, [SOURCE]);
  const r = rows[0]!;
  return { expected: Number(r.expected), current: Number(r.current), open: Number(r.open), failed: Number(r.failed), queued: Number(r.queued) };
}

/** Jobs in flight, or only those started after `since` (a database timestamp, see dbNow). */
export async function activeJobs(db: Db, since?: string): Promise<number> {
  const { rows } = await db.query<{ n: string }>(
    `select count(*) as n from pgboss.job where ${QUEUES} and state = 'active' and ($1::timestamptz is null or started_on > $1)`,
    [since ?? null]);
  return Number(rows[0]!.n);
}

export async function dbNow(db: Db): Promise<string> {
  const { rows } = await db.query<{ now: string }>('select clock_timestamp()::text as now');
  return rows[0]!.now;
}

/** Job counts by state, e.g. { completed: 60, failed: 0 }; retries: total retries of all jobs. */
export async function jobStates(db: Db): Promise<Record<string, number>> {
  const { rows } = await db.query<{ state: string; n: string; retries: string }>(
    `select state::text, count(*) as n, sum(retry_count) as retries from pgboss.job where ${QUEUES} group by 1`);
  const out: Record<string, number> = { retries: 0 };
  for (const r of rows) {
    out[r.state] = Number(r.n);
    out.retries! += Number(r.retries);
  }
  return out;
}

/**
 * Spawns the workers of one test (with `env`, or another). Whatever happens, end() leaves none
 * running; if the test fails, their output is written to a file named on stderr.
 */
export function workerGroup(label: string, env: Record<string, string>) {
  const all: SpawnedWorker[] = [];
  // Should the test process go first (a timed-out test, an aborted run), the workers go with it.
  const orphans = () => { for (const w of all) if (alive(w)) w.child.kill('SIGKILL'); };
  process.once('exit', orphans);
  onTestFailed(() => {
    const path = join(tmpdir(), `pgregen-chaos-${label}-${process.pid}.log`);
    writeFileSync(path, all.map((w, i) => `--- worker ${i} (pid ${w.child.pid})\n${w.output()}`).join('\n'));
    process.stderr.write(`chaos: output of the ${label} workers: ${path}\n`);
  });
  return {
    all,
    spawn(withEnv = env): SpawnedWorker {
      const worker = spawnWorker(withEnv);
      all.push(worker);
      return worker;
    },
    async end(): Promise<void> {
      await Promise.all(all.map((w) => (alive(w) ? killHard(w) : undefined)));
      process.off('exit', orphans);
    },
  };
}

export const alive = (w: SpawnedWorker) => w.child.exitCode === null && w.child.signalCode === null;

/** Resolves once the worker logged that it takes work (spawn it with REGEN_LOG_LEVEL=info). */
export async function started(worker: SpawnedWorker, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!worker.output().includes('"worker started"')) {
    if (!alive(worker)) {
      throw new Error(`worker exited before it started:\n${worker.output()}`);
    }
    if (Date.now() > deadline) throw new Error(`worker did not start within ${timeoutMs} ms:\n${worker.output()}`);
    await sleep(50);
  }
}

export async function killHard(worker: SpawnedWorker): Promise<void> {
  worker.child.kill('SIGKILL');
  await worker.exited;
}

/** SIGTERM and wait; returns the exit code. */
export async function stopWorker(worker: SpawnedWorker): Promise<number | null> {
  if (!alive(worker)) return worker.child.exitCode;
  worker.child.kill('SIGTERM');
  return worker.exited;
}

/** Waits until no job is waiting or running: jobs of items that were done by another job still run (and do nothing). */
export async function waitForDrainedQueue(db: Db, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const { rows } = await db.query<{ n: string }>(
      `select count(*) as n from pgboss.job where ${QUEUES} and state in ('created', 'retry', 'active')`);
    if (Number(rows[0]!.n) === 0) return;
    if (Date.now() > deadline) throw new Error(`${rows[0]!.n} jobs still waiting or running after ${timeoutMs} ms: ${JSON.stringify(await jobStates(db))}`);
    await sleep(250);
  }
}

const sha256hex = (text: string) => createHash('sha256').update(text, 'utf8').digest('hex');

export interface EndState {
  items: number;
  current: number;
  failed: Array<{ rowId: string; error: string }>;
  vectors: number;
  problems: string[];
}

/**
 * The end state, judged against the documents as they are now, not against what regen believes:
 * - every row of docs has exactly one item, and the item's content hash is the hash of the row's text;
 * - no item that needs work is still queued (call it once the queue has drained);
 * - every item is current, or failed with a reason;
 * - a current item has exactly one vector per chunk of its current text, each under the current
 *   content hash and its chunk's text hash (and a plan recorded for the current text is its chunks);
 * - every stored vector has 16 finite dimensions and equals the embedding of its chunk's text,
 *   recomputed here with the provider's own function;
 * - no vector belongs to a row that is gone.
 */
export async function checkEndState(db: Db): Promise<EndState> {
  const problems: string[] = [];
  const problem = (text: string) => { if (problems.length < 25) problems.push(text); };

  const { rows: items } = await db.query<{
    row_id: string; in_table: boolean; has_item: boolean; hash_ok: boolean; state: string; queued: boolean; error: string | null;
    plan_current: boolean; chunk_hashes: string[] | null; chunks: string[] | null;
  }>(`
    with src as (select s.id as source_id, v.id as version_id, v.settings
                   from regen._sources s join regen._versions v on v.tag = $2 where s.name = $1),
    docs_now as (select d.id::text as row_id, (${CONTENT})::text as content from docs d),
    its as (select it.* from regen._items it join src using (source_id, version_id))
    select coalesce(d.row_id, it.row_id) as row_id, d.row_id is not null as in_table, it.row_id is not null as has_item,
           it.content_hash is not distinct from sha256(convert_to(d.content, 'UTF8')) as hash_ok,
           regen._state(it.content_hash, it.embedded_hash, it.failed_hash, it.has_legacy) as state,
           it.queue_job is not null as queued, it.last_error as error, it.plan_hash = it.content_hash as plan_current,
           (select array_agg(encode(h, 'hex') order by o) from unnest(it.chunk_hashes) with ordinality u(h, o)) as chunk_hashes,
           (select array_agg(ch.chunk order by ch.chunk_no)
              from src, regen.chunk_text(regen.preprocess(d.content, src.settings),
                                         (src.settings->>'chunk_chars')::int, (src.settings->>'chunk_overlap')::int) ch) as chunks
    from docs_now d full join its it on it.row_id = d.row_id`, [SOURCE, VERSION]);

  const { rows: vectors } = await db.query<{ row_id: string; chunk_no: number; content_hash: string; text_hash: string; dims: number; embedding: string }>(`
    select e.row_id, e.chunk_no, encode(e.content_hash, 'hex') as content_hash, encode(e.text_hash, 'hex') as text_hash,
           vector_dims(e.embedding) as dims, e.embedding::text as embedding
    from regen._embeddings e
    join regen._sources s on s.id = e.source_id and s.name = $1
    join regen._versions v on v.id = e.version_id and v.tag = $2`, [SOURCE, VERSION]);
  const vectorsOf = new Map<string, typeof vectors>();
  for (const v of vectors) vectorsOf.set(v.row_id, [...(vectorsOf.get(v.row_id) ?? []), v]);

  const failed: EndState['failed'] = [];
  let current = 0;
  for (const it of items) {
    const row = `row ${it.row_id}`;
    if (!it.in_table) { problem(`${row}: item (or vectors) left behind for a deleted row`); continue; }
    if (!it.has_item) { problem(`${row}: row has no item`); continue; }
    if (!it.hash_ok) problem(`${row}: the item's content hash is not the hash of the row's current text`);
    // (a current item may keep naming the job it was queued in: finished jobs free their items)
    if (it.queued && it.state !== 'current') problem(`${row}: item ${it.state} and still queued with no job left to run`);
    if (it.state === 'failed') {
      failed.push({ rowId: it.row_id, error: it.error ?? '' });
      if (!it.error) problem(`${row}: failed without a reason`);
      continue;
    }
    if (it.state !== 'current') { problem(`${row}: item is ${it.state}`); continue; }
    current++;
    const chunks = it.chunks ?? [];
    // The plan is that of the last text prepared, which an edit back to the embedded text leaves behind.
    if (it.plan_current && JSON.stringify(chunks.map(sha256hex)) !== JSON.stringify(it.chunk_hashes ?? [])) {
      problem(`${row}: the chunk plan of the current text is not its chunks`);
    }
    const mine = (vectorsOf.get(it.row_id) ?? []).sort((a, b) => a.chunk_no - b.chunk_no);
    if (mine.length !== chunks.length) problem(`${row}: ${mine.length} vectors for ${chunks.length} chunks`);
    for (const v of mine) {
      const chunk = chunks[v.chunk_no - 1];
      if (chunk === undefined) { problem(`${row}: vector for chunk ${v.chunk_no}, which the text does not have`); continue; }
      if (v.text_hash !== sha256hex(chunk)) problem(`${row} chunk ${v.chunk_no}: text hash is not the chunk's`);
      if (v.dims !== DIMS) { problem(`${row} chunk ${v.chunk_no}: ${v.dims} dimensions`); continue; }
      const stored = v.embedding.slice(1, -1).split(',').map(Number);   // NaN would read as NaN, not throw
      const expected = hashedEmbedding([chunk], DIMS)[0]!;
      if (stored.some((x, i) => !Number.isFinite(x) || Math.abs(x - expected[i]!) > 1e-6)) {
        problem(`${row} chunk ${v.chunk_no}: stored vector is not the embedding of the chunk's text`);
      }
    }
  }
  // Content hashes of vectors: current items' vectors must carry the current text's hash.
  const currentHash = new Map<string, string>();
  const { rows: hashes } = await db.query<{ row_id: string; content_hash: string }>(`
    select it.row_id, encode(it.content_hash, 'hex') as content_hash from regen._items it
    join regen._sources s on s.id = it.source_id and s.name = $1 where it.embedded_hash = it.content_hash`, [SOURCE]);
  for (const h of hashes) currentHash.set(h.row_id, h.content_hash);
  const tracked = new Set(items.filter((i) => i.has_item).map((i) => i.row_id));
  for (const v of vectors) {
    if (!tracked.has(v.row_id)) problem(`row ${v.row_id} chunk ${v.chunk_no}: a vector of a row that has no item (deleted)`);
    if (v.dims !== DIMS) problem(`row ${v.row_id} chunk ${v.chunk_no}: a stored vector of ${v.dims} dimensions`);
    if (!v.embedding.slice(1, -1).split(',').map(Number).every(Number.isFinite)) problem(`row ${v.row_id} chunk ${v.chunk_no}: NaN or infinity stored`);
    const hash = currentHash.get(v.row_id);
    if (hash !== undefined && v.content_hash !== hash) problem(`row ${v.row_id} chunk ${v.chunk_no}: vector of another text on a current item`);
  }
  return { items: items.filter((i) => i.has_item).length, current, failed, vectors: vectors.length, problems };
}

/**
 * Keeps the server's one-minute rate window full with one tiny request a second. The local server,
 * like OpenAI, answers 429 with a retry-after that lasts until the oldest request in the window
 * leaves it: with a window a minute deep, a limit set just under its count (throttleBriefly) gives
 * short 429s, instead of a minute-long stall.
 */
export function dripRequests(server: EmbeddingServer): { ageMs(): number; stop(): void } {
  const since = Date.now();
  const timer = setInterval(() => {
    fetch(`${server.url}/embeddings`, {
      method: 'POST', headers: { 'content-type': 'application/json', authorization: 'Bearer drip' },
      body: JSON.stringify({ model: 'local-hash', input: 'drip', dimensions: DIMS }),
    }).then((r) => r.arrayBuffer(), () => {});
  }, 1_000);
  timer.unref();
  return { ageMs: () => Date.now() - since, stop: () => clearInterval(timer) };
}

/**
 * Refuses every request (429) for `ms`: a requests-per-minute limit `headroom` under what the
 * window holds admits nothing until that many of its oldest requests have left it, which with a
 * window kept full by dripRequests is about `headroom` seconds (the retry-after). The limit is
 * lifted before anything is admitted under it: an answer at the limit says x-ratelimit-remaining 0,
 * on which the worker pauses until the window's full reset, a minute.
 */
export async function throttleBriefly(server: EmbeddingServer, ms = 2_000, headroom = 3): Promise<{ rpm: number; refused: number }> {
  const admitted = server.stats.log.filter((e) => e.at > Date.now() - 59_000 && e.status !== 429 && e.status !== 401).length;
  const rpm = Math.max(1, admitted - headroom);
  const before = server.stats.status429;
  server.setLimits({ requestsPerMinute: rpm });
  await sleep(ms);
  server.setLimits({});
  return { rpm, refused: server.stats.status429 - before };
}

/** What regen and the queue know about some rows, to explain a failed check. */
export async function explainRows(db: Db, rowIds: string[]): Promise<unknown> {
  const items = await db.query(`
    select it.row_id, encode(it.content_hash, 'hex') as content, encode(it.embedded_hash, 'hex') as embedded,
           encode(it.plan_hash, 'hex') as plan, encode(it.failed_hash, 'hex') as failed, it.queue_job, it.last_error, it.changed_at,
           encode(sha256(convert_to(${CONTENT}, 'UTF8')), 'hex') as actual
    from regen._items it left join docs on docs.id::text = it.row_id where it.row_id = any($1)`, [rowIds]);
  const vectors = await db.query(`select row_id, chunk_no, encode(content_hash, 'hex') as content, embedded_at
                                  from regen._embeddings where row_id = any($1) order by row_id, chunk_no`, [rowIds]);
  const rejections = await db.query(`select at, row_id, chunk_no, reason from regen._rejections where row_id = any($1) order by at`, [rowIds]);
  const jobs = await db.query(`
    select id, state, priority, retry_count, created_on, started_on, completed_on,
           (select array_agg(r) from jsonb_array_elements_text(data->'rows') r where r = any($1)) as rows
    from pgboss.job where ${QUEUES} and data->'rows' ?| $1 order by created_on, started_on`, [rowIds]);
  return { items: items.rows, vectors: vectors.rows, rejections: rejections.rows, jobs: jobs.rows };
}
