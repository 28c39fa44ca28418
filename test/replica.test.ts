// Reads on a replica: search() through a pool of a real streaming hot standby, started from
// pg_basebackup of a primary that runs pgregen, as an application role. The standby answers as the
// primary does, refuses writes, and sees an edit once it has replayed it (its lag is the search's
// freshness).
import OpenAI from 'openai';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { install } from '../src/install.ts';
import { startLocalPostgres, startLocalStandby, type LocalPostgres } from '../src/local-postgres.ts';
import { startEmbeddingServer, type EmbeddingServer } from '../src/provider-server.ts';
import { search } from '../src/search.ts';
import { embedWith } from './support/search.ts';

const DIMS = 16;
const TEXTS = ['Resetting a password', 'Exporting invoices as PDF', 'Inviting colleagues', 'Changing the billing address'];

describe('search on a streaming hot standby', () => {
  let primary: LocalPostgres;
  let standby: LocalPostgres;
  let server: EmbeddingServer;
  let openai: OpenAI;
  let owner: pg.Pool;
  let appPrimary: pg.Pool;
  let appStandby: pg.Pool;

  const asApp = (url: string) => {
    const u = new URL(url);
    u.username = 'replica_app';
    const pool = new pg.Pool({ connectionString: u.toString(), max: 2 });
    pool.on('error', () => {});   // an idle connection cut by the servers' shutdown at the end
    return pool;
  };
  /** The vector the local server gives a text (what the worker would store). */
  const vectorOf = async (text: string) =>
    (await openai.embeddings.create({ model: 'local-hash', input: text, dimensions: DIMS })).data[0]!.embedding as number[];
  const embedRows = async (ids: string[]) => {
    const vectors = new Map<string, number[]>();
    const { rows } = await owner.query<{ id: string; body: string }>('select id::text, body from articles where id::text = any($1)', [ids]);
    for (const r of rows) vectors.set(r.body, await vectorOf(r.body));
    expect(await embedWith(owner, 'articles', 'replica@1', ids, (input) => vectors.get(input)!)).toBe(ids.length);
  };

  beforeAll(async () => {
    primary = await startLocalPostgres();
    server = await startEmbeddingServer({ dimensions: DIMS });
    openai = new OpenAI({ apiKey: 'test', baseURL: server.url });
    owner = new pg.Pool({ connectionString: primary.url, max: 2 });
    owner.on('error', () => {});
    await owner.query('create extension vector');
    await install({ connectionString: primary.url });
    await owner.query(`create table articles (id int primary key, tenant text not null, body text not null)`);
    await owner.query(`insert into articles select i, case when i < 20 then 'acme' else 'globex' end, ($1::text[])[i % 4 + 1] || ' ' || i
                       from generate_series(0, 39) i`, [TEXTS]);
    await owner.query(`select regen.create_version('replica@1', 'local-hash', ${DIMS}, settings => '{"send_dimensions": true, "distance": "cosine"}')`);
    await owner.query(`select regen.register_source('articles', 'articles', 'id', 'body', tenant_column => 'tenant', version => 'replica@1')`);
    await embedRows(Array.from({ length: 40 }, (_, i) => String(i)));
    await owner.query('create role replica_app login');
    await owner.query(`select regen.grant_app('replica_app')`);
    standby = await startLocalStandby(primary.url);
    appPrimary = asApp(primary.url);
    appStandby = asApp(standby.url);
  }, 120_000);

  afterAll(async () => {
    await appStandby?.end();
    await appPrimary?.end();
    await owner?.end();
    await standby?.stop();
    await primary?.stop();
    await server?.close();
  });

  /** Waits until the standby has replayed everything the primary has written so far. */
  async function caughtUp(): Promise<void> {
    const lsn = (await owner.query<{ lsn: string }>('select pg_current_wal_insert_lsn()::text as lsn')).rows[0]!.lsn;
    const standbyOwner = new pg.Client({ connectionString: standby.url });
    await standbyOwner.connect();
    try {
      for (const deadline = Date.now() + 30_000; Date.now() < deadline;) {
        const behind = (await standbyOwner.query<{ behind: boolean }>(
          'select pg_last_wal_replay_lsn() < $1::pg_lsn as behind', [lsn])).rows[0]!.behind;
        if (!behind) return;
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      throw new Error(`the standby did not replay ${lsn} within 30 s`);
    } finally {
      await standbyOwner.end();
    }
  }

  it('answers as the primary does, for each tenant, by text and by vector, chunks and rows', async () => {
    await caughtUp();
    expect((await appStandby.query('select pg_is_in_recovery() as r')).rows[0].r).toBe(true);
    for (const tenant of ['acme', 'globex', 'nobody']) {
      for (const rows of [false, true]) {
        const onStandby = await search({ pool: appStandby, openai }, TEXTS[1]!, { tenant, k: 5, rows });
        const onPrimary = await search({ pool: appPrimary, openai }, TEXTS[1]!, { tenant, k: 5, rows });
        expect(onStandby).toEqual(onPrimary);
        expect(onStandby).toHaveLength(tenant === 'nobody' ? 0 : 5);
        const { rows: owners } = await owner.query('select distinct tenant from articles where id = any($1::int[])',
          [onStandby.map((h) => Number(h.rowId))]);
        expect(owners.map((r) => r.tenant)).toEqual(tenant === 'nobody' ? [] : [tenant]);
      }
    }
    // row 5 is acme's: globex gets a row of its own
    const byVector = await search({ pool: appStandby }, await vectorOf('Exporting invoices as PDF 5'), { tenant: 'globex', k: 1 });
    expect(byVector).toHaveLength(1);
    expect(Number(byVector[0]!.rowId)).toBeGreaterThanOrEqual(20);
    expect(byVector[0]!.distance).toBeGreaterThan(0.01);
    const own = await search({ pool: appStandby }, await vectorOf('Exporting invoices as PDF 5'), { tenant: 'acme', k: 1 });
    expect(own).toMatchObject([{ rowId: '5', distance: expect.closeTo(0, 6) }]);
  });

  it('refuses writes, and sees an edit once it has replayed it', async () => {
    const standbyOwner = new pg.Pool({ connectionString: standby.url, max: 1 });
    try {
      // read_only_sql_transaction: the application's writes and pgregen's both belong on the primary
      await expect(standbyOwner.query(`insert into articles values (100, 'acme', 'x')`)).rejects.toMatchObject({ code: '25006' });
      await expect(standbyOwner.query(`select regen.set_batch_mode('replica@1', true)`)).rejects.toMatchObject({ code: '25006' });
    } finally {
      await standbyOwner.end();
    }

    await owner.query(`insert into articles values (100, 'acme', 'A brand new article about webhooks')`);
    await owner.query('select regen.apply_changes()');
    await embedRows(['100']);
    await caughtUp();
    const hits = await search({ pool: appStandby, openai }, 'A brand new article about webhooks', { tenant: 'acme', k: 1 });
    expect(hits).toMatchObject([{ rowId: '100', distance: expect.closeTo(0, 6) }]);
  });
});
