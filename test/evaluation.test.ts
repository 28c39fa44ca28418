// Evaluation runs and shadow comparisons: the SQL metrics against hand-computed values, the
// query-set format, and end to end on the real Cranfield collection (read from beside the project)
// through the local OpenAI-compatible server, the real worker and the `pgregen eval`/`shadow` commands.
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cranfieldQuerySet, loadCranfield, registerCranfieldSource, type CranfieldLoad } from '../src/eval/cranfield.ts';
import { parseQuerySet, readQuerySet, type QuerySet } from '../src/eval/query-set.ts';
import { evaluate, shadowCompare } from '../src/eval/run.ts';
import { startEmbeddingServer, type EmbeddingServer } from '../src/provider-server.ts';
import type { RunningWorker } from '../src/worker/run.ts';
import { freshDatabase, keepOnFailure, type TestDatabase } from './support/db.ts';
import { cranfieldDir, metricCases, runCli, scoreByHand, waitForVersion } from './support/evaluation.ts';
import { inProcessWorker, workerEnv } from './support/worker.ts';

const db: TestDatabase = await freshDatabase();
keepOnFailure(db);

describe('regen.eval_scores and regen.compare_rankings', () => {
  it('score ranked row ids against graded judgements as computed by hand', async () => {
    for (const c of metricCases) {
      const { rows: [row] } = await db.query('select * from regen.eval_scores($1::text[], $2::jsonb, $3::integer)',
        [c.ranked, JSON.stringify(c.judged), c.k]);
      expect(row, c.name).toEqual(expect.objectContaining({ relevant: c.expect.relevant, relevant_retrieved: c.expect.relevantRetrieved }));
      for (const key of ['recall_at_k', 'reciprocal_rank', 'ndcg_at_k'] as const) {
        const want = c.expect[key];
        if (want === null) expect(row[key], `${c.name}: ${key}`).toBeNull();
        else expect(row[key], `${c.name}: ${key}`).toBeCloseTo(want, 12);
      }
    }
  });

  it('compare two rankings: overlap@k and footrule rank agreement', async () => {
    const cases: Array<[string[], string[], number, number | null, number | null]> = [
      [['x', 'y', 'z'], ['x', 'y', 'z'], 3, 1, 1],                 // identical
      [['x', 'y', 'z'], ['p', 'q', 'r'], 3, 0, 0],                 // disjoint
      [['x', 'y', 'z'], ['z', 'y', 'x'], 3, 1, 1 - 4 / 12],        // reversed: F = 2 + 0 + 2, F_max = 3 * 4
      [['a', 'b', 'c'], ['a', 'c', 'd'], 3, 2 / 3, 1 - 4 / 12],    // b at 2 vs 4, c 3 vs 2, d 4 vs 3
      [['x', 'y', 'z', 'w'], ['x', 'y', 'q', 'r'], 2, 1, 1],       // only the top k count
      [['a'], ['a', 'b'], 2, 1 / 2, 1 - 1 / 5],                    // F = |3 - 2| for b; F_max = (2) + (2 + 1)
      [[], ['x'], 10, 0, 0],                                       // one side found nothing
      [[], [], 10, null, null],                                    // nothing to compare
    ];
    for (const [a, b, k, overlap, agreement] of cases) {
      const { rows: [row] } = await db.query('select * from regen.compare_rankings($1::text[], $2::text[], $3::integer)', [a, b, k]);
      const label = `${a.join(',')} vs ${b.join(',')} @${k}`;
      if (overlap === null) expect(row, label).toEqual({ overlap_at_k: null, rank_agreement: null });
      else {
        expect(row.overlap_at_k, label).toBeCloseTo(overlap, 12);
        expect(row.rank_agreement, label).toBeCloseTo(agreement!, 12);
      }
    }
    const { rows: [ten] } = await db.query(`select * from regen.compare_rankings(
      array(select g::text from generate_series(1, 10) g), array(select g::text from generate_series(10, 1, -1) g), 10)`);
    expect(ten.rank_agreement).toBeCloseTo(6 / 11, 12);
  });

  it('refuse bad input with RG060 and a message that says what is wrong', async () => {
    const bad: Array<[string, unknown[], RegExp]> = [
      ['select regen.eval_scores($1, $2, $3)', [['a'], '{}', 0], /^k must be between 1 and 1000, not 0$/],
      ['select regen.eval_scores($1, $2, $3)', [['a'], '{}', null], /^k must be between 1 and 1000, not NULL$/],
      ['select regen.eval_scores($1, $2, $3)', [null, '{}', 10], /^ranked must be an array of row ids, not NULL$/],
      ['select regen.eval_scores($1, $2, $3)', [['a', null], '{}', 10], /^ranked has a NULL row id at position 2$/],
      ['select regen.eval_scores($1, $2, $3)', [['a', 'a'], '{}', 10], /^ranked lists row 'a' more than once$/],
      ['select regen.eval_scores($1, $2, $3)', [['a'], null, 10], /^judged must be a JSON object of row id to grade, not NULL$/],
      ['select regen.eval_scores($1, $2, $3)', [['a'], '[1]', 10], /^judged must be a JSON object of row id to grade, not array$/],
      ['select regen.eval_scores($1, $2, $3)', [['a'], '{"a": "high"}', 10], /^the grade of row 'a' must be a number, not "high"$/],
      ['select regen.compare_rankings($1, $2, $3)', [['a'], null, 5], /^b must be an array of row ids, not NULL$/],
      ['select regen.compare_rankings($1, $2, $3)', [['a'], ['b'], 1001], /^k must be between 1 and 1000, not 1001$/],
    ];
    for (const [sql, params, message] of bad) {
      await expect(db.query(sql, params), `${sql} ${JSON.stringify(params)}`).rejects.toMatchObject({ code: 'RG060', message: expect.stringMatching(message) });
    }
  });
});

