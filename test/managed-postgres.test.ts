// pgregen on managed PostgreSQL (issue 12): installed and run by a role that owns its database but is
// not a superuser, with pgvector created beforehand by the administrator (the test's superuser), in
// schema `extensions` (as Supabase does) or in `public`. Every role keeps the default search_path
// ("$user", public), so nothing may depend on the caller's search_path reaching pgvector.
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import OpenAI from 'openai';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { adopt } from '../src/adopt.ts';
import { install } from '../src/install.ts';
import { search } from '../src/search.ts';
import { tenantIndexes } from '../src/tenant-indexes.ts';
import { buildVersionIndexes } from '../src/versions.ts';
import { startEmbeddingServer, type EmbeddingServer } from '../src/provider-server.ts';
import type { RunningWorker } from '../src/worker/run.ts';
import { adminPool } from './support/db.ts';
import { DIMS, allRowIds, embedRows, gap, setupArticles } from './support/fixtures.ts';
import { bruteForce, expectExactTopK, type Hit } from './support/search.ts';
import { quoteIdent, withDatabase } from './support/url.ts';
import { assertStoreConsistent, inProcessWorker, waitFor, waitForClosedGap, workerEnv } from './support/worker.ts';

const BIN = fileURLToPath(new URL('../bin/pgregen.js', import.meta.url));
const execFileAsync = promisify(execFile);
// every file of sql/, as the installer finds them
const MIGRATIONS = readdirSync(fileURLToPath(new URL('../sql/', import.meta.url))).filter((f) => /^\d{4}_\w+\.sql$/.test(f)).length;
const DEFAULT_PATH = '"$user", public';
// The functions that name pgvector's objects, each with the search_path regen._pin_search_paths() gives it.
const PINNED = ['_adoption_rows', '_search', 'create_version', 'finish_adoption', 'sync_mirrors', 'write_embeddings'];

const admin = adminPool();   // the superuser: the managed service's administrator
const pools: pg.Pool[] = [];
const databases: string[] = [];
const roles: string[] = [];

