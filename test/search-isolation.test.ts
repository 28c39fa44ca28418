// regen.search_scoped(), invariant 3 (never another tenant's row): random tenants and queries through
// an application role (regen.grant_app), under row-level security, one transaction per search, and
// every way around it that an application could try; the answers are computed by the superuser.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mulberry32 } from '../src/prng.ts';
import { freshDatabase, keepOnFailure, type TestDatabase } from './support/db.ts';
import { vectorOf } from './support/fixtures.ts';
import { createRole, embedWith, expectSorted, gaussian, inTransaction, keyOf, searchAs, vectorText, type TestRole } from './support/search.ts';

const SEED = 20260611;

describe('isolation: an application role gets its tenant\'s rows, and nothing else of regen', () => {
  let db: TestDatabase;
  let app: TestRole;
  const roles: TestRole[] = [];
  keepOnFailure(() => db);
  // Tenant names that look like SQL, patterns, or another tenant's name with a twist.
  const TENANTS = ['acme', 'globex', 'initech', 'Acme', 'acme ', "o'hara", "acme' or '1'='1",
    "x'); delete from regen._embeddings; --", '%', 'a%', '_', 'NULL', '🦄'];
  /** tenant of every stored chunk, read from the source tables (the truth, not regen's copy) */
  const tenantOf = new Map<string, string | null>();
  /** rows per tenant and source */
  const sizes = new Map<string, { tickets: number; notes: number }>();
  const scopeOf = (tenant: string, sources: string[] | null) =>
    (sources ?? ['tickets', 'notes']).filter((s, i, all) => all.indexOf(s) === i)
      .reduce((n, s) => n + (sizes.get(tenant)?.[s as 'tickets' | 'notes'] ?? 0), 0);
  const random = mulberry32(SEED);
  const normal = gaussian(random);
  const randomQuery = () => Array.from({ length: 8 }, normal);
  const pick = <T>(items: readonly T[]): T => items[Math.floor(random() * items.length)]!;

  beforeAll(async () => {
    db = await freshDatabase('search_isolation');
    // Random sizes; a few rows with a NULL or empty tenant, which no tenant may ever read.
    const tickets: Array<[number, string | null]> = [];
    const notes: Array<[string, string | null]> = [];
    for (const tenant of TENANTS) {
      for (let i = Math.floor(random() * 120) + 1; i > 0; i--) tickets.push([tickets.length + 1, tenant]);
      for (let i = Math.floor(random() * 40); i > 0; i--) notes.push([`n-${notes.length + 1}`, tenant]);
    }
    tickets.push([tickets.length + 1, null], [tickets.length + 2, '']);
    await db.query('create table tickets (id integer primary key, tenant text, body text not null)');
    await db.query(`insert into tickets select id, tenant, 'ticket ' || id from unnest($1::int[], $2::text[]) t(id, tenant)`,
      [tickets.map((t) => t[0]), tickets.map((t) => t[1])]);
    await db.query('create table notes (id text primary key, owner text, body text not null)');
    await db.query(`insert into notes select id, owner, 'note ' || id from unnest($1::text[], $2::text[]) t(id, owner)`,
      [notes.map((t) => t[0]), notes.map((t) => t[1])]);
    await db.query(`select regen.create_version('iso@1', 'synthetic', 8, settings => '{"chunk_overlap": 0}')`);
    await db.query(`select regen.register_source('tickets', 'tickets', 'id', 'body', tenant_column => 'tenant', version => 'iso@1')`);
    await db.query(`select regen.register_source('notes', 'notes', 'id', 'body', tenant_column => 'owner', version => 'iso@1')`);
    await embedWith(db, 'tickets', 'iso@1', tickets.map((t) => String(t[0])), (text) => vectorOf(text, 8));
    await embedWith(db, 'notes', 'iso@1', notes.map((t) => t[0]), (text) => vectorOf(text, 8));
    for (const [id, tenant] of tickets) tenantOf.set(`tickets/${id}/1`, tenant);
    for (const [id, tenant] of notes) tenantOf.set(`notes/${id}/1`, tenant);
    for (const [source, list] of [['tickets', tickets], ['notes', notes]] as const) {
      for (const [, tenant] of list) {
        if (tenant === null) continue;
        const entry = sizes.get(tenant) ?? { tickets: 0, notes: 0 };
        entry[source] += 1;
        sizes.set(tenant, entry);
      }
    }
    const { rows: [stored] } = await db.query('select count(*)::int as n from regen._embeddings');
    expect(stored.n).toBe(tickets.length + notes.length);
    app = await createRole(db, 'app', { grant: 'app' });
    roles.push(app);
  });

  afterAll(async () => {
    for (const role of roles) await role.drop();
  });

  it('returns only the tenant\'s own rows, min(k, scope) of them, over many random searches on both paths', async () => {
    const candidates = [...TENANTS, 'ghost', 'ACME', 'acme%', "' or 1=1 --", 'acme\'--'];
    let searched = 0;
    for (let i = 0; i < 150; i++) {
      const tenant = pick(candidates);
      const k = pick([1, 3, 10, 50, 1000]);
      const sources = pick([null, ['tickets'], ['notes'], ['notes', 'tickets', 'notes']]);
      const version = pick([null, 'iso@1']);
      // half of the searches take the approximate path (HNSW scan, then the exact fallback)
      const exactMaxRows = random() < 0.5 ? undefined : 0;
      const what = `search ${i}: tenant ${JSON.stringify(tenant)}, k ${k}, sources ${JSON.stringify(sources)}, exact max ${exactMaxRows}`;
      const { hits } = await searchAs(app.pool, tenant, randomQuery(), { k, sources, version, exactMaxRows });
      expect(hits.length, what).toBe(Math.min(k, scopeOf(tenant, sources)));
      for (const hit of hits) expect(tenantOf.get(keyOf(hit)), `${what}: ${keyOf(hit)}`).toBe(tenant);
      expectSorted(hits, what);
      searched += hits.length;
    }
    expect(searched).toBeGreaterThan(1000);   // the loop did look at rows
  });

  it('treats crafted tenant, sources and version values as data', async () => {
    const query = randomQuery();
    // tenants named like SQL exist as data: each reads exactly its own rows
    for (const tenant of ["acme' or '1'='1", "x'); delete from regen._embeddings; --", '%', '_']) {
      const { hits } = await searchAs(app.pool, tenant, query, { k: 1000 });
      expect(hits.length, tenant).toBe(scopeOf(tenant, null));
      expect(hits.every((h) => tenantOf.get(keyOf(h)) === tenant), tenant).toBe(true);
    }
    for (const tenant of ["' or 1=1 --", "acme'; --", '*', "acme' || '"]) {
      expect((await searchAs(app.pool, tenant, query, { k: 1000 })).hits, tenant).toEqual([]);
    }
    await expect(searchAs(app.pool, 'acme', query, { sources: ["tickets' or '1'='1"] }))
      .rejects.toMatchObject({ code: 'RG010', message: "unknown source 'tickets'' or ''1''=''1'" });
    await expect(searchAs(app.pool, 'acme', query, { sources: ['tickets', 'notes"); select * from regen._embeddings; --'] }))
      .rejects.toMatchObject({ code: 'RG010', message: `unknown source 'notes"); select * from regen._embeddings; --'` });
    await expect(searchAs(app.pool, 'acme', query, { version: "iso@1' or '1'='1" }))
      .rejects.toMatchObject({ code: 'RG001', message: "unknown version 'iso@1'' or ''1''=''1'" });
    await expect(searchAs(app.pool, 'acme', query, { version: 'iso@1; drop table tickets' }))
      .rejects.toMatchObject({ code: 'RG001', message: "unknown version 'iso@1; drop table tickets'" });
    // bad arguments are refused, not bent
    for (const k of [0, 1001, -1]) {
      await expect(searchAs(app.pool, 'acme', query, { k })).rejects.toMatchObject({ code: 'RG041', message: `k must be between 1 and 1000, not ${k}` });
    }
    await expect(searchAs(app.pool, 'acme', query, { maxDistance: Number.NaN }))
      .rejects.toMatchObject({ code: 'RG041', message: 'max_distance must be a number, not NaN' });
    await expect(searchAs(app.pool, 'acme', query, { exactMaxRows: -1 })).rejects.toMatchObject({
      code: 'RG041', message: "regen.search_exact_max_rows must be an integer between 0 and 100000000, not '-1'" });
    // and nothing was touched
    const { rows: [after] } = await db.query(`select (select count(*) from regen._embeddings)::int as vectors,
                                                     (select count(*) from tickets)::int as tickets`);
    expect(after).toEqual({ vectors: tenantOf.size, tickets: [...tenantOf.keys()].filter((k) => k.startsWith('tickets/')).length });
  });

  it('reads regen._embeddings directly only for the tenant set in this transaction', async () => {
    await inTransaction(app, async (q) => {
      expect(await q('select count(*)::int as n from regen._embeddings')).toEqual([{ n: 0 }]);
      await q(`select regen.set_tenant('acme')`);
      expect(await q('select tenant, count(*)::int as n from regen._embeddings group by tenant'))
        .toEqual([{ tenant: 'acme', n: scopeOf('acme', null) }]);
      expect(await q(`select count(*)::int as n from regen._embeddings where tenant <> 'acme' or tenant is null`)).toEqual([{ n: 0 }]);
    });
    // switching row-level security off is not the role's to do
    await inTransaction(app, async (q) => {
      await q(`select regen.set_tenant('acme')`);
      await q('set local row_security = off');
      await expect(q('select count(*) from regen._embeddings'))
        .rejects.toMatchObject({ code: '42501', message: 'query would be affected by row-level security policy for table "_embeddings"' });
    });
    for (const [sql, message] of [
      ['alter table regen._embeddings disable row level security', 'must be owner of table _embeddings'],
      ['alter table regen._embeddings no force row level security', 'must be owner of table _embeddings'],
      ['create policy mine on regen._embeddings for select using (true)', 'must be owner of table _embeddings'],
      ['drop policy tenant_isolation on regen._embeddings', 'must be owner of relation _embeddings'],
    ]) {
      await expect(app.pool.query(sql!), sql).rejects.toMatchObject({ code: '42501', message });
    }
  });

  it('denies every other table, view and function of regen, and everything to a role without grants', async () => {
    const denied = async (sql: string, message: string) =>
      expect(app.pool.query(sql), sql).rejects.toMatchObject({ code: '42501', message });
    for (const sql of [`update regen._embeddings set tenant = 'acme'`, 'delete from regen._embeddings', 'truncate regen._embeddings',
      `insert into regen._embeddings select * from regen._embeddings`]) {
      await denied(sql, 'permission denied for table _embeddings');
    }
    for (const view of ['embedding_gap_by_tenant', 'failed_items', 'rejected_writes']) {
      await denied(`select * from regen.${view}`, `permission denied for view ${view}`);
    }
    for (const table of ['_items', '_cache', '_rejections', '_gap_counts', '_gap_deltas']) {
      await denied(`select * from regen.${table}`, `permission denied for table ${table}`);
    }
    const calls: Array<[string, string]> = [
      ['prepare_inputs', `select * from regen.prepare_inputs('tickets', 'iso@1', array['1'])`],
      ['write_embeddings', `select * from regen.write_embeddings('tickets', 'iso@1', array['1'], array[1], array['\\x00'::bytea],
                                                                 array['[1,0,0,0,0,0,0,0]'::vector])`],
      ['rebuild', 'select * from regen.rebuild()'],
      ['create_version', `select regen.create_version('mine', 'm', 8)`],
      ['unregister_source', `select regen.unregister_source('tickets')`],
      ['retry_failed', 'select regen.retry_failed()'],
    ];
    for (const [name, sql] of calls) await denied(sql, `permission denied for function ${name}`);
    // what grant_app does give: the catalog views, and a gap view that names no tenant
    expect((await app.pool.query('select tag from regen.versions')).rows).toEqual([{ tag: 'iso@1' }]);
    expect((await app.pool.query('select * from regen.embedding_gap')).fields.map((f) => f.name)).not.toContain('tenant');

    const bare = await createRole(db, 'bare', { grant: 'none' });
    roles.push(bare);
    for (const sql of [`select regen.set_tenant('acme')`, `select * from regen.search_scoped('[1,0,0,0,0,0,0,0]'::vector)`,
      'select count(*) from regen._embeddings', 'select * from regen.versions']) {
      await expect(bare.pool.query(sql), sql).rejects.toMatchObject({ code: '42501', message: 'permission denied for schema regen' });
    }
  });

  it('leaves no function of regen but the granted ones executable by the application (nor by PUBLIC)', async () => {
    // grant_admin and its kin, called by the application: refused before they run
    for (const name of ['grant_admin', 'grant_app', 'revoke_app', 'revoke_admin']) {
      await expect(app.pool.query(`select regen.${name}(current_user::regrole)`), name)
        .rejects.toMatchObject({ code: '42501', message: `permission denied for function ${name}` });
    }
    // the catalog's answer, for every function (trigger functions cannot be called)
    const executable = async (grantee: string) => (await db.query<{ fn: string }>(
      `select p.oid::regprocedure::text as fn from pg_proc p
        where p.pronamespace = 'regen'::regnamespace and p.prorettype <> 'trigger'::regtype
          and has_function_privilege($1, p.oid, 'EXECUTE') order by 1`, [grantee])).rows.map((r) => r.fn);
    expect(await executable('public')).toEqual([]);
    expect(await executable(app.name)).toEqual([
      'regen._exact_chunks(vector,integer,integer,integer[],text,text,double precision)',
      'regen._exact_hits(vector,integer,integer,integer[],text,text,double precision,boolean)',
      'regen._exact_rows(vector,integer,integer,integer[],text,text,double precision)',
      'regen._policy_tenant()', 'regen._search(vector,integer,text[],text,double precision,boolean)',
      'regen._search_scope(text[],text)', 'regen._search_setting(text,integer,integer,integer)',
      'regen._small_scope(text,integer,text[],text)', 'regen._small_tenant(text,integer,integer[])', 'regen._transaction_marker()', 'regen.current_tenant()', 'regen.preprocess(text,jsonb)', 'regen.search_input(text,text[],text)',
      'regen.search_rows(vector,integer,text[],text,double precision)', 'regen.search_scoped(vector,integer,text[],text,double precision)',
      'regen.search_tenant(text,vector,integer,text[],text,double precision,boolean)', 'regen.set_tenant(text)',
    ]);
  });

  it('an admin role (grant_admin) sees every tenant; grant_app refuses roles that bypass row-level security', async () => {
    const admin = await createRole(db, 'admin', { grant: 'admin' });
    roles.push(admin);
    expect((await admin.pool.query('select count(*)::int as n from regen._embeddings')).rows).toEqual([{ n: tenantOf.size }]);
    for (const attributes of ['superuser', 'bypassrls']) {
      const role = await createRole(db, attributes, { attributes });
      roles.push(role);
      await expect(db.query('select regen.grant_app($1)', [role.name])).rejects.toMatchObject({
        code: 'RG043', message: `role ${role.name} bypasses row-level security (superuser or BYPASSRLS)` });
    }
    await expect(db.query(`select regen.grant_app('postgres')`)).rejects.toMatchObject({
      code: 'RG043', message: 'role postgres bypasses row-level security (superuser or BYPASSRLS)' });
  });

  it('refuses a search without set_tenant in this transaction, whatever the connection carries over', async () => {
    const query = vectorText(randomQuery());
    const pid = async () => (await app.pool.query('select pg_backend_pid() as pid')).rows[0].pid as number;
    const first = await pid();
    const NOT_SET = { code: 'RG040', message: 'no tenant set for this transaction' };
    const NOT_BY_SET_TENANT = { code: 'RG040', message: 'regen.tenant_id was not set by regen.set_tenant() in this transaction' };
    /** The next transaction on the pooled connection: search_scoped refuses, and the store shows no row. */
    const nextTransactionRefuses = async (error: object) => {
      await inTransaction(app, async (q) => {
        await expect(q('select * from regen.search_scoped($1::vector)', [query])).rejects.toMatchObject(error);
      });
      await inTransaction(app, async (q) => {
        expect(await q('select count(*)::int as n from regen._embeddings')).toEqual([{ n: 0 }]);
      });
    };

    // forgotten set_tenant
    await inTransaction(app, async (q) => {
      await expect(q('select * from regen.search_scoped($1::vector)', [query])).rejects.toMatchObject({
        ...NOT_SET, hint: "inside the transaction, before searching: select regen.set_tenant('<tenant>')" });
    });
    // SET LOCAL by hand, in the search's own transaction
    await inTransaction(app, async (q) => {
      await q(`set local regen.tenant_id = 'acme'`);
      await expect(q('select * from regen.search_scoped($1::vector)', [query])).rejects.toMatchObject(NOT_BY_SET_TENANT);
    });
    // a session-level SET outlives its transaction and follows the connection back to the pool
    await app.pool.query(`set regen.tenant_id = 'acme'`);
    await nextTransactionRefuses(NOT_BY_SET_TENANT);
    // ... and set_tenant in the next transaction still reads only that transaction's tenant
    const { hits } = await searchAs(app.pool, 'globex', query, { k: 1000 });
    expect(hits.length).toBe(scopeOf('globex', null));
    expect(hits.every((h) => tenantOf.get(keyOf(h)) === 'globex')).toBe(true);
    // a tenant and marker set at session level (set_config(..., false)) in an earlier transaction
    await app.pool.query(`select set_config('regen.tenant_id', 'acme', false), set_config('regen.tenant_marker', regen._transaction_marker(), false)`);
    await nextTransactionRefuses(NOT_BY_SET_TENANT);
    await app.pool.query('reset regen.tenant_id; reset regen.tenant_marker');
    // set_tenant in a transaction of its own (autocommit), or in one that committed
    await app.pool.query(`select regen.set_tenant('acme')`);
    await nextTransactionRefuses(NOT_SET);
    await inTransaction(app, async (q) => {
      await q(`select regen.set_tenant('acme')`);
      await q('commit');
    });
    await nextTransactionRefuses(NOT_SET);
    // all of it on one pooled connection
    expect(await pid()).toBe(first);
    await expect(app.pool.query(`select regen.set_tenant('')`)).rejects.toMatchObject({ code: 'RG040', message: "tenant must be a non-empty text, not ''" });
    await expect(app.pool.query('select regen.set_tenant(null)')).rejects.toMatchObject({ code: 'RG040', message: 'tenant must be a non-empty text, not NULL' });
  });
});
