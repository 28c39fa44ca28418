// Writing vectors back: invariants 1 and 2, per-item refusals, the content-addressed cache, chunks.
import { beforeEach, describe, expect, it } from 'vitest';
import { prepareInputs, writeEmbeddings } from '../src/store.ts';
import { freshDatabase, keepOnFailure, type TestDatabase } from './support/db.ts';
import { allRowIds, DIMS, embedRows, gap, setupArticles, sha256, vectorOf } from './support/fixtures.ts';

const db: TestDatabase = await freshDatabase();
keepOnFailure(db);

beforeEach(async () => {
  await db.query(`select regen.unregister_source(name) from regen._sources`);
  await db.query('drop table if exists articles');
  await db.query('delete from regen._versions');
  await db.query('truncate regen._cache, regen._rejections, regen._gap_counts, regen._gap_deltas');
  await setupArticles(db, { rows: 10 });
});

async function prepared(rowId: string) {
  const [input] = await prepareInputs(db, 'articles', 'test@1', [rowId]);
  if (!input) throw new Error(`nothing to embed for row ${rowId}`);
  return input;
}

describe('invariant 1: every stored vector carries its version tag and content hash', () => {
  it('stores version, content hash, text hash and tenant with each vector', async () => {
    await embedRows(db, await allRowIds(db));
    const { rows } = await db.query(
      `select v.tag, e.row_id, e.tenant, e.content_hash, e.text_hash, vector_dims(e.embedding) as dims, it.content_hash as current_hash
         from regen._embeddings e join regen._versions v on v.id = e.version_id
         join regen._items it on it.source_id = e.source_id and it.version_id = e.version_id and it.row_id = e.row_id`);
    expect(rows).toHaveLength(10);
    for (const row of rows) {
      expect(row.tag).toBe('test@1');
      expect(row.content_hash).toEqual(row.current_hash);
      expect(row.content_hash).toEqual(sha256(`Title ${row.row_id}\n\nBody of article ${row.row_id}.`));
      expect(row.dims).toBe(DIMS);
      expect(row.tenant).toBe(`tenant_${Number(row.row_id) % 3}`);
    }
  });
});

