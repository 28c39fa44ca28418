// Adopting existing embeddings (regen.start_adoption / regen.finish_adoption, adopt(), pgregen
// adopt) against the local OpenAI-compatible server through the real openai client: a column with
// NULLs and vectors of the wrong size, a sample that does not match (refused, then forced and
// replaced by a rebuild), and a chunked source adopted from a table that names chunks.
import OpenAI from 'openai';
import pgvector from 'pgvector';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { adopt } from '../src/adopt.ts';
import { startEmbeddingServer, type EmbeddingServer } from '../src/provider-server.ts';
import type { RunningWorker } from '../src/worker/run.ts';
import { freshDatabase, keepOnFailure, type TestDatabase } from './support/db.ts';
import { runCli } from './support/evaluation.ts';
import { inProcessWorker, waitFor, workerEnv } from './support/worker.ts';

const DIMS = 16;
const SETTINGS = { send_dimensions: true, distance: 'cosine' };

describe('adopting existing embeddings', () => {
  let db: TestDatabase;
  let server: EmbeddingServer;
  let openai: OpenAI;
  let worker: RunningWorker | undefined;
  keepOnFailure(() => db);

  /** The provider's vectors for texts, as the version would embed them. */
  async function embed(texts: string[], dimensions = DIMS): Promise<string[]> {
    const out: string[] = [];
    for (let at = 0; at < texts.length; at += 100) {
      const { data } = await openai.embeddings.create({ model: 'local-hash', input: texts.slice(at, at + 100), dimensions });
      out.push(...data.sort((a, b) => a.index - b.index).map((d) => pgvector.toSql(d.embedding as number[]) as string));
    }
    return out;
  }

  async function gap(source: string) {
    const { rows: [row] } = await db.query<Record<string, string>>(
      'select expected, current, missing, stale, outdated, failed, adopted, queued from regen.embedding_gap where source = $1', [source]);
    return Object.fromEntries(Object.entries(row!).map(([k, v]) => [k, Number(v)]));
  }

  beforeAll(async () => {
    db = await freshDatabase('adopt');
    server = await startEmbeddingServer({ dimensions: DIMS });
    openai = new OpenAI({ apiKey: 'test', baseURL: server.url });
    await db.query(`select regen.create_version('adopt@1', 'local-hash', ${DIMS}, settings => $1)`, [SETTINGS]);
  }, 60_000);

  afterAll(async () => {
    await worker?.stop();
    await server?.close();
  });

  it('adopts a column with NULLs and vectors of the wrong size: exact gap, no provider call beyond the sample', async () => {
    // 400 rows: 340 with the vector of their text, 40 NULL (a failed script), 20 of 8 dimensions (an older model)
    await db.query(`create table kb (id int primary key, tenant text not null, body text not null, views int not null, embedding vector)`);
    await db.query(`insert into kb select g, case when g % 2 = 0 then 'acme' else 'globex' end, 'article number ' || g || ' about topic ' || (g % 7), g, null
                    from generate_series(1, 400) g`);
    const { rows } = await db.query<{ id: number; body: string }>('select id, body from kb order by id');
    const vectors = await embed(rows.map((r) => r.body));
    await db.query('update kb set embedding = v.e::vector from unnest($1::int[], $2::text[]) v(id, e) where kb.id = v.id',
      [rows.map((r) => r.id), vectors]);
    await db.query(`update kb set embedding = null where id % 10 = 0`);
    const short = await embed(['an older model'], 8);
    await db.query(`update kb set embedding = $1::vector where id % 20 = 5`, [short[0]]);
    await db.query(`select regen.register_source('kb', 'kb', 'id', 'body', tenant_column => 'tenant', priority_expression => 'views', version => 'adopt@1')`);
    expect(await gap('kb')).toMatchObject({ expected: 400, current: 0, missing: 400 });

    server.resetStats();
    const result = await runCli(['adopt', '--source', 'kb', '--version', 'adopt@1', '--column', 'embedding', '--json'],
      { DATABASE_URL: db.url, OPENAI_API_KEY: 'test', OPENAI_BASE_URL: server.url });
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    const adoption = JSON.parse(result.stdout);
    expect(adoption).toMatchObject({ state: 'adopted', judged: { ok: 340, null: 40, wrong_dimensions: 20 }, sampledRows: 50, adoptedRows: 340, unverifiedRows: 0 });
    expect(adoption.sampleMinCosine).toBeGreaterThan(0.9999);
    expect(server.stats.inputs).toBe(50);   // the sample, and nothing else
    expect(await gap('kb')).toMatchObject({ expected: 400, current: 340, missing: 60, stale: 0, adopted: 0 });
    // the store holds each adopted row's own vector, under its tenant
    const { rows: [same] } = await db.query<{ n: number }>(`select count(*)::int as n from regen._embeddings e join kb on e.row_id = kb.id::text
      where e.embedding = kb.embedding and e.tenant = kb.tenant and e.chunk_no = 1`);
    expect(same!.n).toBe(340);
    const { rows: [record] } = await db.query(`select state, sampled_rows, sample_below from regen.adoptions where id = $1`, [adoption.id]);
    expect(record).toEqual({ state: 'adopted', sampled_rows: 50, sample_below: 0 });

    // the rebuild then pays for the 60 rows that never had a vector, and nothing else
    const { rows: [enqueued] } = await db.query<{ n: number }>(`select sum(items)::int as n from regen.rebuild(source => 'kb')`);
    expect(enqueued!.n).toBe(60);
    server.resetStats();
    worker = await inProcessWorker(workerEnv(db.url, server));
    await waitFor('the kb gap to close', async () => (await gap('kb')).current === 400);
    expect(server.stats.inputs).toBe(60);
  });

  it('refuses a sample that does not match and stores nothing; forced, the vectors show as adopted until a rebuild replaces them', async () => {
    // vectors computed from another text than the source's (its title was left out, say)
    await db.query(`create table notes (id int primary key, tenant text not null, title text not null, body text not null, views int not null, vec vector)`);
    await db.query(`insert into notes select g, 'acme', 'Note ' || g, 'what the note says, part ' || g, 1000 - g, null from generate_series(1, 200) g`);
    const { rows } = await db.query<{ id: number; body: string }>('select id, body from notes order by id');
    const wrong = await embed(rows.map((r) => `a different text: ${r.body}`));
    await db.query('update notes set vec = v.e::vector from unnest($1::int[], $2::text[]) v(id, e) where notes.id = v.id',
      [rows.map((r) => r.id), wrong]);
    await db.query(`select regen.register_source('notes', 'notes', 'id', $$title || ': ' || body$$, tenant_column => 'tenant',
                      priority_expression => 'views', version => 'adopt@1')`);
    await worker?.stop();
    worker = undefined;

    server.resetStats();
    const refused = adopt(db, openai, { source: 'notes', version: 'adopt@1', column: 'vec', sampleMin: 20 });
    await expect(refused).rejects.toMatchObject({ code: 'RG083', message: expect.stringMatching(/adoption \d+ refused: 20 of 20 sample vectors are below cosine 0.99/) });
    expect(server.stats.inputs).toBe(20);
    expect(await gap('notes')).toMatchObject({ expected: 200, current: 0, missing: 200, adopted: 0 });
    expect((await db.query(`select count(*)::int as n from regen._embeddings e join regen._sources s on s.id = e.source_id where s.name = 'notes'`)).rows[0].n).toBe(0);
    const { rows: [record] } = await db.query(`select state, sample_below, adopted_rows from regen.adoptions where source = 'notes'`);
    expect(record).toEqual({ state: 'refused', sample_below: 20, adopted_rows: '0' });

    server.resetStats();
    const forced = await adopt(db, openai, { source: 'notes', version: 'adopt@1', column: 'vec', sampleMin: 20, force: true });
    expect(forced).toMatchObject({ state: 'forced', adoptedRows: 200, unverifiedRows: 180, sampleBelow: 20 });
    expect(server.stats.inputs).toBe(20);
    // the sample rows got their fresh vectors; the rest are searchable, as adopted
    expect(await gap('notes')).toMatchObject({ expected: 200, current: 20, missing: 0, stale: 0, adopted: 180 });
    const { rows: [one] } = await db.query<{ id: string }>(`select it.row_id as id from regen._items it join regen._sources s on s.id = it.source_id
      where s.name = 'notes' and it.embedded_hash = sha256('adopted:'::bytea || it.content_hash) order by it.row_id limit 1`);
    const { rows: hits } = await db.query(`select * from regen.search_tenant('acme', $1::vector, 5, array['notes'])`, [wrong[Number(one!.id) - 1]]);
    expect(hits[0]).toMatchObject({ row_id: one!.id, distance: expect.closeTo(0, 6) });
    // the cache never hands an adopted vector out: they are stored under a text hash no text has
    const { rows: [marked] } = await db.query<{ n: number }>(`select count(*)::int as n from regen._embeddings e
      join regen._sources s on s.id = e.source_id join notes on e.row_id = notes.id::text
      where s.name = 'notes' and e.text_hash = sha256('adopted:'::bytea || sha256(convert_to(notes.title || ': ' || notes.body, 'UTF8')))`);
    expect(marked!.n).toBe(180);

    // a rebuild re-embeds them, hottest (most viewed: lowest ids) first
    const { rows: [enqueued] } = await db.query<{ n: number }>(`select sum(items)::int as n from regen.rebuild(source => 'notes')`);
    expect(enqueued!.n).toBe(180);
    const { rows: [top] } = await db.query<{ rows: string[] }>(`select array(select jsonb_array_elements_text(j.data->'rows')) as rows
      from pgboss.job j where j.data->>'source' = 'notes' and j.state = 'created' order by j.priority desc, j.created_on limit 1`);
    const { rows: hottest } = await db.query<{ id: string }>(`select it.row_id as id from regen._items it join regen._sources s on s.id = it.source_id
      where s.name = 'notes' and it.embedded_hash = sha256('adopted:'::bytea || it.content_hash) order by it.priority desc limit $1`, [top!.rows.length]);
    expect(top!.rows.length).toBeGreaterThan(0);
    expect([...top!.rows].sort()).toEqual(hottest.map((r) => r.id).sort());
    server.resetStats();
    worker = await inProcessWorker(workerEnv(db.url, server));
    await waitFor('the notes to be current', async () => (await gap('notes')).current === 200);
    expect(await gap('notes')).toMatchObject({ adopted: 0, current: 200 });
    expect(server.stats.inputs).toBe(180);
    const truth = await embed(['Note 7: what the note says, part 7']);
    const { rows: [seven] } = await db.query<{ d: number }>(`select (e.embedding <=> $1::vector)::float8 as d from regen._embeddings e
      join regen._sources s on s.id = e.source_id where s.name = 'notes' and e.row_id = '7'`, [truth[0]]);
    expect(seven!.d).toBeCloseTo(0, 6);
  });

  it('adopts a chunked source from a table that names chunks, and says why a single column cannot', async () => {
    await db.query(`select regen.create_version('chunks@1', 'local-hash', ${DIMS}, settings => $1)`,
      [{ ...SETTINGS, chunk_chars: 100, chunk_overlap: 0 }]);
    await db.query(`create table guides (id int primary key, tenant text not null, body text not null, vec vector)`);
    await db.query(`insert into guides select g, 'acme', repeat('Guide ' || g || ' explains one more step of the setup. ', 7) from generate_series(1, 30) g`);
    await db.query(`select regen.register_source('guides', 'guides', 'id', 'body', tenant_column => 'tenant', version => 'chunks@1')`);
    // the old system's table: one vector per chunk, chunked as the version chunks (pgregen's numbers, from 1)
    await db.query(`create table old_chunks (doc_id int, chunk int, vec vector, primary key (doc_id, chunk))`);
    const { rows: chunks } = await db.query<{ id: number; chunk_no: number; chunk: string }>(`
      select g.id, c.chunk_no, c.chunk from guides g, regen.versions v,
             regen.chunk_text(regen.preprocess(g.body, v.settings), 100, 0) c where v.tag = 'chunks@1' order by 1, 2`);
    expect(new Set(chunks.map((c) => c.id)).size).toBe(30);
    expect(chunks.length).toBeGreaterThan(60);
    const vecs = await embed(chunks.map((c) => c.chunk));
    await db.query(`insert into old_chunks select d, c, v::vector from unnest($1::int[], $2::int[], $3::text[]) x(d, c, v)`,
      [chunks.map((c) => c.id), chunks.map((c) => c.chunk_no), vecs]);
    await db.query(`update guides set vec = $1::vector`, [vecs[0]]);
    await db.query(`delete from old_chunks where doc_id = 30 and chunk = 2`);   // one chunk lost

    const fromColumn = await adopt(db, openai, { source: 'guides', version: 'chunks@1', column: 'vec', sampleMin: 5 });
    expect(fromColumn).toMatchObject({ state: 'adopted', judged: { chunked: 30 }, adoptedRows: 0 });
    server.resetStats();
    const fromTable = await adopt(db, openai, { source: 'guides', version: 'chunks@1', column: 'vec', fromTable: 'old_chunks',
      idColumn: 'doc_id', chunkColumn: 'chunk', sampleMin: 5 });
    expect(fromTable).toMatchObject({ state: 'adopted', judged: { ok: 29, null: 1 }, sampledRows: 5, adoptedRows: 29 });
    expect(server.stats.inputs).toBe(fromTable.sampledChunks);
    expect(await gap('guides')).toMatchObject({ expected: 30, current: 29, missing: 1 });
  });

  it('says what is wrong with bad arguments and changes nothing', async () => {
    const refuse = (sql: string, values: unknown[] = []) => expect(db.query(sql, values)).rejects;
    await refuse(`select * from regen.start_adoption('kb', 'adopt@1', 'nope')`).toMatchObject({ code: 'RG080', message: 'table kb has no column nope' });
    await refuse(`select * from regen.start_adoption('kb', 'adopt@1', 'embedding', chunk_column => 'id')`).toMatchObject({ code: 'RG080' });
    await refuse(`select * from regen.start_adoption('kb', 'adopt@1', 'embedding', sample_min => 0)`).toMatchObject({ code: 'RG080' });
    await refuse(`select * from regen.start_adoption('kb', 'chunks@1', 'embedding')`).toMatchObject({ code: 'RG001' });
    await refuse(`select * from regen.start_adoption('nope', 'adopt@1', 'embedding')`).toMatchObject({ code: 'RG010' });
    await refuse(`select * from regen.start_adoption('guides', 'chunks@1', 'vec', from_table => 'old_chunks')`)
      .toMatchObject({ code: 'RG080', message: 'table old_chunks has no column id (the row id)' });
    const before = (await db.query('select count(*)::int as n from regen._adoptions')).rows[0].n;
    expect(before).toBe(5);
    // a sample that is not the one drawn
    await db.query(`update kb set embedding = null where id = 1`);
    const { rows: [started] } = await db.query<{ id: string }>(`select id from regen.start_adoption('notes', 'adopt@1', 'vec', sample_min => 3)`);
    await refuse(`select * from regen.finish_adoption($1, array['1'], array[1], array[$2::vector])`, [started!.id, pgvector.toSql(new Array(DIMS).fill(0.1))])
      .toMatchObject({ code: 'RG082' });
    await refuse(`select * from regen.finish_adoption(999999, '{}', '{}', '{}')`).toMatchObject({ code: 'RG081' });
    expect(await gap('notes')).toMatchObject({ current: 200, adopted: 0 });
  });
});
