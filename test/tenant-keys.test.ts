// Bring-your-own-key: a changed key reaches work already queued (waiting, retried, and an edit of
// the changing transaction); references are confined to the REGEN_KEY_ namespace and a refused one
// is never repeated; a reference stored before the namespace is refused by the worker; a rotated
// secret file is used without a restart. Keys are seen by the local server's per-key statistics.
import { mkdtempSync, renameSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { startEmbeddingServer, type EmbeddingServer } from '../src/provider-server.ts';
import { SETTINGS } from '../src/worker/config.ts';
import { KEY_REF_PREFIX, KeySource, MissingKey } from '../src/worker/keys.ts';
import type { RunningWorker } from '../src/worker/run.ts';
import { freshDatabase, keepOnFailure, type TestDatabase } from './support/db.ts';
import { assertStoreConsistent, inProcessWorker, waitFor, waitForClosedGap, workerEnv } from './support/worker.ts';

const DIMS = 16;
let db: TestDatabase;
let server: EmbeddingServer;   // takes any key
let strict: EmbeddingServer;   // answers 401 to keys it does not know
let worker: RunningWorker | undefined;
let secrets: string;

beforeAll(async () => {
  db = await freshDatabase();
  server = await startEmbeddingServer({ dimensions: DIMS });
  strict = await startEmbeddingServer({ dimensions: DIMS, apiKeys: ['test-key', 'new-key', 'key-v2'] });
});
keepOnFailure(() => db);
afterAll(async () => {
  await server.close();
  await strict.close();
});

beforeEach(async () => {
  await db.query(`select regen.unregister_source(name) from regen._sources`);
  await db.query(`drop table if exists policies`);
  await db.query(`delete from regen._versions`);
  await db.query(`truncate regen._cache, regen._rejections, regen._tenant_keys`);
  await db.query(`delete from pgboss.job where name like 'regen\\_embed\\_v%'`);
  await db.query(`select regen.create_version('hash@1', 'local-hash', $1, settings => '{"send_dimensions": true}')`, [DIMS]);
  await db.query(`create table policies (id int primary key, tenant text not null, body text not null, hits int not null)`);
  await db.query(`insert into policies select g, 'tenant_' || (g % 4), 'policy text number ' || g, (g * 7919) % 1000
                  from generate_series(1, 300) g`);
  await db.query(`select regen.register_source('policy', 'policies', 'id', 'body', 'tenant', 'hits', version => 'hash@1')`);
  server.resetStats();
  strict.resetStats();
  secrets = mkdtempSync(join(tmpdir(), 'pgregen-secrets-'));
});

afterEach(async () => {
  await worker?.stop();
  worker = undefined;
  for (const name of Object.keys(process.env)) if (name.startsWith(KEY_REF_PREFIX)) delete process.env[name];
  rmSync(secrets, { recursive: true, force: true });
});

/** Tenant keys are read from the worker's environment: the in-process worker's is this process's. */
const provide = (keys: Record<string, string>) => Object.assign(process.env, keys);
const lastError = (pattern: RegExp) => waitFor(`an error matching ${pattern}`, async () => {
  const { rows } = await db.query(`select last_error from regen.rebuild_progress where source = 'policy'`);
  return pattern.test(rows[0]?.last_error ?? '') ? (rows[0].last_error as string) : undefined;
});

describe('a changed key', () => {
  it('reaches items already waiting in a job, and an edit made earlier in the changing transaction', async () => {
    await db.query(`select regen.set_tenant_key('tenant_1', 'REGEN_KEY_OLD')`);
    await db.query(`select * from regen.rebuild('policy')`);
    const queued = await db.query(`select count(*)::int as n from pgboss.job where data->>'key' = 'REGEN_KEY_OLD' and state = 'created'`);
    expect(queued.rows[0].n).toBe(2);   // tenant_1's 75 rows wait in jobs that name the old reference
    await db.query(`select regen.set_tenant_key('tenant_1', 'REGEN_KEY_NEW')`);
    const client = await db.pool.connect();
    try {
      await client.query('begin');
      await client.query(`update policies set body = body || ' (edited)' where tenant = 'tenant_2'`);
      await client.query(`select regen.set_tenant_key('tenant_2', 'REGEN_KEY_TWO')`);
      await client.query('commit');
    } finally {
      client.release();
    }
    provide({ REGEN_KEY_OLD: 'old-key', REGEN_KEY_NEW: 'new-key', REGEN_KEY_TWO: 'key-two' });
    worker = await inProcessWorker(workerEnv(db.url, server));
    await waitForClosedGap(db, 'policy');
    expect(server.stats.byKey['old-key']).toBeUndefined();
    expect(server.stats.byKey['new-key']?.inputs).toBe(75);
    expect(server.stats.byKey['key-two']?.inputs).toBe(75);
    expect(server.stats.byKey['test-key']?.inputs).toBe(150);
    await assertStoreConsistent(db);
  });

  it('reaches a job that failed with the old key when it is retried', async () => {
    await db.query(`select regen.set_tenant_key('tenant_1', 'REGEN_KEY_OLD')`);
    await db.query(`select * from regen.rebuild('policy')`);
    provide({ REGEN_KEY_OLD: 'revoked-key', REGEN_KEY_NEW: 'new-key' });
    worker = await inProcessWorker(workerEnv(db.url, strict));
    await lastError(/provider answered 401/);
    const retrying = await db.query(`select count(*)::int as n from pgboss.job where data->>'key' = 'REGEN_KEY_OLD' and state in ('retry', 'active')`);
    expect(retrying.rows[0].n).toBeGreaterThan(0);
    await db.query(`select regen.set_tenant_key('tenant_1', 'REGEN_KEY_NEW')`);
    await waitForClosedGap(db, 'policy', 90_000);
    expect(strict.stats.byKey['new-key']?.inputs).toBe(75);
    expect(strict.stats.byKey['revoked-key']?.inputs ?? 0).toBe(0);
    expect(strict.stats.byKey['test-key']?.inputs).toBe(225);
  }, 120_000);
});

describe('the key namespace', () => {
  it('refuses a reference outside REGEN_KEY_ with RG031, and never repeats it', async () => {
    const refused = ['DATABASE_URL', 'OPENAI_API_KEY', 'PGPASSWORD', 'REGEN_SECRETS_DIR', 'sk-live-1234 5678',
      'regen_key_lowercase', 'REGEN_KEY_NAME-WITH-DASH', `REGEN_KEY_${'A'.repeat(119)}`];
    for (const value of [...refused, 'REGEN_KEY_']) {
      const error = await db.query(`select regen.set_tenant_key('tenant_1', $1)`, [value]).then(() => undefined, (e: unknown) => e);
      expect(error, value).toMatchObject({
        code: 'RG031',
        message: 'api key reference refused: expected the name of an environment variable or secret file that starts with REGEN_KEY_',
      });
      if (value !== 'REGEN_KEY_') {
        const { message, detail, hint, where, context } = error as Record<string, unknown>;
        expect(JSON.stringify({ message, detail, hint, where, context }), value).not.toContain(value);
      }
    }
    // Arguments swapped by mistake: the key in the tenant's place is not repeated either.
    const swapped = await db.query(`select regen.set_tenant_key('sk-proj-abcdef', 'tenant_1')`).then(() => undefined, (e: unknown) => e);
    expect(JSON.stringify(swapped)).not.toContain('sk-proj-abcdef');
    await db.query(`select regen.set_tenant_key('tenant_1', $1)`, [`REGEN_KEY_${'A'.repeat(118)}`]);
    expect((await db.query(`select tenant, usable from regen.tenant_keys`)).rows).toEqual([{ tenant: 'tenant_1', usable: true }]);
    // The worker's own settings can never be named.
    expect(SETTINGS.filter((s) => s.env.startsWith(KEY_REF_PREFIX))).toEqual([]);
  });

  it('the worker reads no variable outside the namespace, whatever a row says', () => {
    const env = { DATABASE_URL: 'postgres://app:hunter2@db/app' };
    expect(() => new KeySource('DATABASE_URL', 'default-key', undefined, env)).toThrow(MissingKey);
    expect(() => new KeySource('DATABASE_URL', 'default-key', undefined, env)).toThrow(/^(?!.*DATABASE_URL).*outside the REGEN_KEY_ namespace/);
    expect(new KeySource('REGEN_KEY_ACME', 'default-key', undefined, { REGEN_KEY_ACME: 'acme-key' }).current()).toBe('acme-key');
    expect(new KeySource(null, 'default-key', undefined, env).current()).toBe('default-key');
  });

  it('refuses a reference stored before the namespace, embeds the other tenants, and takes the new one', async () => {
    // The state an upgrade leaves: 0014 adds its check NOT VALID, so older rows stay as they were.
    const constraint = await db.query(`select pg_get_constraintdef(oid) as def from pg_constraint where conname = '_tenant_keys_ref_namespace'`);
    expect(constraint.rows[0].def).toMatch(/NOT VALID$/);
    await db.query(`alter table regen._tenant_keys drop constraint _tenant_keys_ref_namespace`);
    await db.query(`insert into regen._tenant_keys (tenant, api_key_ref) values ('tenant_1', 'TENANT_ONE_KEY')`);
    await db.query(`alter table regen._tenant_keys add constraint _tenant_keys_ref_namespace ${constraint.rows[0].def}`);
    expect((await db.query(`select usable from regen.tenant_keys`)).rows).toEqual([{ usable: false }]);
    process.env.TENANT_ONE_KEY = 'must-not-be-sent';
    try {
      await db.query(`select * from regen.rebuild('policy')`);
      worker = await inProcessWorker(workerEnv(db.url, server));
      const error = await lastError(/outside the REGEN_KEY_ namespace/);
      expect(error).toBe(`the api key reference of tenant 'tenant_1' is outside the REGEN_KEY_ namespace (set before it existed), `
        + `so the worker refuses it and does not embed the tenant's rows: select regen.set_tenant_key('tenant_1', 'REGEN_KEY_...') `
        + `with the name of a variable or secret file that holds the key`);
      await waitFor('the other tenants', async () =>
        (await db.query(`select current::int as c from regen.embedding_gap where source = 'policy'`)).rows[0].c === 225);
      // Setting a reference in the namespace reaches the jobs the worker refused.
      await db.query(`select regen.set_tenant_key('tenant_1', 'REGEN_KEY_TENANT_ONE')`);
      provide({ REGEN_KEY_TENANT_ONE: 'key-of-tenant-one' });
      await waitForClosedGap(db, 'policy', 90_000);
    } finally {
      delete process.env.TENANT_ONE_KEY;
    }
    expect(server.stats.byKey['must-not-be-sent']).toBeUndefined();
    expect(server.stats.byKey['key-of-tenant-one']?.inputs).toBe(75);
  }, 120_000);
});

describe('a rotated secret file', () => {
  it('is read again when it changes, without a restart', async () => {
    const file = join(secrets, 'REGEN_KEY_ROTATED');
    writeFileSync(file, 'key-v1\n');
    await db.query(`select regen.set_tenant_key('tenant_1', 'REGEN_KEY_ROTATED')`);
    await db.query(`select * from regen.rebuild('policy')`);
    worker = await inProcessWorker(workerEnv(db.url, server, { REGEN_SECRETS_DIR: secrets }));
    await waitForClosedGap(db, 'policy');
    expect(server.stats.byKey['key-v1']?.inputs).toBe(75);
    // The way a Kubernetes Secret volume updates: the new file replaces the old one at once.
    writeFileSync(join(secrets, '.new'), 'key-v2\n');
    renameSync(join(secrets, '.new'), file);
    await db.query(`update policies set body = body || ' (edited)' where tenant = 'tenant_1'`);
    await waitForClosedGap(db, 'policy');
    expect(server.stats.byKey['key-v2']?.inputs).toBe(75);
    expect(server.stats.byKey['key-v1']?.inputs).toBe(75);
  });

  it('is read again after the provider refuses the key (401), even when the file looks unchanged', async () => {
    const file = join(secrets, 'REGEN_KEY_ROTATED');
    const fixed = new Date('2026-01-01T00:00:00Z');
    writeFileSync(file, 'key-v1');
    utimesSync(file, fixed, fixed);
    await db.query(`select regen.set_tenant_key('tenant_1', 'REGEN_KEY_ROTATED')`);
    await db.query(`select * from regen.rebuild('policy')`);
    worker = await inProcessWorker(workerEnv(db.url, strict, { REGEN_SECRETS_DIR: secrets }));
    await lastError(/provider answered 401/);
    // Same inode, size and mtime: only the 401 tells the worker to read the file again.
    const before = statSync(file);
    writeFileSync(file, 'key-v2');
    utimesSync(file, fixed, fixed);
    const after = statSync(file);
    expect([after.ino, after.size, after.mtimeMs]).toEqual([before.ino, before.size, before.mtimeMs]);
    const refusedBefore = strict.stats.byKey['key-v1']!.requests;
    await waitForClosedGap(db, 'policy', 90_000);
    expect(strict.stats.byKey['key-v2']?.inputs).toBe(75);
    expect(strict.stats.byKey['key-v1']!.requests).toBeGreaterThan(refusedBefore);   // the cached key was refused once more
    expect(strict.stats.byKey['key-v1']!.inputs).toBe(0);
  }, 120_000);
});
