// The rules of a model migration, at the SQL level (invariant 6): the cutover gate and its forced
// bypass, rollback to the kept version without re-embedding, the retire window, the audit trail and
// each refusal. Vectors are written the way the worker writes them (prepare_inputs, write_embeddings).
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { cutover, retire, rollback, startMigration } from '../src/migrate.ts';
import { buildVersionIndexes } from '../src/versions.ts';
import { failure } from './support/assertions.ts';
import { freshDatabase, type TestDatabase } from './support/db.ts';
import { allRowIds, embedRows, gap, setupArticles } from './support/fixtures.ts';

const V1 = 'test@1';
const V2 = 'small@2';   // another model with fewer dimensions: 8 -> 4

type SqlError = { code?: string; message: string; detail?: string; hint?: string };
const sqlError = (promise: Promise<unknown>) => failure<SqlError>(promise);

async function roles(db: TestDatabase): Promise<Record<string, string>> {
  const { rows } = await db.query<{ version: string; role: string }>(
    `select version, role from regen.embedding_gap where source = 'articles'`);
  return Object.fromEntries(rows.map((r) => [r.version, r.role]));
}

async function vectorCount(db: TestDatabase, version: string): Promise<number> {
  const { rows } = await db.query<{ n: string }>(
    `select count(*) as n from regen._embeddings e join regen._versions v on v.id = e.version_id where v.tag = $1`, [version]);
  return Number(rows[0]!.n);
}

