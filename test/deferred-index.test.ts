// Indexes built when it is cheapest (issue 13, item 4): a version being built has no HNSW index
// while it backfills; cutover and rollback refuse (RG056) until it has a valid one; the library
// builds it with CREATE INDEX CONCURRENTLY (writes go on meanwhile) and replaces the invalid
// leftover of an interrupted build; search_scoped is exact without it; a large gap on a serving
// version is loaded without its index; an upgrade keeps the indexes a database has.
import { cp, mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { install, SQL_DIR } from '../src/install.ts';
import { rollback, startMigration } from '../src/migrate.ts';
import { buildVersionIndexes, deferVersionIndexes, versionIndexPlan } from '../src/versions.ts';
import { failure } from './support/assertions.ts';
import { adminPool, freshDatabase, keepOnFailure, type TestDatabase } from './support/db.ts';
import { allRowIds, embedRows, setupArticles, vectorOf } from './support/fixtures.ts';
import { bruteForce, createRole, expectExactTopK, searchAs, vectorText, type TestRole } from './support/search.ts';
import { quoteIdent, withDatabase } from './support/url.ts';
import { waitFor } from './support/worker.ts';

const V1 = 'test@1';
const V2 = 'next@2';
type SqlError = { code?: string; message: string; hint?: string };

/** The version's index as the catalog has it: its oid, and whether it is valid; null when there is none. */
async function indexOf(db: pg.Pool | TestDatabase, tag: string): Promise<{ oid: number; valid: boolean } | null> {
  const { rows: [row] } = await db.query<{ oid: number; valid: boolean }>(
    `select c.oid::int as oid, i.indisvalid as valid from regen._versions v
       join pg_class c on c.relname = '_embeddings_hnsw_v' || v.id and c.relnamespace = 'regen'::regnamespace
       join pg_index i on i.indexrelid = c.oid
      where v.tag = $1`, [tag]);
  return row ?? null;
}

async function stateOf(db: pg.Pool | TestDatabase, tag: string): Promise<{ index_state: string; index_ready: boolean }> {
  const { rows: [row] } = await db.query<{ index_state: string; index_ready: boolean }>(
    'select index_state, index_ready from regen.versions where tag = $1', [tag]);
  return row!;
}

/** A connection that holds a writer's lock on the store in an open transaction: a concurrent build waits for it. */
async function heldWriter(db: TestDatabase): Promise<{ release(): Promise<void> }> {
  const client = await db.pool.connect();
  await client.query('begin');
  await client.query('lock table regen._embeddings in row exclusive mode');
  return { async release() { await client.query('commit'); client.release(); } };
}

/**
 * Waits until a CREATE INDEX CONCURRENTLY on regen._embeddings waits for the writers before its build
 * (its index is in the catalog by then, invalid); returns its backend pid.
 */
async function buildRunning(db: TestDatabase): Promise<number> {
  return waitFor('a concurrent index build', async () => {
    const { rows: [r] } = await db.query<{ pid: number }>(
      `select pid from pg_stat_progress_create_index where relid = 'regen._embeddings'::regclass and command = 'CREATE INDEX CONCURRENTLY'
          and phase = 'waiting for writers before build'`);
    return r?.pid;
  }, 20_000, 50);
}

/** The statements search_scoped ran, as auto_explain reports them to the session (superuser). */
async function searchedStatements(db: TestDatabase, tag: string, tenant: string, query: number[], exactMaxRows: number): Promise<string[]> {
  const client = await db.pool.connect();
  const notices: string[] = [];
  const onNotice = (n: { message?: string }) => notices.push(n.message ?? '');
  client.on('notice', onNotice);
  try {
    await client.query(`load 'auto_explain'`);
    await client.query(`set auto_explain.log_min_duration = 0; set auto_explain.log_nested_statements = on; set auto_explain.log_level = notice`);
    await client.query('begin');
    await client.query(`select set_config('regen.search_exact_max_rows', $1, true)`, [String(exactMaxRows)]);
    await client.query('select regen.set_tenant($1)', [tenant]);
    await client.query('select * from regen.search_scoped($1::vector, 5, version => $2)', [vectorText(query), tag]);
    await client.query('commit');
  } finally {
    client.off('notice', onNotice);
    await client.query('rollback').catch(() => {});
    await client.query('reset auto_explain.log_min_duration').catch(() => {});
    client.release(true);
  }
  return notices;
}
const annQuery = (statements: string[]) => statements.some((s) => s.includes('array_agg(row(s.name'));

describe('deferred version indexes', () => {
  let db: TestDatabase;
  let app: TestRole;
  keepOnFailure(() => db);
  const rows = 200;

  beforeAll(async () => {
    db = await freshDatabase('deferred_index');
    await setupArticles(db, { rows });
    await embedRows(db, await allRowIds(db), 'articles', V1);
    await db.query(`select regen.create_version($1, 'next-model', 8, settings => '{"chunk_chars": 2000, "chunk_overlap": 0, "distance": "l2"}')`, [V2]);
    app = await createRole(db, 'app', { grant: 'app' });
  });

  afterAll(async () => {
    await app?.drop();
  });

  it('gives a version no index at creation nor while it is built; the served one has its index', async () => {
    expect(await indexOf(db, V2)).toBeNull();
    expect(await stateOf(db, V2)).toEqual({ index_state: 'missing', index_ready: false });
    expect(await indexOf(db, V1)).toEqual({ oid: expect.any(Number), valid: true });
    expect(await stateOf(db, V1)).toEqual({ index_state: 'ready', index_ready: true });

    await startMigration(db, 'articles', V2);
    const ids = await allRowIds(db);
    await embedRows(db, ids.slice(0, rows / 2), 'articles', V2);
    expect(await indexOf(db, V2)).toBeNull();
    const [step, ...more] = await versionIndexPlan(db, undefined);
    expect(more).toEqual([]);
    expect(step).toMatchObject({ version: V2, action: 'create', state: 'missing', open: rows / 2, expected: rows, backfilled: false });
    expect(step!.statement).toMatch(/^create index concurrently if not exists _embeddings_hnsw_v\d+ on regen\._embeddings using hnsw \(\(embedding::vector\(8\)\) vector_l2_ops\) where version_id = \d+$/);
    // nothing to do for a version whose backfill is not complete, when only those are asked for
    expect(await buildVersionIndexes(db.pool, { backfilledOnly: true })).toEqual([]);
    expect(await indexOf(db, V2)).toBeNull();
  });

  it('searches a version without its index exactly, however many vectors are in scope', async () => {
    const query = vectorOf('a query', 8);
    for (const tenant of ['tenant_0', 'tenant_1']) {
      const { hits } = await searchAs(app.pool, tenant, query, { k: 10, version: V2, exactMaxRows: 0 });
      expectExactTopK(hits, await bruteForce(db, { version: V2, tenant, distance: 'l2' }, query, 15), 10, tenant);
    }
    // the exact statement ran, not the index scan: with an index the same search takes the approximate path
    expect(annQuery(await searchedStatements(db, V2, 'tenant_0', query, 0))).toBe(false);
    expect(annQuery(await searchedStatements(db, V1, 'tenant_0', query, 0))).toBe(true);
  });

  it('refuses a cutover without a valid index (RG056), after the coverage gate', async () => {
    const below = await failure<SqlError>(db.query(`select regen.cutover('articles', $1)`, [V2]));
    expect(below.code).toBe('RG051');
    await embedRows(db, await allRowIds(db), 'articles', V2);
    for (const sql of [`select regen.cutover('articles', $1)`, `select regen.cutover('articles', $1, force => true, reason => 'test')`]) {
      const refused = await failure<SqlError>(db.query(sql, [V2]));
      expect(refused).toMatchObject({
        code: 'RG056',
        message: `cutover of source articles refused: version '${V2}' has no valid HNSW index (it is built once the backfill is complete)`,
        hint: `build it first, concurrently, as the owner of regen._embeddings: pgregen index build --version ${V2} ` +
          '(pgregen migrate cutover does it before the cutover)',
      });
    }
    expect((await versionIndexPlan(db, V2))[0]).toMatchObject({ action: 'create', open: 0, backfilled: true });
  });

  it('builds the index concurrently: writes to the store go on while the build waits, and the index is valid', async () => {
    const writer = await heldWriter(db);
    const building = buildVersionIndexes(db.pool, { version: V2, backfilledOnly: true });
    let released = false;
    try {
      await buildRunning(db);
      // a plain CREATE INDEX would queue for a lock that every write to the store then waits behind:
      // a writer's lock, asked for without waiting, is granted at once
      const other = await db.pool.connect();
      try {
        await other.query('begin');
        await other.query('lock table regen._embeddings in row exclusive mode nowait');
        await other.query('commit');
      } finally {
        other.release();
      }
      expect(await stateOf(db, V2)).toEqual({ index_state: 'building', index_ready: false });
      await writer.release();
      released = true;
    } finally {
      if (!released) await writer.release();
    }
    const steps = await building;
    expect(steps).toEqual([expect.objectContaining({ version: V2, action: 'create', state: 'missing', ms: expect.any(Number) })]);
    expect(await indexOf(db, V2)).toEqual({ oid: expect.any(Number), valid: true });
    expect(await stateOf(db, V2)).toEqual({ index_state: 'ready', index_ready: true });
    expect(await buildVersionIndexes(db.pool, { version: V2 })).toEqual([]);   // nothing left to do
    expect((await db.query(`select regen.cutover('articles', $1) as active`, [V2])).rows[0].active).toBe(V2);
  });

  it('detects the invalid index an interrupted build left, drops it and builds it anew; rollback waits for it', async () => {
    // V1 is kept for rollback: take its index away and interrupt a concurrent build of it
    await db.query(`drop index concurrently regen.${(await versionIndexPlanFor(V1)).name}`);
    const [plan] = await versionIndexPlan(db, V1);
    const writer = await heldWriter(db);
    const interrupted = db.query(plan!.statement!).catch((err: Error) => err);
    try {
      await db.query('select pg_cancel_backend($1)', [await buildRunning(db)]);
      expect(await interrupted).toMatchObject({ message: 'canceling statement due to user request' });
    } finally {
      await writer.release();
    }
    const leftover = await indexOf(db, V1);
    expect(leftover).toEqual({ oid: expect.any(Number), valid: false });
    expect(await stateOf(db, V1)).toEqual({ index_state: 'invalid', index_ready: false });

    const refused = await failure<SqlError>(db.query(`select regen.rollback('articles')`));
    expect(refused).toMatchObject({ code: 'RG056',
      message: `rollback of source articles refused: version '${V1}' has no valid HNSW index (an interrupted concurrent build left it invalid)` });
    // the search is exact meanwhile (an invalid index is never scanned)
    const query = vectorOf('another query', 8);
    expect(annQuery(await searchedStatements(db, V1, 'tenant_1', query, 0))).toBe(false);

    const steps = await buildVersionIndexes(db.pool, { version: V1 });
    expect(steps.map((s) => [s.action, s.state])).toEqual([['drop', 'invalid'], ['create', 'missing']]);
    const rebuilt = await indexOf(db, V1);
    expect(rebuilt).toEqual({ oid: expect.any(Number), valid: true });
    expect(rebuilt!.oid).not.toBe(leftover!.oid);
    expect(await rollback(db, 'articles')).toBe(V1);
  });

  it('waits for a build another session runs instead of starting a second one', async () => {
    await db.query(`drop index concurrently regen.${(await versionIndexPlanFor(V2)).name}`);
    const [plan] = await versionIndexPlan(db, V2);
    const writer = await heldWriter(db);
    let waited: Promise<Awaited<ReturnType<typeof buildVersionIndexes>>> | undefined;
    let released = false;
    try {
      const other = db.query(plan!.statement!);
      await buildRunning(db);
      waited = buildVersionIndexes(db.pool, { version: V2 });
      let settled = false;
      void waited.then(() => { settled = true; }, () => { settled = true; });
      await new Promise((resolve) => setTimeout(resolve, 1500));
      expect(settled).toBe(false);   // still waiting for the other session's build
      await writer.release();
      released = true;
      await other;
    } finally {
      if (!released) await writer.release();
    }
    const built = await indexOf(db, V2);
    expect(built).toEqual({ oid: expect.any(Number), valid: true });
    expect((await waited!).map((s) => [s.action, s.state])).toEqual([['wait', 'building']]);
    expect(await indexOf(db, V2)).toEqual(built);   // the other session's index, not a second build
  });

  async function versionIndexPlanFor(tag: string): Promise<{ name: string }> {
    const { rows: [r] } = await db.query<{ name: string }>(`select '_embeddings_hnsw_v' || id as name from regen._versions where tag = $1`, [tag]);
    return r!;
  }

  it('loads a large gap on a serving version without its index, and builds it again once the gap is closed', async () => {
    await db.query(`create table notes (id int primary key, tenant text not null, body text not null)`);
    await db.query(`insert into notes select g, 'tenant_' || (g % 2), 'note ' || g from generate_series(1, 300) g`);
    await db.query(`select regen.create_version('notes@1', 'test-model', 8, settings => '{"chunk_overlap": 0}')`);
    await db.query(`select regen.register_source('notes', 'notes', 'id', 'body', tenant_column => 'tenant', version => 'notes@1')`);
    // served from the start: an empty index, made in the registration
    expect(await indexOf(db, 'notes@1')).toEqual({ oid: expect.any(Number), valid: true });

    // every row missing: below the default 10,000 rows nothing is deferred; above min_rows it is
    expect(await deferVersionIndexes(db.pool, { source: 'notes', dryRun: true })).toEqual([]);
    expect(await deferVersionIndexes(db.pool, { source: 'notes', minRows: 301, dryRun: true })).toEqual([]);
    // articles' served version has nothing missing: not deferred, whatever min_rows
    expect(await deferVersionIndexes(db.pool, { source: 'articles', minRows: 0, dryRun: true })).toEqual([]);
    await expect(deferVersionIndexes(db.pool, { minRows: -1 })).rejects.toMatchObject({ code: 'RG057' });
    const dropped = await deferVersionIndexes(db.pool, { source: 'notes', minRows: 100 });
    expect(dropped).toEqual([expect.objectContaining({ version: 'notes@1', action: 'drop', open: 300, expected: 300,
      statement: expect.stringMatching(/^drop index concurrently if exists regen\._embeddings_hnsw_v\d+$/) })]);
    expect(await indexOf(db, 'notes@1')).toBeNull();

    const ids = await allRowIds(db, 'notes');
    await embedRows(db, ids.slice(0, 250), 'notes', 'notes@1');
    const query = vectorOf('a note', 8);
    const { hits } = await searchAs(app.pool, 'tenant_1', query, { k: 10, sources: ['notes'], exactMaxRows: 0 });
    expectExactTopK(hits, await bruteForce(db, { version: 'notes@1', tenant: 'tenant_1', distance: 'cosine' }, query, 15), 10, 'notes');
    expect(await buildVersionIndexes(db.pool, { version: 'notes@1', backfilledOnly: true })).toEqual([]);
    await embedRows(db, ids.slice(250), 'notes', 'notes@1');
    expect(await buildVersionIndexes(db.pool, { version: 'notes@1', backfilledOnly: true }))
      .toEqual([expect.objectContaining({ version: 'notes@1', action: 'create' })]);
    expect(await indexOf(db, 'notes@1')).toEqual({ oid: expect.any(Number), valid: true });
  });
});

describe('an upgrade from before deferred indexes', () => {
  const admin = adminPool();
  const name = `pgregen_defer_up_${randomBytes(4).toString('hex')}`;
  afterAll(async () => {
    // the pool's backends may take a moment to go after pool.end(): FORCE would then kill them mid-goodbye
    for (let attempt = 0; attempt < 20; attempt++) {
      const { rows: [r] } = await admin.query<{ n: number }>('select count(*)::int as n from pg_stat_activity where datname = $1', [name]);
      if (r!.n === 0) break;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    await admin.query(`drop database if exists ${quoteIdent(name)} with (force)`);
    await admin.end();
  });

  it('keeps the indexes the database has, a building version\'s too, and cuts over without a build', async () => {
    await admin.query(`create database ${quoteIdent(name)} template template0`);
    const url = withDatabase(inject('serverUrl'), name);
    const pool = new pg.Pool({ connectionString: url, max: 4 });
    const dir = await mkdtemp(join(tmpdir(), 'pgregen-sql-'));
    try {
      await pool.query('create extension vector');
      const files = (await readdir(SQL_DIR)).filter((f) => /^\d{4}_.+\.sql$/.test(f) && f < '0021');
      for (const file of files) await cp(join(SQL_DIR, file), join(dir, file));
      await install({ connectionString: url, migrationsDir: dir });
      await setupArticles(pool, { rows: 40 });
      await pool.query(`select regen.create_version($1, 'next-model', 8)`, [V2]);
      await pool.query(`select regen.create_version('unused@3', 'm', 8)`);
      await pool.query(`select * from regen.start_migration('articles', $1)`, [V2]);
      const before = await Promise.all([V1, V2, 'unused@3'].map((tag) => indexOf(pool, tag)));
      expect(before.every((i) => i?.valid)).toBe(true);   // the old code made all three

      const upgraded = await install({ connectionString: url });
      expect(upgraded.applied[0]).toBe('deferred_index');
      expect(await Promise.all([V1, V2, 'unused@3'].map((tag) => indexOf(pool, tag)))).toEqual(before);
      expect(await versionIndexPlan(pool)).toEqual([]);
      await embedRows(pool, await allRowIds(pool), 'articles', V2);
      expect((await pool.query(`select regen.cutover('articles', $1) as active`, [V2])).rows[0].active).toBe(V2);
    } finally {
      await pool.end();
      await rm(dir, { recursive: true, force: true });
    }
  });
});
