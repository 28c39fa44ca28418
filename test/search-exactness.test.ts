// regen.search_scoped(), invariant 3 (exact within scope for every tenant size, a stated recall on
// the approximate path, always min(k, scope) rows), in a store of 202,000 vectors; the answers are
// computed by brute force as the superuser.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mulberry32 } from '../src/prng.ts';
import { freshDatabase, keepOnFailure, type TestDatabase } from './support/db.ts';
import { bruteForce, createRole, expectExactTopK, expectSorted, gaussian, inTransaction, keyOf, LARGE, loadLargeStore, searchAs, SIZED_TENANTS, trueDistances, type Hit, type TestRole } from './support/search.ts';

const SEED = 20260611;

describe('exactness and recall: tenants of 1 to 100,000 rows in a store of 202,000 vectors', () => {
  let db: TestDatabase;
  let app: TestRole;
  let hnsw: string;
  let centers: number[][];
  keepOnFailure(() => db);
  const random = mulberry32(SEED + 2);
  const normal = gaussian(random);
  const pick = <T>(items: readonly T[]): T => items[Math.floor(random() * items.length)]!;
  /**
   * A query drawn like the stored vectors (a random centre plus the same noise), as a query
   * embedding resembles the documents it looks for.
   */
  const randomQuery = () => pick(centers).map((x) => x + 0.4 * normal());
  const scope = (tenant: string, sources: string[] | null = null) =>
    ({ version: LARGE.version, tenant, sources, distance: 'cosine' as const });
  const sizes: Record<string, number> = { ...SIZED_TENANTS, mixed: LARGE.mixedDocs + LARGE.mixedNotes };

  beforeAll(async () => {
    db = await freshDatabase('search_exact');
    ({ hnswIndex: hnsw, centers } = await loadLargeStore(db));
    app = await createRole(db, 'app', { grant: 'app' });
    const { rows } = await db.query<{ tenant: string; n: number }>(
      `select tenant, count(*)::int as n from regen._embeddings where tenant = any($1) group by tenant`, [Object.keys(sizes)]);
    expect(Object.fromEntries(rows.map((r) => [r.tenant, r.n]))).toEqual(sizes);
    expect((await db.query('select count(*)::int as n from regen._embeddings')).rows[0].n).toBe(LARGE.docs + LARGE.notes);
  }, 300_000);

  afterAll(async () => {
    await app?.drop();
  });

  /** Every hit of the tenant, at the true distance of its own vector (superuser lookup). */
  async function expectOwnRowsAtTrueDistance(hits: Hit[], query: number[], tenant: string, what: string) {
    const truth = await trueDistances(db, LARGE.version, 'cosine', query, hits);
    for (const hit of hits) expect(truth.get(keyOf(hit)), `${what}: ${keyOf(hit)}`).toEqual({ distance: hit.distance, tenant });
    expectSorted(hits, what);
  }

  it('is exact for tenants of 1, 10, 100 and 10,000 rows (the exact path, up to search_exact_max_rows)', async () => {
    for (const tenant of ['t1', 't10', 't100', 't10k', 'mixed']) {
      for (const k of [1, 10, 100, 10]) {
        const query = randomQuery();
        const what = `${tenant}, k ${k}`;
        const { hits, scans } = await searchAs(app.pool, tenant, query, { k, countScansOf: hnsw });
        expect(scans, `${what}: HNSW scans`).toBe(0);
        expectExactTopK(hits, await bruteForce(db, scope(tenant), query, k + 5), k, what);
        expect(hits.length, what).toBe(Math.min(k, sizes[tenant]!));
      }
    }
    expect((await searchAs(app.pool, 'nobody', randomQuery())).hits).toEqual([]);
    // one row above the threshold, the 10,000 tenant takes the approximate path
    const { hits, scans } = await searchAs(app.pool, 't10k', randomQuery(), { exactMaxRows: 9_999, countScansOf: hnsw });
    expect(scans).toBe(1);
    expect(hits).toHaveLength(10);
  });

  it('meets recall@10 >= 0.98 for the 100,000 tenant on the approximate path, with k rows every time', async () => {
    const recalls: number[] = [];
    for (let i = 0; i < 20; i++) {
      const query = randomQuery();
      const { hits, scans } = await searchAs(app.pool, 't100k', query, { k: 10, countScansOf: hnsw });
      expect(scans, `query ${i}: HNSW scans`).toBe(1);
      expect(hits, `query ${i}`).toHaveLength(10);
      await expectOwnRowsAtTrueDistance(hits, query, 't100k', `query ${i}`);
      const exact = new Set((await bruteForce(db, scope('t100k'), query, 10)).map(keyOf));
      recalls.push(hits.filter((h) => exact.has(keyOf(h))).length / 10);
    }
    const recall = recalls.reduce((a, b) => a + b, 0) / recalls.length;
    process.stderr.write(`search-exactness.test.ts: recall@10 of the 100,000 tenant on the approximate path: ${recall.toFixed(3)} over ${recalls.length} queries\n`);
    expect(recall, `recall@10 per query: ${recalls.join(' ')}`).toBeGreaterThanOrEqual(0.98);
    for (const k of [100, 1000]) {
      const query = randomQuery();
      const { hits, scans } = await searchAs(app.pool, 't100k', query, { k, countScansOf: hnsw });
      expect(scans).toBe(1);
      expect(hits).toHaveLength(k);
      await expectOwnRowsAtTrueDistance(hits, query, 't100k', `k ${k}`);
    }
  });

  it('returns min(k, scope) rows on the approximate path for every tenant size (search_exact_max_rows = 0)', async () => {
    for (const tenant of Object.keys(sizes)) {
      for (const k of [1, 10, 100]) {
        const query = randomQuery();
        const what = `${tenant}, k ${k}`;
        const { hits, scans } = await searchAs(app.pool, tenant, query, { k, exactMaxRows: 0, countScansOf: hnsw });
        expect(scans, `${what}: HNSW scans`).toBe(1);
        expect(hits.length, what).toBe(Math.min(k, sizes[tenant]!));
        await expectOwnRowsAtTrueDistance(hits, query, tenant, what);
      }
    }
  });

  // Planner settings that make any large scan parallel, with the leader only gathering (a server
  // may well run with parallel_leader_participation = off): rows exist only if workers find them.
  const PARALLEL = { parallel_setup_cost: '0', parallel_tuple_cost: '0', min_parallel_table_scan_size: '0',
    min_parallel_index_scan_size: '0', parallel_leader_participation: 'off' };

  it('counts every row of the tenant through row-level security, also in parallel plans', async () => {
    // With default settings the count of 100,000 rows is planned as a parallel index-only scan, too;
    // the policy's transaction marker (pg_backend_pid) must not be evaluated in a worker.
    for (const settings of [{}, PARALLEL]) {
      await inTransaction(app, async (q) => {
        for (const [name, value] of Object.entries(settings)) await q('select set_config($1, $2, true)', [name, value]);
        await q(`select regen.set_tenant('t100k')`);
        expect(await q('select count(*)::int as n from regen._embeddings'), JSON.stringify(settings))
          .toEqual([{ n: SIZED_TENANTS.t100k }]);
      });
    }
  });

  it('returns the exact min(k, scope) rows also when the planner runs the search in parallel workers', async () => {
    const query = randomQuery();
    // the exact path over the whole 100,000 tenant (threshold raised)
    const { hits } = await searchAs(app.pool, 't100k', query, { k: 1000, exactMaxRows: 200_000, settings: PARALLEL });
    expectExactTopK(hits, await bruteForce(db, scope('t100k'), query, 1005), 1000, 'exact path over 100,000 rows');
    // the default path of each size, and the approximate path's exact fallback
    for (const tenant of Object.keys(sizes)) {
      for (const exactMaxRows of [undefined, 0]) {
        const what = `${tenant}, exact max ${exactMaxRows}`;
        const { hits } = await searchAs(app.pool, tenant, query, { k: 100, exactMaxRows, settings: PARALLEL });
        expect(hits.length, what).toBe(Math.min(100, sizes[tenant]!));
      }
    }
  });

  it('filters by max_distance on both paths', async () => {
    // exact path: the rows at most that far, nearest first, up to k
    const query = randomQuery();
    const ranked = await bruteForce(db, scope('t10k'), query, 60);
    const cut = ranked[25]!.distance;
    const { hits } = await searchAs(app.pool, 't10k', query, { k: 50, maxDistance: cut });
    expectExactTopK(hits, await bruteForce(db, { ...scope('t10k'), maxDistance: cut }, query, 55), 50, 'exact path');
    expect(hits.length).toBe(ranked.filter((r) => r.distance <= cut).length);
    expect((await searchAs(app.pool, 't10k', query, { k: 50, maxDistance: -1 })).hits).toEqual([]);
    // approximate path: the same k nearest, less those too far
    const all = (await searchAs(app.pool, 't100k', query, { k: 10 })).hits;
    const near = all[4]!.distance;
    const { hits: filtered, scans } = await searchAs(app.pool, 't100k', query, { k: 10, maxDistance: near, countScansOf: hnsw });
    expect(scans).toBe(1);
    expect(filtered).toEqual(all.filter((h) => h.distance <= near));
    expect(filtered.length).toBeGreaterThanOrEqual(5);
    expect((await searchAs(app.pool, 't100k', query, { k: 10, maxDistance: -1 })).hits).toEqual([]);
  });

  it('searches only the sources asked for', async () => {
    for (const sources of [['notes'], ['docs'], ['docs', 'notes'], null]) {
      const query = randomQuery();
      const what = `sources ${JSON.stringify(sources)}`;
      const { hits } = await searchAs(app.pool, 'mixed', query, { k: 20, sources });
      expectExactTopK(hits, await bruteForce(db, scope('mixed', sources), query, 25), 20, what);
      if (sources) expect(hits.every((h) => sources.includes(h.source)), what).toBe(true);
    }
    for (const [tenant, sources, rows] of [['mixed', ['notes'], 20], ['t100', ['notes'], 0], ['t100', ['docs'], 20]] as const) {
      const query = randomQuery();
      const { hits, scans } = await searchAs(app.pool, tenant, query, { k: 20, sources: [...sources], exactMaxRows: 0, countScansOf: hnsw });
      expect(scans).toBe(rows === 0 ? 0 : 1);   // no vector of the scope: nothing to scan
      expect(hits).toHaveLength(rows);
      expect(hits.every((h) => h.source === sources[0])).toBe(true);
      await expectOwnRowsAtTrueDistance(hits, query, tenant, `${tenant} ${sources}`);
    }
  });
});
