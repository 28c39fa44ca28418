// H. Migration flips: how long regen.cutover() and regen.rollback() take, and what searches see
// while they happen. An application role searches at a steady rate the whole time; each search
// asks regen.search_input() which version is active, takes the query vector of that version (the
// provider call is left out: vectors are precomputed) and runs regen.search_scoped() inside one
// transaction with the tenant set. Search latency in the second after each flip is set beside the
// steady state of the same run.
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import pgvector from 'pgvector';
import { prepareInputs, writeEmbeddings } from '../src/store.ts';
import { buildVersionIndexes } from '../src/versions.ts';
import {
  check, fmtInt, fmtMs, openServer, percentile, renderTable, serverInfo, seededVector, timed,
  type BenchOptions, type BenchReport, type ServerInfo, type Table,
} from './support.ts';

const SIZES = { full: { rows: 20_000, flips: 20, gapMs: 2_000 }, quick: { rows: 2_000, flips: 4, gapMs: 1_500 } };
const VERSIONS = [{ tag: 'flip-old@1', dims: 256 }, { tag: 'flip-new@2', dims: 128 }] as const;
const TENANTS = 50;
const SEARCHERS = 2;
const INTERVAL_MS = 10;   // each searcher starts a search every 10 ms (at most 200 searches/s in all)
const WINDOW_MS = 1_000;  // "during a flip": searches that started within this long after it began

type Search = { at: number; ms: number; version: string; rows: number };
type Flip = { kind: 'cutover' | 'rollback'; at: number; ms: number };

export async function run(options: BenchOptions): Promise<BenchReport> {
  const size = options.quick ? SIZES.quick : SIZES.full;
  const log = (line: string) => process.stderr.write(`migration-flip: ${line}\n`);
  const server = await openServer(log);
  const scratch = await server.createDatabase();
  const owner = new pg.Client({ connectionString: scratch.url, application_name: 'pgregen bench migration-flip' });
  await owner.connect();
  const role = `pgregen_bench_app_${randomBytes(4).toString('hex')}`;
  let info: ServerInfo;
  try {
    info = await serverInfo(owner);
    await build(owner, size.rows, log);
    await owner.query(`create role ${role} login`);
    await owner.query('select regen.grant_app($1::regrole)', [role]);
    const url = new URL(scratch.url);
    url.username = role;
    const { searches, flips } = await measure(owner, url.toString(), size, log);
    await owner.query(`drop owned by ${role}`);
    await owner.query(`drop role ${role}`);
    return report(searches, flips, size, server.origin, info);
  } finally {
    await owner.end();
    await scratch.drop();
    await server.stop();
  }
}

async function build(db: pg.Client, rows: number, log: (line: string) => void): Promise<void> {
  await db.query('create table docs (id bigint primary key, tenant text not null, body text not null)');
  await db.query(`insert into docs select g, 'tenant-' || (g % $2::int), 'document ' || g from generate_series(1, $1::int) g`, [rows, TENANTS]);
  for (const v of VERSIONS) {
    await db.query(`select regen.create_version($1, 'bench-model', $2::int, settings => '{"distance": "cosine"}')`, [v.tag, v.dims]);
  }
  await db.query(`select regen.register_source('docs', 'docs', 'id', 'body', 'tenant', version => $1)`, [VERSIONS[0].tag]);
  await db.query(`select regen.start_migration('docs', $1)`, [VERSIONS[1].tag]);
  // Loaded without the versions' HNSW indexes, which are built afterwards in one pass each.
  const { rows: ids } = await db.query<{ id: number }>('select id from regen._versions order by id');
  for (const { id } of ids) await db.query(`drop index if exists regen._embeddings_hnsw_v${id}`);   // the building version has none yet
  for (const [n, v] of VERSIONS.entries()) {
    const ms = await timed(async () => {
      for (let first = 1; first <= rows; first += 2_000) {
        const ids = Array.from({ length: Math.min(2_000, rows - first + 1) }, (_, i) => String(first + i));
        const inputs = await prepareInputs(db, 'docs', v.tag, ids);
        const results = await writeEmbeddings(db, 'docs', v.tag, inputs.map((input) => ({
          rowId: input.rowId, chunkNo: input.chunkNo, contentHash: input.contentHash,
          embedding: Array.from(seededVector(Number(input.rowId) * 2 + n, v.dims)),
        })));
        check(results.every((r) => r.stored), `every vector of ${v.tag} stored`);
      }
    });
    log(`${fmtInt(rows)} vectors of ${v.tag} (${v.dims} dimensions) written in ${(ms / 1000).toFixed(1)} s`);
  }
  const indexMs = await timed(async () => {
    await buildVersionIndexes(db);   // both versions are in use: CREATE INDEX CONCURRENTLY of each
  });
  log(`HNSW indexes built in ${(indexMs / 1000).toFixed(1)} s`);
  await db.query('vacuum analyze regen._embeddings');
  const { rows: gaps } = await db.query<{ coverage: string }>(`select coverage from regen.embedding_gap where source = 'docs'`);
  check(gaps.length === 2 && gaps.every((g) => Number(g.coverage) === 1), 'both versions fully built');
}

