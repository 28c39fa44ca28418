// The change log (sql/0020, sql/0023): the capture triggers only log, regen.apply_changes() does the
// rest outside the application's transaction. What must hold meanwhile: the gap is exact, a delete
// or a tenant move leaves search at once, an update of a column the source does not read fires
// nothing, the application never waits on an apply, and concurrent appliers lose no change.
import { afterAll, beforeEach, describe, expect, it } from 'vitest';
import { freshDatabase, keepOnFailure, type TestDatabase } from './support/db.ts';
import { allRowIds, applyChanges, embedRows, gap, setupArticles, sha256, vectorOf } from './support/fixtures.ts';
import { prepareInputs, writeEmbeddings } from '../src/store.ts';
import { createRole, searchAs, type TestRole } from './support/search.ts';

const db: TestDatabase = await freshDatabase();
keepOnFailure(db);
let app: TestRole;

async function reset(): Promise<void> {
  await db.query(`select regen.unregister_source(name) from regen._sources`);
  await db.query('drop table if exists articles');
  await db.query('delete from regen._versions');
  await db.query('truncate regen._cache, regen._change_log');
  await setupArticles(db);
  await embedRows(db, await allRowIds(db));
}

const logged = async () => (await db.query<{ n: number }>('select count(*)::int as n from regen._changes')).rows[0]!.n;

/** The gap as brute force over the source table says it must be: every row judged against the store. */
async function liveGap(): Promise<{ expected: number; current: number; stale: number; missing: number }> {
  const { rows } = await db.query(`
    with live as (
      select a.id::text as row_id, sha256(convert_to(a.title || E'\\n\\n' || coalesce(a.body, ''), 'UTF8')) as hash
      from articles a where a.published)
    select count(*)::int as expected,
           count(*) filter (where it.embedded_hash = l.hash)::int as current,
           count(*) filter (where it.embedded_hash is not null and it.embedded_hash <> l.hash)::int as stale,
           count(*) filter (where it.embedded_hash is null)::int as missing
    from live l left join regen._items it on it.row_id = l.row_id`);
  return rows[0];
}