describe('invariant 2: a vector is current only while its hash equals what the version would embed now', () => {
  it('an edit makes the stored vector stale, and a vector for the old text is refused', async () => {
    const before = await prepared('1');
    await db.query(`update articles set body = 'Rewritten.' where id = 1`);
    const results = await writeEmbeddings(db, 'articles', 'test@1', [
      { rowId: '1', chunkNo: 1, contentHash: before.contentHash, embedding: vectorOf('old') },
    ]);
    expect(results).toEqual([{ rowId: '1', chunkNo: 1, stored: false, kind: 'stale', reason: 'stale: the source text changed after the input was prepared' }]);
    expect(await gap(db)).toMatchObject({ current: 0, missing: 10 });
    // embedded for the new text it becomes current; a later edit makes it stale again
    await embedRows(db, ['1']);
    expect(await gap(db)).toMatchObject({ current: 1, stale: 0 });
    await db.query(`update articles set title = 'Retitled' where id = 1`);
    expect(await gap(db)).toMatchObject({ current: 0, stale: 1 });
  });

  it('an edit that commits while a write is in flight wins: the item is not current, and the edit is queued', async () => {
    const input = await prepared('2');
    const editor = await db.pool.connect();
    try {
      await editor.query('begin');
      await editor.query(`update articles set body = 'edited in flight' where id = 2`);
      // the write does not wait for the edit to insert its vector; it waits, briefly, to settle it
      const write = writeEmbeddings(db, 'articles', 'test@1', [
        { rowId: '2', chunkNo: 1, contentHash: input.contentHash, embedding: vectorOf('x') }]);
      await new Promise((r) => setTimeout(r, 200));
      await editor.query('commit');
      await write;
    } finally {
      editor.release();
    }
    // the vector is one of the earlier text: stored as such, never counted current
    await db.query('select regen.enqueue_fresh()');
    const item = await db.query(`select embedded_hash is not distinct from content_hash as current, content_hash = $1 as old_text,
                                        queue_job is not null as queued
                                   from regen._items where row_id = '2'`, [input.contentHash]);
    expect(item.rows[0]).toEqual({ current: false, old_text: false, queued: true });
    expect(await gap(db)).toMatchObject({ current: 0 });
    await embedRows(db, ['2']);
    expect(await gap(db)).toMatchObject({ current: 1 });
    const stored = await db.query(`select count(*)::int as n from regen._embeddings where row_id = '2'`);
    expect(stored.rows[0].n).toBe(1);
  });

  it('an application edit never waits for a write to insert its vectors: only for the settle step', async () => {
    const input = await prepared('3');
    // a slow index insert, made slower by hand: 1.5 s per vector
    await db.query(`create function public.slow_insert() returns trigger language plpgsql as $$
                    begin perform pg_sleep(1.5); return new; end $$`);
    await db.query(`create trigger slow before insert on regen._embeddings for each row execute function public.slow_insert()`);
    try {
      const write = writeEmbeddings(db, 'articles', 'test@1', [
        { rowId: '3', chunkNo: 1, contentHash: input.contentHash, embedding: vectorOf('3') }]);
      await new Promise((r) => setTimeout(r, 300));   // the write is inserting now
      const started = Date.now();
      await db.query(`update articles set body = 'edited while written' where id = 3`);
      const waited = Date.now() - started;
      await write;
      expect(waited).toBeLessThan(1_000);
    } finally {
      await db.query(`drop trigger slow on regen._embeddings`);
      await db.query(`drop function public.slow_insert()`);
    }
    // the edit made the item stale and queued it again; the vector of the earlier text is not current
    expect((await db.query(`select embedded_hash is not distinct from content_hash as current from regen._items where row_id = '3'`)).rows[0])
      .toEqual({ current: false });
  });

  it('the applier never waits for a write to insert its vectors, also when the write refuses a row as stale', async () => {
    const [three, four] = [await prepared('3'), await prepared('4')];
    await db.query(`update articles set body = 'edited before the write' where id = 3`);   // logged: row 3's vector is stale
    await db.query(`create function public.slow_insert() returns trigger language plpgsql as $$
                    begin perform pg_sleep(1.5); return new; end $$`);
    await db.query(`create trigger slow before insert on regen._embeddings for each row execute function public.slow_insert()`);
    try {
      const write = writeEmbeddings(db, 'articles', 'test@1', [
        { rowId: '3', chunkNo: 1, contentHash: three.contentHash, embedding: vectorOf('3') },
        { rowId: '4', chunkNo: 1, contentHash: four.contentHash, embedding: vectorOf('4') }]);
      await new Promise((r) => setTimeout(r, 300));   // the write is inserting row 4's vector now
      const started = Date.now();
      await db.query(`update articles set body = 'edited again' where id = 3`);
      expect(Number((await db.query('select regen.apply_changes() as n')).rows[0].n)).toBe(2);
      expect(Number((await db.query('select regen.enqueue_fresh() as n')).rows[0].n)).toBe(1);   // row 3, as a fresh edit
      const waited = Date.now() - started;
      expect((await write).map((w) => [w.rowId, w.kind])).toEqual([['3', 'stale'], ['4', null]]);
      expect(waited).toBeLessThan(1_000);
    } finally {
      await db.query(`drop trigger slow on regen._embeddings`);
      await db.query(`drop function public.slow_insert()`);
    }
    await embedRows(db, ['3']);
    const { rows } = await db.query(`select row_id, embedded_hash = content_hash as current from regen._items where row_id in ('3', '4') order by 1`);
    expect(rows).toEqual([{ row_id: '3', current: true }, { row_id: '4', current: true }]);
  });
});

