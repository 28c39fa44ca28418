// The worker end to end, through the real `openai` client against the local embedding server:
// hot-first order, fresh edits first, invariant 4, shared texts, poison items, in-flight edits,
// per-tenant keys, health endpoints, graceful shutdown and bad configuration.
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { startEmbeddingServer, type EmbeddingServer } from '../src/provider-server.ts';
import { freshDatabase, keepOnFailure, type TestDatabase } from './support/db.ts';
import { sha256 } from './support/fixtures.ts';
import { assertStoreConsistent, inProcessWorker, spawnWorker, waitFor, waitForClosedGap, workerEnv } from './support/worker.ts';
import type { RunningWorker } from '../src/worker/run.ts';

const DIMS = 16;
let db: TestDatabase;
let server: EmbeddingServer;
let worker: RunningWorker | undefined;

beforeAll(async () => {
  db = await freshDatabase();
  server = await startEmbeddingServer({ dimensions: DIMS });
});
keepOnFailure(() => db);
afterAll(async () => { await server.close(); });

afterEach(async () => {
  await worker?.stop();
  worker = undefined;
  server.setFaults({});
  server.setLatency(0);
});

/** Two sources of different weight; rows' priority is `hits`; nothing embedded yet. */
beforeEach(async () => {
  await db.query(`select regen.unregister_source(name) from regen._sources`);
  await db.query(`drop table if exists policies, manuals`);
  await db.query(`delete from regen._versions`);
  await db.query(`truncate regen._cache, regen._rejections, regen._tenant_keys`);
  await db.query(`delete from pgboss.job where name like 'regen\\_embed\\_v%'`);
  await db.query(`select regen.create_version('hash@1', 'local-hash', $1, settings => '{"send_dimensions": true}')`, [DIMS]);
  for (const table of ['policies', 'manuals']) {
    await db.query(`create table ${table} (id int primary key, tenant text not null, body text not null, hits int not null)`);
    await db.query(`insert into ${table} select g, 'tenant_' || (g % 4), '${table} text number ' || g || ' about topic ' || (g % 17), (g * 7919) % 1000
                    from generate_series(1, 300) g`);
  }
  await db.query(`select regen.register_source('policy', 'policies', 'id', 'body', 'tenant', 'hits', weight => 3, version => 'hash@1')`);
  await db.query(`select regen.register_source('manual', 'manuals', 'id', 'body', 'tenant', 'hits', weight => 1, version => 'hash@1')`);
  server.resetStats();
});

const env = (extra: Record<string, string> = {}) => workerEnv(db.url, server, extra);
const embeddedOrder = () => [...server.stats.texts.keys()];

async function priorities(): Promise<Map<string, { source: string; hits: number }>> {
  const { rows } = await db.query(`select 'policy' as source, body, hits from policies union all select 'manual', body, hits from manuals`);
  return new Map(rows.map((r) => [r.body as string, { source: r.source as string, hits: r.hits as number }]));
}