describe('the capture logs, the apply does the work', () => {
  beforeEach(async () => {
    await reset();
    app ??= await createRole(db, 'changelog_app', { grant: 'app' });
  });
  afterAll(async () => { await app?.drop(); });

  it('an update of a column the source does not read fires no trigger; one it reads is logged', async () => {
    await db.query('alter table articles add column hits integer not null default 0');
    // the triggers were made before the column existed; their column list still holds
    await db.query('update articles set hits = hits + 1');
    expect(await logged()).toBe(0);
    await db.query(`update articles set views = views + 1 where id <= 3`);   // the priority
    await db.query(`update articles set published = published where id = 4`);   // no change: WHEN is false
    expect(await logged()).toBe(3);
    const { rows } = await db.query(`select tgname, pg_get_triggerdef(t.oid) as def from pg_trigger t
                                      where tgrelid = 'articles'::regclass and not tgisinternal and tgname like '%update'`);
    expect(rows[0].def).toMatch(/AFTER UPDATE OF id, tenant, title, body, views, published ON public\.articles FOR EACH ROW WHEN/);
  });

  it('the gap is exact with changes still in the log, and the same once they are applied', async () => {
    await db.query(`update articles set body = 'edited ' || id where id <= 5`);
    await db.query(`update articles set published = false where id in (6, 7)`);
    await db.query(`delete from articles where id in (8, 9)`);
    await db.query(`insert into articles (id, tenant, title) select g, 'tenant_1', 'new' from generate_series(100, 103) g`);
    await db.query(`update articles set id = 200 where id = 10`);
    await db.query(`update articles set body = 'edited twice ' || id where id <= 2`);
    expect(await logged()).toBeGreaterThan(0);
    const live = await liveGap();
    // 2 filtered out, 2 deleted, 4 inserted, 1 key changed (gone, and new), 5 edited
    expect(live).toEqual({ expected: 30, current: 20, stale: 5, missing: 5 });
    expect(await gap(db)).toMatchObject(live);
    await applyChanges(db);
    expect(await logged()).toBe(0);
    expect(await gap(db)).toMatchObject(live);
    const { rows } = await db.query(`select content_hash from regen._items where row_id = '1'`);
    expect(rows[0].content_hash).toEqual(sha256('Title 1\n\nedited twice 1'));   // the last change won
  });

  it('a short text is logged as it is, a long one as its hash; both read as their sha256, pending and applied', async () => {
    const short = 'a'.repeat(1790);   // 1,795 bytes with the title: logged as text
    const long = 'é'.repeat(950);     // 950 characters but 1,905 bytes with the title: hashed
    await db.query(`insert into articles (id, tenant, title, body) values (300, 'tenant_1', 'new', $1), (301, 'tenant_1', 'new', $2)`, [short, long]);
    await db.query(`update articles set body = $1 where id = 1`, [long]);    // the row trigger
    await db.query(`update articles set body = $1 where id = 2`, [short]);
    const { rows: log } = await db.query(`select row_id, present, content is not null as text, content_hash is not null as hashed
                                          from regen._change_log order by seq`);
    expect(log).toEqual([
      { row_id: '300', present: null, text: true, hashed: false },
      { row_id: '301', present: null, text: false, hashed: true },
      { row_id: '1', present: true, text: false, hashed: true },
      { row_id: '2', present: true, text: true, hashed: false },
    ]);
    const { rows: read } = await db.query(`select row_id, present, content_hash from regen._changes order by seq`);
    expect(read).toEqual([
      { row_id: '300', present: true, content_hash: sha256(`new\n\n${short}`) },
      { row_id: '301', present: true, content_hash: sha256(`new\n\n${long}`) },
      { row_id: '1', present: true, content_hash: sha256(`Title 1\n\n${long}`) },
      { row_id: '2', present: true, content_hash: sha256(`Title 2\n\n${short}`) },
    ]);
    const live = await liveGap();
    expect(live).toMatchObject({ expected: 32, stale: 2, missing: 2 });
    expect(await gap(db)).toMatchObject(live);
    await applyChanges(db);
    expect(await gap(db)).toMatchObject(live);
    const { rows: items } = await db.query(`select row_id, content_hash from regen._items where row_id in ('300', '301', '1', '2') order by row_id`);
    expect(items).toEqual([
      { row_id: '1', content_hash: sha256(`Title 1\n\n${long}`) },
      { row_id: '2', content_hash: sha256(`Title 2\n\n${short}`) },
      { row_id: '300', content_hash: sha256(`new\n\n${short}`) },
      { row_id: '301', content_hash: sha256(`new\n\n${long}`) },
    ]);
  });

  it('a deleted row, or one moved to another tenant, leaves search at once, before the apply', async () => {
    const stored = async (id: string) => (await db.query<{ v: string }>(
      `select embedding::text as v from regen._embeddings where row_id = $1`, [id])).rows[0]!.v;
    const query = await stored('4');
    const first = await searchAs(app.pool, 'tenant_1', query, { k: 3 });
    expect(first.hits[0]).toMatchObject({ row_id: '4' });
    await db.query(`update articles set tenant = 'tenant_2' where id = 4`);
    expect((await searchAs(app.pool, 'tenant_1', query, { k: 3 })).hits.map((h) => h.row_id)).not.toContain('4');
    const near7 = await stored('7');
    expect((await searchAs(app.pool, 'tenant_1', near7, { k: 3 })).hits[0]).toMatchObject({ row_id: '7' });
    await db.query(`delete from articles where id = 7`);
    expect((await searchAs(app.pool, 'tenant_1', near7, { k: 3 })).hits.map((h) => h.row_id)).not.toContain('7');
    expect(await logged()).toBe(2);
    // the application sees the moves of its own tenant only
    const seen = async (tenant: string) => {
      const client = await app.pool.connect();
      try {
        await client.query('begin');
        await client.query('select regen.set_tenant($1)', [tenant]);
        return (await client.query('select row_id from regen._moved_rows order by row_id')).rows.map((r) => r.row_id);
      } finally {
        await client.query('rollback');
        client.release();
      }
    };
    expect(await seen('tenant_1')).toEqual(['4', '7']);
    expect(await seen('tenant_0')).toEqual([]);
    await expect(app.pool.query('select * from regen._changes')).rejects.toMatchObject({ code: '42501' });
    // once applied, the vector of row 4 is found under its new tenant
    await applyChanges(db);
    const moved = await searchAs(app.pool, 'tenant_2', query, { k: 1 });
    expect(moved.hits[0]).toMatchObject({ row_id: '4' });
  });

  it('an application write never waits on an apply', async () => {
    await db.query(`update articles set body = 'edited' where id <= 10`);
    const applier = await db.pool.connect();
    try {
      await applier.query('begin');
      expect(Number((await applier.query('select regen.apply_changes() as n')).rows[0].n)).toBe(10);
      // the apply holds its lock and the items until it commits; the application goes on meanwhile
      const started = Date.now();
      await db.query(`update articles set body = 'edited again' where id <= 10`);
      await db.query(`delete from articles where id = 11`);
      expect(Date.now() - started).toBeLessThan(1_000);
      // a second applier skips the source being applied instead of waiting
      expect((await db.query('select regen.apply_changes() as n')).rows[0].n).toBe('0');
      await applier.query('commit');
    } finally {
      applier.release();
    }
    expect(await applyChanges(db)).toBe(11);
    expect(await gap(db)).toMatchObject(await liveGap());
  });

  it('appliers racing on the same rows lose no change: the later state always wins', async () => {
    const clients = await Promise.all([db.pool.connect(), db.pool.connect(), db.pool.connect()]);
    try {
      for (let round = 0; round < 30; round++) {
        await Promise.all([
          clients[0]!.query(`update articles set body = 'round ${round}' where id = 1 + ${round} % 5`),
          clients[1]!.query('select regen.apply_changes()'),
          clients[2]!.query(`select regen.enqueue_fresh()`),
        ]);
      }
    } finally {
      for (const c of clients) c.release();
    }
    await applyChanges(db);
    expect(await logged()).toBe(0);
    const { rows } = await db.query(`
      select count(*)::int as wrong from articles a join regen._items it on it.row_id = a.id::text
      where it.content_hash <> sha256(convert_to(a.title || E'\\n\\n' || coalesce(a.body, ''), 'UTF8'))`);
    expect(rows[0].wrong).toBe(0);
  });

  it('a write judges its rows by their logged changes, not yet applied: a new text refuses, a new priority does not', async () => {
    await db.query(`update articles set body = 'edited' where id = 1`);
    await applyChanges(db);
    const inputs = await prepareInputs(db, 'articles', 'test@1', ['1', '2', '3'], { force: true });   // current rows too
    await db.query(`update articles set body = 'edited again' where id = 1`);   // the text: stale
    await db.query(`update articles set views = views + 100 where id = 2`);    // the priority: the vector holds
    await db.query(`delete from articles where id = 3`);                        // gone
    expect(await logged()).toBe(3);
    const results = await writeEmbeddings(db, 'articles', 'test@1', inputs.map((i) => ({
      rowId: i.rowId, chunkNo: i.chunkNo, contentHash: i.contentHash, embedding: vectorOf(i.input ?? ''),
    })));
    expect(results.map((r) => [r.rowId, r.stored, r.kind])).toEqual([['1', false, 'stale'], ['2', true, null], ['3', false, 'untracked']]);
    expect(await logged()).toBe(2);   // the settle step applied row 2's; rows 1 and 3 wait for the worker's apply
    const live = await liveGap();
    expect(live).toMatchObject({ stale: 1 });
    expect(await gap(db)).toMatchObject(live);
    await applyChanges(db);
    expect(await gap(db)).toMatchObject(live);
    const { rows } = await db.query(`select priority from regen._items where row_id = '2'`);
    expect(rows[0].priority).toBeGreaterThanOrEqual(100);
  });

  it('a batch\'s prepare never waits on an applier: a row with a logged new text or delete is left to it', async () => {
    // rows 1-6 edited, in one fresh job that a worker has taken
    await db.query(`update articles set body = 'new ' || id where id <= 6`);
    expect(Number((await db.query('select regen.enqueue_fresh() as n')).rows[0].n)).toBe(6);
    const { rows: [{ job }] } = await db.query(`select queue_job as job from regen._items where row_id = '1'`);
    await db.query(`update pgboss.job set state = 'active', started_on = now() where id = $1`, [job]);
    await db.query(`update articles set body = 'newer 1' where id = 1`);      // a new text: the applier's (a fresh job)
    await db.query(`delete from articles where id = 2`);                      // gone: the applier's
    await db.query(`update articles set views = views + 50 where id = 3`);   // a new priority: prepared as it is
    const [applier, worker] = [await db.pool.connect(), await db.pool.connect()];
    try {
      await applier.query('begin');
      // an applier of the source at work, holding the source's lock until it commits
      await applier.query(`select pg_advisory_xact_lock(hashtext('regen.apply_changes'), (select id from regen._sources where name = 'articles'))`);
      await worker.query(`set statement_timeout = '5s'`);   // waiting on the applier would fail here
      const inputs = await prepareInputs(worker, 'articles', 'test@1', ['1', '2', '3', '4', '5', '6'], { jobId: job });
      expect([...new Set(inputs.map((i) => i.rowId))]).toEqual(['3', '4', '5', '6']);
      const written = await writeEmbeddings(worker, 'articles', 'test@1', inputs.map((i) => ({
        rowId: i.rowId, chunkNo: i.chunkNo, contentHash: i.contentHash, embedding: vectorOf(i.input ?? '') })));
      expect(written.every((w) => w.stored)).toBe(true);
    } finally {
      await applier.query('rollback');
      applier.release();
      worker.release(true);
    }
    // the applier then does what the changes call for; row 1 waits for its fresh job once this job is done
    await db.query(`update pgboss.job set state = 'completed' where id = $1`, [job]);
    await applyChanges(db);
    const { rows } = await db.query(`select row_id, fresh, embedded_hash = content_hash as current, priority from regen._items
                                      where row_id in ('1', '2', '3') order by row_id`);
    expect(rows).toEqual([{ row_id: '1', fresh: true, current: false, priority: 1 }, { row_id: '3', fresh: false, current: true, priority: 53 }]);
    expect(Number((await db.query('select regen.enqueue_fresh() as n')).rows[0].n)).toBe(1);
    const live = await liveGap();
    expect(live).toMatchObject({ stale: 1, current: 28 });
    expect(await gap(db)).toMatchObject(live);
  });

  it('a text that changes and comes back while a job works on its row is enqueued again once that job is done', async () => {
    // rows 1-3 edited: row 1 and 2 in a fresh job that a worker has taken, row 3 in one not yet taken
    const jobOf = async (id: string) => (await db.query(`select queue_job as job from regen._items where row_id = $1`, [id])).rows[0].job;
    await db.query(`update articles set body = 'new ' || id where id <= 2`);
    expect(Number((await db.query('select regen.enqueue_fresh() as n')).rows[0].n)).toBe(2);
    await db.query(`update articles set body = 'new ' || id where id = 3`);
    expect(Number((await db.query('select regen.enqueue_fresh() as n')).rows[0].n)).toBe(1);
    const [taken, waiting] = [await jobOf('1'), await jobOf('3')];
    expect(await jobOf('2')).toBe(taken);
    expect(waiting).not.toBe(taken);
    await db.query(`update pgboss.job set state = 'active', started_on = now() where id = $1`, [taken]);

    // row 1: its prepare sees a new text logged, and leaves the row to the applier
    await db.query(`update articles set body = 'newer 1' where id = 1`);
    const inputs = await prepareInputs(db, 'articles', 'test@1', ['1', '2'], { jobId: taken });
    expect([...new Set(inputs.map((i) => i.rowId))]).toEqual(['2']);
    // row 2: prepared, then a new text logged: its write is refused as stale
    await db.query(`update articles set body = 'newer 2' where id = 2`);
    const written = await writeEmbeddings(db, 'articles', 'test@1', inputs.map((i) => ({
      rowId: i.rowId, chunkNo: i.chunkNo, contentHash: i.contentHash, embedding: vectorOf(i.input ?? '') })));
    expect(written.map((w) => w.kind)).toEqual(['stale']);
    // all three come back to the text their items record, before any apply
    await db.query(`update articles set body = 'newer 3' where id = 3`);
    await db.query(`update articles set body = 'new ' || id where id <= 3`);
    await db.query(`update pgboss.job set state = 'completed' where id = $1`, [taken]);
    await applyChanges(db);

    const { rows } = await db.query(`select row_id, fresh, embedded_hash = content_hash as current from regen._items
                                      where row_id in ('1', '2', '3') order by row_id`);
    expect(rows).toEqual([{ row_id: '1', fresh: true, current: false }, { row_id: '2', fresh: true, current: false },
                          { row_id: '3', fresh: false, current: false }]);
    expect(await jobOf('3')).toBe(waiting);   // its job, not yet taken, reads it as it is now
    expect(Number((await db.query('select regen.enqueue_fresh() as n')).rows[0].n)).toBe(2);
    const again = await jobOf('1');
    expect(again).not.toBe(taken);
    expect(await jobOf('2')).toBe(again);
    // the two jobs embed the three rows: the gap closes
    for (const [job, ids] of [[again, ['1', '2']], [waiting, ['3']]] as const) {
      const prepared = await prepareInputs(db, 'articles', 'test@1', [...ids], { jobId: job });
      expect([...new Set(prepared.map((i) => i.rowId))]).toEqual(ids);
      await writeEmbeddings(db, 'articles', 'test@1', prepared.map((i) => ({
        rowId: i.rowId, chunkNo: i.chunkNo, contentHash: i.contentHash, embedding: vectorOf(i.input ?? '') })));
    }
    const live = await liveGap();
    expect(live).toMatchObject({ expected: 30, current: 30 });
    expect(await gap(db)).toMatchObject(live);
  });

  it('a partitioned source: its partitions fire the capture', async () => {
    await db.query(`create table parted (id int primary key, body text not null) partition by range (id)`);
    await db.query(`create table parted_1 partition of parted for values from (0) to (100)`);
    await db.query(`create table parted_2 partition of parted for values from (100) to (200)`);
    await db.query(`insert into parted select g, 'p ' || g from generate_series(1, 150) g`);
    await db.query(`select regen.register_source('parted', 'parted', 'id', 'body', version => 'test@1')`);
    await db.query(`update parted set body = 'edited' where id in (5, 150)`);
    await db.query(`insert into parted values (199, 'new')`);
    await db.query(`insert into parted_2 values (180, 'straight into a partition')`);
    expect(await gap(db, 'parted')).toMatchObject({ expected: 152, missing: 152 });
    await applyChanges(db);
    const { rows } = await db.query(`select count(*)::int as n from regen._items it join regen._sources s on s.id = it.source_id
                                      where s.name = 'parted' and it.fresh`);
    expect(rows[0].n).toBe(4);
    await db.query(`select regen.unregister_source('parted')`);
    await db.query('drop table parted');
  });

  it('a multi-row INSERT is logged in one go; a row an expression raises on fails alone, also after a rename', async () => {
    await db.query(`create table bulk (id int primary key, tenant text not null, body text, w int not null)`);
    await db.query(`select regen.register_source('bulk', 'bulk', 'id', 'body', tenant_column => 'tenant',
                                                 priority_expression => '100 / w', version => 'test@1')`);
    await db.query(`insert into bulk select g, 't' || g % 3, 'row ' || g, 1 + g % 4 from generate_series(1, 1000) g`);
    expect(await gap(db, 'bulk')).toMatchObject({ expected: 1000, missing: 1000, failed: 0 });
    // one row divides by zero, one has no text (not in the source); the others go through
    await db.query(`insert into bulk values (1001, 'a', 'fine', 2), (1002, 'b', 'broken', 0), (1003, 'c', null, 2), (1004, 'd', 'fine too', 4)`);
    await db.query('alter table bulk rename to bulk_renamed');
    await db.query(`insert into bulk_renamed values (1005, 'e', 'after the rename', 5), (1006, 'f', 'broken after the rename', 0)`);
    const want = { expected: 1005, missing: 1003, failed: 2 };
    expect(await gap(db, 'bulk')).toMatchObject(want);
    await applyChanges(db);
    expect(await gap(db, 'bulk')).toMatchObject(want);
    const { rows } = await db.query(`
      select it.row_id, it.tenant, it.priority, it.content_hash = sha256(convert_to(b.body, 'UTF8')) as hashed, it.last_error
      from regen._items it join regen._sources s on s.id = it.source_id join bulk_renamed b on b.id::text = it.row_id
      where s.name = 'bulk' and it.row_id in ('7', '1001', '1002', '1005', '1006') order by it.row_id::int`);
    expect(rows.map((r) => [r.row_id, r.tenant, r.priority, r.hashed])).toEqual([
      ['7', 't1', 25, true], ['1001', 'a', 50, true], ['1002', 'b', 0, false], ['1005', 'e', 20, true], ['1006', 'f', 0, false]]);
    expect(rows[2].last_error).toBe('an expression of source bulk raised an error on this row: division by zero');
    expect(rows[4].last_error).toBe('an expression of source bulk raised an error on this row: division by zero');
    await db.query(`select regen.unregister_source('bulk')`);
    await db.query('drop table bulk_renamed');
  });
});
