// A source's expressions on the application's write path: refused at registration when they are
// not immutable (or the filter not boolean); when one raises on a row, that row's item fails with
// the error and the application's write goes through; a text that changes with no edit fails before
// any provider call. Also: retire drops only the retired version's index.
import { beforeEach, describe, expect, it } from 'vitest';
import { retire, cutover, startMigration } from '../src/migrate.ts';
import { prepareInputs } from '../src/store.ts';
import { buildVersionIndexes } from '../src/versions.ts';
import { freshDatabase, keepOnFailure, type TestDatabase } from './support/db.ts';
import { applyChanges, DIMS, embedRows, gap } from './support/fixtures.ts';

const db: TestDatabase = await freshDatabase();
keepOnFailure(db);

async function reset(): Promise<void> {
  await db.query(`select regen.unregister_source(name) from regen._sources`);
  await db.query('drop table if exists docs');
  await db.query('truncate regen._cache, regen._rejections');
  await db.query(`select regen.create_version('test@1', 'test-model', $1::int)`, [DIMS]);
  await db.query(`create table docs (
    id int primary key, tenant text not null default 't', title text not null, body text not null,
    views text not null default '0', flag text not null default '1', at timestamptz not null default now())`);
  await db.query(`insert into docs (id, title, body) select g, 'title ' || g, 'body ' || g from generate_series(1, 10) g`);
}

async function register(options: { content?: string; priority?: string; filter?: string; tenant?: string } = {}): Promise<void> {
  await db.query(`select regen.register_source('docs', 'docs', 'id', $1, tenant_column => $4, priority_expression => $2,
                                               filter_expression => $3, version => 'test@1')`,
    [options.content ?? 'title', options.priority ?? null, options.filter ?? null, options.tenant ?? 'tenant']);
}

/** The failed items, once the worker's side has applied the logged changes (regen.apply_changes). */
async function failed(): Promise<Array<{ row_id: string; error: string }>> {
  await applyChanges(db);
  const { rows } = await db.query<{ row_id: string; error: string }>(`select row_id, error from regen.failed_items order by row_id::int`);
  return rows;
}

describe('expressions that are not immutable are refused', () => {
  beforeEach(reset);

  it.each([
    ['content', { content: `body || random()::text` }, 'content expression'],
    ['content', { content: `body || now()::text` }, 'content expression'],
    ['content', { content: `body || at::text` }, 'content expression'],   // timestamptz::text follows the session's TimeZone
    ['filter', { filter: `at > now() - interval '1 day'` }, 'filter expression'],
    ['filter', { filter: `random() < 0.5` }, 'filter expression'],
    ['tenant', { tenant: 'at' }, 'tenant column at (as text)'],
  ])('%s: %o', async (_kind, options, what) => {
    await expect(register(options)).rejects.toMatchObject({
      code: 'RG016',
      message: `${what} must be immutable, computed from the row alone: functions in index expression must be marked IMMUTABLE`,
    });
    expect((await db.query(`select count(*)::int as n from regen._sources`)).rows[0].n).toBe(0);
    expect((await db.query(`select count(*)::int as n from pg_trigger where tgrelid = 'docs'::regclass`)).rows[0].n).toBe(0);
  });

  it('says so when the session has a temporary table of the same name, which the check needs', async () => {
    const client = await db.pool.connect();
    try {
      await client.query(`create temporary table docs (x int)`);
      await expect(client.query(`select regen.register_source('docs', 'public.docs', 'id', 'title', version => 'test@1')`)).rejects.toMatchObject({
        code: 'RG016', message: 'cannot check the content expression here: this session has a temporary table named docs' });
    } finally {
      await client.query('drop table if exists pg_temp.docs');
      client.release();
    }
  });

  it('a subquery is refused: the row alone must give the text', async () => {
    await expect(register({ content: `(select max(title) from docs)` })).rejects.toMatchObject({ code: 'RG016' });
  });

  it('a filter must be boolean: an integer is refused, not cast', async () => {
    await expect(register({ filter: 'id' })).rejects.toMatchObject({
      code: 'RG016', message: 'filter expression must be of type boolean, not integer',
    });
    await expect(register({ filter: `flag` })).rejects.toMatchObject({
      code: 'RG016', message: 'filter expression must be of type boolean, not text',
    });
    await register({ filter: `flag = '1'` });
    expect((await gap(db, 'docs')).expected).toBe(10);
  });
});

