// Tenant indexes: regen.tenant_index_plan picks the tenants that earn an HNSW index of their own,
// tenantIndexes() builds them concurrently, and search_scoped ranks such a tenant through its own
// index, returning what an exact scan returns, to an application role under row-level security.
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tenantIndexes } from '../src/tenant-indexes.ts';
import { freshDatabase, keepOnFailure } from './support/db.ts';
import { allRowIds, applyChanges, embedRows, vectorOf } from './support/fixtures.ts';
import { createRole, type TestRole } from './support/search.ts';

const DIMS = 8;
const TAG = 'tenants@1';
const SIZES: Record<string, number> = { big: 1_500, mid: 600, small: 20 };
const BIN = fileURLToPath(new URL('../bin/pgregen.js', import.meta.url));

const db = await freshDatabase('tenant_indexes');
keepOnFailure(db);
let app: TestRole;
let versionId: number;

const indexName = (tenant: string) => db.query<{ name: string }>(
  'select regen._tenant_index_name($1, $2)::text as name', [versionId, tenant]).then((r) => r.rows[0]!.name);

/** search_scoped as the application role, with the scans of the tenant's own index counted in its transaction. */
async function search(tenant: string, query: number[]): Promise<{ ids: string[]; ownIndexScans: number }> {
  const client = await app.pool.connect();
  try {
    const own = await indexName(tenant);
    const probe = `select coalesce(sum(pg_stat_get_xact_numscans(c.oid)), 0)::int as n from pg_class c
                    where c.relnamespace = 'regen'::regnamespace and c.relname = '${own}'`;
    await client.query('begin');
    await client.query('select regen.set_tenant($1)', [tenant]);
    const before = (await client.query<{ n: number }>(probe)).rows[0]!.n;
    const { rows } = await client.query<{ row_id: string }>('select row_id from regen.search_scoped($1::vector, 10)', [`[${query.join(',')}]`]);
    const after = (await client.query<{ n: number }>(probe)).rows[0]!.n;
    await client.query('commit');
    return { ids: rows.map((r) => r.row_id), ownIndexScans: after - before };
  } finally {
    client.release();
  }
}

async function exactTop10(tenant: string, query: number[]): Promise<string[]> {
  const { rows } = await db.query<{ row_id: string }>(
    `select row_id from regen._embeddings where version_id = $1 and tenant = $2 order by embedding <=> $3::vector, row_id limit 10`,
    [versionId, tenant, `[${query.join(',')}]`]);
  return rows.map((r) => r.row_id);
}