async function measure(owner: pg.Client, appUrl: string, size: typeof SIZES.full, log: (line: string) => void) {
  const queries = new Map<string, string[]>(VERSIONS.map((v, n): [string, string[]] => [v.tag, Array.from({ length: 64 }, (_, i) => pgvector.toSql(Array.from(seededVector(1e9 + i * 2 + n, v.dims))) as string)]));
  const searches: Search[] = [];
  const flips: Flip[] = [];
  let running = true;
  const clients = await Promise.all(Array.from({ length: SEARCHERS }, async (_, n) => {
    const client = new pg.Client({ connectionString: appUrl, application_name: `pgregen bench migration-flip searcher ${n}` });
    await client.connect();
    return client;
  }));
  const searcher = async (client: pg.Client, n: number) => {
    for (let i = n; running; i += SEARCHERS) {
      const next = performance.now() + INTERVAL_MS;
      const at = performance.now();
      await client.query('begin');
      await client.query('select regen.set_tenant($1)', [`tenant-${i % TENANTS}`]);
      const { rows: [target] } = await client.query<{ version: string }>(`select version from regen.search_input('q', array['docs'])`);
      const { rowCount } = await client.query('select * from regen.search_scoped($1::vector, 10, array[\'docs\'], $2)',
        [queries.get(target!.version)![i % 64], target!.version]);
      await client.query('commit');
      searches.push({ at, ms: performance.now() - at, version: target!.version, rows: rowCount ?? 0 });
      await new Promise((resolve) => setTimeout(resolve, Math.max(0, next - performance.now())));
    }
  };
  const load = Promise.all(clients.map(searcher));
  try {
    await new Promise((resolve) => setTimeout(resolve, size.gapMs * 2));   // warm-up and steady state before the first flip
    for (let f = 0; f < size.flips; f++) {
      const kind = f % 2 === 0 ? 'cutover' : 'rollback';
      const at = performance.now();
      const ms = await timed(() => kind === 'cutover'
        ? owner.query(`select regen.cutover('docs', $1)`, [VERSIONS[1].tag])
        : owner.query(`select regen.rollback('docs')`));
      flips.push({ kind, at, ms });
      await new Promise((resolve) => setTimeout(resolve, size.gapMs));
    }
    log(`${size.flips} flips, ${fmtInt(searches.length)} searches`);
  } finally {
    running = false;
    await load;
    await Promise.all(clients.map((c) => c.end()));
  }
  return { searches, flips };
}

function report(searches: Search[], flips: Flip[], size: typeof SIZES.full, origin: string, info: ServerInfo): BenchReport {
  const first = flips[0]!.at;
  const near = (s: Search, kind?: Flip['kind']) =>
    flips.some((f) => (!kind || f.kind === kind) && s.at >= f.at && s.at < f.at + WINDOW_MS);
  const groups: Array<[string, Search[]]> = [
    ['steady state (before the first flip, after warm-up)', searches.filter((s) => s.at < first && s.at > first - size.gapMs)],
    ['steady state (between flips, outside the 1 s windows)', searches.filter((s) => s.at >= first && !near(s))],
    ['within 1 s after a cutover began', searches.filter((s) => near(s, 'cutover'))],
    ['within 1 s after a rollback began', searches.filter((s) => near(s, 'rollback'))],
  ];
  for (const [name, group] of groups) check(group.length > 0, `searches in "${name}"`);
  check(searches.every((s) => s.rows === 10), 'every search returned 10 rows');
  const steady = percentile(groups[1]![1].map((s) => s.ms), 99);
  const searchTable: Table = {
    title: 'search_scoped latency around the flips (ms, whole transaction: set_tenant, search_input, search_scoped)',
    headers: ['searches', 'count', 'p50', 'p95', 'p99', 'max', 'p99 / steady p99'],
    rows: groups.map(([name, group]) => {
      const ms = group.map((s) => s.ms);
      const p99 = percentile(ms, 99);
      return [name, fmtInt(group.length), fmtMs(percentile(ms, 50)), fmtMs(percentile(ms, 95)), fmtMs(p99),
        fmtMs(Math.max(...ms)), `${(p99 / steady).toFixed(2)}×`];
    }),
  };
  const flipTable: Table = {
    title: 'Flip latency (ms, one statement from the owner, while the searches run)',
    headers: ['flip', 'count', 'p50', 'max'],
    rows: (['cutover', 'rollback'] as const).map((kind) => {
      const ms = flips.filter((f) => f.kind === kind).map((f) => f.ms);
      return [`regen.${kind}()`, String(ms.length), fmtMs(percentile(ms, 50)), fmtMs(Math.max(...ms))];
    }),
  };
  for (const table of [flipTable, searchTable]) console.log(`\n${renderTable(table)}`);
  const figures: Record<string, number> = {};
  for (const row of flipTable.rows) figures[`${row[0]} p50 ms`] = Number(row[2]);
  for (const [name, group] of groups) figures[`search p99 ms, ${name}`] = percentile(group.map((s) => s.ms), 99);
  return {
    title: 'H. Migration flips: cutover and rollback under steady searches',
    setup: [
      `database: ${origin}; source docs of ${fmtInt(size.rows)} rows over ${TENANTS} tenants, both versions fully built (loaded without ` +
        `their HNSW indexes, which were then built by regen._ensure_version_index): ` +
        `${VERSIONS[0].tag} (${VERSIONS[0].dims} dimensions, active first) and ${VERSIONS[1].tag} (${VERSIONS[1].dims}), cosine, one HNSW index each`,
      `${SEARCHERS} application-role connections, each starting a search every ${INTERVAL_MS} ms for the whole run: begin, ` +
        'regen.set_tenant, regen.search_input (which version is active), regen.search_scoped(k 10) with that version\'s query vector, commit',
      `${size.flips} flips, alternately regen.cutover(docs, ${VERSIONS[1].tag}) and regen.rollback(docs), ${size.gapMs} ms apart; ` +
        'a search counts as "during a flip" when it started within 1 s after the flip began',
      'checked: every search returned 10 rows of its version (the run fails otherwise)',
    ],
    tables: [flipTable, searchTable],
    targets: [],
    figures,
    server: info,
  };
}
