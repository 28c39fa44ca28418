// regen.search_scoped(): invariant 3 (exact within scope for every tenant size, a stated recall on
// the approximate path, never another tenant's row) and invariant 1 (no query compares two
// versions). Every search runs as an application role (regen.grant_app), under row-level security,
// one transaction per search; the answers it must give are computed by the superuser.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mulberry32 } from '../src/prng.ts';
import { freshDatabase, keepOnFailure, type TestDatabase } from './support/db.ts';
import { vectorOf } from './support/fixtures.ts';
import {
  bruteForce, createRole, embedWith, expectExactTopK, expectSorted, gaussian, hnswIndexOf, inTransaction, keyOf, LARGE,
  loadLargeStore, searchAs, SIZED_TENANTS, trueDistances, vectorText, type Hit, type TestRole,
} from './support/search.ts';

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
      'regen._policy_tenant()', 'regen._search_scope(text[],text)', 'regen._search_setting(text,integer,integer,integer)',
      'regen._transaction_marker()', 'regen.current_tenant()', 'regen.preprocess(text,jsonb)', 'regen.search_input(text,text[],text)',
      'regen.search_scoped(vector,integer,text[],text,double precision)', 'regen.set_tenant(text)',
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

describe('versions: a search reads one version, the active one or the one named', () => {
  let db: TestDatabase;
  let app: TestRole;
  keepOnFailure(() => db);
  const random = mulberry32(SEED + 1);
  const normal = gaussian(random);
  /** the vectors of row r's text in v1 (active) and in v2 (the migration's, half built): distinct values */
  const v1 = (text: string) => vectorOf(text, 8);
  const v2 = (text: string) => vectorOf(`v2 ${text}`, 8).map((x) => 3 * x);
  const v1Scope = { version: 'v1@8', tenant: 'a', sources: ['docs'], distance: 'cosine' as const };
  const v2Scope = { version: 'v2@8', tenant: 'a', sources: ['docs'], distance: 'l2' as const };
  let v2Rows: string[];

  beforeAll(async () => {
    db = await freshDatabase('search_versions');
    await db.query(`create table docs (id integer primary key, tenant text not null, body text not null)`);
    await db.query(`insert into docs select g, case when g % 3 = 0 then 'b' else 'a' end, 'doc ' || g from generate_series(1, 300) g`);
    await db.query(`create table notes (id integer primary key, tenant text not null, body text not null)`);
    await db.query(`insert into notes select g, case when g % 2 = 0 then 'b' else 'a' end, 'note ' || g from generate_series(1, 100) g`);
    await db.query(`select regen.create_version('v1@8', 'synthetic', 8, settings => '{"chunk_overlap": 0}')`);
    await db.query(`select regen.create_version('v2@8', 'synthetic', 8, settings => '{"chunk_overlap": 0, "distance": "l2"}')`);
    await db.query(`select regen.create_version('v3@12', 'synthetic', 12, settings => '{"chunk_overlap": 0, "distance": "inner_product"}')`);
    await db.query(`select regen.register_source('docs', 'docs', 'id', 'body', tenant_column => 'tenant', version => 'v1@8')`);
    await db.query(`select regen.register_source('notes', 'notes', 'id', 'body', tenant_column => 'tenant', version => 'v3@12')`);
    // A migration of docs to v2, half built. regen.start_migration() is not written yet: as the
    // owner, attach v2 as 'building' and give it the items v1 has, then embed half of the rows.
    await db.query(`insert into regen._source_versions (source_id, version_id, role)
                    select s.id, v.id, 'building' from regen._sources s, regen._versions v where s.name = 'docs' and v.tag = 'v2@8'`);
    await db.query(`insert into regen._items (source_id, version_id, row_id, tenant, priority, content_hash)
                    select it.source_id, v2.id, it.row_id, it.tenant, it.priority, it.content_hash
                    from regen._items it join regen._versions v1 on v1.id = it.version_id, regen._versions v2
                    where v1.tag = 'v1@8' and v2.tag = 'v2@8'`);
    const ids = Array.from({ length: 300 }, (_, i) => String(i + 1));
    v2Rows = ids.filter((id) => Number(id) % 2 === 0);
    await embedWith(db, 'docs', 'v1@8', ids, v1);
    await embedWith(db, 'docs', 'v2@8', v2Rows, v2);
    await embedWith(db, 'notes', 'v3@12', Array.from({ length: 100 }, (_, i) => String(i + 1)), (text) => vectorOf(text, 12));
    app = await createRole(db, 'app', { grant: 'app' });
  });

  afterAll(async () => {
    await app?.drop();
  });

  /** Queries: a v2 vector of a row of tenant a (a search mixing in v2 would find it at distance 0), a v1 vector, random ones. */
  const queries = () => [v2('doc 2'), v1('doc 4'), v2('doc 8'), ...Array.from({ length: 3 }, () => Array.from({ length: 8 }, normal))];

  it('reads only the active version by default, and exactly', async () => {
    for (const [i, query] of queries().entries()) {
      for (const k of [5, 1000]) {
        const { hits } = await searchAs(app.pool, 'a', query, { k, sources: ['docs'] });
        expectExactTopK(hits, await bruteForce(db, v1Scope, query, k + 5), k, `query ${i}, k ${k}`);
        expect(hits.length).toBe(Math.min(k, 200));
      }
    }
    expect((await app.pool.query(`select version from regen.search_input('doc 2', array['docs'])`)).rows).toEqual([{ version: 'v1@8' }]);
  });

  it('reads only the named version, for a shadow read of the migration', async () => {
    for (const [i, query] of queries().entries()) {
      for (const sources of [['docs'], null]) {
        const { hits } = await searchAs(app.pool, 'a', query, { k: 1000, sources, version: 'v2@8' });
        expectExactTopK(hits, await bruteForce(db, v2Scope, query, 1000), 1000, `query ${i}, sources ${sources}`);
        expect(hits.length).toBe(v2Rows.filter((id) => Number(id) % 3 !== 0).length);
      }
    }
    const { hits } = await searchAs(app.pool, 'a', v2('doc 2'), { k: 1, version: 'v2@8' });
    expect(hits).toEqual([{ source: 'docs', row_id: '2', chunk_no: 1, distance: 0 }]);
    expect((await app.pool.query(`select version from regen.search_input('doc 2', version => 'v2@8')`)).rows).toEqual([{ version: 'v2@8' }]);
  });

  it('keeps the versions apart on the approximate path too', async () => {
    for (const [i, query] of queries().entries()) {
      for (const [scope, version] of [[v1Scope, null], [v2Scope, 'v2@8']] as const) {
        const { hits, scans } = await searchAs(app.pool, 'a', query,
          { k: 20, sources: ['docs'], version, exactMaxRows: 0, countScansOf: await hnswIndexOf(db, scope.version) });
        const what = `query ${i}, ${scope.version}`;
        expect(scans, `${what}: HNSW scans`).toBe(1);
        expect(hits.length, what).toBe(20);
        expectSorted(hits, what);
        // each hit at the distance of its own vector in this version, of tenant a
        const truth = await trueDistances(db, scope.version, scope.distance, query, hits);
        for (const hit of hits) expect(truth.get(keyOf(hit)), `${what}: ${keyOf(hit)}`).toEqual({ distance: hit.distance, tenant: 'a' });
      }
    }
  });

  it('refuses sources of different active versions, a version a source does not use, and a query of other dimensions', async () => {
    const q8 = Array.from({ length: 8 }, normal);
    const q12 = Array.from({ length: 12 }, normal);
    const mixed = {
      code: 'RG042',
      message: 'the sources in scope have different active versions (docs: v1@8, notes: v3@12), and vectors of two versions are never compared',
    };
    await expect(searchAs(app.pool, 'a', q8)).rejects.toMatchObject(mixed);
    await expect(searchAs(app.pool, 'a', q8, { sources: ['notes', 'docs'] })).rejects.toMatchObject(mixed);
    await expect(app.pool.query(`select * from regen.search_input('doc 2')`)).rejects.toMatchObject(mixed);
    await expect(searchAs(app.pool, 'a', q8, { sources: ['docs', 'notes'], version: 'v2@8' }))
      .rejects.toMatchObject({ code: 'RG042', message: "source 'notes' does not use version 'v2@8'" });
    await expect(searchAs(app.pool, 'a', q8, { version: 'v9' })).rejects.toMatchObject({ code: 'RG001', message: "unknown version 'v9'" });
    await expect(searchAs(app.pool, 'a', q12, { sources: ['docs'] }))
      .rejects.toMatchObject({ code: 'RG041', message: 'the query has 12 dimensions, version v1@8 has 8' });
    await expect(searchAs(app.pool, 'a', q12, { version: 'v2@8' }))
      .rejects.toMatchObject({ code: 'RG041', message: 'the query has 12 dimensions, version v2@8 has 8' });
    await expect(searchAs(app.pool, 'a', q8, { sources: ['notes'] }))
      .rejects.toMatchObject({ code: 'RG041', message: 'the query has 8 dimensions, version v3@12 has 12' });
    // one source, or the version named: fine, and exact (inner product)
    const notesScope = { version: 'v3@12', tenant: 'a', sources: ['notes'], distance: 'inner_product' as const };
    for (const args of [{ sources: ['notes'] }, { version: 'v3@12' }]) {
      const { hits } = await searchAs(app.pool, 'a', q12, { k: 10, ...args });
      expectExactTopK(hits, await bruteForce(db, notesScope, q12, 15), 10, JSON.stringify(args));
    }
  });
});

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
    process.stderr.write(`search.test.ts: recall@10 of the 100,000 tenant on the approximate path: ${recall.toFixed(3)} over ${recalls.length} queries\n`);
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
