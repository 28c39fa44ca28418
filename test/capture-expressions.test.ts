// The capture's row trigger evaluates the source's expressions directly over `new` (sql/0032) when
// PostgreSQL writes them back as the same expression, else with its query per row. Either way an
// UPDATE logs exactly what the set-based capture (an INSERT's) computes for the same row: the
// tenant, the priority, the hash of the text, whether the row is in the source; and a row whose
// expression raises is logged as failed while the application's statement goes through. Where no
// expression can raise (sql/0033, regen._capture_cannot_raise), the capture has no exception block.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freshDatabase, keepOnFailure, type TestDatabase } from './support/db.ts';
import { sha256 } from './support/fixtures.ts';

const db: TestDatabase = await freshDatabase('capture_expr');
keepOnFailure(db);

interface Shape {
  name: string;
  content: string;
  priority?: string;
  filter?: string;
  /** Whether the row trigger evaluates it directly (else: its query per row). */
  direct: boolean;
  /** Whether no expression can raise on any row (then the capture needs no exception block). */
  safe: boolean;
}

// One table per shape: notes_<name> (id, tenant, title, body, views, flag)
const SHAPES: Shape[] = [
  { name: 'plain', content: `title || E'\\n\\n' || coalesce(body, '')`, priority: 'views', filter: 'flag', direct: true, safe: true },
  // int4 multiplication can overflow
  { name: 'qualified', content: `notes_qualified.title || ' / ' || notes_qualified.body`, priority: 'notes_qualified.views * 2', direct: true, safe: false },
  // the table's name followed by a dot inside a literal: written over `new` it would read back otherwise
  { name: 'literal', content: `'notes_literal.' || title || body`, direct: false, safe: true },
  { name: 'function', content: `util.shout(title) || body`, priority: 'length(body)', filter: `tenant <> 'b'`, direct: true, safe: false },
  // -views can overflow (-2147483648)
  { name: 'cast', content: `title || ' #' || views::text`, priority: `case when flag then views else -views end`, direct: true, safe: false },
  { name: 'safe_cast', content: `upper(title) || ' #' || views::text || ' ' || flag::text`, priority: `case when flag then length(body) else views end`,
    filter: `views is not null and tenant = 'a'`, direct: true, safe: true },
];

const table = (s: Shape) => `notes_${s.name}`;
const source = (s: Shape) => `src_${s.name}`;

/** The latest logged change of every row of a source. */
async function logged(s: Shape) {
  const { rows } = await db.query(`
    select distinct on (c.row_id) c.row_id, c.present, c.tenant, c.priority, c.content_hash, c.error
    from regen._changes c join regen._sources so on so.id = c.source_id
    where so.name = $1 order by c.row_id, c.seq desc`, [source(s)]);
  return rows;
}

/** What the set-based capture (an INSERT statement's) computes for every row now. */
async function setBased(s: Shape) {
  const { rows: [{ sql }] } = await db.query(`select regen._capture_select(so, $2) as sql from regen._sources so where so.name = $1`,
    [source(s), table(s)]);
  const { rows: captured } = await db.query(`select * from (${sql}) c`);
  const { rows: all } = await db.query(`select id::text as row_id from ${table(s)} order by 1`);
  const byId = new Map(captured.map((c) => [c.row_id, c]));
  return all.map(({ row_id }) => {
    const c = byId.get(row_id);
    return { row_id, present: c !== undefined, tenant: c?.tenant ?? null, priority: c?.priority ?? null, content_hash: c?.content_hash ?? null, error: null };
  }).sort((a, b) => (a.row_id < b.row_id ? -1 : 1));
}