describe('write_embeddings refuses bad items one by one and stores the good ones of the same batch', () => {
  it('wrong dimensions, NaN, infinity, stale hash, unknown row, duplicate: each refused with its reason', async () => {
    const inputs = await prepareInputs(db, 'articles', 'test@1', ['1', '2', '3', '4', '5', '6', '7']);
    const byRow = Object.fromEntries(inputs.map((i) => [i.rowId, i]));
    const ok = (id: string) => ({ rowId: id, chunkNo: 1, contentHash: byRow[id]!.contentHash, embedding: vectorOf(id) });
    const nan = vectorOf('3'); nan[2] = Number.NaN;
    const inf = vectorOf('4'); inf[0] = Number.POSITIVE_INFINITY;
    const results = await writeEmbeddings(db, 'articles', 'test@1', [
      ok('1'),
      { ...ok('2'), embedding: vectorOf('2', DIMS + 1) },
      { ...ok('3'), embedding: nan },
      { ...ok('4'), embedding: inf },
      { ...ok('5'), contentHash: sha256('some other text') },
      { ...ok('1'), rowId: '999' },
      ok('6'),
      ok('6'),
      { ...ok('7'), chunkNo: 2 },
    ]);
    expect(results.map((r) => [r.rowId, r.stored, r.kind, r.reason])).toEqual([
      ['1', true, null, null],
      ['2', false, 'dimensions', `expected ${DIMS} dimensions, not ${DIMS + 1}`],
      ['3', false, 'nan', 'NaN or infinity not allowed in vector'],
      ['4', false, 'nan', 'NaN or infinity not allowed in vector'],
      ['5', false, 'stale', 'stale: the source text changed after the input was prepared'],
      ['999', false, 'untracked', 'row is not tracked for this version: deleted, filtered out, or not registered'],
      ['6', true, null, null],
      ['6', false, 'duplicate', 'duplicate item: this row and chunk already appear earlier in the batch'],
      ['7', false, 'unplanned', 'chunk 2 is not among the prepared inputs of this text'],
    ]);
    expect(await gap(db)).toMatchObject({ current: 2, failed: 3, missing: 5 });
    const failed = await db.query(`select row_id, error, attempts from regen.failed_items order by row_id`);
    expect(failed.rows).toEqual([
      { row_id: '2', error: `expected ${DIMS} dimensions, not ${DIMS + 1}`, attempts: 1 },
      { row_id: '3', error: 'NaN or infinity not allowed in vector', attempts: 1 },
      { row_id: '4', error: 'NaN or infinity not allowed in vector', attempts: 1 },
    ]);
    const rejected = await db.query(`select row_id, kind from regen.rejected_writes order by row_id`);
    expect(rejected.rows.map((r) => r.kind).sort()).toEqual(['dimensions', 'duplicate', 'nan', 'nan', 'stale', 'unplanned', 'untracked']);
    // no vector with NaN, wrong size or a stale hash was stored
    const stored = await db.query(`select row_id from regen._embeddings order by row_id`);
    expect(stored.rows.map((r) => r.row_id)).toEqual(['1', '6']);
  });

  it('an unknown version or source refuses every item and records why', async () => {
    const input = await prepared('1');
    const item = { rowId: '1', chunkNo: 1, contentHash: input.contentHash, embedding: vectorOf('1') };
    expect(await writeEmbeddings(db, 'articles', 'nope@1', [item])).toEqual([
      { rowId: '1', chunkNo: 1, stored: false, kind: 'unknown_version', reason: `unknown version 'nope@1'` }]);
    expect(await writeEmbeddings(db, 'nothing', 'test@1', [item])).toEqual([
      { rowId: '1', chunkNo: 1, stored: false, kind: 'unknown_source', reason: `unknown source 'nothing'` }]);
    const rejected = await db.query(`select version, source, reason from regen.rejected_writes order by at`);
    expect(rejected.rows.map((r) => r.reason)).toEqual([`unknown version 'nope@1'`, `unknown source 'nothing'`]);
    expect((await gap(db)).current).toBe(0);
  });

  it('a failed item is retried on command and a new text gets a new chance', async () => {
    const input = await prepared('1');
    await writeEmbeddings(db, 'articles', 'test@1', [{ rowId: '1', chunkNo: 1, contentHash: input.contentHash, embedding: vectorOf('1', 3) }]);
    expect((await gap(db)).failed).toBe(1);
    const cleared = await db.query(`select regen.retry_failed('articles') as n`);
    expect(cleared.rows[0].n).toBe('1');
    expect(await gap(db)).toMatchObject({ failed: 0, missing: 10 });
    await writeEmbeddings(db, 'articles', 'test@1', [{ rowId: '1', chunkNo: 1, contentHash: input.contentHash, embedding: vectorOf('1', 3) }]);
    await db.query(`update articles set body = 'fixed' where id = 1`);
    expect(await gap(db)).toMatchObject({ failed: 0, missing: 10 });
  });
});

describe('the content-addressed cache', () => {
  it('identical texts across rows and tenants cost one provider input', async () => {
    await db.query(`update articles set title = 'Same', body = 'Same body.' where id in (1, 2, 3)`);  // tenants 1, 2, 0
    const inputs = await prepareInputs(db, 'articles', 'test@1', ['1', '2', '3']);
    expect(inputs).toHaveLength(3);
    expect(inputs.filter((i) => i.input !== null)).toHaveLength(1);
    expect(new Set(inputs.map((i) => i.textHash.toString('hex'))).size).toBe(1);
    // and across batches: once one row is embedded, the others settle from the store with no input
    await embedRows(db, ['1']);
    expect(await prepareInputs(db, 'articles', 'test@1', ['2', '3'])).toEqual([]);
    expect(await gap(db)).toMatchObject({ current: 3 });
  });

  it('an edit that is undone, or a row deleted and inserted again, costs nothing', async () => {
    await embedRows(db, await allRowIds(db));
    await db.query(`update articles set body = 'Temporary.' where id = 4`);
    expect((await embedRows(db, ['4'])).inputs).toBe(1);
    await db.query(`update articles set body = 'Body of article 4.' where id = 4`);
    expect(await prepareInputs(db, 'articles', 'test@1', ['4'])).toEqual([]);
    await db.query(`delete from articles where id = 5`);
    await db.query(`insert into articles (id, tenant, title, body, views) values (5, 'tenant_2', 'Title 5', 'Body of article 5.', 5)`);
    expect(await prepareInputs(db, 'articles', 'test@1', ['5'])).toEqual([]);
    expect(await gap(db)).toMatchObject({ expected: 10, current: 10 });
    const vector = await db.query(`select embedding::text as v from regen._embeddings where row_id = '5'`);
    expect(JSON.parse(vector.rows[0].v)[0]).toBeCloseTo(vectorOf('Title 5\n\nBody of article 5.')[0]!, 6);
  });

  it('a second pass over healthy data prepares nothing and changes no row', async () => {
    await embedRows(db, await allRowIds(db));
    const snapshot = `select xmin::text, ctid::text from regen._items union all select xmin::text, ctid::text from regen._embeddings order by 1, 2`;
    const before = await db.query(snapshot);
    expect(await prepareInputs(db, 'articles', 'test@1', await allRowIds(db))).toEqual([]);
    expect((await db.query(snapshot)).rows).toEqual(before.rows);
  });
});