describe('hot-first rebuild', () => {
  it('serves the heavier source first, and within a source the hottest rows first', async () => {
    const enqueued = await db.query(`select source, items, jobs from regen.rebuild() order by source`);
    expect(enqueued.rows).toEqual([
      { source: 'manual', items: '300', jobs: '5' },
      { source: 'policy', items: '300', jobs: '5' },
    ]);
    // one job at a time, so the provider sees the queue's order
    worker = await inProcessWorker(env({ REGEN_JOBS_PER_FETCH: '1', REGEN_CONCURRENCY: '1' }));
    await waitForClosedGap(db, 'manual');
    const order = embeddedOrder();
    expect(order).toHaveLength(600);
    const info = await priorities();
    const sources = order.map((t) => info.get(t)!.source);
    expect(sources.indexOf('manual')).toBe(300);             // every policy before any manual
    // within a source, each 64-row job is hotter than every later one
    for (const source of ['policy', 'manual']) {
      const hits = order.filter((t) => info.get(t)!.source === source).map((t) => info.get(t)!.hits);
      for (let job = 1; job * 64 < hits.length; job++) {
        const before = hits.slice((job - 1) * 64, job * 64);
        const after = hits.slice(job * 64);
        expect(Math.min(...before)).toBeGreaterThanOrEqual(Math.max(...after));
      }
    }
    await assertStoreConsistent(db);
  });

  it('puts a fresh edit ahead of the backfill, even a cold row of the light source', async () => {
    server.setLatency(150);
    await db.query(`select * from regen.rebuild()`);
    worker = await inProcessWorker(env({ REGEN_JOBS_PER_FETCH: '1', REGEN_CONCURRENCY: '1' }));
    await waitFor('the backfill to start', async () => server.stats.inputs > 0);
    const coldest = await db.query(`select id from manuals order by hits, id limit 1`);
    await db.query(`update manuals set body = 'a fresh edit of the coldest manual' where id = $1`, [coldest.rows[0].id]);
    await waitForClosedGap(db, 'manual', 90_000);
    const order = embeddedOrder();
    const at = order.indexOf('a fresh edit of the coldest manual');
    expect(at).toBeGreaterThan(-1);
    expect(at).toBeLessThan(300);          // before the last policies, long before its own source's backfill
  });

  it('a second rebuild on healthy data makes zero provider calls and changes zero rows (invariant 4)', async () => {
    await db.query(`select * from regen.rebuild()`);
    worker = await inProcessWorker(env());
    await waitForClosedGap(db, 'policy');
    await waitForClosedGap(db, 'manual');
    await worker.stop();
    worker = undefined;
    const requests = server.stats.requests;
    const snapshot = `select xmin::text || ctid::text as v from regen._items union all select xmin::text || ctid::text from regen._embeddings order by 1`;
    const before = (await db.query(snapshot)).rows;
    const again = await db.query(`select sum(items)::int as items from regen.rebuild()`);
    expect(again.rows[0].items).toBe(0);
    worker = await inProcessWorker(env());
    await new Promise((resolve) => setTimeout(resolve, 2_000));
    expect(server.stats.requests).toBe(requests);
    expect((await db.query(snapshot)).rows).toEqual(before);
    expect((await db.query(`select * from regen.queue_depth()`)).rows).toEqual([]);
  });

  it('identical texts across rows and tenants cost one provider input', async () => {
    await db.query(`update policies set body = 'the same text everywhere' where id <= 40`);     // four tenants
    await db.query(`update manuals set body = 'the same text everywhere' where id <= 10`);
    await db.query(`select * from regen.rebuild()`);
    worker = await inProcessWorker(env());
    await waitForClosedGap(db, 'policy');
    await waitForClosedGap(db, 'manual');
    expect(server.stats.texts.get('the same text everywhere')).toBe(1);
    expect(server.stats.inputs).toBe(600 - 50 + 1);
    const stored = await db.query(`select count(distinct e.tenant)::int as tenants, count(*)::int as n from regen._embeddings e
                                   join regen._items it using (source_id, version_id, row_id)
                                   where e.text_hash = sha256('the same text everywhere'::bytea)`);
    expect(stored.rows[0]).toEqual({ tenants: 4, n: 50 });
  });
});