describe('an expression that raises on a row fails that row, never the application write', () => {
  beforeEach(reset);

  it('priority: INSERT and UPDATE go through; the row is a failed item with the error until an edit fixes it', async () => {
    await register({ priority: 'views::float8' });
    await db.query(`insert into docs (id, title, body, views) values (11, 'eleven', 'b', 'many'), (12, 'twelve', 'b', '12')`);
    await db.query(`update docs set views = 'lots' where id = 3`);
    expect((await db.query(`select count(*)::int as n from docs`)).rows[0].n).toBe(12);
    expect(await failed()).toEqual([
      { row_id: '3', error: 'an expression of source docs raised an error on this row: invalid input syntax for type double precision: "lots"' },
      { row_id: '11', error: 'an expression of source docs raised an error on this row: invalid input syntax for type double precision: "many"' },
    ]);
    expect(await gap(db, 'docs')).toMatchObject({ expected: 12, missing: 10, failed: 2 });
    // the good row of the same statement was captured as usual
    const twelve = await db.query(`select priority from regen._items where row_id = '12'`);
    expect(twelve.rows[0].priority).toBe(12);
    await db.query(`update docs set views = '3' where id = 3`);
    expect(await failed()).toHaveLength(1);
    expect(await gap(db, 'docs')).toMatchObject({ expected: 12, missing: 11, failed: 1 });
  });

  it('content: a COPY-sized statement with one bad row keeps every other row', async () => {
    await register({ content: `(title::int)::text` });   // every existing title fails: registration still succeeds
    expect(await gap(db, 'docs')).toMatchObject({ expected: 10, failed: 10 });
    await db.query(`insert into docs (id, title, body) select g, g::text, 'b' from generate_series(100, 1099) g`);
    await db.query(`insert into docs (id, title, body) values (2000, 'not a number', 'b')`);
    expect(await gap(db, 'docs')).toMatchObject({ expected: 1011, missing: 1000, failed: 11 });
    // the worker's side: a failed row retried fails alone, the others of its batch are prepared
    await db.query(`update docs set title = '7' where id = 7`);
    await db.query(`select regen.retry_failed('docs')`);
    const inputs = await prepareInputs(db, 'docs', 'test@1', ['7', '8', '100']);
    expect(inputs.map((i) => i.rowId)).toEqual(['100', '7']);
    expect((await failed()).find((f) => f.row_id === '8')?.error).toBe(
      'an expression of source docs raised an error on this row: invalid input syntax for type integer: "title 8"');
  });

  it('filter: the row fails, the write goes through', async () => {
    await register({ filter: `flag::int > 0` });
    await db.query(`update docs set flag = 'yes' where id = 5`);
    await db.query(`insert into docs (id, title, body, flag) values (50, 't', 'b', '?')`);
    expect((await failed()).map((f) => f.row_id)).toEqual(['5', '50']);
    await db.query(`update docs set flag = '0' where id = 5`);   // now filtered out: no item at all
    expect((await failed()).map((f) => f.row_id)).toEqual(['50']);
    expect((await gap(db, 'docs')).expected).toBe(10);
  });

  it('tenant: a cast to text that raises fails the row, the write goes through', async () => {
    await db.query(`drop type if exists region cascade`);
    await db.query(`create type region as enum ('eu', 'us', 'forbidden')`);
    await db.query(`create function region_text(r region) returns text language plpgsql immutable strict as $$
                    begin if r = 'forbidden' then raise exception 'region % has no tenant', r; end if; return r::name::text; end $$`);
    await db.query(`create cast (region as text) with function region_text(region)`);
    try {
      await db.query(`alter table docs add column region region not null default 'eu'`);
      await register({ tenant: 'region' });
      await db.query(`insert into docs (id, title, body, region) values (60, 't', 'b', 'forbidden'), (61, 't', 'b', 'us')`);
      expect(await failed()).toEqual([
        { row_id: '60', error: 'an expression of source docs raised an error on this row: region forbidden has no tenant' },
      ]);
      const tenants = await db.query(`select tenant, count(*)::int as n from regen._items group by 1 order by 1`);
      expect(tenants.rows).toEqual([{ tenant: 'eu', n: 10 }, { tenant: 'us', n: 1 }, { tenant: null, n: 1 }]);
      // the write went through
      expect((await db.query(`select count(*)::int as n from docs where id in (60, 61)`)).rows[0].n).toBe(2);
    } finally {
      await db.query(`select regen.unregister_source('docs')`);
      await db.query(`drop table docs`);
      await db.query(`drop cast (region as text)`);
      await db.query(`drop function region_text(region)`);
      await db.query(`drop type region`);
    }
  });
});