describe('chunks are the embedding units', () => {
  beforeEach(async () => {
    await db.query(`select regen.unregister_source('articles')`);
    await db.query(`drop table articles`);
    await setupArticles(db, { rows: 3, version: 'chunked@1', chunkChars: 100 });
  });

  it('a row is current only once every chunk of its current text is stored; fewer chunks later drop the extras', async () => {
    await db.query(`update articles set body = (select string_agg('Sentence number ' || g || ' is here.', ' ') from generate_series(1, 12) g) where id = 1`);
    const inputs = await prepareInputs(db, 'articles', 'chunked@1', ['1']);
    expect(inputs.length).toBeGreaterThanOrEqual(4);
    for (const input of inputs) expect(input.input!.length).toBeLessThanOrEqual(100);
    const [first, ...rest] = inputs.map((i) => ({ rowId: i.rowId, chunkNo: i.chunkNo, contentHash: i.contentHash, embedding: vectorOf(i.input!) }));
    await writeEmbeddings(db, 'articles', 'chunked@1', [first!]);
    expect(await gap(db, 'articles', 'chunked@1')).toMatchObject({ current: 0 });
    await writeEmbeddings(db, 'articles', 'chunked@1', rest);
    expect(await gap(db, 'articles', 'chunked@1')).toMatchObject({ current: 1 });

    await db.query(`update articles set body = 'Short now.' where id = 1`);
    await embedRows(db, ['1'], 'articles', 'chunked@1');
    const chunks = await db.query(`select chunk_no from regen._embeddings where row_id = '1'`);
    expect(chunks.rows).toEqual([{ chunk_no: 1 }]);
    expect(await gap(db, 'articles', 'chunked@1')).toMatchObject({ current: 1, stale: 0 });
  });
});

describe('regen.chunk_text', () => {
  const chunks = async (text: string, max: number, overlap = 0) =>
    (await db.query(`select chunk from regen.chunk_text($1, $2, $3) order by chunk_no`, [text, max, overlap])).rows.map((r) => r.chunk as string);

  it('keeps a short text whole', async () => {
    expect(await chunks('One short text.', 100)).toEqual(['One short text.']);
  });

  it('cuts on a paragraph break first, then a sentence end, then a space', async () => {
    const para = 'First paragraph has some words in it.\n\nSecond paragraph follows here and is long enough to need a cut.';
    expect((await chunks(para, 60))[0]).toBe('First paragraph has some words in it.');
    const sentences = 'One sentence is here, and it is long. Another one follows it and the text goes on without stopping';
    expect((await chunks(sentences, 60))[0]).toBe('One sentence is here, and it is long.');
    const words = 'words without any sentence end just keep on going and going along';
    const byWord = await chunks(words, 30);
    expect(byWord[0]).toBe('words without any sentence');
    expect(byWord.join(' ')).toBe(words);
  });

  it('overlaps consecutive chunks on word boundaries and never exceeds the budget', async () => {
    const text = Array.from({ length: 60 }, (_, i) => `word${i}`).join(' ');
    const out = await chunks(text, 80, 20);
    expect(out.length).toBeGreaterThan(4);
    for (const c of out) expect(c.length).toBeLessThanOrEqual(80);
    for (let i = 1; i < out.length; i++) {
      const firstWord = out[i]!.split(' ')[0]!;
      expect(out[i - 1]!.split(' ')).toContain(firstWord);
    }
    expect(out.at(-1)!.endsWith('word59')).toBe(true);
  });

  it('cuts hard inside a word longer than the budget', async () => {
    expect(await chunks('x'.repeat(250), 100)).toEqual(['x'.repeat(100), 'x'.repeat(100), 'x'.repeat(50)]);
  });

  it('refuses a bad budget', async () => {
    await expect(chunks('text', 100, 60)).rejects.toMatchObject({ code: 'RG003' });
  });
});
