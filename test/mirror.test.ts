// The mirror column (regen.set_mirror, regen.sync_mirrors): the application's own vector column
// follows write-back, an edit, a cutover and a rollback, written by the worker, never by the
// application's write path; an application that holds a row locked is never waited on.
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cutover, rollback } from '../src/migrate.ts';
import { startEmbeddingServer, type EmbeddingServer } from '../src/provider-server.ts';
import type { RunningWorker } from '../src/worker/run.ts';
import { freshDatabase, keepOnFailure, type TestDatabase } from './support/db.ts';
import { inProcessWorker, waitFor, waitForClosedGap, workerEnv } from './support/worker.ts';

describe('the mirror column', () => {
  let db: TestDatabase;
  let server: EmbeddingServer;
  let worker: RunningWorker;
  keepOnFailure(() => db);

  /** Rows whose mirror differs from the active version's stored vector (the vector of chunk 1). */
  async function mismatches(): Promise<number> {
    const { rows: [row] } = await db.query<{ n: number }>(`
      select count(*)::int as n from kb
      left join lateral (select e.embedding from regen._embeddings e
                         join regen._source_versions sv on sv.version_id = e.version_id and sv.source_id = e.source_id and sv.role = 'active'
                         join regen._sources s on s.id = e.source_id
                         where s.name = 'kb' and e.row_id = kb.id::text and e.chunk_no = 1) e on true
      where kb.embedding is distinct from e.embedding`);
    return row!.n;
  }
  const pending = async () => Number((await db.query(`select pending from regen.mirrors where source = 'kb'`)).rows[0]?.pending ?? 0);
  const mirrored = async () => {
    await step('the mirror to catch up', waitFor('the mirror to catch up', async () => (await pending()) === 0 && (await mismatches()) === 0));
  };
  /** What this database's sessions are doing: a timed-out step says so. */
  async function activity(): Promise<string> {
    const { rows } = await db.query<{ s: string }>(`
      select format('%s %s %s/%s: %s', pid, state, coalesce(wait_event_type, 'CPU'), coalesce(wait_event, '-'), left(regexp_replace(query, '[[:space:]]+', ' ', 'g'), 160)) as s
      from pg_stat_activity where datname = current_database() and pid <> pg_backend_pid() order by pid`);
    return rows.map((r) => r.s).join('\n');
  }
  /** A step of a test that fails with the sessions' state, not the test's timeout, should it hang. */
  async function step<T>(what: string, work: Promise<T>, timeoutMs = 30_000): Promise<T> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        void activity().then((a) => reject(new Error(`${what}: not done after ${timeoutMs} ms; the database's sessions:\n${a}`)), reject);
      }, timeoutMs);
    });
    try {
      return await Promise.race([work, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  beforeAll(async () => {
    db = await freshDatabase('mirror');
    server = await startEmbeddingServer({ dimensions: 16 });
    await db.query(`create table kb (id int primary key, tenant text not null, title text not null, body text not null, embedding vector)`);
    await db.query(`insert into kb select g, 'acme', 'Title ' || g, 'The body of article ' || g, null from generate_series(1, 120) g`);
    await db.query(`select regen.create_version('mirror@1', 'local-hash', 16, settings => '{"send_dimensions": true}')`);
    await db.query(`select regen.register_source('kb', 'kb', 'id', $$title || ' ' || body$$, tenant_column => 'tenant', version => 'mirror@1')`);
    worker = await inProcessWorker(workerEnv(db.url, server, { REGEN_ENQUEUE_INTERVAL_MS: '100' }));
  }, 60_000);

  afterAll(async () => {
    await worker?.stop();
    await server?.close();
  });

  it('refuses a column that cannot mirror, and changes nothing', async () => {
    await db.query(`alter table kb add column label text, add column small vector(8)`);
    await expect(db.query(`select regen.set_mirror('kb', 'nope')`)).rejects.toMatchObject({ code: 'RG084', message: 'table kb has no column nope' });
    await expect(db.query(`select regen.set_mirror('kb', 'label')`)).rejects.toMatchObject({ code: 'RG084', message: expect.stringMatching(/not pgvector's vector/) });
    await expect(db.query(`select regen.set_mirror('kb', 'body')`)).rejects.toMatchObject({ code: 'RG084', message: expect.stringMatching(/source kb reads column body/) });
    await expect(db.query(`select regen.set_mirror('kb', 'small')`)).rejects.toMatchObject({ code: 'RG084', message: expect.stringMatching(/is vector\(8\), the active version of source kb has 16/) });
    await expect(db.query(`select regen.set_mirror('nope', 'embedding')`)).rejects.toMatchObject({ code: 'RG010' });
    expect((await db.query('select count(*)::int as n from regen.mirrors')).rows[0].n).toBe(0);
    await db.query(`alter table kb drop column label, drop column small`);
  });

  it('follows write-back and edits, without a logged change of its own', async () => {
    // in one transaction: the running worker's sync_mirrors cannot take (and, with no vector yet,
    // settle) the due rows before they are counted
    const client = await db.pool.connect();
    try {
      await client.query('begin');
      expect((await client.query(`select regen.set_mirror('kb', 'embedding') as c`)).rows[0].c).toBe('embedding');
      expect(Number((await client.query(`select pending from regen.mirrors where source = 'kb'`)).rows[0].pending)).toBe(120);
      await client.query('commit');
    } finally {
      client.release();
    }
    await db.query('select regen.rebuild()');
    await waitForClosedGap(db, 'kb');
    await mirrored();
    expect((await db.query('select count(*)::int as n from kb where embedding is null')).rows[0].n).toBe(0);
    // the mirror's own updates fire no capture: nothing logged, nothing queued, the gap closed
    expect((await db.query('select count(*)::int as n from regen._changes')).rows[0].n).toBe(0);
    expect((await db.query(`select current, missing, stale from regen.embedding_gap where source = 'kb'`)).rows[0])
      .toEqual({ current: '120', missing: '0', stale: '0' });

    const { rows: [before] } = await db.query<{ e: string }>('select embedding::text as e from kb where id = 7');
    await db.query(`update kb set body = 'An edited body of article 7' where id = 7`);
    await waitFor('row 7 to be re-embedded and mirrored', async () =>
      (await db.query<{ e: string }>('select embedding::text as e from kb where id = 7')).rows[0]!.e !== before!.e && (await mismatches()) === 0);
  });

  it('follows a cutover and a rollback (zero provider calls), to vectors of another size', async () => {
    await db.query(`select regen.create_version('mirror@2', 'local-hash', 24, settings => '{"send_dimensions": true}')`);
    await db.query(`select regen.start_migration('kb', 'mirror@2')`);
    await step('mirror@2 to be built', waitFor('mirror@2 to be built', async () => Number((await db.query(
      `select current from regen.embedding_gap where source = 'kb' and version = 'mirror@2'`)).rows[0]?.current) === 120));
    // a building version's vectors are not mirrored
    expect((await db.query('select count(*)::int as n from kb where vector_dims(embedding) = 16')).rows[0].n).toBe(120);
    await step('the cutover', cutover(db.pool, 'kb', 'mirror@2'));   // builds its HNSW index, then flips
    // while the worker rewrites all 120 mirrors, the application's updates of those rows never wait
    // on it for long: each one under a lock_timeout of 500 ms, none refused
    const app = new pg.Client({ connectionString: db.url });
    await app.connect();
    try {
      await app.query(`set lock_timeout = '500ms'`);
      let updates = 0;
      const deadline = Date.now() + 30_000;
      while ((await pending()) > 0 || updates < 40) {
        await app.query(`update kb set title = title || '' where id = $1`, [1 + (updates * 37) % 120]);
        updates++;
        if (Date.now() > deadline) {
          throw new Error(`${await pending()} mirrors still due after 30 s of updates; the database's sessions:\n${await activity()}`);
        }
      }
      expect(updates).toBeGreaterThanOrEqual(40);
    } finally {
      await app.end();
    }
    await mirrored();
    expect((await db.query('select count(*)::int as n from kb where vector_dims(embedding) = 24')).rows[0].n).toBe(120);
    server.resetStats();
    await step('the rollback', rollback(db.pool, 'kb'));
    await mirrored();
    expect((await db.query('select count(*)::int as n from kb where vector_dims(embedding) = 16')).rows[0].n).toBe(120);
    expect(server.stats.inputs).toBe(0);
  }, 120_000);

  it('never waits on the application: a row it holds locked stays due until it lets go', async () => {
    await worker.stop();
    const app = new pg.Client({ connectionString: db.url });
    await app.connect();
    try {
      await db.query(`update regen._embeddings e set embedding = embedding from regen._sources s
                       where s.id = e.source_id and s.name = 'kb' and e.row_id in ('3', '4') and e.chunk_no = 1
                         and e.version_id = (select id from regen._versions where tag = 'mirror@1')`);
      expect(await pending()).toBe(2);
      await db.query(`update kb set embedding = null where id in (3, 4)`);
      await app.query('begin');
      await app.query(`update kb set title = title where id = 3`);   // the application holds row 3
      const client = await db.pool.connect();
      try {
        await client.query(`set statement_timeout = '3s'`);
        const started = Date.now();
        expect(Number((await client.query('select regen.sync_mirrors() as n')).rows[0].n)).toBe(1);   // row 4
        expect(Date.now() - started).toBeLessThan(2_000);
      } finally {
        client.release();
      }
      expect(await pending()).toBe(1);
      expect((await db.query('select id from kb where embedding is null')).rows).toEqual([{ id: 3 }]);
      await app.query('commit');
      expect(Number((await db.query('select regen.sync_mirrors() as n')).rows[0].n)).toBe(1);
      expect(await pending()).toBe(0);
      expect(await mismatches()).toBe(0);
    } finally {
      await app.end();
    }
    // off: nothing is due any more, and the column keeps what it holds
    await db.query(`select regen.set_mirror('kb', null)`);
    expect((await db.query('select count(*)::int as n from regen.mirrors')).rows[0].n).toBe(0);
    expect((await db.query('select count(*)::int as n from kb where embedding is not null')).rows[0].n).toBe(120);
  });
});