describe('a text that changes with no edit', () => {
  beforeEach(reset);

  it('goes back to the queue once, then fails, with no provider input ever prepared', async () => {
    // a function marked IMMUTABLE that is not: it passes registration, as it would in any database
    await db.query(`create or replace function public.stamped(t text) returns text language sql immutable
                    as $$ select t || ' ' || clock_timestamp()::text $$`);
    await register({ content: `public.stamped(body)` });
    const first = await prepareInputs(db, 'docs', 'test@1', ['1', '2']);
    expect(first).toEqual([]);
    expect(await gap(db, 'docs')).toMatchObject({ expected: 10, failed: 0 });
    const second = await prepareInputs(db, 'docs', 'test@1', ['1', '2']);
    expect(second).toEqual([]);
    const reasons = await failed();
    expect(reasons.map((r) => r.row_id)).toEqual(['1', '2']);
    expect(reasons[0]!.error).toMatch(/^the text changed again without an edit between two reads/);
    expect(await gap(db, 'docs')).toMatchObject({ expected: 10, failed: 2 });
  });

  it('an edit the capture missed (triggers off) is picked up once, then embedded as usual', async () => {
    await register({ content: 'body' });
    const client = await db.pool.connect();
    try {
      await client.query(`set session_replication_role = replica`);
      await client.query(`update docs set body = 'edited behind the trigger' where id = 4`);
    } finally {
      await client.query(`reset session_replication_role`);
      client.release();
    }
    expect(await prepareInputs(db, 'docs', 'test@1', ['4'])).toEqual([]);   // re-hashed, back in the queue
    const { results } = await embedRows(db, ['4'], 'docs', 'test@1');
    expect(results).toEqual([{ rowId: '4', chunkNo: 1, stored: true, kind: null, reason: null }]);
    expect(await gap(db, 'docs')).toMatchObject({ current: 1, failed: 0 });
  });
});

describe('retire', () => {
  beforeEach(reset);

  it('drops only the retired version\'s index, and register_source makes sure a version has one', async () => {
    const index = async (tag: string) => (await db.query(
      `select to_regclass('regen._embeddings_hnsw_v' || (select id from regen._versions where tag = $1)) is not null as present`, [tag])).rows[0].present;
    await db.query(`select regen.create_version('test@2', 'test-model', $1::int)`, [DIMS]);
    await db.query(`select regen.create_version('test@3', 'test-model', $1::int)`, [DIMS]);   // created, not yet registered
    await buildVersionIndexes(db.pool, { version: 'test@3' });   // and given its index by the owner already
    await register();
    await startMigration(db.pool, 'docs', 'test@2');
    await embedRows(db, ['1', '2', '3', '4', '5', '6', '7', '8', '9', '10'], 'docs', 'test@2');
    await cutover(db.pool, 'docs', 'test@2');
    const result = await retire(db.pool, 'docs', 'test@1', '0 seconds');
    expect(result.droppedIndexes).toEqual([expect.stringMatching(/^regen\._embeddings_hnsw_v\d+$/)]);
    expect(await index('test@1')).toBe(false);
    expect(await index('test@3')).toBe(true);
    // a source registered on the retired version gets its index back
    await db.query(`create table notes (id int primary key, body text)`);
    await db.query(`select regen.register_source('notes', 'notes', 'id', 'body', version => 'test@1')`);
    expect(await index('test@1')).toBe(true);
    await db.query(`select regen.unregister_source('notes')`);
    await db.query(`drop table notes`);
  });
});