describe('failures', () => {
  it('dead-letters a poison input with its reason and stores the rest of its batch', async () => {
    server.setFaults({ badInputs: (text) => text === 'policies text number 7 about topic 7' });
    await db.query(`select * from regen.rebuild('policy')`);
    worker = await inProcessWorker(env());
    await waitForClosedGap(db, 'policy');
    const failed = await db.query(`select row_id, error, attempts from regen.failed_items`);
    expect(failed.rows).toEqual([{ row_id: '7', error: expect.stringMatching(/^provider refused the input: 400 /), attempts: 1 }]);
    const gap = await db.query(`select current::int, failed::int from regen.embedding_gap where source = 'policy'`);
    expect(gap.rows[0]).toEqual({ current: 299, failed: 1 });
    // retried on command, once the provider accepts it
    server.setFaults({});
    expect((await db.query(`select regen.retry_failed('policy') as n`)).rows[0].n).toBe('1');
    await waitFor('the retried item', async () => (await db.query(`select current::int as c from regen.embedding_gap where source = 'policy'`)).rows[0].c === 300);
  });

  it('refuses vectors of the wrong size or with NaN per item and records why', async () => {
    server.setFaults({ wrongDimensionsRate: 1 });
    await db.query(`select * from regen.rebuild('manual')`);
    worker = await inProcessWorker(env({ REGEN_JOBS_PER_FETCH: '1' }));
    await waitFor('failures', async () => (await db.query(`select failed::int as f from regen.embedding_gap where source = 'manual'`)).rows[0].f === 300);
    const reasons = await db.query(`select distinct error from regen.failed_items`);
    expect(reasons.rows).toEqual([{ error: `expected ${DIMS} dimensions, not ${DIMS - 1}` }]);
    expect((await db.query(`select count(*)::int as n from regen._embeddings`)).rows[0].n).toBe(0);
    server.setFaults({ nanRate: 1 });
    await db.query(`select regen.retry_failed()`);
    await waitFor('NaN failures', async () => (await db.query(`select count(*)::int as n from regen.failed_items where error like 'NaN%'`)).rows[0].n > 0);
    expect((await db.query(`select count(*)::int as n from regen._embeddings`)).rows[0].n).toBeLessThan(300);
  });

  it('retries 5xx and timeouts until the batch is stored (429s: see chaos.test.ts)', async () => {
    server.setFaults({ serverErrorRate: 0.3, timeoutRate: 0.3 });
    await db.query(`select * from regen.rebuild('policy')`);
    worker = await inProcessWorker(env({ REGEN_REQUEST_TIMEOUT_MS: '1000', REGEN_MAX_ATTEMPTS: '30', REGEN_JOBS_PER_FETCH: '1',
      REGEN_MAX_INPUTS_PER_REQUEST: '16' }));
    await waitForClosedGap(db, 'policy', 120_000);
    expect(server.stats.status5xx).toBeGreaterThan(0);
    expect(server.stats.timeouts).toBeGreaterThan(0);
    expect((await db.query(`select current::int as c from regen.embedding_gap where source = 'policy'`)).rows[0].c).toBe(300);
    await assertStoreConsistent(db);
  }, 150_000);   // the wait above allows 120 s: the default test timeout (60 s) cut it short on a slow run
});

