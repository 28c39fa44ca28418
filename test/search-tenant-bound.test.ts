// search_tenant's bound without a count (sql/0040): the tenants of the active version with more
// than 1,000 vectors are listed in regen._default_scope (large_tenants), and search_tenant sends
// them to the general path. The list follows write-back a batch at a time, and is written again
// with the scope (cutover, rollback); the answers stay those of search_scoped and search_rows.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tenantIndexes } from '../src/tenant-indexes.ts';
import { buildVersionIndexes } from '../src/versions.ts';
import { freshDatabase, keepOnFailure, type TestDatabase } from './support/db.ts';
import { vectorOf } from './support/fixtures.ts';
import { createRole, embedWith, searchAs, vectorText, type Hit, type TestRole } from './support/search.ts';

const DIMS = 8;
const ids = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => String(from + i));

describe('search_tenant: the tenants over 1,000 vectors, listed beside the default scope', () => {
  let db: TestDatabase;
  let app: TestRole;
  keepOnFailure(() => db);
  const v1 = (text: string) => vectorOf(text, DIMS);
  const v2 = (text: string) => vectorOf(`v2 ${text}`, DIMS);
  const listed = async () => (await db.query<{ large_tenants: string[] }>('select large_tenants from regen._default_scope')).rows
    .map((r) => r.large_tenants);

  beforeAll(async () => {
    db = await freshDatabase('search_tenant_bound');
    // big: rows 1 to 1,005; small: rows 1,006 to 1,055; other: rows 1,056 to 2,100 (embedded only in v2)
    await db.query('create table docs (id integer primary key, tenant text not null, body text not null)');
    await db.query(`insert into docs select g, case when g <= 1005 then 'big' when g <= 1055 then 'small' else 'other' end,
                    'doc ' || g from generate_series(1, 2100) g`);
    await db.query(`select regen.create_version('v1@8', 'synthetic', ${DIMS}, settings => '{"distance": "cosine"}')`);
    await db.query(`select regen.create_version('v2@8', 'synthetic', ${DIMS}, settings => '{"distance": "l2"}')`);
    await db.query(`select regen.register_source('docs', 'docs', 'id', 'body', tenant_column => 'tenant', version => 'v1@8')`);
    app = await createRole(db, 'bound_app', { grant: 'app' });
  }, 60_000);

  afterAll(async () => {
    await app?.drop();
  });

  /** search_rows as an application runs it: a transaction, set_tenant, the search. */
  const rowsAs = async (tenant: string, query: number[]) => {
    const client = await app.pool.connect();
    try {
      await client.query('begin');
      await client.query('select regen.set_tenant($1)', [tenant]);
      return (await client.query<Hit>('select * from regen.search_rows($1::vector, 7)', [vectorText(query)])).rows;
    } finally {
      await client.query('rollback').catch(() => {});
      client.release();
    }
  };

  const tenantSearch = async (tenant: string, query: number[], perRow = false) =>
    (await app.pool.query<Hit & { version_searched: string }>(
      'select source, row_id, chunk_no, distance, version_searched from regen.search_tenant($1, $2::vector, 7, per_row => $3)',
      [tenant, vectorText(query), perRow])).rows;

  it('lists a tenant once a write takes it past 1,000 vectors, and only for the active version', async () => {
    expect(await listed()).toEqual([[]]);
    await embedWith(db, 'docs', 'v1@8', ids(1, 1000), v1);
    await embedWith(db, 'docs', 'v1@8', ids(1006, 1055), v1);
    expect(await listed()).toEqual([[]]);   // 1,000 is not past 1,000
    await embedWith(db, 'docs', 'v1@8', ids(1001, 1005), v1);
    expect(await listed()).toEqual([['big']]);
    // a write again of vectors already stored (an update of the store) keeps it listed, once
    await db.query(`update regen._embeddings set embedding = embedding where tenant = 'big' and row_id in ('1', '2')`);
    expect(await listed()).toEqual([['big']]);
    // a version being built is not the default scope: its writes list nothing
    await db.query(`select regen.start_migration('docs', 'v2@8')`);
    await embedWith(db, 'docs', 'v2@8', ids(1, 2100), v2);
    expect(await listed()).toEqual([['big']]);
  });

  it('answers as search_scoped and search_rows for the listed tenant and the small one', async () => {
    for (const [tenant, query] of [['big', v1('doc 17')], ['small', v1('doc 1010')], ['big', v1('doc 1004')]] as const) {
      const hits = await tenantSearch(tenant, [...query]);
      expect(hits.map(({ version_searched }) => version_searched)).toEqual(Array(7).fill('v1@8'));
      expect(hits.map(({ version_searched, ...hit }) => hit)).toEqual((await searchAs(app.pool, tenant, [...query], { k: 7 })).hits);
      const rows = (await tenantSearch(tenant, [...query], true)).map(({ version_searched, ...hit }) => hit);
      expect(rows).toEqual(await rowsAs(tenant, [...query]));
    }
    // the vector of row 17 is row 17's own: the nearest at distance 0
    expect((await tenantSearch('big', v1('doc 17')))[0]).toMatchObject({ row_id: '17', distance: 0 });
    // with an index of its own, the listed tenant is searched through it (the general path), as
    // search_scoped searches it; the one-statement path would have ranked every vector instead
    const [step] = await tenantIndexes(db.pool, { minRows: 1000, version: 'v1@8' });
    expect(step).toMatchObject({ action: 'create', tenant: 'big' });
    const client = await app.pool.connect();
    try {
      await client.query('begin');
      const scans = async () => Number((await client.query('select pg_stat_get_xact_numscans($1::regclass) as n', [`regen.${step!.indexName}`])).rows[0].n);
      const before = await scans();
      const { rows } = await client.query(`select row_id from regen.search_tenant('big', $1::vector, 7)`, [vectorText(v1('doc 17'))]);
      expect(rows[0]).toEqual({ row_id: '17' });
      expect(await scans()).toBeGreaterThan(before);
      await client.query('commit');
    } finally {
      client.release();
    }
    await db.query(`drop index regen.${step!.indexName}`);
  });

  it('is written again with the scope: cutover to a version with another large tenant, and rollback', async () => {
    await buildVersionIndexes(db.pool, { version: 'v2@8' });   // cutover waits for the version's index
    await db.query(`select regen.cutover('docs', 'v2@8')`);
    expect(await listed()).toEqual([['big', 'other']]);
    const hits = await tenantSearch('other', v2('doc 2000'));
    expect(hits[0]).toMatchObject({ row_id: '2000', distance: 0, version_searched: 'v2@8' });
    expect(hits.map(({ version_searched, ...hit }) => hit)).toEqual((await searchAs(app.pool, 'other', v2('doc 2000'), { k: 7 })).hits);
    await db.query(`select regen.rollback('docs')`);
    expect(await listed()).toEqual([['big']]);
    // a tenant that shrinks stays listed until the scope is written again (the general path is right for any size)
    await db.query(`delete from docs where id between 1 and 600`);
    await db.query('select regen.apply_changes()');
    expect((await db.query(`select count(*)::int as n from regen._embeddings e join regen._versions v on v.id = e.version_id
                             where v.tag = 'v1@8' and e.tenant = 'big'`)).rows[0].n).toBe(405);
    expect(await listed()).toEqual([['big']]);
    expect((await tenantSearch('big', v1('doc 700'))).map(({ version_searched, ...hit }) => hit))
      .toEqual((await searchAs(app.pool, 'big', v1('doc 700'), { k: 7 })).hits);
    await db.query(`select regen._refresh_default_scope()`);
    expect(await listed()).toEqual([[]]);
  });
});