describe('the row trigger\'s expressions, direct or by query', () => {
  beforeAll(async () => {
    await db.query(`create schema util`);
    await db.query(`create function util.shout(t text) returns text language sql immutable as $$ select upper(t) || '!' $$`);
    await db.query(`select regen.create_version('expr@1', 'test-model', 8)`);
    for (const s of SHAPES) {
      await db.query(`create table ${table(s)} (id int primary key, tenant text not null, title text, body text, views int, flag boolean)`);
      await db.query(`insert into ${table(s)} select g, case when g % 3 = 0 then 'b' else 'a' end, 'Title ' || g,
                        case when g % 7 = 0 then null else 'Body ' || g end, g % 11, g % 2 = 0 from generate_series(1, 40) g`);
      await db.query(`select regen.register_source($1, $2::regclass, 'id', $3, tenant_column => 'tenant', priority_expression => $4,
                        filter_expression => $5, version => 'expr@1')`,
        [source(s), table(s), s.content, s.priority ?? null, s.filter ?? null]);
    }
    await db.query('select regen.apply_changes()');
  });
  afterAll(async () => {
    for (const s of SHAPES) await db.query(`select regen.unregister_source($1)`, [source(s)]);
  });

  for (const s of SHAPES) {
    it(`${s.name}: ${s.direct ? 'evaluated directly' : 'by its query'}, an UPDATE of each row logs what the set-based capture computes`, async () => {
      const { rows: [{ def }] } = await db.query(`select pg_get_functiondef(format('regen.%I', 'tg_' || $1 || '__capture')::regproc) as def`, [source(s)]);
      expect(/v_content := /.test(def)).toBe(s.direct);
      // an exception block (a subtransaction per row) only where an expression can raise, or in the query per row
      expect(/exception when others/.test(def)).toBe(!(s.safe && s.direct));
      // the text, the priority's column, the filter's column and nulls, all through the row trigger
      await db.query(`update ${table(s)} set title = title || ' (edited)', views = case when id % 13 = 0 then null else views + 1 end,
                        flag = not flag, body = case when id % 5 = 0 then null else body end`);
      const got = await logged(s);
      expect(got).toHaveLength(40);
      expect(got).toEqual(await setBased(s));
      expect(got.filter((r) => r.present).length).toBeGreaterThan(0);
      expect(got.filter((r) => !r.present).length).toBeGreaterThan(0);
    });
  }

  for (const s of SHAPES) {
    it(`${s.name}: an INSERT of many rows in one statement logs what the set-based capture computes (${s.safe ? 'no' : 'an'} exception block)`, async () => {
      const { rows: [{ def }] } = await db.query(`select pg_get_functiondef(format('regen.%I', 'tg_' || $1 || '__capture')::regproc) as def`, [source(s)]);
      const insertBranch = def.slice(def.indexOf(`tg_level = 'STATEMENT'`), def.indexOf(`tg_op = 'DELETE'`));
      expect(insertBranch).toContain('insert into regen._changes');
      expect(/exception when others/.test(insertBranch)).toBe(!s.safe);
      await db.query(`insert into ${table(s)} select g, case when g % 3 = 0 then 'b' else 'a' end, 'New ' || g,
                        case when g % 4 = 0 then null else 'Body ' || g end, case when g % 6 = 0 then null else g end, g % 5 = 0
                      from generate_series(41, 70) g`);
      const got = (await logged(s)).filter((r) => Number(r.row_id) > 40);
      expect(got).toHaveLength(30);
      expect(got).toEqual((await setBased(s)).filter((r) => Number(r.row_id) > 40));
      expect(got.filter((r) => r.present).length).toBeGreaterThan(0);
    });
  }

  it('regen._capture_cannot_raise: only built-in types and functions that return for any input', async () => {
    await db.query(`create domain util.word as text check (value <> '')`);
    await db.query(`create type util.mood as enum ('calm', 'busy')`);
    await db.query(`create table notes_types (id int primary key, tenant text, w util.word, m util.mood, n numeric, title text)`);
    const cannotRaise = async (over: Record<string, string | number | null>) => {
      const { rows: [{ ok }] } = await db.query(`select regen._capture_cannot_raise(jsonb_populate_record(so, $2::jsonb)) as ok
                                                  from regen._sources so where so.name = $1`, [source(SHAPES[0]!), JSON.stringify(over)]);
      return ok as boolean;
    };
    const on = (content: string, extra: Record<string, string | null> = {}) => cannotRaise({ content_expression: content, ...extra });
    expect(await on('title')).toBe(true);
    expect(await on(`lower(btrim(title)) || coalesce(body, '') || views::text`)).toBe(true);
    expect(await on('title', { priority_expression: 'length(body)', filter_expression: `flag and tenant <> 'b'` })).toBe(true);
    // a division, a multiplication, a cast from text, a user's function, a pattern, a sub-query, a syntax error
    expect(await on('title', { priority_expression: 'views / 2' })).toBe(false);
    expect(await on('title', { priority_expression: 'views * 2' })).toBe(false);
    expect(await on('title', { filter_expression: 'body' })).toBe(false);   // read as boolean: 'yes' or an error
    expect(await on('util.shout(title)')).toBe(false);
    expect(await on('title', { filter_expression: `title like 'T%'` })).toBe(false);
    expect(await on(`(select 'x') || title`)).toBe(false);
    expect(await on('title ||')).toBe(false);
    // a domain (its check), a type of the user's (its output function), numeric to float8 (it can overflow)
    const types = (await db.query(`select 'notes_types'::regclass::oid as oid`)).rows[0].oid;
    expect(await cannotRaise({ relation: types, content_expression: 'title', priority_expression: null, filter_expression: null })).toBe(true);
    expect(await cannotRaise({ relation: types, content_expression: 'w', priority_expression: null, filter_expression: null })).toBe(false);
    expect(await cannotRaise({ relation: types, content_expression: `title || m::text`, priority_expression: null, filter_expression: null })).toBe(false);
    expect(await cannotRaise({ relation: types, content_expression: 'title', priority_expression: 'n', filter_expression: null })).toBe(false);
    // nothing is left behind: the view it reads the expressions from is gone
    const { rows: views } = await db.query(`select relname from pg_class where relname like 'regen_capture_%'`);
    expect(views).toEqual([]);
    await db.query(`drop table notes_types`);
  });

  it('the literal keeps its text: the hash is that of the row\'s own words', async () => {
    const s = SHAPES.find((x) => x.name === 'literal')!;
    const { rows: [row] } = await db.query(`select title, body from ${table(s)} where id = 1`);
    const [logged1] = (await logged(s)).filter((r) => r.row_id === '1');
    expect(logged1.content_hash).toEqual(sha256(`notes_literal.${row.title}${row.body}`));
  });

  it('a row whose expression raises is logged as failed, and the application\'s UPDATE goes through', async () => {
    await db.query(`create table notes_raise (id int primary key, tenant text not null, title text, views int)`);
    await db.query(`insert into notes_raise select g, 'a', 'Title ' || g, g from generate_series(1, 10) g`);
    await db.query(`select regen.register_source('src_raise', 'notes_raise', 'id', 'title', tenant_column => 'tenant',
                      priority_expression => '100 / (views - 5)', version => 'expr@1')`);
    const { rows: [{ def }] } = await db.query(`select pg_get_functiondef('regen.tg_src_raise__capture'::regproc) as def`);
    expect(def).toMatch(/v_content := /);
    expect(def).toMatch(/exception when others/);   // a division can raise: the block stays
    const result = await db.query(`update notes_raise set views = views + 1 where id between 3 and 5`);   // id 4 reaches views = 5
    expect(result.rowCount).toBe(3);
    const { rows } = await db.query(`select c.row_id, c.present, c.tenant, c.priority, c.error from regen._changes c
                                      join regen._sources so on so.id = c.source_id where so.name = 'src_raise' and c.row_id in ('3', '4', '5')
                                      order by c.row_id, c.seq desc`);
    const latest = new Map<string, (typeof rows)[number]>();
    for (const r of rows) if (!latest.has(r.row_id)) latest.set(r.row_id, r);
    expect(latest.get('3')).toMatchObject({ present: true, priority: 100 / (4 - 5), error: null });
    expect(latest.get('4')).toMatchObject({ present: true, tenant: 'a', error: expect.stringMatching(/raised an error on this row: division by zero/) });
    expect(latest.get('5')).toMatchObject({ present: true, priority: 100 / (6 - 5), error: null });
    await db.query(`select regen.unregister_source('src_raise')`);
  });
});