describe('tenant indexes', () => {
  beforeAll(async () => {
    await db.query('create table docs (id int primary key, tenant text not null, body text not null)');
    let id = 0;
    for (const [tenant, n] of Object.entries(SIZES)) {
      await db.query(`insert into docs select $1::int + g, $2, $2 || ' document ' || g from generate_series(1, $3::int) g`, [id, tenant, n]);
      id += n;
    }
    await db.query(`select regen.create_version($1, 'test-model', $2::int, settings => '{"distance": "cosine"}')`, [TAG, DIMS]);
    await db.query(`select regen.register_source('docs', 'docs', 'id', 'body', 'tenant', version => $1)`, [TAG]);
    await embedRows(db, await allRowIds(db, 'docs'), 'docs', TAG, DIMS);
    versionId = (await db.query<{ id: number }>('select id from regen._versions where tag = $1', [TAG])).rows[0]!.id;
    app = await createRole(db, 'app', { grant: 'app' });
  }, 60_000);

  afterAll(async () => {
    await app?.drop();
  });

  it('plans an index for each tenant of at least min_rows vectors, and builds it concurrently', async () => {
    const plan = await tenantIndexes(db.pool, { minRows: 1_000, dryRun: true });
    expect(plan).toEqual([{
      action: 'create', version: TAG, tenant: 'big', vectors: 1_500, indexName: await indexName('big'),
      statement: expect.stringMatching(/^create index concurrently if not exists _embeddings_hnsw_v\d+_t[0-9a-f]{16} on regen\._embeddings using hnsw \(\(embedding::vector\(8\)\) vector_cosine_ops\) with \(ef_construction = 128\) where version_id = \d+ and tenant = 'big'$/),
    }]);
    const done = await tenantIndexes(db.pool, { minRows: 1_000 });
    expect(done).toHaveLength(1);
    expect(done[0]!.ms).toBeGreaterThanOrEqual(0);
    const { rows: [index] } = await db.query<{ valid: boolean }>(
      `select i.indisvalid as valid from pg_index i join pg_class c on c.oid = i.indexrelid
        where c.relnamespace = 'regen'::regnamespace and c.relname = $1`, [await indexName('big')]);
    expect(index).toEqual({ valid: true });
    expect(await tenantIndexes(db.pool, { minRows: 1_000, dryRun: true })).toEqual([]);   // nothing left to do
  });

  it('ranks a tenant with its own index through it, finding the exact top 10; others exactly as before', async () => {
    let found = 0;
    for (let i = 0; i < 20; i++) {
      const query = vectorOf(`query ${i}`, DIMS);
      const big = await search('big', query);
      expect(big.ownIndexScans).toBe(1);
      const truth = await exactTop10('big', query);
      found += big.ids.filter((id) => truth.includes(id)).length;
      expect(big.ids).toHaveLength(10);
      const mid = await search('mid', query);   // 600 vectors, no index of its own: the exact path
      expect(mid.ownIndexScans).toBe(0);
      expect(mid.ids).toEqual(await exactTop10('mid', query));
    }
    expect(found / 200).toBeGreaterThanOrEqual(0.98);
    const { rows } = await db.query<{ n: string }>(`select count(*) as n from docs where tenant <> 'big' and id = any($1::int[])`,
      [(await search('big', vectorOf('any', DIMS))).ids]);
    expect(rows[0]!.n).toBe('0');
  });

  it('drops the index of a tenant that shrank below half of min_rows', async () => {
    await db.query(`delete from docs where tenant = 'big' and id > 499`);
    await applyChanges(db);   // the worker's side: the deleted rows' vectors go
    const steps = await tenantIndexes(db.pool, { minRows: 1_000 });
    expect(steps.map((s) => [s.action, s.tenant, s.vectors])).toEqual([['drop', 'big', 499]]);
    const { rows: [gone] } = await db.query<{ index: string | null }>(`select to_regclass('regen.' || $1) as index`, [await indexName('big')]);
    expect(gone!.index).toBeNull();
  });

  it('refuses a min_rows below 1 and an unknown version', async () => {
    await expect(tenantIndexes(db.pool, { minRows: 0 })).rejects.toMatchObject({
      code: 'RG041', message: 'min_rows must be a positive number of vectors, not 0' });
    await expect(tenantIndexes(db.pool, { version: 'nope@1' })).rejects.toMatchObject({ code: 'RG001' });
  });

  it('pgregen tenant-indexes --dry-run --json prints the plan and runs nothing', async () => {
    await db.query(`insert into docs select 10000 + g, 'mid', 'more of mid ' || g from generate_series(1, 500) g`);
    await embedRows(db, (await allRowIds(db, 'docs')).filter((id) => Number(id) > 10_000), 'docs', TAG, DIMS);
    const { stdout } = await promisify(execFile)(process.execPath, [BIN, 'tenant-indexes', '--min-rows', '1000', '--dry-run', '--json'],
      { env: { PATH: process.env.PATH ?? '', DATABASE_URL: db.url } });
    expect(JSON.parse(stdout)).toEqual([expect.objectContaining({ action: 'create', tenant: 'mid', vectors: 1_100 })]);
    const { rows: [index] } = await db.query<{ index: string | null }>(`select to_regclass('regen.' || $1) as index`, [await indexName('mid')]);
    expect(index!.index).toBeNull();
  });
});
