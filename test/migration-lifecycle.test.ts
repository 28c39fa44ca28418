// A whole model migration with the real worker and the local provider, while rows are edited and
// an application role searches all the time: 32 -> 16 dimensions, built beside the active version,
// cut over, rolled back with no provider call, cut over again and the old version retired.
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cutover, retire, rollback, startMigration } from '../src/migrate.ts';
import { search } from '../src/search.ts';
import { startEmbeddingServer, type EmbeddingServer } from '../src/provider-server.ts';
import type { RunningWorker } from '../src/worker/run.ts';
import { freshDatabase, keepOnFailure, type TestDatabase } from './support/db.ts';
import { createRole, type TestRole } from './support/search.ts';
import { assertStoreConsistent, inProcessWorker, waitFor, workerEnv } from './support/worker.ts';

const OLD = 'hash32@1';
const NEW = 'hash16@2';
const TENANTS = ['acme', 'globex', 'initech'];
const K = 5;

type Sample = { tenant: string; version: string; rows: number; foreign: number; at: number };

describe('a model migration under load', () => {
  let db: TestDatabase;
  let server: EmbeddingServer;
  let worker: RunningWorker;
  let app: TestRole;
  let openai: OpenAI;
  keepOnFailure(() => db);

  // background load: edits through the owner, searches through the application role
  let running = true;
  let paused = false;
  const samples: Sample[] = [];
  const errors: string[] = [];
  let load: Promise<void> = Promise.resolve();

  async function edits(): Promise<void> {
    for (let i = 0; running; i++) {
      if (!paused) {
        const id = 1 + (i * 37) % 300;
        await db.query(`update articles set body = body || ' edited ' || $2::int where id = $1`, [id, i]);
        if (i % 10 === 0) await db.query(`insert into articles values (1000 + $1::int, $2, 'added row ' || $1::int)`, [i, TENANTS[i % 3]]);
      }
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }

  async function searches(): Promise<void> {
    for (let i = 0; running; i++) {
      const tenant = TENANTS[i % 3]!;
      const at = Date.now();   // when the search started: one that starts after a flip must see it
      try {
        const hits = await search({ pool: app.pool, openai }, `article about topic ${i % 17}`, { tenant, k: K });
        const { rows: [own] } = await db.query<{ n: string }>(
          `select count(*) as n from articles where tenant = $1 and id = any($2::bigint[])`, [tenant, hits.map((h) => h.rowId)]);
        samples.push({ tenant, version: hits[0]?.version ?? 'none', rows: hits.length, foreign: hits.length - Number(own!.n), at });
      } catch (err) {
        errors.push((err as Error).message);
      }
      await new Promise((resolve) => setTimeout(resolve, 25));
    }
  }

  async function gapOf(version: string): Promise<{ open: number; role: string; coverage: number }> {
    const { rows: [row] } = await db.query<{ open: string; role: string; coverage: string }>(
      `select missing + stale + outdated + failed as open, role, coverage from regen.embedding_gap where source = 'articles' and version = $1`,
      [version]);
    return { open: Number(row!.open), role: row!.role, coverage: Number(row!.coverage) };
  }

  const closed = (version: string) => waitFor(`version ${version} to be current`, async () => (await gapOf(version)).open === 0, 90_000);
  // Backfill done: every row has a vector of this version, for its current text or (a row edited a
  // moment ago, whose fresh job the worker has yet to take) an earlier one.
  const built = (version: string) => waitFor(`version ${version} to be built`, async () => {
    const { rows: [row] } = await db.query<{ left: string }>(
      `select missing + outdated + failed as left from regen.embedding_gap where source = 'articles' and version = $1`, [version]);
    return Number(row!.left) === 0;
  }, 90_000);
  // Edits land all the time, so a few rows are always waiting for their fresh job: the gate here is
  // set below them (the gate itself is tested in migration-rules.test.ts).
  const GATE = { minCoverage: 0.9 };

  beforeAll(async () => {
    db = await freshDatabase('migration_lifecycle');
    server = await startEmbeddingServer({ dimensions: 32 });
    await db.query(`create table articles (id bigint primary key, tenant text not null, body text not null)`);
    await db.query(`insert into articles select g, ($1::text[])[g % 3 + 1], 'article ' || g || ' about topic ' || (g % 17)
                    from generate_series(1, 300) g`, [TENANTS]);
    for (const [tag, dims] of [[OLD, 32], [NEW, 16]] as const) {
      await db.query(`select regen.create_version($1, 'local-hash', $2::int, settings => '{"send_dimensions": true, "distance": "cosine"}')`, [tag, dims]);
    }
    await db.query(`select regen.register_source('articles', 'articles', 'id', 'body', tenant_column => 'tenant', version => $1)`, [OLD]);
    await db.query('select regen.rebuild()');
    worker = await inProcessWorker(workerEnv(db.url, server));
    await closed(OLD);

    app = await createRole(db, 'app', { grant: 'app', max: 2 });
    openai = new OpenAI({ apiKey: 'search-key', baseURL: server.url });   // searches count apart from the worker's 'test-key'
    load = Promise.all([edits(), searches()]).then(() => {});
  }, 120_000);

  afterAll(async () => {
    running = false;
    await load;
    await app?.drop();
    await worker?.stop();
    await server?.close();
  });

  const servedSince = (at: number) => samples.filter((s) => s.at > at);

  it('builds the new version beside the old one, serving only the old one until cutover', async () => {
    const started = Date.now();
    await startMigration(db, 'articles', NEW);
    await built(NEW);
    await waitFor('searches during the build', async () => servedSince(started).length >= 20);
    const before = Date.now();
    expect((await gapOf(NEW)).role).toBe('building');
    // built without its HNSW index: cutover() builds it, concurrently, and then flips
    const indexState = async () => (await db.query(`select index_state from regen.versions where tag = $1`, [NEW])).rows[0].index_state;
    expect(await indexState()).toBe('missing');
    const during = samples.filter((s) => s.at > started && s.at < before);
    expect(during.length).toBeGreaterThan(0);
    expect(new Set(during.map((s) => s.version))).toEqual(new Set([OLD]));

    await cutover(db, 'articles', NEW, GATE);
    expect(await indexState()).toBe('ready');
    const flipped = Date.now();
    await waitFor('searches after cutover', async () => servedSince(flipped).length >= 20);
    expect(new Set(servedSince(flipped).map((s) => s.version))).toEqual(new Set([NEW]));
  }, 120_000);

  it('rolls back at once with no provider call and no vector written', async () => {
    paused = true;   // with edits paused, the workers have nothing to do: any request would come from the rollback
    await closed(NEW);
    await closed(OLD);
    const workerRequests = () => server.stats.byKey['test-key']?.requests ?? 0;
    const requests = workerRequests();
    expect(requests).toBeGreaterThan(0);
    const { rows: [store] } = await db.query(`select count(*) as n, max(embedded_at) as last from regen._embeddings`);
    expect(await rollback(db, 'articles', 'quality check')).toBe(OLD);
    const flipped = Date.now();
    await waitFor('searches after rollback', async () => servedSince(flipped).length >= 20);
    expect(new Set(servedSince(flipped).map((s) => s.version))).toEqual(new Set([OLD]));
    expect(workerRequests()).toBe(requests);
    const { rows: [after] } = await db.query(`select count(*) as n, max(embedded_at) as last from regen._embeddings`);
    expect(after).toEqual(store);
    paused = false;
  }, 120_000);

  it('cuts over again and retires the old version after its window, searches going on', async () => {
    await built(NEW);
    await cutover(db, 'articles', NEW, GATE);
    await expect(retire(db, 'articles', OLD, '1 day')).rejects.toMatchObject({ code: 'RG054' });
    const retired = await retire(db, 'articles', OLD, '0 seconds');
    expect(retired.vectors).toBeGreaterThanOrEqual(300);
    expect(retired.droppedIndexes).toHaveLength(1);
    const done = Date.now();
    await waitFor('searches after retire', async () => servedSince(done).length >= 20);
    expect(new Set(servedSince(done).map((s) => s.version))).toEqual(new Set([NEW]));
    const { rows } = await db.query<{ event: string }>(`select event from regen.version_events order by id`);
    expect(rows.map((r) => r.event)).toEqual(['start_migration', 'cutover', 'rollback', 'cutover', 'retire']);
  }, 120_000);

  it('never failed a search, never returned another tenant\'s row, always k rows, and left a consistent store', async () => {
    running = false;
    await load;
    expect(errors).toEqual([]);
    expect(samples.length).toBeGreaterThan(60);
    expect(samples.filter((s) => s.foreign > 0)).toEqual([]);
    expect(samples.filter((s) => s.rows !== K)).toEqual([]);
    await closed(NEW);
    await assertStoreConsistent(db);
    // every row's vector in the new version is of its current text (16 dimensions)
    const { rows: [dims] } = await db.query<{ d: number[] }>(
      `select array_agg(distinct vector_dims(e.embedding)) as d from regen._embeddings e`);
    expect(dims!.d).toEqual([16]);
  }, 120_000);
});
