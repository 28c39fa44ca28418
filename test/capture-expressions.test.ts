// The capture's row trigger evaluates the source's expressions directly over `new` (sql/0032) when
// PostgreSQL writes them back as the same expression, else with its query per row. Either way an
// UPDATE logs exactly what the set-based capture (an INSERT's) computes for the same row: the
// tenant, the priority, the hash of the text, whether the row is in the source; and a row whose
// expression raises is logged as failed while the application's statement goes through, also after
// a column the expressions read is renamed.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freshDatabase, keepOnFailure, type TestDatabase } from './support/db.ts';
import { embedRows, sha256 } from './support/fixtures.ts';

const db: TestDatabase = await freshDatabase('capture_expr');
keepOnFailure(db);

interface Shape {
  name: string;
  content: string;
  priority?: string;
  filter?: string;
  /** Whether the row trigger evaluates it directly (else: its query per row). */
  direct: boolean;
  /** Whether an INSERT statement's rows are logged with the expressions written over the transition table (else: the query per row). */
  insertDirect: boolean;
}

// One table per shape: notes_<name> (id, tenant, title, body, views, flag)
const SHAPES: Shape[] = [
  { name: 'plain', content: `title || E'\\n\\n' || coalesce(body, '')`, priority: 'views', filter: 'flag', direct: true, insertDirect: true },
  { name: 'qualified', content: `notes_qualified.title || ' / ' || notes_qualified.body`, priority: 'notes_qualified.views * 2', direct: true,
    // (over the transition table's alias the table's name means nothing: the query per row)
    insertDirect: false },
  // the table's name followed by a dot inside a literal: written over `new` it would read back
  // otherwise; over the transition table's alias PostgreSQL writes it from the expression itself
  { name: 'literal', content: `'notes_literal.' || title || body`, direct: false, insertDirect: true },
  { name: 'function', content: `util.shout(title) || body`, priority: 'length(body)', filter: `tenant <> 'b'`, direct: true, insertDirect: true },
  { name: 'cast', content: `title || ' #' || views::text`, priority: `case when flag then views else -views end`, direct: true, insertDirect: true },
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
    it(`${s.name}: an INSERT of many rows in one statement logs what the set-based capture computes (${s.insertDirect ? 'expressions over the transition table' : 'by its query'})`, async () => {
      const { rows: [{ def }] } = await db.query(`select pg_get_functiondef(format('regen.%I', 'tg_' || $1 || '__capture')::regproc) as def`, [source(s)]);
      expect(/from new_rows as regen_row/.test(def)).toBe(s.insertDirect);
      await db.query(`insert into ${table(s)} select g, case when g % 3 = 0 then 'b' else 'a' end, 'New ' || g,
                        case when g % 4 = 0 then null else 'Body ' || g end, case when g % 6 = 0 then null else g end, g % 5 = 0
                      from generate_series(41, 70) g`);
      const got = (await logged(s)).filter((r) => Number(r.row_id) > 40);
      expect(got).toHaveLength(30);
      expect(got).toEqual((await setBased(s)).filter((r) => Number(r.row_id) > 40));
      expect(got.filter((r) => r.present).length).toBeGreaterThan(0);
    });
  }

  it('a column the content reads renamed: the application\'s writes go through, their rows logged as failed', async () => {
    await db.query(`create table notes_renamed (id int primary key, tenant text not null, title text, body text, views int)`);
    await db.query(`insert into notes_renamed select g, 'a', 'Title ' || g, 'Body ' || g, g from generate_series(1, 5) g`);
    await db.query(`select regen.register_source('src_renamed', 'notes_renamed', 'id', $$title || ' ' || body$$, tenant_column => 'tenant',
                      priority_expression => 'views', version => 'expr@1')`);
    await db.query(`alter table notes_renamed rename column body to content`);
    expect((await db.query(`update notes_renamed set content = 'edited' where id = 1`)).rowCount).toBe(1);
    expect((await db.query(`update notes_renamed set views = 50 where id = 2`)).rowCount).toBe(1);
    expect((await db.query(`insert into notes_renamed values (6, 'a', 'Six', 'new', 6), (7, 'a', 'Seven', 'new', 7)`)).rowCount).toBe(2);
    expect((await db.query(`delete from notes_renamed where id = 3`)).rowCount).toBe(1);
    const { rows } = await db.query(`select distinct on (c.row_id) c.row_id, c.present, c.error from regen._changes c
                                      join regen._sources so on so.id = c.source_id where so.name = 'src_renamed'
                                      order by c.row_id, c.seq desc`);
    expect(rows.map((r) => [r.row_id, r.present, r.error === null ? null : /raised an error on this row: .*body/.test(r.error)])).toEqual([
      ['1', true, true], ['2', true, true], ['3', false, null], ['6', true, true], ['7', true, true],
    ]);
    await db.query(`select regen.unregister_source('src_renamed')`);
  });

  it('renaming the id column with the source registered again in the same transaction: writes go through, the vectors come back from the cache', async () => {
    await db.query(`create table notes_moved (id int primary key, tenant text not null, title text)`);
    await db.query(`insert into notes_moved select g, 'a', 'Title ' || g from generate_series(1, 6) g`);
    await db.query(`select regen.register_source('src_moved', 'notes_moved', 'id', 'title', tenant_column => 'tenant', version => 'expr@1')`);
    const ids = ['1', '2', '3', '4', '5', '6'];
    expect((await embedRows(db, ids, 'src_moved', 'expr@1')).inputs).toBe(6);
    const client = await db.pool.connect();
    try {
      await client.query('begin');
      await client.query(`select regen.unregister_source('src_moved')`);
      await client.query(`alter table notes_moved rename column id to note_id`);
      await client.query(`select regen.register_source('src_moved', 'notes_moved', 'note_id', 'title', tenant_column => 'tenant', version => 'expr@1')`);
      await client.query('commit');
    } finally {
      client.release();
    }
    expect((await db.query(`update notes_moved set title = 'Edited' where note_id = 1`)).rowCount).toBe(1);
    expect((await db.query(`delete from notes_moved where note_id = 2`)).rowCount).toBe(1);
    // the four unchanged texts are cache hits: only the edited one reaches the provider
    expect((await embedRows(db, ['1', '3', '4', '5', '6'], 'src_moved', 'expr@1')).inputs).toBe(1);
    const { rows: [g] } = await db.query(`select expected::int, current::int from regen.embedding_gap where source = 'src_moved'`);
    expect(g).toMatchObject({ expected: 5, current: 5 });
    await db.query(`select regen.unregister_source('src_moved')`);
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
    // the same in an INSERT statement: it goes through; its rows are logged one by one
    expect((await db.query(`insert into notes_raise values (11, 'a', 'Eleven', 5), (12, 'a', 'Twelve', 7)`)).rowCount).toBe(2);
    const { rows: inserted } = await db.query(`select c.row_id, c.present, c.priority, c.content_hash, c.error from regen._changes c
                                      join regen._sources so on so.id = c.source_id where so.name = 'src_raise' and c.row_id in ('11', '12')
                                      order by c.row_id`);
    expect(inserted).toEqual([
      { row_id: '11', present: true, priority: null, content_hash: null, error: expect.stringMatching(/raised an error on this row: division by zero/) },
      { row_id: '12', present: true, priority: 100 / (7 - 5), content_hash: sha256('Twelve'), error: null },
    ]);
    await db.query(`select regen.unregister_source('src_raise')`);
  });

  it('the table renamed: its inserts, updates and deletes are still logged, with the right hashes', async () => {
    await db.query(`create table notes_before (id int primary key, tenant text not null, title text, views int)`);
    await db.query(`insert into notes_before select g, 'a', 'Title ' || g, g from generate_series(1, 3) g`);
    await db.query(`select regen.register_source('src_table_renamed', 'notes_before', 'id', $$title || '!'$$, tenant_column => 'tenant',
                      priority_expression => 'views', version => 'expr@1')`);
    await db.query(`alter table notes_before rename to notes_after`);
    expect((await db.query(`insert into notes_after values (4, 'b', 'Four', 4), (5, 'a', null, 5)`)).rowCount).toBe(2);
    expect((await db.query(`update notes_after set title = 'One' where id = 1`)).rowCount).toBe(1);
    expect((await db.query(`delete from notes_after where id = 2`)).rowCount).toBe(1);
    const { rows } = await db.query(`select distinct on (c.row_id) c.row_id, c.present, c.tenant, c.priority, c.content_hash, c.error
                                      from regen._changes c join regen._sources so on so.id = c.source_id
                                      where so.name = 'src_table_renamed' and c.row_id <> '3' order by c.row_id, c.seq desc`);
    expect(rows).toEqual([
      { row_id: '1', present: true, tenant: 'a', priority: 1, content_hash: sha256('One!'), error: null },
      { row_id: '2', present: false, tenant: null, priority: null, content_hash: null, error: null },
      { row_id: '4', present: true, tenant: 'b', priority: 4, content_hash: sha256('Four!'), error: null },
      // a null text: the row is not in the source
      { row_id: '5', present: false, tenant: null, priority: null, content_hash: null, error: null },
    ]);
    await db.query(`select regen.unregister_source('src_table_renamed')`);
  });
});
