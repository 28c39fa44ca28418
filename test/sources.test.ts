// Sources: registration (existing rows captured in one pass), the change-capture triggers for every
// DML kind, and bad input that must leave nothing behind.
import { beforeEach, describe, expect, it } from 'vitest';
import { freshDatabase, keepOnFailure, type TestDatabase } from './support/db.ts';
import { allRowIds, applyChanges, embedRows, gap, setupArticles, sha256 } from './support/fixtures.ts';

const db: TestDatabase = await freshDatabase();
keepOnFailure(db);

async function reset(): Promise<void> {
  await db.query(`select regen.unregister_source(name) from regen._sources`);
  await db.query('drop table if exists articles');
  await db.query('delete from regen._versions');
  await db.query('truncate regen._cache, regen._rejections');
  await setupArticles(db);
}

async function item(rowId: string) {
  const { rows } = await db.query(
    `select row_id, tenant, priority, content_hash, regen._state(content_hash, embedded_hash, failed_hash, has_legacy) as state
       from regen._items where row_id = $1`, [rowId]);
  return rows[0];
}

describe('register_source', () => {
  beforeEach(reset);

  it('captures every existing row in one set-based pass with the hash of exactly the text to embed', async () => {
    expect(await gap(db)).toEqual({ expected: 30, current: 0, missing: 30, stale: 0, outdated: 0, failed: 0 });
    const row = await item('7');
    expect(row).toMatchObject({ tenant: 'tenant_1', priority: 7, state: 'missing' });
    expect(row.content_hash).toEqual(sha256('Title 7\n\nBody of article 7.'));
    // one statement, not one trigger call per row: the counters got one delta per (tenant, state)
    const deltas = await db.query('select count(*)::int as n, sum(n)::int as total from regen._gap_deltas');
    expect(deltas.rows[0]).toEqual({ n: 3, total: 30 });
  });

  it('captures 20,000 existing rows and counts them exactly', async () => {
    await db.query(`insert into articles (id, tenant, title, body) select g, 't' || (g % 7), 'T' || g, 'B' from generate_series(1000, 20999) g`);
    // re-register to capture the now larger table from scratch
    await db.query(`select regen.unregister_source('articles')`);
    await db.query(`select regen.register_source('articles', 'articles', 'id', 'title', 'tenant', version => 'test@1')`);
    expect((await gap(db)).missing).toBe(20_030);
    const byTenant = await db.query(`select sum(expected)::int as n, count(*)::int as tenants from regen.embedding_gap_by_tenant`);
    expect(byTenant.rows[0]).toEqual({ n: 20_030, tenants: 10 });
  });

  it('honours the filter expression on registration and on every change', async () => {
    await db.query(`update articles set published = false where id <= 5`);
    expect((await gap(db)).expected).toBe(25);
    await db.query(`update articles set published = true where id = 1`);
    expect((await gap(db)).expected).toBe(26);
  });
});

