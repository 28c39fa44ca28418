// The search functions plan without JIT (sql/0039). A kept generic plan can be estimated above
// jit_above_cost; with jit = on every call then compiled its plan again (about 15 ms for a search
// that runs in 0.1 ms). These tests force JIT on for every statement the session plans and look at
// the plans of the statements the search functions run (auto_explain, nested statements).
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { install } from '../src/install.ts';
import { freshDatabase, keepOnFailure, type TestDatabase } from './support/db.ts';
import { vectorOf } from './support/fixtures.ts';
import { createRole, embedWith, vectorText, type TestRole } from './support/search.ts';

const DIMS = 8;

describe('search plans without JIT', () => {
  let db: TestDatabase;
  let app: TestRole;
  keepOnFailure(() => db);

  beforeAll(async () => {
    db = await freshDatabase('search_without_jit');
    await db.query('create table docs (id integer primary key, tenant text not null, body text not null)');
    await db.query(`insert into docs select g, case when g % 2 = 0 then 'a' else 'b' end, 'doc ' || g from generate_series(1, 40) g`);
    await db.query(`select regen.create_version('v1@8', 'synthetic', ${DIMS}, settings => '{"distance": "cosine"}')`);
    await db.query(`select regen.register_source('docs', 'docs', 'id', 'body', tenant_column => 'tenant', version => 'v1@8')`);
    await embedWith(db, 'docs', 'v1@8', Array.from({ length: 40 }, (_, i) => String(i + 1)), (text) => vectorOf(text, DIMS));
    app = await createRole(db, 'app', { grant: 'app' });
  });

  afterAll(async () => {
    await app?.drop();
  });

  it('every function whose plans are kept as generic plans is set to plan them without JIT', async () => {
    const { rows } = await db.query<{ fn: string; config: string[] }>(
      `select p.oid::regprocedure::text as fn, p.proconfig as config from pg_proc p
        where p.pronamespace = 'regen'::regnamespace and 'plan_cache_mode=force_generic_plan' = any(p.proconfig)
        order by 1`);
    // the two that run every search statement are among them
    expect(rows.map((r) => r.fn.replace(/\(.*/, ''))).toEqual(expect.arrayContaining(['regen._search', 'regen.search_tenant']));
    for (const row of rows) expect(row.config, row.fn).toContain('jit=off');
  });

  it('a search function restated without jit = off gets it back when pgregen install runs again', async () => {
    // as a later migration's `create or replace` would leave it: the SET list as written, no jit
    const signature = 'regen.search_tenant(text, vector, integer, text[], text, double precision, boolean)';
    await db.query(`alter function ${signature} reset jit`);
    const config = async () => (await db.query<{ config: string[] }>(
      `select proconfig as config from pg_proc where oid = '${signature}'::regprocedure`)).rows[0]!.config;
    expect(await config()).not.toContain('jit=off');
    const result = await install({ connectionString: db.url });
    expect(result.applied).toEqual([]);
    expect(await config()).toContain('jit=off');
    expect(await config()).toContain('plan_cache_mode=force_generic_plan');
  });

  it('with JIT forced on for every statement, no statement a search runs is compiled', async () => {
    const { rows: [server] } = await db.query<{ superuser: boolean; jit: boolean }>(
      'select (select rolsuper from pg_roles where rolname = current_user) as superuser, pg_jit_available() as jit');
    // auto_explain is loaded by a superuser (the suite's server role is one, see test/support/db.ts);
    // a server without its LLVM support could not show what this test looks for
    expect(server, 'the test server must be reached as a superuser and have JIT (PostgreSQL built with LLVM)')
      .toEqual({ superuser: true, jit: true });
    const client = new pg.Client({ connectionString: db.url });
    const plans: string[] = [];
    client.on('notice', (notice) => { if (/plan:/.test(notice.message ?? '')) plans.push(notice.message!); });
    await client.connect();
    try {
      await client.query(`load 'auto_explain'`);
      await client.query(`set auto_explain.log_min_duration = 0; set auto_explain.log_nested_statements = on;
        set auto_explain.log_analyze = on; set client_min_messages = log;
        set jit = on; set jit_above_cost = 0; set jit_inline_above_cost = 0; set jit_optimize_above_cost = 0`);
      await client.query(`set role ${app.name}`);
      const query = vectorText(vectorOf('doc 4', DIMS));
      // search_tenant's one-statement path (the active version, then a version named, in rows), and
      // the general path (regen._search, behind search_scoped and search_rows)
      await client.query(`select * from regen.search_tenant('a', $1, 5)`, [query]);
      await client.query(`select * from regen.search_tenant('a', $1, 5, version => 'v1@8', per_row => true)`, [query]);
      await client.query('begin');
      await client.query(`select regen.set_tenant('a')`);
      await client.query(`select * from regen.search_scoped($1, 5)`, [query]);
      await client.query(`select * from regen.search_rows($1, 5)`, [query]);
      await client.query('commit');
    } finally {
      await client.end();
    }
    const isOuter = (plan: string) => /Query Text: select \* from regen\.(search_tenant|search_scoped|search_rows)\(/.test(plan);
    const outer = plans.filter(isOuter);
    const nested = plans.filter((plan) => !isOuter(plan) && /_embeddings/.test(plan));
    // the application's own statements are planned with the session's settings: JIT shows there
    expect(outer.length).toBeGreaterThanOrEqual(4);
    expect(outer.every((plan) => /JIT:/.test(plan))).toBe(true);
    // every statement that reads the store ran inside the functions, and none was compiled
    expect(nested.length).toBeGreaterThanOrEqual(4);
    for (const plan of nested) expect(plan, plan).not.toMatch(/JIT:/);
  });
});
