// The TypeScript search() helper, end to end: the worker embeds the documents through the local
// OpenAI-compatible server, and search() embeds the query through the same server with the
// version's model, sets the tenant for one statement only, and gets the tenant's nearest chunks or
// rows, in two round trips to the database for a text and one for a query already embedded.
import { randomBytes } from 'node:crypto';
import OpenAI from 'openai';
import pg from 'pg';
import pgvector from 'pgvector';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { search } from '../src/search.ts';
import { vectorBinary } from '../src/vector-binary.ts';
import { startEmbeddingServer, type EmbeddingServer } from '../src/provider-server.ts';
import type { RunningWorker } from '../src/worker/run.ts';
import { freshDatabase, keepOnFailure, type TestDatabase } from './support/db.ts';
import { inProcessWorker, waitForClosedGap, workerEnv } from './support/worker.ts';

const TEXTS = [
  'How do I reset my password?',
  'Exporting invoices as PDF',
  'Two-factor authentication with an authenticator app',
  'Changing the billing address of an account',
  'Inviting colleagues to a workspace',
];

describe('search()', () => {
  let db: TestDatabase;
  let server: EmbeddingServer;
  let worker: RunningWorker;
  let app: pg.Pool;
  let openai: OpenAI;
  const role = `pgregen_app_${randomBytes(4).toString('hex')}`;
  keepOnFailure(() => db);

  beforeAll(async () => {
    db = await freshDatabase('search_client');
    server = await startEmbeddingServer({ dimensions: 32 });
    // Two tenants hold the same texts under different ids: a leak would show as the other's ids.
    await db.query(`create table articles (id int primary key, tenant text not null, body text not null)`);
    await db.query(`insert into articles
                    select i, case when i < 10 then 'acme' else 'globex' end, ($1::text[])[i % ${TEXTS.length} + 1]
                    from generate_series(0, 19) i`, [TEXTS]);
    await db.query(`select regen.create_version('search@1', 'local-hash', 32,
                      settings => '{"send_dimensions": true, "distance": "cosine", "lowercase": true}')`);
    await db.query(`select regen.register_source('articles', 'articles', 'id', 'body', tenant_column => 'tenant', version => 'search@1')`);
    await db.query('select regen.rebuild()');
    worker = await inProcessWorker(workerEnv(db.url, server));
    await waitForClosedGap(db, 'articles');

    await db.query(`create role ${role} login`);
    await db.query('select regen.grant_app($1)', [role]);
    const url = new URL(db.url);
    url.username = role;
    app = new pg.Pool({ connectionString: url.toString(), max: 1 });
    openai = new OpenAI({ apiKey: 'test', baseURL: server.url });
  }, 60_000);

  afterAll(async () => {
    await app?.end();
    await worker?.stop();
    await server?.close();
    await db?.query(`drop owned by ${role}`).catch(() => {});
    await db?.query(`drop role if exists ${role}`).catch(() => {});
  });

  it("embeds the query with the version's model and returns the tenant's nearest chunks, nearest first", async () => {
    // The version lowercases, so the query is lowercased in SQL before it is embedded, like the documents.
    const hits = await search({ pool: app, openai }, 'EXPORTING INVOICES AS PDF', { tenant: 'acme', k: 3 });
    expect(hits).toHaveLength(3);
    expect(hits[0]).toMatchObject({ source: 'articles', chunkNo: 1, version: 'search@1' });
    expect(hits[0]!.distance).toBeCloseTo(0, 5);
    const { rows } = await db.query<{ id: number; tenant: string; body: string }>(
      'select id, tenant, body from articles where id = any($1::int[]) order by id', [hits.map((h) => Number(h.rowId))]);
    expect(rows.every((r) => r.tenant === 'acme')).toBe(true);
    expect(rows.find((r) => String(r.id) === hits[0]!.rowId)!.body).toBe(TEXTS[1]);
    expect(hits.map((h) => h.distance)).toEqual([...hits.map((h) => h.distance)].sort((a, b) => a - b));
  });

  it('never returns another tenant\'s rows, and leaves no tenant on the pooled connection', async () => {
    for (const tenant of ['acme', 'globex', 'initech']) {
      const hits = await search({ pool: app, openai }, TEXTS[0]!, { tenant, k: 20 });
      const { rows } = await db.query<{ tenant: string }>('select tenant from articles where id = any($1::int[])',
        [hits.map((h) => Number(h.rowId))]);
      expect(rows.map((r) => r.tenant)).toEqual(rows.map(() => tenant));
      expect(hits).toHaveLength(tenant === 'initech' ? 0 : 10);
    }
    // The one connection of the pool, after the searches: no tenant, and search_scoped refuses.
    const { rows } = await app.query(`select current_setting('regen.tenant_id', true) as tenant`);
    expect(rows[0].tenant ?? '').toBe('');
    await expect(app.query(`select * from regen.search_scoped(array_fill(0.1, array[32])::vector)`))
      .rejects.toMatchObject({ code: 'RG040' });
  });

  it('takes k, sources and maxDistance to SQL, and says what is wrong with bad arguments', async () => {
    expect(await search({ pool: app, openai }, TEXTS[2]!, { tenant: 'acme', k: 1, maxDistance: 1e-6 })).toHaveLength(1);
    expect(await search({ pool: app, openai }, 'nothing like any article', { tenant: 'acme', maxDistance: 1e-6 })).toEqual([]);
    await expect(search({ pool: app, openai }, TEXTS[0]!, { tenant: 'acme', sources: ['nope'] }))
      .rejects.toMatchObject({ code: 'RG010' });
    await expect(search({ pool: app, openai }, TEXTS[0]!, { tenant: 'acme', k: 0 })).rejects.toMatchObject({ code: 'RG041' });
    await expect(search({ pool: app, openai }, TEXTS[0]!, { tenant: '' })).rejects.toThrow(/no tenant given/);
    await expect(search({ pool: app, openai }, ' ', { tenant: 'acme' })).rejects.toThrow(/query text is empty/);
  });

  /** The pool, counting what reaches the database through it (queries, and connections checked out). */
  function counting(pool: pg.Pool) {
    const counts = { queries: 0, connects: 0 };
    const proxy = new Proxy(pool, {
      get(target, name, receiver) {
        if (name === 'query') return (...args: unknown[]) => { counts.queries++; return (target.query as (...a: unknown[]) => unknown)(...args); };
        if (name === 'connect') return (...args: unknown[]) => { counts.connects++; return (target.connect as (...a: unknown[]) => unknown)(...args); };
        return Reflect.get(target, name, receiver);
      },
    });
    return { pool: proxy, counts };
  }

  it('takes two round trips for a text and one for a query already embedded, with the same answer', async () => {
    const text = counting(app);
    const byText = await search({ pool: text.pool, openai }, TEXTS[3]!, { tenant: 'globex', k: 4 });
    expect(text.counts).toEqual({ queries: 2, connects: 0 });
    const [embedded] = (await openai.embeddings.create({ model: 'local-hash', input: TEXTS[3]!.toLowerCase(), dimensions: 32 })).data;
    const vector = counting(app);
    const byVector = await search({ pool: vector.pool }, embedded!.embedding as number[], { tenant: 'globex', k: 4 });
    expect(vector.counts).toEqual({ queries: 1, connects: 0 });
    expect(byVector).toEqual(byText);
    expect(byText[0]).toMatchObject({ distance: expect.closeTo(0, 5), version: 'search@1' });
    // the vector goes in binary (pgvector's wire format): the same hits as the text form gives in SQL
    const { rows: inText } = await app.query<{ row_id: string; distance: number }>(
      `select row_id, distance from regen.search_tenant('globex', $1, 4)`, [pgvector.toSql(embedded!.embedding)]);
    expect(byVector.map((h) => h.rowId)).toEqual(inText.map((r) => r.row_id));
    byVector.forEach((h, i) => expect(h.distance).toBeCloseTo(inText[i]!.distance, 12));
    await expect(search({ pool: app }, [1, Number.NaN], { tenant: 'acme' })).rejects.toMatchObject({ code: 'RG041' });
    await expect(search({ pool: app }, [1, 2, 3], { tenant: 'acme' })).rejects.toMatchObject({ code: 'RG041' });   // 3 dimensions, not 32
    // vectorBinary is pgvector's wire format: the server reads the same vector as from its text
    const sample = [0.1, -2.5, 3e-7, 1e38, 0];
    expect((await db.query(`select $1::vector = $2::vector as same, vector_dims($1::vector) as dims`,
      [vectorBinary(sample), pgvector.toSql(sample)])).rows).toEqual([{ same: true, dims: 5 }]);
    // what float4 cannot hold, and more dimensions than pgvector allows: refused before any statement
    const refused = counting(app);
    await expect(search({ pool: refused.pool }, [1, 1e39], { tenant: 'acme' }))
      .rejects.toMatchObject({ code: 'RG041', message: expect.stringMatching(/element 1 of the vector \(1e\+39\) is not a finite float4/) });
    await expect(search({ pool: refused.pool }, new Array<number>(16_001).fill(0.5), { tenant: 'acme' }))
      .rejects.toMatchObject({ code: 'RG041', message: expect.stringMatching(/at most 16000 dimensions, not 16001/) });
    expect(refused.counts).toEqual({ queries: 0, connects: 0 });
    await expect(search({ pool: app }, TEXTS[0]!, { tenant: 'acme' })).rejects.toThrow(/no OpenAI client/);
  });

  it('with rows, returns each row once at its best chunk (regen.search_rows)', async () => {
    // a source of two-chunk rows: both chunks of a row are near the query, so chunks would repeat rows
    await db.query(`create table guides (id int primary key, tenant text not null, body text not null)`);
    await db.query(`insert into guides select i, 'acme', repeat($1::text || ' ', 40) from generate_series(1, 6) i`, [TEXTS[4]]);
    await db.query(`select regen.create_version('guides@1', 'local-hash', 32,
                      settings => '{"send_dimensions": true, "distance": "cosine", "chunk_chars": 100, "chunk_overlap": 0}')`);
    await db.query(`select regen.register_source('guides', 'guides', 'id', 'body', tenant_column => 'tenant', version => 'guides@1')`);
    await db.query('select regen.rebuild()');
    await waitForClosedGap(db, 'guides');
    const chunks = await search({ pool: app, openai }, TEXTS[4]!, { tenant: 'acme', k: 12, sources: ['guides'] });
    expect(new Set(chunks.map((h) => h.rowId)).size).toBeLessThan(chunks.length);
    const rows = await search({ pool: app, openai }, TEXTS[4]!, { tenant: 'acme', k: 12, sources: ['guides'], rows: true });
    expect(rows.map((h) => h.rowId).sort()).toEqual(['1', '2', '3', '4', '5', '6']);
    const best = new Map<string, number>();
    for (const c of await search({ pool: app, openai }, TEXTS[4]!, { tenant: 'acme', k: 1000, sources: ['guides'] })) {
      if (!best.has(c.rowId)) best.set(c.rowId, c.distance);
    }
    for (const r of rows) expect(r.distance, r.rowId).toBe(best.get(r.rowId));
    await expect(search({ pool: app, openai }, TEXTS[0]!, { tenant: 'acme', rows: 'yes' as unknown as boolean })).rejects.toMatchObject({ code: 'RG041' });
  });
});