describe('change capture', () => {
  beforeEach(async () => {
    await reset();
    await embedRows(db, await allRowIds(db));
    expect(await gap(db)).toMatchObject({ expected: 30, current: 30 });
  });

  it('INSERT: new rows are missing, one statement for many rows', async () => {
    await db.query(`insert into articles (id, tenant, title, body) select g, 'tenant_9', 'New ' || g, 'x' from generate_series(100, 149) g`);
    expect(await gap(db)).toMatchObject({ expected: 80, current: 30, missing: 50 });
  });

  it('UPDATE of a column outside the embedded text changes no state; of the text makes the row stale', async () => {
    await db.query(`update articles set views = views + 1000`);
    await db.query(`update articles set title = title where id = 3`);   // same text
    expect(await gap(db)).toMatchObject({ current: 30, stale: 0 });
    // the columns the source reads changed on 30 rows (views, the priority) and on none (title = title)
    expect(await applyChanges(db)).toBe(30);
    expect((await item('3')).priority).toBe(1003);
    await db.query(`update articles set body = 'edited' where id in (3, 4)`);
    expect(await gap(db)).toMatchObject({ current: 28, stale: 2 });   // exact before the log is applied
    await applyChanges(db);
    expect(await gap(db)).toMatchObject({ current: 28, stale: 2 });
    expect((await item('3')).content_hash).toEqual(sha256('Title 3\n\nedited'));
  });

  it('a change of priority or tenant alone enqueues nothing and leaves waiting work in its job; inserts and text edits go ahead as fresh', async () => {
    const jobs = async () => (await db.query(`select data->>'fresh' as fresh, count(*)::int as n from pgboss.job
                                               where name like 'regen\\_embed\\_v%' group by 1 order by 1`)).rows;
    const queueJob = async (id: string) => (await db.query(`select queue_job from regen._items where row_id = $1`, [id])).rows[0].queue_job;
    await db.query(`delete from pgboss.job where name like 'regen\\_embed\\_v%'`);
    await db.query(`update articles set body = 'edited' where id in (1, 2)`);   // stale now
    await applyChanges(db);
    await db.query(`update regen._items set queue_job = null, fresh = false`);  // and out of the queue
    await db.query(`delete from pgboss.job where name like 'regen\\_embed\\_v%'`);
    await db.query(`select * from regen.rebuild()`);                            // backfill: rows 1 and 2
    expect(await jobs()).toEqual([{ fresh: 'false', n: 1 }]);
    const waiting = await queueJob('1');
    // a view count refresh and a tenant move of waiting and of current rows: no new job, same job
    await db.query(`update articles set views = views + 5000 where id in (1, 7)`);
    await db.query(`update articles set tenant = 'tenant_x' where id in (2, 8)`);
    await applyChanges(db);
    expect(await jobs()).toEqual([{ fresh: 'false', n: 1 }]);
    expect(await queueJob('1')).toBe(waiting);
    expect(await queueJob('7')).toBeNull();
    expect((await item('1')).priority).toBe(5001);
    expect((await item('2')).tenant).toBe('tenant_x');
    // a text edit and an insert are fresh edits
    await db.query(`update articles set body = 'edited again' where id = 7`);
    await db.query(`insert into articles (id, tenant, title, body) values (500, 'tenant_0', 'New', 'x')`);
    // logged in the application's transaction, marked fresh and enqueued outside it (the worker calls
    // enqueue_fresh, which applies the log first)
    expect(await jobs()).toEqual([{ fresh: 'false', n: 1 }]);
    expect((await db.query(`select row_id from regen._items where fresh order by row_id`)).rows).toEqual([]);
    expect(await applyChanges(db)).toBe(2);
    expect((await db.query(`select row_id from regen._items where fresh order by row_id`)).rows.map((r) => r.row_id)).toEqual(['500', '7']);
    expect((await db.query(`select regen.enqueue_fresh() as n`)).rows[0].n).toBe('2');
    expect(await jobs()).toEqual([{ fresh: 'false', n: 1 }, { fresh: 'true', n: 1 }]);   // one job for both edits
    expect((await db.query(`select count(*)::int as n from regen._items where fresh`)).rows[0].n).toBe(0);
  });

  it('UPDATE of the id moves the item, and its old vectors go', async () => {
    await db.query(`update articles set id = 1000 where id = 5`);
    expect(await gap(db)).toMatchObject({ expected: 30, current: 29, missing: 1 });   // exact before the log is applied
    await applyChanges(db);
    expect(await item('5')).toBeUndefined();
    expect((await item('1000')).state).toBe('missing');
    const vectors = await db.query(`select count(*)::int as n from regen._embeddings where row_id = '5'`);
    expect(vectors.rows[0].n).toBe(0);
    expect(await gap(db)).toMatchObject({ expected: 30, current: 29, missing: 1 });
  });

  it('UPDATE of the tenant moves the stored vectors to the new tenant', async () => {
    await db.query(`update articles set tenant = 'tenant_x' where id = 6`);
    await applyChanges(db);
    const { rows } = await db.query(`select distinct tenant from regen._embeddings where row_id = '6'`);
    expect(rows).toEqual([{ tenant: 'tenant_x' }]);
    expect((await item('6')).state).toBe('current');
  });

  it('UPDATE that nulls the text removes the row from the gap', async () => {
    await db.query(`alter table articles alter column title drop not null`);
    await db.query(`update articles set title = null where id = 8`);
    expect((await gap(db)).expected).toBe(29);   // exact before the log is applied
    await applyChanges(db);
    expect(await item('8')).toBeUndefined();
    expect((await gap(db)).expected).toBe(29);
  });

  it('DELETE removes items and vectors; the vectors stay in the cache', async () => {
    await db.query(`delete from articles where id between 1 and 10`);
    expect(await gap(db)).toMatchObject({ expected: 20, current: 20 });
    await applyChanges(db);
    const left = await db.query(`select count(*)::int as n from regen._embeddings where row_id::int <= 10`);
    expect(left.rows[0].n).toBe(0);
    expect((await db.query(`select count(*)::int as n from regen._cache`)).rows[0].n).toBe(10);
  });

  it('TRUNCATE removes every item and vector of the source', async () => {
    await db.query(`truncate articles`);
    expect(await gap(db)).toMatchObject({ expected: 0, current: 0, missing: 0 });
    expect((await db.query(`select count(*)::int as n from regen._embeddings`)).rows[0].n).toBe(0);
  });

  it('a rolled-back edit leaves no trace', async () => {
    const client = await db.pool.connect();
    try {
      await client.query('begin');
      await client.query(`update articles set body = 'draft' where id = 2`);
      await client.query(`delete from articles where id = 3`);
      await client.query('rollback');
    } finally {
      client.release();
    }
    expect(await gap(db)).toMatchObject({ expected: 30, current: 30, stale: 0 });
  });

  it('keeps the counters exact under a random mix of statements', async () => {
    for (let round = 0; round < 20; round++) {
      const pick = round % 5;
      if (pick === 0) await db.query(`update articles set body = md5(random()::text) where random() < 0.2`);
      if (pick === 1) await db.query(`insert into articles (id, tenant, title) select max(id) + 1, 'tenant_1', 'n' from articles`);
      if (pick === 2) await db.query(`delete from articles where id = (select min(id) from articles)`);
      if (pick === 3) await embedRows(db, await allRowIds(db));
      if (pick === 4) await db.query(`select regen.compact_gap()`);
    }
    // the gap is exact with changes still waiting in the log: it equals a count over the items once
    // the log is applied
    const view = await gap(db);
    await applyChanges(db);
    expect(await gap(db)).toEqual(view);
    const brute = await db.query(
      `select regen._state(content_hash, embedded_hash, failed_hash, has_legacy) as state, count(*)::int as n
         from regen._items group by 1`);
    const counted = Object.fromEntries(brute.rows.map((r) => [r.state, r.n]));
    expect(view.current).toBe(counted.current ?? 0);
    expect(view.stale).toBe(counted.stale ?? 0);
    expect(view.missing).toBe(counted.missing ?? 0);
    expect(view.expected).toBe((await db.query(`select count(*)::int as n from articles`)).rows[0].n);
  });
});

