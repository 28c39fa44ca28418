// regen.search_scoped(), invariant 1 (no query compares two versions): a search reads the active
// version, or the one named, never both, also during a half-built migration.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mulberry32 } from '../src/prng.ts';
import { buildVersionIndexes } from '../src/versions.ts';
import { freshDatabase, keepOnFailure, type TestDatabase } from './support/db.ts';
import { vectorOf } from './support/fixtures.ts';
import { bruteForce, createRole, embedWith, expectExactTopK, expectSorted, gaussian, hnswIndexOf, keyOf, searchAs, trueDistances, vectorText, type TestRole } from './support/search.ts';

const SEED = 20260611;

describe('versions: a search reads one version, the active one or the one named', () => {
  let db: TestDatabase;
  let app: TestRole;
  keepOnFailure(() => db);
  const random = mulberry32(SEED + 1);
  const normal = gaussian(random);
  /** the vectors of row r's text in v1 (active) and in v2 (the migration's, half built): distinct values */
  const v1 = (text: string) => vectorOf(text, 8);
  const v2 = (text: string) => vectorOf(`v2 ${text}`, 8).map((x) => 3 * x);
  const v1Scope = { version: 'v1@8', tenant: 'a', sources: ['docs'], distance: 'cosine' as const };
  const v2Scope = { version: 'v2@8', tenant: 'a', sources: ['docs'], distance: 'l2' as const };
  let v2Rows: string[];

  beforeAll(async () => {
    db = await freshDatabase('search_versions');
    await db.query(`create table docs (id integer primary key, tenant text not null, body text not null)`);
    await db.query(`insert into docs select g, case when g % 3 = 0 then 'b' else 'a' end, 'doc ' || g from generate_series(1, 300) g`);
    await db.query(`create table notes (id integer primary key, tenant text not null, body text not null)`);
    await db.query(`insert into notes select g, case when g % 2 = 0 then 'b' else 'a' end, 'note ' || g from generate_series(1, 100) g`);
    await db.query(`select regen.create_version('v1@8', 'synthetic', 8, settings => '{"chunk_overlap": 0}')`);
    await db.query(`select regen.create_version('v2@8', 'synthetic', 8, settings => '{"chunk_overlap": 0, "distance": "l2"}')`);
    await db.query(`select regen.create_version('v3@12', 'synthetic', 12, settings => '{"chunk_overlap": 0, "distance": "inner_product"}')`);
    await db.query(`select regen.register_source('docs', 'docs', 'id', 'body', tenant_column => 'tenant', version => 'v1@8')`);
    await db.query(`select regen.register_source('notes', 'notes', 'id', 'body', tenant_column => 'tenant', version => 'v3@12')`);
    // A migration of docs to v2, half built. regen.start_migration() is not written yet: as the
    // owner, attach v2 as 'building' and give it the items v1 has, then embed half of the rows.
    await db.query(`insert into regen._source_versions (source_id, version_id, role)
                    select s.id, v.id, 'building' from regen._sources s, regen._versions v where s.name = 'docs' and v.tag = 'v2@8'`);
    await db.query(`insert into regen._items (source_id, version_id, row_id, tenant, priority, content_hash)
                    select it.source_id, v2.id, it.row_id, it.tenant, it.priority, it.content_hash
                    from regen._items it join regen._versions v1 on v1.id = it.version_id, regen._versions v2
                    where v1.tag = 'v1@8' and v2.tag = 'v2@8'`);
    const ids = Array.from({ length: 300 }, (_, i) => String(i + 1));
    v2Rows = ids.filter((id) => Number(id) % 2 === 0);
    await embedWith(db, 'docs', 'v1@8', ids, v1);
    await embedWith(db, 'docs', 'v2@8', v2Rows, v2);
    await embedWith(db, 'notes', 'v3@12', Array.from({ length: 100 }, (_, i) => String(i + 1)), (text) => vectorOf(text, 12));
    app = await createRole(db, 'app', { grant: 'app' });
  });

  afterAll(async () => {
    await app?.drop();
  });

  /** Queries: a v2 vector of a row of tenant a (a search mixing in v2 would find it at distance 0), a v1 vector, random ones. */
  const queries = () => [v2('doc 2'), v1('doc 4'), v2('doc 8'), ...Array.from({ length: 3 }, () => Array.from({ length: 8 }, normal))];

  it('reads only the active version by default, and exactly', async () => {
    for (const [i, query] of queries().entries()) {
      for (const k of [5, 1000]) {
        const { hits } = await searchAs(app.pool, 'a', query, { k, sources: ['docs'] });
        expectExactTopK(hits, await bruteForce(db, v1Scope, query, k + 5), k, `query ${i}, k ${k}`);
        expect(hits.length).toBe(Math.min(k, 200));
      }
    }
    expect((await app.pool.query(`select version from regen.search_input('doc 2', array['docs'])`)).rows).toEqual([{ version: 'v1@8' }]);
  });

  it('reads only the named version, for a shadow read of the migration', async () => {
    for (const [i, query] of queries().entries()) {
      for (const sources of [['docs'], null]) {
        const { hits } = await searchAs(app.pool, 'a', query, { k: 1000, sources, version: 'v2@8' });
        expectExactTopK(hits, await bruteForce(db, v2Scope, query, 1000), 1000, `query ${i}, sources ${sources}`);
        expect(hits.length).toBe(v2Rows.filter((id) => Number(id) % 3 !== 0).length);
      }
    }
    const { hits } = await searchAs(app.pool, 'a', v2('doc 2'), { k: 1, version: 'v2@8' });
    expect(hits).toEqual([{ source: 'docs', row_id: '2', chunk_no: 1, distance: 0 }]);
    expect((await app.pool.query(`select version from regen.search_input('doc 2', version => 'v2@8')`)).rows).toEqual([{ version: 'v2@8' }]);
  });

  it('keeps the versions apart on the approximate path too', async () => {
    // a version being built gets its index once its backfill is complete: build v2's now, as the owner would
    expect((await db.query(`select index_state from regen.versions where tag = 'v2@8'`)).rows[0].index_state).toBe('missing');
    await buildVersionIndexes(db.pool, { version: 'v2@8' });
    for (const [i, query] of queries().entries()) {
      for (const [scope, version] of [[v1Scope, null], [v2Scope, 'v2@8']] as const) {
        const { hits, scans } = await searchAs(app.pool, 'a', query,
          { k: 20, sources: ['docs'], version, exactMaxRows: 0, countScansOf: await hnswIndexOf(db, scope.version) });
        const what = `query ${i}, ${scope.version}`;
        expect(scans, `${what}: HNSW scans`).toBe(1);
        expect(hits.length, what).toBe(20);
        expectSorted(hits, what);
        // each hit at the distance of its own vector in this version, of tenant a
        const truth = await trueDistances(db, scope.version, scope.distance, query, hits);
        for (const hit of hits) expect(truth.get(keyOf(hit)), `${what}: ${keyOf(hit)}`).toEqual({ distance: hit.distance, tenant: 'a' });
      }
    }
  });

  it('refuses sources of different active versions, a version a source does not use, and a query of other dimensions', async () => {
    const q8 = Array.from({ length: 8 }, normal);
    const q12 = Array.from({ length: 12 }, normal);
    const mixed = {
      code: 'RG042',
      message: 'the sources in scope have different active versions (docs: v1@8, notes: v3@12), and vectors of two versions are never compared',
    };
    await expect(searchAs(app.pool, 'a', q8)).rejects.toMatchObject(mixed);
    await expect(searchAs(app.pool, 'a', q8, { sources: ['notes', 'docs'] })).rejects.toMatchObject(mixed);
    await expect(app.pool.query(`select * from regen.search_input('doc 2')`)).rejects.toMatchObject(mixed);
    await expect(searchAs(app.pool, 'a', q8, { sources: ['docs', 'notes'], version: 'v2@8' }))
      .rejects.toMatchObject({ code: 'RG042', message: "source 'notes' does not use version 'v2@8'" });
    await expect(searchAs(app.pool, 'a', q8, { version: 'v9' })).rejects.toMatchObject({ code: 'RG001', message: "unknown version 'v9'" });
    await expect(searchAs(app.pool, 'a', q12, { sources: ['docs'] }))
      .rejects.toMatchObject({ code: 'RG041', message: 'the query has 12 dimensions, version v1@8 has 8' });
    await expect(searchAs(app.pool, 'a', q12, { version: 'v2@8' }))
      .rejects.toMatchObject({ code: 'RG041', message: 'the query has 12 dimensions, version v2@8 has 8' });
    await expect(searchAs(app.pool, 'a', q8, { sources: ['notes'] }))
      .rejects.toMatchObject({ code: 'RG041', message: 'the query has 8 dimensions, version v3@12 has 12' });
    // one source, or the version named: fine, and exact (inner product)
    const notesScope = { version: 'v3@12', tenant: 'a', sources: ['notes'], distance: 'inner_product' as const };
    for (const args of [{ sources: ['notes'] }, { version: 'v3@12' }]) {
      const { hits } = await searchAs(app.pool, 'a', q12, { k: 10, ...args });
      expectExactTopK(hits, await bruteForce(db, notesScope, q12, 15), 10, JSON.stringify(args));
    }
  });

  it('search_tenant without sources or a version reads the active version as the catalog has it now: cutover, rollback, a second source', async () => {
    const client = await db.pool.connect();   // the owner, in a transaction rolled back: the other tests keep their versions
    const tenantSearch = async (query: number[]) => (await client.query<{ row_id: string; version_searched: string }>(
      `select row_id, version_searched from regen.search_tenant('a', $1::vector, 1)`, [vectorText(query)])).rows;
    const defaultScope = async () => (await client.query(`select tag, source_ids from regen._default_scope`)).rows;
    try {
      await client.query('begin');
      // docs on v1@8 and notes on v3@12: no default scope, and the search refuses as search_scoped does
      expect(await defaultScope()).toEqual([]);
      await client.query('savepoint refused');
      await expect(tenantSearch(v1('doc 4'))).rejects.toMatchObject({ code: 'RG042' });
      await client.query('rollback to savepoint refused');
      await client.query(`select regen.unregister_source('notes')`);
      const docs = (await client.query(`select id from regen._sources where name = 'docs'`)).rows[0].id;
      expect(await defaultScope()).toEqual([{ tag: 'v1@8', source_ids: [docs] }]);
      expect(await tenantSearch(v1('doc 4'))).toEqual([{ row_id: '4', version_searched: 'v1@8' }]);
      await client.query(`select regen.cutover('docs', 'v2@8', force => true, reason => 'test')`);
      expect(await defaultScope()).toEqual([{ tag: 'v2@8', source_ids: [docs] }]);
      expect(await tenantSearch(v2('doc 8'))).toEqual([{ row_id: '8', version_searched: 'v2@8' }]);
      await client.query(`select regen.rollback('docs')`);
      expect(await tenantSearch(v1('doc 4'))).toEqual([{ row_id: '4', version_searched: 'v1@8' }]);
      // a version's distance changed in place: the scope follows it
      await client.query(`update regen._versions set settings = settings || '{"distance": "l2"}' where tag = 'v1@8'`);
      expect((await client.query(`select distance from regen._default_scope`)).rows).toEqual([{ distance: 'l2' }]);
    } finally {
      await client.query('rollback');
      client.release();
    }
    expect((await db.query(`select count(*)::int as n from regen._default_scope`)).rows[0].n).toBe(0);
  });
});