describe('model migration rules', () => {
  let db: TestDatabase;

  beforeEach(async () => {
    db = await freshDatabase('migration_rules');
    await setupArticles(db, { rows: 200 });
    await db.query(`select regen.create_version($1, 'small-model', 4, settings => '{"chunk_chars": 2000}')`, [V2]);
    await embedRows(db, await allRowIds(db), 'articles', V1);
  });

  // a database per test: dropped when the test passed, kept for inspection when it failed
  afterEach(async ({ task }) => {
    if (task.result?.state === 'fail') {
      await db.close();
      process.stderr.write(`pgregen tests: kept database ${db.name} for inspection: ${db.url}\n`);
    } else {
      await db.drop();
    }
  });

  it('starts a build beside the active version: every row outdated, enqueued, and the active version still served', async () => {
    const started = await startMigration(db, 'articles', V2);
    expect(started).toMatchObject({ source: 'articles', version: V2, items: 200 });
    expect(started.jobs).toBeGreaterThan(0);
    expect(await roles(db)).toEqual({ [V1]: 'active', [V2]: 'building' });
    expect(await gap(db, 'articles', V2)).toMatchObject({ expected: 200, current: 0, outdated: 200 });
    const { rows: [queued] } = await db.query<{ n: string }>(
      `select count(*) as n from regen._items it join regen._versions v on v.id = it.version_id
        where v.tag = $1 and it.queue_job is not null`, [V2]);
    expect(Number(queued!.n)).toBe(200);

    // edits are captured for both versions: an edited row stays outdated in the new one (the old
    // model's vector is still there), a new row has no vector anywhere, so it is missing
    await db.query(`update articles set body = 'rewritten' where id = 1`);
    await db.query(`insert into articles (id, tenant, title, body) values (1001, 'tenant_0', 'New', 'new row')`);
    expect(await gap(db, 'articles', V1)).toMatchObject({ expected: 201, current: 199, stale: 1, missing: 1 });
    expect(await gap(db, 'articles', V2)).toMatchObject({ expected: 201, outdated: 200, missing: 1 });
  });

  it('refuses to start a second build, or one of a version the source already uses', async () => {
    await startMigration(db, 'articles', V2);
    await db.query(`select regen.create_version('other@3', 'other-model', 4)`);
    const second = await sqlError(startMigration(db, 'articles', 'other@3'));
    expect(second).toMatchObject({ code: 'RG050', message: `source articles is already migrating to version '${V2}'` });
    expect(second.hint).toContain(`regen.retire('articles', '${V2}')`);
    const again = await sqlError(startMigration(db, 'articles', V1));
    expect(again).toMatchObject({ code: 'RG050', message: `source articles already uses version '${V1}' (active)` });
    expect(await sqlError(startMigration(db, 'articles', 'nope@1'))).toMatchObject({ code: 'RG001' });
    expect(await sqlError(startMigration(db, 'nope', V2))).toMatchObject({ code: 'RG010' });
    expect(await roles(db)).toEqual({ [V1]: 'active', [V2]: 'building' });
  });

  it('refuses a cutover below the gate with the coverage and what is missing, and a forced one without a reason', async () => {
    await startMigration(db, 'articles', V2);
    await embedRows(db, (await allRowIds(db)).slice(0, 150), 'articles', V2, 4);

    const refused = await sqlError(cutover(db, 'articles', V2));
    expect(refused.code).toBe('RG051');
    expect(refused.message).toBe(`version '${V2}' of source articles covers 75.00% of its rows, below the cutover gate of 99.50%`);
    expect(refused.detail).toBe('150 of 200 rows current; missing 0, stale 0, outdated 50, failed 0; 50 queued');
    const lower = await sqlError(cutover(db, 'articles', V2, { minCoverage: 0.9 }));
    expect(lower.message).toContain('below the cutover gate of 90.00%');

    for (const reason of [undefined, '', '   ']) {
      expect(await sqlError(cutover(db, 'articles', V2, { force: true, reason }))).toMatchObject({
        code: 'RG052', message: 'a forced cutover needs a reason' });
    }
    for (const minCoverage of [1.5, -0.1, Number.NaN]) {
      expect(await sqlError(cutover(db, 'articles', V2, { minCoverage }))).toMatchObject({ code: 'RG055' });
    }
    expect(await roles(db)).toEqual({ [V1]: 'active', [V2]: 'building' });

    expect(await cutover(db, 'articles', V2, { minCoverage: 0.75 })).toBe(V2);
    expect(await roles(db)).toEqual({ [V1]: 'previous', [V2]: 'active' });
    const { rows: events } = await db.query(
      `select event, version, from_version, coverage::float8 as coverage, forced, reason from regen.version_events order by id`);
    expect(events).toEqual([
      { event: 'start_migration', version: V2, from_version: V1, coverage: 0, forced: false, reason: null },
      { event: 'cutover', version: V2, from_version: V1, coverage: 0.75, forced: false, reason: null },
    ]);
  });

  it('records a forced cutover with its reason and the coverage it was forced at', async () => {
    await startMigration(db, 'articles', V2);
    expect(await cutover(db, 'articles', V2, { force: true, reason: 'old model withdrawn by the provider' })).toBe(V2);
    const { rows: [event] } = await db.query(
      `select event, coverage::float8 as coverage, forced, reason, actor = session_user as by_me from regen.version_events where event = 'cutover'`);
    expect(event).toEqual({ event: 'cutover', coverage: 0, forced: true, reason: 'old model withdrawn by the provider', by_me: true });
  });

  it('rolls back without touching a vector, and can cut over again', async () => {
    await startMigration(db, 'articles', V2);
    await embedRows(db, await allRowIds(db), 'articles', V2, 4);
    await cutover(db, 'articles', V2);
    const before = await db.query(`select version_id, row_id, chunk_no, content_hash, embedded_at from regen._embeddings order by 1, 2, 3`);

    expect(await rollback(db, 'articles', 'recall dropped')).toBe(V1);
    expect(await roles(db)).toEqual({ [V1]: 'active', [V2]: 'previous' });
    const after = await db.query(`select version_id, row_id, chunk_no, content_hash, embedded_at from regen._embeddings order by 1, 2, 3`);
    expect(after.rows).toEqual(before.rows);
    expect(await gap(db, 'articles', V1)).toMatchObject({ expected: 200, current: 200 });

    expect(await cutover(db, 'articles', V2)).toBe(V2);
    expect(await rollback(db, 'articles')).toBe(V1);
    const { rows } = await db.query<{ event: string }>(`select event from regen.version_events order by id`);
    expect(rows.map((r) => r.event)).toEqual(['start_migration', 'cutover', 'rollback', 'cutover', 'rollback']);
  });

  it('refuses a rollback with nothing kept, and a cutover while an older version is still kept', async () => {
    expect(await sqlError(rollback(db, 'articles'))).toMatchObject({
      code: 'RG053', message: 'source articles has no previous version to roll back to' });
    await startMigration(db, 'articles', V2);
    await embedRows(db, await allRowIds(db), 'articles', V2, 4);
    await cutover(db, 'articles', V2);
    await db.query(`select regen.create_version('third@3', 'third-model', 4)`);
    await startMigration(db, 'articles', 'third@3');
    const kept = await sqlError(cutover(db, 'articles', 'third@3', { force: true, reason: 'test' }));
    expect(kept).toMatchObject({ code: 'RG050', message: `source articles still keeps version '${V1}' for rollback` });
    expect(kept.hint).toBe('retire the older version first with regen.retire()');
  });

  it('retires only outside the rollback window, removing vectors, items and the unused index', async () => {
    await startMigration(db, 'articles', V2);
    await embedRows(db, await allRowIds(db), 'articles', V2, 4);
    expect(await sqlError(retire(db, 'articles', V1))).toMatchObject({ code: 'RG054' });   // the active version
    await cutover(db, 'articles', V2);

    const inside = await sqlError(retire(db, 'articles', V1, '1 hour'));
    expect(inside.code).toBe('RG054');
    expect(inside.message).toMatch(new RegExp(`^version '${V1}' of source articles is inside its rollback window: it stopped being served .* ago, less than 01:00:00$`));
    expect(await sqlError(retire(db, 'articles', V1, '-1 day'))).toMatchObject({ code: 'RG055' });
    expect(await vectorCount(db, V1)).toBe(200);

    const { rows: [v1] } = await db.query<{ id: number }>(`select id from regen._versions where tag = $1`, [V1]);
    expect(await retire(db, 'articles', V1, '0 seconds')).toEqual({
      vectors: 200, droppedIndexes: [`regen._embeddings_hnsw_v${v1!.id}`] });
    expect(await vectorCount(db, V1)).toBe(0);
    expect(await roles(db)).toEqual({ [V2]: 'active' });
    const { rows: [left] } = await db.query<{ items: string; index: string | null }>(
      `select (select count(*) from regen._items where version_id = $1) as items,
              to_regclass('regen._embeddings_hnsw_v' || $1::int) as index`, [v1!.id]);
    expect(left).toEqual({ items: '0', index: null });
    expect(await sqlError(rollback(db, 'articles'))).toMatchObject({ code: 'RG053' });

    // the version can be built again later: its index comes back once the build is complete
    await startMigration(db, 'articles', V1);
    const index = async () => (await db.query<{ index: string | null }>(
      `select to_regclass('regen._embeddings_hnsw_v' || $1::int)::text as index`, [v1!.id])).rows[0]!.index;
    expect(await index()).toBeNull();
    await embedRows(db, await allRowIds(db), 'articles', V1);
    await buildVersionIndexes(db.pool, { version: V1, backfilledOnly: true });
    expect(await index()).toBe(`regen._embeddings_hnsw_v${v1!.id}`);
  });

  it('migrates to 3,072 dimensions stored as halfvec, and searches the new version through its halfvec index', async () => {
    const BIG = 'large@3';
    await db.query(`select regen.create_version($1, 'large-model', 3072, settings => '{"chunk_chars": 2000, "distance": "cosine"}')`, [BIG]);
    await startMigration(db, 'articles', BIG);
    await embedRows(db, await allRowIds(db), 'articles', BIG, 3072);
    expect(await cutover(db, 'articles', BIG)).toBe(BIG);
    const { rows: [version] } = await db.query<{ index_type: string }>(`select index_type from regen.versions where tag = $1`, [BIG]);
    expect(version!.index_type).toBe('halfvec');
    const client = await db.pool.connect();
    try {
      await client.query('begin');
      await client.query(`select regen.set_tenant('tenant_1')`);
      await client.query('set local regen.search_exact_max_rows = 0');   // the approximate path: the halfvec index
      const query = `[${Array.from({ length: 3072 }, (_, i) => ((i * 7) % 11) / 11).join(',')}]`;
      const { rows } = await client.query<{ row_id: string }>('select row_id from regen.search_scoped($1::vector, 5)', [query]);
      expect(rows).toHaveLength(5);
      const { rows: [wrong] } = await client.query('select * from regen.search_scoped($1::vector, 5)', ['[1,2,3]']).catch((err) => ({ rows: [err] }));
      expect(wrong).toMatchObject({ code: 'RG041', message: `the query has 3 dimensions, version ${BIG} has 3072` });
    } finally {
      await client.query('rollback');
      client.release();
    }
  });

  it('abandons a build at any time by retiring it', async () => {
    await startMigration(db, 'articles', V2);
    await embedRows(db, (await allRowIds(db)).slice(0, 20), 'articles', V2, 4);
    expect((await retire(db, 'articles', V2, '30 days')).vectors).toBe(20);
    expect(await roles(db)).toEqual({ [V1]: 'active' });
    const { rows } = await db.query<{ event: string; detail: { role: string } }>(`select event, detail from regen.version_events order by id`);
    expect(rows.map((r) => [r.event, r.detail.role ?? null])).toEqual([['start_migration', null], ['retire', 'building']]);
  });
});