describe('gap counters', () => {
  beforeEach(reset);

  it('fold themselves every 1,000 statements, with no worker running, and stay exact', async () => {
    await db.query(`select regen.compact_gap()`);
    for (let i = 0; i < 1_100; i++) {
      await db.query(`update articles set body = $1 where id = $2`, [`edit ${i}`, (i % 30) + 1]);
    }
    const deltas = await db.query('select count(*)::int as n from regen._gap_deltas');
    expect(deltas.rows[0].n).toBeLessThan(1_000);
    expect((await db.query('select count(*)::int as n from regen._gap_counts')).rows[0].n).toBeGreaterThan(0);
    expect(await gap(db)).toEqual({ expected: 30, current: 0, missing: 30, stale: 0, outdated: 0, failed: 0 });
    await embedRows(db, await allRowIds(db));
    await db.query(`update articles set body = 'again' where id <= 4`);
    expect(await gap(db)).toEqual({ expected: 30, current: 26, missing: 0, stale: 4, outdated: 0, failed: 0 });
  });
});

describe('bad input leaves nothing behind', () => {
  beforeEach(async () => {
    await reset();
    await db.query(`select regen.unregister_source('articles')`);
  });

  async function nothingLeft(): Promise<void> {
    const triggers = await db.query(`select count(*)::int as n from pg_trigger where tgrelid = 'articles'::regclass and not tgisinternal`);
    expect(triggers.rows[0].n).toBe(0);
    for (const table of ['_sources', '_source_versions', '_items', '_gap_deltas', '_gap_counts']) {
      expect((await db.query(`select count(*)::int as n from regen.${table}`)).rows[0].n, table).toBe(0);
    }
    const fns = await db.query(`select count(*)::int as n from pg_proc where pronamespace = 'regen'::regnamespace and proname like 'tg\\_%\\_\\_capture'`);
    expect(fns.rows[0].n).toBe(0);
    expect((await db.query(`select count(*)::int as n from articles`)).rows[0].n).toBe(30);
  }

  const register = (args: Record<string, string | null>) => db.query(
    `select regen.register_source($1, $2::regclass, $3, $4, tenant_column => $5, priority_expression => $6,
                                  filter_expression => $7, version => $8)`,
    [args.name ?? 'articles', args.relation ?? 'articles', args.id ?? 'id', args.content ?? 'title', args.tenant ?? null,
     args.priority ?? null, args.filter ?? null, 'version' in args ? args.version : 'test@1']);

  const cases: Array<[string, Record<string, string | null>, string | undefined, RegExp]> = [
    ['unknown table', { relation: 'no_such_table' }, '42P01', /relation "no_such_table" does not exist/],
    ['unknown id column', { id: 'nope' }, 'RG013', /^column nope does not exist in articles$/],
    ['unknown tenant column', { tenant: 'customer' }, 'RG013', /^column customer does not exist in articles$/],
    ['non-unique id column', { id: 'tenant' }, 'RG014', /^column tenant of articles is not unique$/],
    ['expression that does not compile', { content: 'titel || body' }, 'RG016', /^content expression does not compile: column "titel" does not exist$/],
    ['expression of the wrong type', { filter: 'now()' }, 'RG016', /^filter expression does not compile: cannot cast type timestamp with time zone to boolean$/],
    ['aggregate expression', { content: 'string_agg(title, \',\')' }, 'RG016', /must be computed from one row/],
    ['unknown version', { version: 'nope@9' }, 'RG001', /^unknown version 'nope@9'$/],
    ['missing version', { version: null }, 'RG001', /^source articles needs a version$/],
    ['bad source name', { name: 'Robert\'); drop table articles; --' }, 'RG011', /^source name must be/],
    ['injection by closing the parenthesis', { content: 'title) from articles; drop table articles; select (1' }, 'RG015', /contains a closing parenthesis without its opening one|contains a semicolon/],
    ['injection with a semicolon', { content: `title; drop table articles` }, 'RG015', /^content expression contains a semicolon$/],
    ['injection hidden by an E-string escape', { content: `E'\\'' ; drop table articles; select '` }, 'RG015', /semicolon/],
    ['injection in a dollar quote', { content: `$$x$$; drop table articles` }, 'RG015', /dollar sign/],
    ['injection with a comment', { filter: 'true --' }, 'RG015', /^filter expression contains a comment \(--\)$/],
    ['injection with a block comment', { priority: 'views /* */' }, 'RG015', /comment \(\/\*\)/],
    ['injection through a subquery breakout', { content: `title)::text, null, null from articles union select (rolpassword` }, 'RG015', /closing parenthesis/],
    ['injection in the id column name', { id: 'id"; drop table articles; --' }, 'RG013', /does not exist in articles/],
    ['unbalanced quote', { content: `'abc` }, 'RG015', /unterminated quoted string/],
  ];

  it.each(cases)('%s: a clear error and nothing half-installed', async (_label, args, code, message) => {
    const err = await register(args).then(() => null, (e) => e);
    expect(err, 'registration should have failed').not.toBeNull();
    expect(err.message).toMatch(message);
    if (code) expect(err.code).toBe(code);
    await nothingLeft();
    const tables = await db.query(`select count(*)::int as n from pg_class where relname = 'articles'`);
    expect(tables.rows[0].n).toBe(1);
  });

  it('an expression with quotes, E-strings and parentheses that is safe is accepted', async () => {
    await register({ content: `title || E'\\n\\n' || coalesce(body, 'it''s (empty); really -- no')` });
    const row = await item('1');
    expect(row.content_hash).toEqual(sha256('Title 1\n\nBody of article 1.'));
  });

  it('registering the same name twice is refused', async () => {
    await register({});
    const err = await register({}).catch((e) => e);
    expect(err.code).toBe('RG011');
    expect(err.message).toBe('source articles is already registered');
  });
});

describe('unregister_source', () => {
  it('removes triggers, items, vectors and the generated function, leaving the table and its rows', async () => {
    await reset();
    await embedRows(db, await allRowIds(db));
    await db.query(`select regen.unregister_source('articles')`);
    const triggers = await db.query(`select count(*)::int as n from pg_trigger where tgrelid = 'articles'::regclass and not tgisinternal`);
    expect(triggers.rows[0].n).toBe(0);
    expect((await db.query(`select count(*)::int as n from regen._embeddings`)).rows[0].n).toBe(0);
    expect((await db.query(`select count(*)::int as n from regen._items`)).rows[0].n).toBe(0);
    expect((await db.query(`select count(*)::int as n from articles`)).rows[0].n).toBe(30);
    await db.query(`update articles set body = 'free again'`);
    const err = await db.query(`select regen.unregister_source('articles')`).catch((e) => e);
    expect(err.code).toBe('RG010');
    expect(err.message).toBe(`unknown source 'articles'`);
  });
});