describe('the query-set file', () => {
  it('parses a valid set and names every problem of an invalid one', () => {
    expect(parseQuerySet({ name: ' s ', queries: [{ id: 7, text: 'lift', judgements: { '3': 2, '4': 0 } }] }))
      .toEqual({ name: 's', queries: [{ id: '7', text: 'lift', judgements: { '3': 2, '4': 0 } }] });
    expect(() => parseQuerySet([], 'f.json')).toThrow('f.json is not a query set: a JSON object is expected, not an array');
    let error: Error | undefined;
    try {
      parseQuerySet({ queries: [{ id: '1', text: 'a', judgements: { '2': 0 } }, { id: '1', text: '', judgements: { '9': 'x' } }, 5] });
    } catch (err) {
      error = err as Error;
    }
    expect(error?.message).toBe([
      'the query set is not a valid query set:',
      '  - "name" must be a non-empty string, not missing',
      '  - query 1 has no relevant judgement (a grade above 0): its recall and nDCG are undefined; leave it out',
      '  - queries[1].id "1" is used by an earlier query too',
      '  - queries[1].text (query 1) must be a non-empty string',
      '  - queries[1].judgements["9"] (query 1) must be a number, not "x"',
      '  - queries[2] must be an object, not 5',
    ].join('\n'));
  });
});