afterAll(async ({}, suite) => {
  for (const pool of pools.reverse()) await pool.end().catch(() => {});
  if (anyFailed(suite)) {
    process.stderr.write(`pgregen tests: kept databases ${databases.join(', ')} and roles ${roles.join(', ')} for inspection\n`);
  } else {
    for (const name of databases) {
      // pool.end() resolves before the server has seen every socket close: FORCE would then end a
      // backend whose client is still listening, and the client would report it
      for (let attempt = 0; attempt < 40; attempt++) {
        const { rows } = await admin.query('select count(*)::int as n from pg_stat_activity where datname = $1', [name]);
        if (rows[0].n === 0) break;
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      await admin.query(`drop database if exists ${quoteIdent(name)} with (force)`);
    }
    for (const role of roles) await admin.query(`drop role if exists ${quoteIdent(role)}`);
  }
  await admin.end();
});

type TaskLike = { result?: { state?: string; errors?: unknown[] }; tasks?: readonly TaskLike[] };
function anyFailed(task: TaskLike): boolean {
  return task.result?.state === 'fail' || !!task.result?.errors?.length || (task.tasks ?? []).some(anyFailed);
}

async function createRole(label: string): Promise<string> {
  const name = `pgregen_${label}_${randomBytes(4).toString('hex')}`;
  await admin.query(`create role ${name} login`);
  roles.push(name);
  return name;
}

/** A database owned by a new login role that is not a superuser; `vector` says where the administrator put pgvector. */
async function managedDatabase(vector: 'extensions' | 'public' | 'none') {
  const owner = await createRole('owner');
  const name = `pgregen_managed_${randomBytes(4).toString('hex')}`;
  await admin.query(`create database ${name} owner ${owner} template template0`);
  databases.push(name);
  const serverUrl = inject('serverUrl');
  const url = (role: string) => {
    const u = new URL(withDatabase(serverUrl, name));
    u.username = role;
    return u.toString();
  };
  const connect = (role: string, options: pg.PoolConfig = {}) => {
    const pool = new pg.Pool({ connectionString: url(role), max: 2, ...options });
    pools.push(pool);
    return pool;
  };
  const superuser = connect(new URL(serverUrl).username || 'postgres');
  if (vector === 'extensions') {
    await superuser.query('create schema extensions');
    await superuser.query('create extension vector schema extensions');
  } else if (vector === 'public') {
    await superuser.query('create extension vector');
  }
  return { name, owner, url, connect, superuser, ownerPool: connect(owner) };
}

async function pgregen(args: string[], databaseUrl: string) {
  try {
    const { stdout, stderr } = await execFileAsync(process.execPath, [BIN, ...args], {
      env: { ...process.env, DATABASE_URL: databaseUrl }, timeout: 120_000,
    });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

async function searchPaths(db: pg.Pool): Promise<Record<string, string | null>> {
  const { rows } = await db.query<{ name: string; path: string | null }>(
    `select p.proname as name, (select substr(c, 13) from unnest(p.proconfig) c where c like 'search\\_path=%') as path
       from pg_proc p where p.pronamespace = 'regen'::regnamespace and p.proname = any($1) order by 1`, [PINNED]);
  return Object.fromEntries(rows.map((r) => [r.name, r.path]));
}

/** A stored vector of a row, in pgvector's text form (the superuser reads the store). */
async function storedVector(superuser: pg.Pool, rowId: string): Promise<string> {
  const { rows } = await superuser.query<{ v: string }>(`select embedding::text as v from regen._embeddings where row_id = $1 limit 1`, [rowId]);
  return rows[0]!.v;
}

/**
 * As an application role on a session that has not touched pgvector yet: the exact path and the
 * HNSW path (regen.search_exact_max_rows = 0) give the brute-force top k, the query passed untyped
 * (no `vector` on the role's search_path), and the caller's hnsw.* settings are the same afterwards.
 */
async function searchFreshSession(appUrl: string, tenant: string, query: string, k: number, truth: Hit[]): Promise<void> {
  for (const exactMaxRows of [null, 0]) {
    const client = new pg.Client({ connectionString: appUrl });
    await client.connect();
    try {
      expect((await client.query('show search_path')).rows[0].search_path).toBe(DEFAULT_PATH);
      expect((await client.query(`select count(*)::int as n from pg_settings where name like 'hnsw.%'`)).rows[0].n).toBe(0);
      await client.query('begin');
      await client.query('select regen.set_tenant($1)', [tenant]);
      // the HNSW path, with a value of the caller's own that must be there again afterwards
      if (exactMaxRows !== null) {
        await client.query(`select set_config('regen.search_exact_max_rows', $1, true)`, [String(exactMaxRows)]);
        await client.query(`select set_config('hnsw.ef_search', '77', true)`);
      }
      const { rows } = await client.query<Hit>('select * from regen.search_scoped($1, $2::integer)', [query, k]);
      expectExactTopK(rows, truth, k, `plain SQL, exact_max_rows ${exactMaxRows ?? 'default'}`);
      const after = await client.query(`select current_setting('hnsw.ef_search') as ef, current_setting('hnsw.iterative_scan') as iterative,
                                               current_setting('search_path') as path, current_setting('enable_sort') as sort`);
      expect(after.rows[0]).toEqual({ ef: exactMaxRows === null ? '40' : '77', iterative: 'off', path: DEFAULT_PATH, sort: 'on' });
      await client.query('commit');
    } finally {
      await client.end();
    }
  }
}

describe('pgvector in schema extensions, installed and run by a database owner that is not a superuser', () => {
  let db: Awaited<ReturnType<typeof managedDatabase>>;
  let server: EmbeddingServer;
  let worker: RunningWorker | undefined;
  let app: string;
  let workerRole: string;
  let appPool: pg.Pool;
  let truthPool: pg.Pool;
  let openai: OpenAI;

  beforeAll(async () => {
    db = await managedDatabase('extensions');
    server = await startEmbeddingServer({ dimensions: DIMS });
    app = await createRole('app');
    workerRole = await createRole('worker');
    appPool = db.connect(app, { max: 1 });
    // the administrator's view of the store, for brute-force answers
    truthPool = db.connect(new URL(inject('serverUrl')).username || 'postgres', { options: '-c search_path=public,extensions,vec' });
    openai = new OpenAI({ apiKey: 'test', baseURL: server.url });
  });

  afterAll(async () => {
    await worker?.stop();
    await server?.close();
  });

  it('refuses up front, changing nothing, while the owner cannot use pgvector\'s schema, naming the grant', async () => {
    const { rows: [owner] } = await db.ownerPool.query(`select rolsuper, current_setting('search_path') as path from pg_roles where rolname = current_user`);
    expect(owner).toEqual({ rolsuper: false, path: DEFAULT_PATH });
    const err = await install({ connectionString: db.url(db.owner) }).catch((e) => e);
    expect(err).toMatchObject({
      code: 'RG070',
      message: `role ${db.owner} cannot install pgregen into database ${db.name}: it lacks USAGE on schema extensions, where pgvector is installed`,
      hint: expect.stringContaining(`must run once, connected to database ${db.name}: grant usage on schema extensions to ${db.owner} with grant option; then run pgregen install again`),
    });
    const left = await db.superuser.query(`select to_regnamespace('regen') as regen, to_regnamespace('pgboss') as pgboss`);
    expect(left.rows[0]).toEqual({ regen: null, pgboss: null });
    await db.superuser.query(`grant usage on schema extensions to ${db.owner} with grant option`);
  });

  it('pgregen install applies every migration as the owner and pins pgvector\'s schema on the functions that name it', async () => {
    const run = await pgregen(['install'], db.url(db.owner));
    expect(run, run.stderr).toMatchObject({ code: 0 });
    expect((await db.ownerPool.query('select count(*)::int as n from regen.migrations where id > 0')).rows[0].n).toBe(MIGRATIONS);
    expect(await searchPaths(db.ownerPool)).toEqual(Object.fromEntries(PINNED.map((f) => [f, 'pg_catalog, regen, extensions, pg_temp'])));
    // pg-boss's schema too, the owner's
    expect((await db.ownerPool.query(`select nspowner::regrole::text as owner from pg_namespace where nspname = 'pgboss'`)).rows[0].owner).toBe(db.owner);
    // a second run changes nothing
    expect(await install({ connectionString: db.url(db.owner) })).toMatchObject({ applied: [] });
  });

  it('no other function of regen names a pgvector object (a new one belongs in regen._pin_search_paths)', async () => {
    // pgvector's own names: its types, functions, operators and operator classes that pg_catalog does not also have
    const { rows } = await db.ownerPool.query<{ fn: string; names: string }>(`
      with own as (
        select distinct coalesce(t.typname, p.proname, o.oprname, oc.opcname)::text as name
        from pg_depend d
        left join pg_type t on d.classid = 'pg_type'::regclass and t.oid = d.objid
        left join pg_proc p on d.classid = 'pg_proc'::regclass and p.oid = d.objid
        left join pg_operator o on d.classid = 'pg_operator'::regclass and o.oid = d.objid
        left join pg_opclass oc on d.classid = 'pg_opclass'::regclass and oc.oid = d.objid
        where d.refclassid = 'pg_extension'::regclass and d.deptype = 'e'
          and d.refobjid = (select oid from pg_extension where extname = 'vector')
      ), names as (
        select name from own n where name is not null
          and not exists (select 1 from pg_proc p where p.pronamespace = 'pg_catalog'::regnamespace and p.proname = n.name)
          and not exists (select 1 from pg_operator o where o.oprnamespace = 'pg_catalog'::regnamespace and o.oprname = n.name)
          and not exists (select 1 from pg_type t where t.typnamespace = 'pg_catalog'::regnamespace and t.typname = n.name)
      ), bodies as (
        select p.oid::regprocedure::text as fn, regexp_replace(p.prosrc, '--[^\\n]*', '', 'g') as src
        from pg_proc p
        where p.pronamespace = 'regen'::regnamespace
          and not coalesce(array_to_string(p.proconfig, ',') like '%search_path=%', false)
      )
      select b.fn, string_agg(n.name, ', ' order by n.name) as names from bodies b, names n
      where case when n.name ~ '^\\w+$' then b.src ~* ('\\m' || n.name || '\\M') else strpos(b.src, n.name) > 0 end
      group by b.fn`);
    expect(rows.sort((a, b) => (a.fn < b.fn ? -1 : 1))).toEqual([
      // the extension's name, looked up in pg_extension
      { fn: 'regen._check_eval_scope(text,text,text[],jsonb)', names: 'vector' },   // in a message
      // SQL functions inlined into their callers (regen._search, regen.search_tenant), whose search_path
      // is pinned: a SET clause of their own would keep the planner from inlining them (regen._exact_hits calls them)
      { fn: 'regen._exact_chunks(extensions.vector,integer,integer,integer[],text,text,double precision)', names: '<#>, <=>' },
      { fn: 'regen._exact_rows(extensions.vector,integer,integer,integer[],text,text,double precision)', names: '<#>, <=>' },
      { fn: 'regen._hnsw_expression(integer)', names: 'halfvec, vector' },        // type names looked up by oid, printed for the caller's session
      { fn: 'regen._pin_search_paths()', names: 'vector' },
      { fn: 'regen._small_scope(text,integer,text[],text)', names: 'inner_product' },   // a setting's value; inlined into regen.search_tenant
      { fn: 'regen._vector_schema()', names: 'vector' },
      { fn: 'regen._version_settings(jsonb,integer,text)', names: 'halfvec, inner_product' },   // a message; a setting's value
      { fn: 'regen.cutover(text,text,double precision,boolean,text)', names: 'vector' },        // in a message
      { fn: 'regen.set_mirror(text,name)', names: 'vector' },   // a type name looked up in pg_type; messages
      { fn: 'regen.start_adoption(text,text,name,regclass,name,name,double precision,integer,double precision)', names: 'vector' },   // in messages
    ]);
  });

  it('the owner creates versions (halfvec above 2,000 dimensions) and registers a source with the default search_path', async () => {
    await setupArticles(db.ownerPool);
    await db.ownerPool.query(`select regen.create_version('wide@1', 'wide-model', 2500)`);
    // a version no source serves yet gets its index when it is built: build it now, as the owner
    await buildVersionIndexes(db.ownerPool, { version: 'wide@1' });
    const { rows } = await db.ownerPool.query<{ def: string }>(
      `select regexp_replace(indexdef, '^.* USING hnsw (.*) WHERE .*$', '\\1') as def from pg_indexes
        where schemaname = 'regen' and indexname like '\\_embeddings\\_hnsw\\_v%' order by indexname`);
    expect(rows.map((r) => r.def)).toEqual([
      '(((embedding)::extensions.vector(8)) extensions.vector_cosine_ops)',
      '(((embedding)::extensions.halfvec(2500)) extensions.halfvec_cosine_ops)',
    ]);
    expect(await gap(db.ownerPool)).toMatchObject({ expected: 30, missing: 30 });
  });

  it('the worker, an admin role, writes the vectors back; an application UPDATE goes through the triggers', async () => {
    await db.ownerPool.query('select regen.grant_admin($1), regen.grant_app($2)', [workerRole, app]);
    await db.ownerPool.query(`grant select, update on articles to ${app}`);
    await db.ownerPool.query(`grant select on articles to ${workerRole}`);   // prepare_inputs reads the texts as the worker
    // grant_app and grant_admin passed USAGE on pgvector's schema on
    const usage = await db.ownerPool.query(`select has_schema_privilege($1, 'extensions', 'USAGE') as app, has_schema_privilege($2, 'extensions', 'USAGE') as worker`,
      [app, workerRole]);
    expect(usage.rows[0]).toEqual({ app: true, worker: true });
    await db.ownerPool.query('select * from regen.rebuild()');
    worker = await inProcessWorker(workerEnv(db.url(workerRole), server));
    await waitForClosedGap(db.ownerPool, 'articles');
    expect(await gap(db.ownerPool)).toMatchObject({ expected: 30, current: 30, failed: 0 });

    const update = await appPool.query(`update articles set body = 'Edited by the application.' where id = 4`);
    expect(update.rowCount).toBe(1);
    expect((await gap(db.ownerPool)).current).toBeLessThan(30);
    await waitForClosedGap(db.ownerPool, 'articles');
    expect(await gap(db.ownerPool)).toMatchObject({ current: 30, failed: 0 });
    await assertStoreConsistent(db.ownerPool);
  });

  it('an application role searches with search() and with plain SQL, exactly and through the HNSW index, from a fresh session', async () => {
    // the text of row 4 as the version embeds it (title, blank line, body)
    const hits = await search({ pool: appPool, openai }, 'Title 4\n\nEdited by the application.', { tenant: 'tenant_1', k: 5 });
    expect(hits).toHaveLength(5);
    expect(hits[0]).toMatchObject({ source: 'articles', rowId: '4', version: 'test@1' });
    expect(hits[0]!.distance).toBeCloseTo(0, 6);
    expect(hits.every((h) => Number(h.rowId) % 3 === 1)).toBe(true);   // tenant_1's rows only

    const query = await storedVector(db.superuser, '7');
    const truth = await bruteForce(truthPool, { version: 'test@1', tenant: 'tenant_1', distance: 'cosine' }, query, 10);
    await searchFreshSession(db.url(app), 'tenant_1', query, 5, truth);
    // the type spelled with its schema works too, for a role that has USAGE on it
    const typed = await appPool.connect();
    try {
      await typed.query('begin');
      await typed.query(`select regen.set_tenant('tenant_1')`);
      const { rows } = await typed.query<Hit>('select * from regen.search_scoped($1::extensions.vector, 5)', [query]);
      expectExactTopK(rows, truth, 5, 'typed query');
      await typed.query('commit');
    } finally {
      typed.release();
    }
  });

  it('the owner adopts a column of existing vectors and mirrors the store into another, with the worker writing it', async () => {
    await db.ownerPool.query(`create table legacy (id int primary key, tenant text not null, body text not null,
                                vec extensions.vector, mirror extensions.vector)`);
    await db.ownerPool.query(`insert into legacy select g, 'tenant_' || (g % 2), 'Legacy note ' || g, null, null from generate_series(1, 40) g`);
    // the vectors an earlier script stored: the provider's, for the text as the version prepares it
    const { rows } = await db.ownerPool.query<{ id: number; input: string }>(
      `select l.id, regen.preprocess(l.body, v.settings) as input from legacy l, regen._versions v where v.tag = 'test@1' order by l.id`);
    const { data } = await openai.embeddings.create({ model: 'test-model', input: rows.map((r) => r.input), dimensions: DIMS });
    await db.ownerPool.query(`update legacy l set vec = x.v::extensions.vector from unnest($1::int[], $2::text[]) x(id, v) where l.id = x.id`,
      [rows.map((r) => r.id), data.sort((a, b) => a.index - b.index).map((d) => JSON.stringify(d.embedding))]);
    await db.ownerPool.query(`update legacy set vec = null where id > 36`);
    await db.ownerPool.query(`select regen.register_source('legacy', 'legacy', 'id', 'body', tenant_column => 'tenant', version => 'test@1')`);
    server.resetStats();
    const adoption = await adopt(db.ownerPool, openai, { source: 'legacy', version: 'test@1', column: 'vec', sampleMin: 10 });
    expect(adoption).toMatchObject({ state: 'adopted', judged: { ok: 36, null: 4 }, adoptedRows: 36, sampledRows: 10 });
    expect(server.stats.inputs).toBe(10);
    expect((await db.ownerPool.query(`select current::int, missing::int from regen.embedding_gap where source = 'legacy'`)).rows[0])
      .toEqual({ current: 36, missing: 4 });

    await db.ownerPool.query(`grant select on legacy to ${workerRole}`);
    expect((await db.ownerPool.query(`select regen.set_mirror('legacy', 'mirror') as c`)).rows[0].c).toBe('mirror');
    await db.ownerPool.query(`select * from regen.rebuild('legacy')`);
    // the worker (an admin role, which may not write legacy itself) fills the mirror through regen.sync_mirrors
    await waitFor('the mirror of legacy', async () => Number((await db.ownerPool.query(
      `select count(*) as n from legacy l join regen._embeddings e on e.row_id = l.id::text and e.chunk_no = 1
         join regen._sources s on s.id = e.source_id and s.name = 'legacy' where l.mirror operator(extensions.=) e.embedding`)).rows[0].n) === 40);
    await db.ownerPool.query(`select regen.set_mirror('legacy', null)`);
  });

  it('tenant index statements name pgvector\'s schema where the caller\'s search_path does not reach it, and run as they are', async () => {
    const steps = await tenantIndexes(db.ownerPool, { minRows: 1, version: 'test@1' });
    expect(steps).toHaveLength(3);
    for (const step of steps) {
      expect(step.statement).toContain('using hnsw ((embedding::extensions.vector(8)) extensions.vector_cosine_ops)');
    }
    const query = await storedVector(db.superuser, '8');
    const truth = await bruteForce(truthPool, { version: 'test@1', tenant: 'tenant_2', distance: 'cosine' }, query, 10);
    await searchFreshSession(db.url(app), 'tenant_2', query, 5, truth);
  });

  it('after alter extension vector set schema, pgregen install pins the new schema and the roles keep working', async () => {
    await db.superuser.query('create schema vec');
    await db.superuser.query(`grant usage on schema vec to ${db.owner} with grant option`);
    await db.superuser.query('alter extension vector set schema vec');
    const run = await pgregen(['install'], db.url(db.owner));
    expect(run, run.stderr).toMatchObject({ code: 0 });
    expect(await searchPaths(db.ownerPool)).toEqual(Object.fromEntries(PINNED.map((f) => [f, 'pg_catalog, regen, vec, pg_temp'])));
    const usage = await db.ownerPool.query(`select has_schema_privilege($1, 'vec', 'USAGE') as app, has_schema_privilege($2, 'vec', 'USAGE') as worker`,
      [app, workerRole]);
    expect(usage.rows[0]).toEqual({ app: true, worker: true });

    await appPool.query(`update articles set body = 'Edited again, after the move.' where id = 7`);
    await waitForClosedGap(db.ownerPool, 'articles');
    expect(await gap(db.ownerPool)).toMatchObject({ current: 30, failed: 0 });
    await db.ownerPool.query(`select regen.create_version('moved@1', 'm', 4, settings => '{"distance": "l2"}')`);
    const query = await storedVector(db.superuser, '7');
    const truth = await bruteForce(truthPool, { version: 'test@1', tenant: 'tenant_1', distance: 'cosine' }, query, 10);
    await searchFreshSession(db.url(app), 'tenant_1', query, 5, truth);
    const hits = await search({ pool: appPool, openai }, 'Title 7\n\nEdited again, after the move.', { tenant: 'tenant_1', k: 3 });
    expect(hits[0]).toMatchObject({ rowId: '7' });
  });

  it('grant_app refuses a role the owner cannot give pgvector\'s schema, naming what the administrator must run', async () => {
    await worker?.stop();
    worker = undefined;
    const other = await createRole('app');
    await db.superuser.query(`revoke grant option for usage on schema vec from ${db.owner} cascade`);
    await expect(db.ownerPool.query('select regen.grant_app($1)', [other])).rejects.toMatchObject({
      code: 'RG044',
      message: `role ${other} cannot use schema vec, where pgvector is installed, and role ${db.owner} cannot grant it`,
      hint: expect.stringContaining(`must run: grant usage on schema vec to ${other};`),
    });
    // nothing of it was granted
    expect((await db.ownerPool.query(`select has_schema_privilege($1, 'regen', 'USAGE') as regen`, [other])).rows[0].regen).toBe(false);
  });
});

describe('pgvector in schema public, installed and run by a database owner that is not a superuser', () => {
  let db: Awaited<ReturnType<typeof managedDatabase>>;
  let app: string;
  let workerRole: string;
  let server: EmbeddingServer;

  beforeAll(async () => {
    db = await managedDatabase('public');
    app = await createRole('app');
    workerRole = await createRole('worker');
    server = await startEmbeddingServer({ dimensions: DIMS });
  });
  afterAll(async () => {
    await server?.close();
  });

  it('installs, writes back, captures an application UPDATE and searches', async () => {
    const result = await install({ connectionString: db.url(db.owner) });
    expect(result.applied).toHaveLength(MIGRATIONS);
    expect(await searchPaths(db.ownerPool)).toEqual(Object.fromEntries(PINNED.map((f) => [f, 'pg_catalog, regen, public, pg_temp'])));

    await setupArticles(db.ownerPool);
    await db.ownerPool.query('select regen.grant_admin($1), regen.grant_app($2)', [workerRole, app]);
    await db.ownerPool.query(`grant select, update on articles to ${app}`);
    await db.ownerPool.query(`grant select on articles to ${workerRole}`);
    const workerPool = db.connect(workerRole);
    const written = await embedRows(workerPool, await allRowIds(db.ownerPool));
    expect(written.results.every((r) => r.stored)).toBe(true);
    expect(await gap(db.ownerPool)).toMatchObject({ expected: 30, current: 30 });

    const appPool = db.connect(app, { max: 1 });
    await appPool.query(`update articles set body = 'Edited by the application.' where id = 5`);
    expect(await gap(db.ownerPool)).toMatchObject({ current: 29, stale: 1 });
    await embedRows(workerPool, ['5']);
    expect(await gap(db.ownerPool)).toMatchObject({ current: 30, stale: 0 });

    const query = await storedVector(db.superuser, '5');
    const truth = await bruteForce(db.superuser, { version: 'test@1', tenant: 'tenant_2', distance: 'cosine' }, query, 10);
    await searchFreshSession(db.url(app), 'tenant_2', query, 5, truth);
    const hits = await search({ pool: appPool, openai: new OpenAI({ apiKey: 'test', baseURL: server.url }) }, 'Body of article 8.',
      { tenant: 'tenant_2', k: 4 });
    expect(hits).toHaveLength(4);
    expect(hits.every((h) => Number(h.rowId) % 3 === 2)).toBe(true);

    // statements for the caller's session: pgvector is on its search_path, so unqualified
    const steps = await tenantIndexes(db.ownerPool, { minRows: 1, version: 'test@1', dryRun: true });
    expect(steps[0]!.statement).toContain('using hnsw ((embedding::vector(8)) vector_cosine_ops)');
  });
});

describe('a role that neither owns the database nor has CREATE on it', () => {
  it('is told which grant to ask for, installs once given it, and upgrades without it', async () => {
    const db = await managedDatabase('public');
    const installer = await createRole('installer');
    const err = await install({ connectionString: db.url(installer) }).catch((e) => e);
    expect(err).toMatchObject({
      code: 'RG070',
      message: `role ${installer} cannot install pgregen into database ${db.name}: it lacks CREATE on database ${db.name} (for schema regen and pgboss)`,
      hint: expect.stringContaining(`connected to database ${db.name}: grant create on database ${db.name} to ${installer}; then run pgregen install again`),
    });
    await db.superuser.query(`grant create on database ${db.name} to ${installer}`);
    expect((await install({ connectionString: db.url(installer) })).applied).toHaveLength(MIGRATIONS);
    // an upgrade (here: a run with nothing left to apply) needs only the schemas, which it owns
    await db.superuser.query(`revoke create on database ${db.name} from ${installer}`);
    expect((await install({ connectionString: db.url(installer) })).applied).toEqual([]);
    // another role may not take the schema over
    await expect(install({ connectionString: db.url(db.owner) })).rejects.toMatchObject({
      code: 'RG070', message: `schema regen belongs to role ${installer}, not to ${db.owner}`,
    });
  });
});

describe('pgvector not created, and the owner cannot create it', () => {
  it('install fails before changing anything, naming what a superuser must run', async () => {
    const db = await managedDatabase('none');
    const err = await install({ connectionString: db.url(db.owner) }).catch((e) => e);
    expect(err).toMatchObject({
      code: 'RG070',
      message: `extension vector is not created in database ${db.name}, and role ${db.owner} cannot create it: permission denied to create extension "vector"`,
      hint: expect.stringContaining(`must run once, connected to database ${db.name}: create extension vector;`),
    });
    const left = await db.superuser.query(`select to_regnamespace('regen') as regen, to_regnamespace('pgboss') as pgboss,
                                                  (select count(*)::int from pg_extension where extname = 'vector') as vector`);
    expect(left.rows[0]).toEqual({ regen: null, pgboss: null, vector: 0 });
  });
});