describe('request limits', () => {
  it('packs requests within the input and token limits and refuses inputs over the model limit, never cutting them', async () => {
    await db.query(`select regen.create_version('small@1', 'local-hash', $1, settings => '{"send_dimensions": true, "max_input_tokens": 20}')`, [DIMS]);
    await db.query(`select regen.unregister_source('manual')`);
    await db.query(`update manuals set body = body || ' ' || repeat('and a good deal more words ', 5) where id <= 3`);
    await db.query(`select regen.register_source('manual', 'manuals', 'id', 'body', 'tenant', 'hits', version => 'small@1')`);
    await db.query(`select * from regen.rebuild('manual')`);
    worker = await inProcessWorker(env({ REGEN_MAX_INPUTS_PER_REQUEST: '10', REGEN_MAX_TOKENS_PER_REQUEST: '150' }));
    await waitForClosedGap(db, 'manual');
    expect(Math.max(...server.stats.log.map((r) => r.inputs))).toBeLessThanOrEqual(10);
    expect(Math.max(...server.stats.log.map((r) => r.tokens))).toBeLessThanOrEqual(150);
    const failed = await db.query(`select row_id, error from regen.failed_items order by row_id::int`);
    expect(failed.rows.map((r) => r.row_id)).toEqual(['1', '2', '3']);
    expect(failed.rows[0].error).toMatch(/^input has \d+ tokens, over the model's limit of 20: lower chunk_chars or raise max_input_tokens/);
    for (const text of server.stats.texts.keys()) expect(text).not.toMatch(/a good deal more/);
  });
});

describe('write-back', () => {
  it('writes each provider request back as it answers, not once per batch', async () => {
    await db.query(`select * from regen.rebuild('policy')`);
    // one job (64 rows) per batch, four requests of 16 a job, one request in flight at a time
    worker = await inProcessWorker(env({ REGEN_JOBS_PER_FETCH: '1', REGEN_MAX_INPUTS_PER_REQUEST: '16', REGEN_CONCURRENCY: '1' }));
    await waitForClosedGap(db, 'policy');
    // a write's vectors carry its transaction's start: one value per write-back
    const { rows } = await db.query(`select count(distinct e.embedded_at)::int as writes, count(*)::int as vectors
                                     from regen._embeddings e join regen._sources s on s.id = e.source_id where s.name = 'policy'`);
    expect(rows[0].vectors).toBe(300);
    expect(rows[0].writes).toBeGreaterThanOrEqual(Math.ceil(300 / 16));
  });
});

describe('versions', () => {
  it('a worker limited by REGEN_VERSIONS serves only those versions; the others wait for another worker', async () => {
    await db.query(`select regen.create_version('other@1', 'local-hash', $1, settings => '{"send_dimensions": true}')`, [DIMS]);
    await db.query(`select regen.unregister_source('manual')`);
    await db.query(`select regen.register_source('manual', 'manuals', 'id', 'body', 'tenant', 'hits', version => 'other@1')`);
    await db.query(`select * from regen.rebuild()`);
    worker = await inProcessWorker(env({ REGEN_VERSIONS: 'hash@1' }));
    await waitForClosedGap(db, 'policy');
    // the gap closes as the vectors are written; the worker completes the jobs right after
    const waiting = await waitFor('the served version\'s jobs to complete', async () => {
      const { rows } = await db.query(`select version, state, items::int from regen.queue_depth()`);
      return rows.every((r) => r.version !== 'hash@1') && rows;
    }, 10_000);
    expect(waiting).toEqual([{ version: 'other@1', state: 'created', items: 300 }]);
    await worker.stop();
    worker = await inProcessWorker(env({ REGEN_VERSIONS: 'other@1' }));
    await waitForClosedGap(db, 'manual');
  });
});

describe('edits and keys', () => {
  it('a row edited while its batch is in flight ends with the vector of its final text', async () => {
    server.setLatency(1_500);
    await db.query(`select * from regen.rebuild('policy')`);
    worker = await inProcessWorker(env({ REGEN_JOBS_PER_FETCH: '1', REGEN_CONCURRENCY: '1' }));
    await waitFor('a request in flight', async () => server.stats.requests > 0);
    // the first job holds the 64 hottest rows: edit the hottest one while the provider works on it
    const hottest = await db.query(`select id from policies order by hits desc, id limit 1`);
    await db.query(`update policies set body = 'final text of the hottest policy' where id = $1`, [hottest.rows[0].id]);
    server.setLatency(0);
    await waitForClosedGap(db, 'policy', 90_000);
    const stored = await db.query(`select e.content_hash from regen._embeddings e where e.row_id = $1::text and e.source_id = (select id from regen._sources where name = 'policy')`, [hottest.rows[0].id]);
    expect(stored.rows).toEqual([{ content_hash: sha256('final text of the hottest policy') }]);
    await assertStoreConsistent(db);
  });

  it('embeds a tenant with its own key, referenced by name, in batches of that key only', async () => {
    await db.query(`select regen.set_tenant_key('tenant_1', 'REGEN_KEY_TENANT_ONE')`);
    await db.query(`select * from regen.rebuild('policy')`);
    process.env.REGEN_KEY_TENANT_ONE = 'key-of-tenant-one';   // the worker reads tenant keys from its environment
    try {
      worker = await inProcessWorker(env());
      await waitForClosedGap(db, 'policy');
    } finally {
      delete process.env.REGEN_KEY_TENANT_ONE;
    }
    expect(server.stats.byKey['key-of-tenant-one']?.inputs).toBe(75);
    expect(server.stats.byKey['test-key']?.inputs).toBe(225);
    const stored = await db.query(`select count(*)::int as n from regen.tenant_keys where api_key_ref = 'REGEN_KEY_TENANT_ONE' and usable`);
    expect(stored.rows[0].n).toBe(1);
    await expect(db.query(`select regen.set_tenant_key('tenant_2', 'sk-live-1234 5678')`)).rejects.toMatchObject({ code: 'RG031' });
  });

  it('reports a missing tenant key as the last error and embeds the other tenants', async () => {
    await db.query(`select regen.set_tenant_key('tenant_2', 'REGEN_KEY_NOT_PROVIDED')`);
    await db.query(`select * from regen.rebuild('manual')`);
    worker = await inProcessWorker(env());
    await waitFor('the other tenants', async () => (await db.query(`select current::int as c from regen.embedding_gap where source = 'manual'`)).rows[0].c === 225);
    const progress = await waitFor('the error', async () => {
      const { rows } = await db.query(`select last_error from regen.rebuild_progress where source = 'manual'`);
      return rows[0].last_error ?? undefined;
    });
    expect(progress).toMatch(/API key reference REGEN_KEY_NOT_PROVIDED .* neither the environment variable REGEN_KEY_NOT_PROVIDED/);
  });
});

describe('the sidecar', () => {
  it('serves /healthz, /readyz and Prometheus /metrics', async () => {
    await db.query(`select * from regen.rebuild('policy')`);
    worker = await inProcessWorker(env());
    await waitForClosedGap(db, 'policy');
    const base = `http://127.0.0.1:${worker.port}`;
    expect((await fetch(`${base}/healthz`)).status).toBe(200);
    expect((await fetch(`${base}/readyz`)).status).toBe(200);
    const metrics = await (await fetch(`${base}/metrics`)).text();
    expect(metrics).toMatch(/^pgregen_vectors_embedded_total\{version="hash@1"\} 300$/m);
    expect(metrics).toMatch(/^pgregen_gap\{source="policy",version="hash@1",state="current"\} 300$/m);
    expect(metrics).toMatch(/^pgregen_provider_request_seconds_count\{status="200"\} [1-9]/m);
    expect(metrics).toMatch(/^# HELP pgregen_queue_depth /m);
  });

  it('on SIGTERM stops fetching, finishes or hands back its batch, and exits 0 in bounded time', async () => {
    server.setLatency(1_000);
    await db.query(`select * from regen.rebuild('policy')`);
    const spawned = spawnWorker(env({ REGEN_JOBS_PER_FETCH: '1', REGEN_CONCURRENCY: '1', REGEN_SHUTDOWN_TIMEOUT_MS: '3000', REGEN_LOG_LEVEL: 'info' }));
    await waitFor('a request in flight', async () => server.stats.requests > 0);
    const sent = Date.now();
    spawned.child.kill('SIGTERM');
    expect(await spawned.exited).toBe(0);
    expect(Date.now() - sent).toBeLessThan(10_000);
    expect(spawned.output()).toMatch(/worker stopped/);
    const current = (await db.query(`select current::int as c from regen.embedding_gap where source = 'policy'`)).rows[0].c;
    expect(current).toBeLessThan(300);   // it stopped taking work
    server.setLatency(0);
    worker = await inProcessWorker(env());
    await waitForClosedGap(db, 'policy', 60_000);   // nothing was lost
    await assertStoreConsistent(db);
  });

  it('exits non-zero with what to fix on bad configuration', async () => {
    const base = env();
    const cases: Array<[Record<string, string>, RegExp]> = [
      [{ ...base, DATABASE_URL: 'postgres://nobody@127.0.0.1:1/none' }, /cannot connect to the database at 127\.0\.0\.1:1\/none: .*\n  hint: check DATABASE_URL/],
      [{ ...base, OPENAI_API_KEY: '' }, /OPENAI_API_KEY is not set/],
      [{ ...base, REGEN_VERSIONS: 'nope@1' }, /unknown version 'nope@1' in REGEN_VERSIONS/],
      [{ ...base, REGEN_CONCURRENCY: 'many' }, /REGEN_CONCURRENCY=many is not an integer >= 1/],
    ];
    for (const [settings, message] of cases) {
      const spawned = spawnWorker(settings);
      expect(await spawned.exited).toBe(1);
      expect(spawned.output()).toMatch(message);
    }
  });
});