describe('on the Cranfield collection', () => {
  const dir = cranfieldDir();
  const A = 'cran-hash256@1';
  const B = 'cran-hash64@1';
  const QUERIES = 25;
  let server: EmbeddingServer;
  let worker: RunningWorker | undefined;
  let openai: OpenAI;
  let loaded: CranfieldLoad;
  let first: QuerySet;
  let scratch: string;

  beforeAll(async () => {
    // Not a skip: without the data this file fails, saying where it looked.
    if (!existsSync(join(dir, 'cranfield-documents.json'))) {
      throw new Error(`the Cranfield collection is not at ${dir} (expected ../shared/data/cranfield/ beside the project ` +
        'or beside the repository it was cloned from, or set REGEN_CRANFIELD_DIR)');
    }
    scratch = await mkdtemp(join(tmpdir(), 'pgregen-eval-'));
    server = await startEmbeddingServer();
    openai = new OpenAI({ apiKey: 'test', baseURL: server.url });
    loaded = await loadCranfield(db.pool, { dir });
    first = { ...loaded.querySet, queries: loaded.querySet.queries.slice(0, QUERIES) };
    const settings = { send_dimensions: true, distance: 'cosine', lowercase: true };
    await db.query(`select regen.create_version($1, 'local-hash', 256, settings => $2::jsonb)`, [A, JSON.stringify(settings)]);
    // B: other vectors (fewer dimensions) and smaller chunks, so a search returns several chunks of one row
    await db.query(`select regen.create_version($1, 'local-hash', 64, settings => $2::jsonb)`,
      [B, JSON.stringify({ ...settings, chunk_chars: 500, chunk_overlap: 50 })]);
    expect(await registerCranfieldSource(db.pool, { version: A })).toEqual({ source: 'cranfield', registered: true });
    worker = await inProcessWorker(workerEnv(db.url, server));
    await waitForVersion(db, 'cranfield', A);
  }, 180_000);

  afterAll(async () => {
    await worker?.stop();
    await server?.close();
    if (scratch) await rm(scratch, { recursive: true, force: true });
  });

  it('loads the 1,400 documents once and all 225 judged queries', async () => {
    expect(loaded).toMatchObject({ table: 'public.cranfield_documents', documents: 1400 });
    expect(loaded.querySet.queries).toHaveLength(225);
    expect(loaded.querySet.queries[0]!.judgements['184']).toBe(3);
    const again = await loadCranfield(db.pool, { dir });
    expect(again.documents).toBe(1400);
    const { rows: [count] } = await db.query(`select count(*)::int as n, count(*) filter (where body = '')::int as empty from cranfield_documents`);
    expect(count).toEqual({ n: 1400, empty: 2 });
    // the two empty documents are not embedded
    const { rows: [gap] } = await db.query(`select expected::int, coverage::float8 from regen.embedding_gap where source = 'cranfield'`);
    expect(gap).toEqual({ expected: 1398, coverage: 1 });
    expect(await registerCranfieldSource(db.pool, { version: A })).toEqual({ source: 'cranfield', registered: false });
  });

  it('says where it looked when the collection is absent', async () => {
    const missing = join(scratch, 'no-cranfield-here');
    await expect(cranfieldQuerySet(missing)).rejects.toThrow(`the Cranfield collection is not at ${missing}: cranfield-queries.json is missing`);
    await expect(loadCranfield(db.pool, { dir: missing })).rejects.toMatchObject({
      message: `the Cranfield collection is not at ${missing}: cranfield-documents.json is missing`,
      hint: expect.stringContaining('REGEN_CRANFIELD_DIR'),
    });
  });

  it('evaluates a version: the run is stored with its scores and shown next to coverage', async () => {
    const run = await evaluate({ pool: db.pool, openai }, { version: A, querySet: first, tenant: 'cranfield', k: 10 });
    expect(run).toMatchObject({ version: A, sources: ['cranfield'], tenant: 'cranfield', querySet: 'cranfield', k: 10, queries: QUERIES });
    for (const score of [run.recallAtK, run.mrr, run.ndcgAtK]) expect(score).toBeGreaterThan(0);
    for (const score of [run.recallAtK, run.mrr, run.ndcgAtK]) expect(score).toBeLessThanOrEqual(1);

    const { rows: [stored] } = await db.query('select * from regen.eval_runs where id = $1', [run.id]);
    expect(stored).toMatchObject({ version: A, queries: QUERIES, k: 10, actor: expect.any(String), recall_at_k: run.recallAtK });
    // each query's scores, recomputed here from its stored top 10 and its judgements
    expect(stored.details).toHaveLength(QUERIES);
    let recall = 0;
    for (const [i, detail] of (stored.details as Array<Record<string, unknown>>).entries()) {
      const query = first.queries[i]!;
      const ranked = detail.ranked as string[];
      expect(detail.id).toBe(query.id);
      expect(new Set(ranked).size).toBe(10);
      const byHand = scoreByHand(ranked, query.judgements, 10);
      expect(detail.recall_at_k).toBeCloseTo(byHand.recall, 12);
      expect(detail.reciprocal_rank).toBeCloseTo(byHand.reciprocalRank, 12);
      expect(detail.ndcg_at_k).toBeCloseTo(byHand.ndcg, 12);
      recall += byHand.recall;
    }
    expect(run.recallAtK).toBeCloseTo(recall / QUERIES, 12);

    const { rows: [status] } = await db.query(`select * from regen.migration_status where source = 'cranfield' and version = $1`, [A]);
    expect(status).toMatchObject({ role: 'active', expected: '1398', current: '1398', coverage: '1.0000', eval_run: String(run.id),
      eval_query_set: 'cranfield', eval_k: 10, recall_at_k: run.recallAtK.toFixed(4), mrr: run.mrr.toFixed(4),
      ndcg_at_k: run.ndcgAtK.toFixed(4), shadow_run: null });
  });

  it('compares a version being built with the active one, in SQL, and stores the comparison', async () => {
    await db.query(`select * from regen.start_migration('cranfield', $1)`, [B]);
    await waitForVersion(db, 'cranfield', B);
    const same = await shadowCompare({ pool: db.pool, openai }, { versionA: A, versionB: A, queries: first.queries, tenant: 'cranfield', k: 10 });
    expect(same).toMatchObject({ queries: QUERIES, overlapAtK: 1, rankAgreement: 1 });

    const run = await shadowCompare({ pool: db.pool, openai },
      { versionA: A, versionB: B, queries: first.queries, querySet: first.name, tenant: 'cranfield', k: 10 });
    expect(run).toMatchObject({ versionA: A, versionB: B, sources: ['cranfield'], querySet: 'cranfield', queries: QUERIES, k: 10 });
    // 256 and 64 hashed dimensions, 2,000- and 500-character chunks: similar neighbours, not the same
    expect(run.overlapAtK).toBeGreaterThan(0);
    expect(run.overlapAtK).toBeLessThan(1);
    expect(run.rankAgreement).toBeGreaterThan(0);
    expect(run.rankAgreement).toBeLessThan(1);
    const { rows: details } = await db.query(
      `select d->'a' as a, d->'b' as b from regen.shadow_runs r, jsonb_array_elements(r.details) d where r.id = $1`, [run.id]);
    expect(details.every((d) => d.a.length === 10 && new Set(d.b).size === 10)).toBe(true);

    const evalB = await evaluate({ pool: db.pool, openai }, { version: B, querySet: first, tenant: 'cranfield', sources: ['cranfield'] });
    const { rows } = await db.query(`select version, role, coverage, eval_run, shadow_run, shadow_version, overlap_at_k
                                       from regen.migration_status where source = 'cranfield' order by role`);
    expect(rows).toEqual([
      { version: A, role: 'active', coverage: '1.0000', eval_run: expect.any(String), shadow_run: String(run.id), shadow_version: B,
        overlap_at_k: run.overlapAtK.toFixed(4) },
      { version: B, role: 'building', coverage: '1.0000', eval_run: String(evalB.id), shadow_run: String(run.id), shadow_version: A,
        overlap_at_k: run.overlapAtK.toFixed(4) },
    ]);
  });

  it('runs from the command line: pgregen eval --cranfield, eval and shadow', async () => {
    const file = join(scratch, 'cranfield.query-set.json');
    const env = { DATABASE_URL: db.url, OPENAI_API_KEY: 'test', OPENAI_BASE_URL: server.url };
    const load = await runCli(['eval', '--cranfield', dir, '--out', file, '--json'], env);
    expect(load).toMatchObject({ code: 0 });
    expect(JSON.parse(load.stdout)).toMatchObject({ documents: 1400, queries: 225, table: 'public.cranfield_documents', source: null });
    expect((await readQuerySet(file)).queries).toHaveLength(225);

    const evalRun = await runCli(['eval', '--version', A, '--queries', file, '--tenant', 'cranfield', '--limit', '5', '--k', '5', '--json'], env);
    expect(evalRun.code, evalRun.stderr).toBe(0);
    expect(JSON.parse(evalRun.stdout)).toMatchObject({ version: A, queries: 5, k: 5, coverage: 1 });
    const shadow = await runCli(['shadow', '--a', A, '--b', B, '--queries', file, '--tenant', 'cranfield', '--limit', '5'], env);
    expect(shadow.code, shadow.stderr).toBe(0);
    expect(shadow.stdout).toMatch(new RegExp(`^shadow run \\d+: ${A} vs ${B}, 5 queries, k = 10, tenant cranfield, sources cranfield\n  overlap@10 0\\.\\d{4}   rank agreement 0\\.\\d{4}\n$`));

    const noTenant = await runCli(['eval', '--version', A, '--queries', file], env);
    expect(noTenant).toMatchObject({ code: 2, stderr: expect.stringContaining('--tenant is required') });
    const badFile = join(scratch, 'bad.json');
    await writeFile(badFile, '{"name": "x", "queries": []}');
    const bad = await runCli(['eval', '--version', A, '--queries', badFile, '--tenant', 'cranfield'], env);
    expect(bad).toMatchObject({ code: 1, stderr: expect.stringContaining(`the query set ${badFile} is not a valid query set`) });
  });
});
