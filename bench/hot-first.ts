// J. Hot-first across sources (issue 13, item 5): the share of a Zipf query log answerable over the
// rebuild's *time*, on three sources like the seed's: knowledge-base articles (active ones newest
// first at weight 3, retired ones at priority 0), help articles by views (weight 2) and document
// chunks, the long tail (weight 1, no priority). The real rebuild runs twice on fresh data, paced by
// the worker's token limit (REGEN_TPM) so that time goes with tokens: once with the product's
// configuration (the seed's) and once in primary-key order with no hot-first configuration at
// all. When each row became current comes from regen._embeddings.embedded_at; the ideal order
// (the log's rows by queries per token) is computed. During each rebuild, queries of the log are
// put to regen.search_scoped, to show that "current" is "answerable".
//
//   npm run bench -- --only hot-first [--quick]
import pg from 'pg';
import { hashedEmbedding, startEmbeddingServer } from '../src/provider-server.ts';
import { estimateTokens } from '../src/tokens.ts';
import {
  analyzeItems, documentText, fmtInt, gaussian, goalsTable, headerLines, log, pct, prng, sleep, startCluster, startWorkerProcess,
  table, workerEnv, type BenchResult, type Cluster, type Goal,
} from './worker-support.ts';

const NAME = 'hot-first';
const ZIPF_S = 1.1;
const DIMENSIONS = 64;
const TENANT = 'acme';
const GOAL = { time: 0.15, answerable: 0.85, overPk: 2 };
const CHECKPOINTS = [0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1];
const SIZES = {
  full: { kb: 2_000, help: 1_250, chunks: 10_000, queries: 20_000, tpm: 5_000_000 },
  quick: { kb: 400, help: 250, chunks: 2_000, queries: 5_000, tpm: 3_000_000 },
};
// The corpus (seeded): what each source holds and how much it is asked about.
const CORPUS = {
  kbActiveShare: 0.35,               // the rest are retired (superseded, archived)
  kbBytes: [1_500, 4_500],           // uniform; KB articles are embedded whole
  helpBytes: [1_000, 3_000],
  chunkBytes: 2_000,                 // 85% full chunks of a document, 15% a document's last, shorter one
  // Interest (log scale, Normal(mean, 1) plus the terms below); rows are ranked by it and the row of
  // rank r is the target of a query with probability ∝ 1/r^1.1.
  interest: { kbActive: 2.3, kbActivePerYear: -0.6, kbRetired: -2.5, help: 1.0, chunk: -1.0 },
  helpViewsNoise: 0.7,               // views = 200,000 × p(row) × e^(0.7 N(0,1))
};
type Shape = typeof CORPUS;
const SOURCES = [
  { name: 'kb_article', table: 'kb', weight: 3, priority: 'case when active then extract(epoch from updated_at) else 0 end' },
  { name: 'help_article', table: 'help', weight: 2, priority: 'views' },
  { name: 'doc_chunk', table: 'chunks', weight: 1, priority: null },
] as const;
type SourceName = (typeof SOURCES)[number]['name'];

interface Row {
  source: SourceName;
  id: number;
  body: string;
  tokens: number;
  active: boolean;
  updatedAt: Date;
  views: number;
  interest: number;
  /** Queries of the log that ask for this row. */
  asked: number;
}

/** The corpus and its query log, the same every run. */
export function corpus(size: { kb: number; help: number; chunks: number; queries: number }, shape: Shape = CORPUS): Row[] {
  const random = prng(2026);
  const permutation = (n: number) => {
    const ids = Array.from({ length: n }, (_, i) => i + 1);
    for (let i = n - 1; i > 0; i--) {
      const j = Math.floor(random() * (i + 1));
      [ids[i], ids[j]] = [ids[j]!, ids[i]!];
    }
    return ids;
  };
  const between = ([lo, hi]: readonly number[]) => lo! + Math.floor(random() * (hi! - lo!));
  const day = 86_400_000;
  const now = Date.UTC(2026, 5, 1);
  const rows: Row[] = [];
  const add = (source: SourceName, id: number, bytes: number, fields: Partial<Row>) =>
    rows.push({ source, id, body: documentText(id, bytes, random), tokens: 0, active: true, updatedAt: new Date(now), views: 0, interest: 0, asked: 0, ...fields });
  const I = shape.interest;
  // Ids are random permutations: primary-key order is random with respect to popularity.
  const kbIds = permutation(size.kb);
  for (const id of kbIds) {
    const active = random() < shape.kbActiveShare;
    const ageDays = active ? random() * 730 : 365 + random() * 1460;
    add('kb_article', id, between(shape.kbBytes), {
      active, updatedAt: new Date(now - Math.round(ageDays) * day),
      interest: (active ? I.kbActive + I.kbActivePerYear * (ageDays / 365) : I.kbRetired) + gaussian(random),
    });
  }
  for (const id of permutation(size.help)) add('help_article', id, between(shape.helpBytes), { interest: I.help + gaussian(random) });
  for (const id of permutation(size.chunks)) {
    add('doc_chunk', id, random() < 0.85 ? shape.chunkBytes : between([200, shape.chunkBytes]), { interest: I.chunk + gaussian(random) });
  }
  for (const r of rows) r.tokens = estimateTokens(r.body);
  // Zipf over the rows ranked by interest; the help articles' views are a noisy count of that.
  const ranked = [...rows].sort((a, b) => b.interest - a.interest);
  const weights = ranked.map((_, i) => (i + 1) ** -ZIPF_S);
  const total = weights.reduce((a, b) => a + b, 0);
  const cdf = new Float64Array(ranked.length);
  let acc = 0;
  ranked.forEach((r, i) => {
    const p = weights[i]! / total;
    acc += p;
    cdf[i] = acc;
    if (r.source === 'help_article') r.views = Math.round(200_000 * p * Math.exp(shape.helpViewsNoise * gaussian(random)));
  });
  for (let q = 0; q < size.queries; q++) {
    const u = random() * acc;
    let lo = 0;
    let hi = ranked.length - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (cdf[mid]! < u) lo = mid + 1;
      else hi = mid;
    }
    ranked[lo]!.asked++;
  }
  return rows;
}

interface Run {
  label: string;
  /** Milliseconds from the rebuild call until each row became current, by `${source}/${id}`. */
  currentAt: Map<string, number>;
  /** The rows in the order the queue held them (job priority, then age), read back after the run. */
  queueOrder: string[];
  rebuildMs: number;
  endMs: number;
  searches: Array<{ at: number; key: string; found: boolean }>;
  exitCode: number | null;
}

const keyOf = (r: { source: string; id: number | string }) => `${r.source}/${r.id}`;

export async function run(options: { quick: boolean }): Promise<BenchResult> {
  const size = options.quick ? SIZES.quick : SIZES.full;
  const say = log(NAME);
  const started = new Date();
  const rows = corpus(size);
  const byKey = new Map(rows.map((r) => [keyOf(r), r]));
  const totalTokens = rows.reduce((a, r) => a + r.tokens, 0);
  const queryLog = rows.flatMap((r) => Array.from({ length: r.asked }, () => r));
  say(`${fmtInt(rows.length)} rows, ${fmtInt(totalTokens)} tokens, ${fmtInt(queryLog.length)} queries; REGEN_TPM=${fmtInt(size.tpm)}`);

  const cluster = await startCluster(say);
  const runs: Run[] = [];
  try {
    runs.push(await measure(cluster, 'hot_product', 'hot-first (the seed\'s configuration)', true, rows, queryLog, size.tpm, say));
    runs.push(await measure(cluster, 'hot_pk', 'primary-key order', false, rows, queryLog, size.tpm, say));
  } finally {
    await cluster.stop();
  }

  // Share of the log answerable at a share of the run's time, measured.
  const measured = (r: Run) => (share: number) => {
    const t = share * r.endMs;
    return queryLog.filter((q) => r.currentAt.get(keyOf(q))! <= t).length / queryLog.length;
  };
  // Computed: an order paced perfectly (time ∝ tokens).
  const paced = (order: Row[]) => (share: number) => {
    let tokens = 0;
    let asked = 0;
    for (const r of order) {
      tokens += r.tokens;
      if (tokens > share * totalTokens) break;
      asked += r.asked;
    }
    return asked / queryLog.length;
  };
  const ideal = paced([...rows].sort((a, b) => b.asked / b.tokens - a.asked / a.tokens));
  const weightsOnly = paced([...rows].sort((a, b) => weightOf(b.source) - weightOf(a.source) || a.id - b.id));
  const [hot, pk] = runs as [Run, Run];
  const computedOrder = productOrder(rows).map(keyOf);
  const sameOrder = computedOrder.every((k, i) => k === hot.queueOrder[i]);
  const hotAt = measured(hot);
  const pkAt = measured(pk);
  const queueHot = paced(hot.queueOrder.map((k) => byKey.get(k)!));
  const queuePk = paced(pk.queueOrder.map((k) => byKey.get(k)!));

  const share = (f: (r: Row) => boolean) => rows.filter(f).reduce((a, r) => a + r.asked, 0) / queryLog.length;
  const tokenShare = (f: (r: Row) => boolean) => rows.filter(f).reduce((a, r) => a + r.tokens, 0) / totalTokens;
  const parts: Array<[string, (r: Row) => boolean]> = [
    ['kb_article, active', (r) => r.source === 'kb_article' && r.active],
    ['kb_article, retired (priority 0)', (r) => r.source === 'kb_article' && !r.active],
    ['help_article, viewed', (r) => r.source === 'help_article' && r.views > 0],
    ['help_article, never viewed (priority 0)', (r) => r.source === 'help_article' && r.views === 0],
    ['doc_chunk', (r) => r.source === 'doc_chunk'],
  ];
  const spearmanOf = (filter: (r: Row) => boolean, priority: (r: Row) => number) => {
    const of = rows.filter(filter);
    return spearman(of.map(priority), of.map((r) => r.interest));
  };
  const hot15 = hotAt(GOAL.time);
  const pk15 = pkAt(GOAL.time);
  const goals: Goal[] = [
    { name: `queries answerable at ${pct(GOAL.time, 0)} of the rebuild time, hot-first`, measured: pct(hot15), wanted: `≥ ${pct(GOAL.answerable, 0)}`,
      met: hot15 >= GOAL.answerable },
    { name: `the same, against primary-key order (${pct(pk15)})`, measured: pk15 > 0 ? `${(hot15 / pk15).toFixed(2)}×` : '—', wanted: `≥ ${GOAL.overPk}×`,
      met: hot15 > 0 && hot15 >= GOAL.overPk * pk15 },
  ];
  const searchLines = runs.map((r) => {
    const found = r.searches.filter((s) => s.found);
    const missed = r.searches.filter((s) => !s.found);
    const foundCurrent = found.filter((s) => r.currentAt.get(s.key)! <= s.at).length;
    // a write's embedded_at is its transaction's start: a search may miss it until it commits
    const lag = Math.max(0, ...missed.map((s) => s.at - r.currentAt.get(s.key)!));
    const around = r.searches.filter((x) => x.at >= 0.1 * r.endMs && x.at <= 0.2 * r.endMs);
    return `- ${r.label}: ${fmtInt(r.searches.length)} queries of the log put to \`regen.search_scoped\` (k = 10) during the rebuild, ` +
      `10 every half second: ${fmtInt(found.length)} found their row (written before the search: ${fmtInt(foundCurrent)} of them), ` +
      `${fmtInt(missed.length)} did not (written after the search, or at most ${fmtInt(lag)} ms before it: a write not yet committed). ` +
      `Of the ${fmtInt(around.length)} put between 10% and 20% of the rebuild time, ` +
      `${pct(around.filter((x) => x.found).length / Math.max(1, around.length))} found their row`;
  });
  const w = options.quick ? ' (quick smoke size: not a result)' : '';
  const markdown = [
    `## J. Hot-first across sources: queries answerable over the rebuild's time${w}`,
    '',
    ...headerLines(started, cluster.machine).map((l) => `- ${l}`),
    '- database: throwaway local cluster (src/local-postgres.ts), a fresh database per run with `create extension vector` and `install()`',
    `- corpus, like the seed's (one tenant): \`kb\` ${fmtInt(size.kb)} knowledge-base articles of ${CORPUS.kbBytes.join('-')} bytes, ` +
      `${pct(CORPUS.kbActiveShare, 0)} active (updated in the last 2 years), the rest retired (updated 1-5 years ago); \`help\` ` +
      `${fmtInt(size.help)} help articles of ${CORPUS.helpBytes.join('-')} bytes with a view count; \`chunks\` ${fmtInt(size.chunks)} ` +
      `document chunks of up to ${fmtInt(CORPUS.chunkBytes)} bytes (85% full). ${fmtInt(rows.length)} rows, ${fmtInt(totalTokens)} tokens ` +
      '(the worker\'s count for this model: a token per 3 bytes). Ids are random permutations (primary-key order is random with respect to popularity)',
    `- query log: ${fmtInt(queryLog.length)} queries, each for one row, drawn with probability ∝ 1/r^${ZIPF_S} for the row of popularity rank ` +
      `r (Zipf, s = ${ZIPF_S}). Rows are ranked by an interest score, Normal(μ, 1) with μ = ${CORPUS.interest.kbActive} − ` +
      `${-CORPUS.interest.kbActivePerYear} × age in years for active articles, ${CORPUS.interest.help} for help articles, ` +
      `${CORPUS.interest.chunk} for chunks and ${CORPUS.interest.kbRetired} for retired articles: the seed's shape (active entries, then help by ` +
      'views, then the long tail, which is still asked now and then; retired articles rarely)',
    `- priorities track popularity imperfectly: an active article's recency (Spearman correlation with its interest: ` +
      `${spearmanOf((r) => r.source === 'kb_article' && r.active, (r) => r.updatedAt.getTime()).toFixed(2)}), help views = ` +
      `200,000 × the row's query probability × e^(${CORPUS.helpViewsNoise} N(0,1)) (Spearman ` +
      `${spearmanOf((r) => r.source === 'help_article', (r) => r.views).toFixed(2)}); chunks have none`,
    `- runs, each on a fresh database with the same rows: (a) hot-first, the seed's configuration: ${SOURCES.map((s) =>
      `\`${s.name}\` weight ${s.weight}, ${s.priority ? `\`priority_expression => '${s.priority}'\`` : 'no priority expression'}`).join('; ')}; ` +
      '(b) primary-key order: the same sources with no hot-first configuration, weight 1 and `priority_expression => \'-id\'` each. ' +
      `Version \`regen.create_version(tag, 'local-hash', ${DIMENSIONS}, settings => '{"send_dimensions": true, "chunk_chars": 5000}')\` ` +
      '(a row is one input); its HNSW index dropped (search takes the exact path, `regen.search_exact_max_rows` raised for the session); ' +
      '`analyze regen._items`; the worker started and idle, then `select * from regen.rebuild()` and the clock',
    `- worker: the real \`pgregen worker\` binary with \`REGEN_TPM=${size.tpm}\` (it paces to 95% of it: ` +
      `${((totalTokens / (size.tpm * 0.95)) * 60).toFixed(0)} s for the corpus), every other variable at its default (2 fetch loops of 8 jobs × 64 rows); ` +
      'provider: src/provider-server.ts, unthrottled, no added latency',
    '- measured: when each row became current (regen._embeddings.embedded_at, the write\'s transaction start) from the rebuild call; the ' +
      'rebuild time is until the last row became current. A query is answerable once its row is current',
    '- computed (no database): the rows of each run\'s queue in the order pg-boss hands them out (job priority, then age), paced exactly ' +
      '(time ∝ tokens); "best merge" = the most that any interleaving of the three sources answers while it keeps each source\'s own ' +
      'order (hot rows by priority, then cold ones): the bound of every cross-source rank or tier scheme built on these priorities; ' +
      '"ideal" = the log\'s rows by queries per token, the most any order can answer at each time; "weights alone" = the ' +
      'sources by weight, each in primary-key order (hot-first with no row priorities)',
    '',
    '**The corpus: where the queries and the tokens are**',
    '',
    table(['rows', 'count', 'share of tokens', 'share of queries'],
      parts.map(([label, f]) => [label, fmtInt(rows.filter(f).length), pct(tokenShare(f)), pct(share(f))])),
    '',
    '**Share of the query log answerable vs share of the rebuild time**',
    '',
    table(['rebuild time', 'hot-first (measured)', 'primary-key order (measured)', 'hot-first queue, paced exactly', 'primary-key queue, paced exactly',
      'best merge of the sources\' orders (computed)', 'weights alone (computed)', 'ideal (computed)'],
    CHECKPOINTS.map((x) => [pct(x, 0), pct(hotAt(x)), pct(pkAt(x)), pct(queueHot(x)), pct(queuePk(x)), pct(bestMerge(rows, x)), pct(weightsOnly(x)),
      pct(ideal(x))])),
    '',
    table(['figure', ...runs.map((r) => r.label)], [
      ['regen.rebuild() call (enqueues every row)', ...runs.map((r) => `${(r.rebuildMs / 1000).toFixed(1)} s`)],
      ['rebuild time (last row current)', ...runs.map((r) => `${(r.endMs / 1000).toFixed(1)} s`)],
      ['tokens per minute, whole rebuild', ...runs.map((r) => fmtInt(totalTokens / (r.endMs / 60_000)))],
      ['exit code on SIGTERM', ...runs.map((r) => String(r.exitCode))],
    ]),
    '',
    ...searchLines,
    '',
    `**How much the corpus decides it: share answerable at ${pct(GOAL.time, 0)} of the time on variants of the corpus (computed, paced exactly)**`,
    '',
    table(['corpus', 'chunks\' share of queries', 'hot-first order', 'best merge of the sources\' orders', 'weights alone', 'ideal'], sensitivity(size)),
    '',
    `The hot-first order here is sql/0018's rule applied to the rows (${sameOrder ? 'the same order as the queue of run (a)' :
      'NOT the order of the queue of run (a): the SQL has changed since'}); one parameter changed at a time, the rest as above.`,
    '',
    '**Targets**',
    '',
    goalsTable(goals),
    '',
    `Reading: the queue's hot-first order answers ${pct(queueHot(GOAL.time))} at ${pct(GOAL.time, 0)} of the time when paced exactly, the ` +
      `run ${pct(hot15)}: the worker writes a fetched batch (up to 8 jobs of 64 rows) once all its provider requests are back, and its token ` +
      'bucket lets a request go into debt, so rows become current in steps of a batch, early or late by up to one. No interleaving of the ' +
      `sources' own orders does better at ${pct(GOAL.time, 0)} (${pct(bestMerge(rows, GOAL.time))}), however it weighs them. The distance to the ideal ` +
      `(${pct(ideal(GOAL.time))}) is mostly the chunks: ${pct(share((r) => r.source === 'doc_chunk'))} of the queries on ` +
      `${pct(tokenShare((r) => r.source === 'doc_chunk'))} of the tokens, with no priority to tell the asked ones from the rest.`,
    '',
    'With Zipf s = 1.1 over this many rows the most popular row alone is asked by ' +
      `${pct(Math.max(...rows.map((r) => r.asked)) / queryLog.length)} of the log: a curve jumps where such a row becomes current, and the ` +
      'primary-key order is one draw of a random order.',
  ].join('\n');
  return { name: NAME, markdown };
}

/**
 * The order sql/0018's regen._enqueue gives the seed's configuration, computed: every hot row
 * (priority > 0, or no priority expression) before every cold one, then the heavier source, then
 * the higher priority, then the row id as text.
 */
function productOrder(rows: Row[]): Row[] {
  const priority = (r: Row) => (r.source === 'kb_article' ? (r.active ? r.updatedAt.getTime() / 1000 : 0) : r.source === 'help_article' ? r.views : null);
  const hot = (r: Row) => { const p = priority(r); return p === null || p > 0; };
  return [...rows].sort((a, b) => Number(hot(b)) - Number(hot(a)) || weightOf(b.source) - weightOf(a.source) ||
    (priority(b) ?? 0) - (priority(a) ?? 0) || (String(a.id) < String(b.id) ? -1 : String(a.id) > String(b.id) ? 1 : 0));
}

/**
 * The most queries any merge of the three sources' own orders (sql/0018's order within each source)
 * answers within `share` of the tokens: the bound of every cross-source rank or tier scheme that keeps
 * each source's priority order. Every prefix of the first two sources, the longest that fits of the third.
 */
function bestMerge(rows: Row[], share: number): number {
  const order = productOrder(rows);
  const prefixes = SOURCES.map((s) => {
    const tokens = [0];
    const asked = [0];
    for (const r of order.filter((x) => x.source === s.name)) {
      tokens.push(tokens.at(-1)! + r.tokens);
      asked.push(asked.at(-1)! + r.asked);
    }
    return { tokens, asked };
  });
  const [a, b, c] = prefixes as [typeof prefixes[0], typeof prefixes[0], typeof prefixes[0]];
  const budget = share * rows.reduce((n, r) => n + r.tokens, 0);
  let best = 0;
  for (let i = 0; i < a.tokens.length && a.tokens[i]! <= budget; i++) {
    let k = c.tokens.length - 1;
    for (let j = 0; j < b.tokens.length && a.tokens[i]! + b.tokens[j]! <= budget; j++) {
      while (a.tokens[i]! + b.tokens[j]! + c.tokens[k]! > budget) k--;
      best = Math.max(best, a.asked[i]! + b.asked[j]! + c.asked[k]!);
    }
  }
  return best / rows.reduce((n, r) => n + r.asked, 0);
}

/** At GOAL.time, paced exactly: the product's order, the best merge, the weights alone and the ideal, on variants of the corpus. */
function sensitivity(size: { kb: number; help: number; chunks: number; queries: number }): string[][] {
  const variants: Array<[string, Shape]> = [
    ['this corpus', CORPUS],
    ['chunks asked more (μ = -0.5)', { ...CORPUS, interest: { ...CORPUS.interest, chunk: -0.5 } }],
    ['chunks asked less (μ = -1.5)', { ...CORPUS, interest: { ...CORPUS.interest, chunk: -1.5 } }],
    ['help views noisier (e^(1.4 N))', { ...CORPUS, helpViewsNoise: 1.4 }],
    ['help views closer (e^(0.35 N))', { ...CORPUS, helpViewsNoise: 0.35 }],
    ['60% of the articles active', { ...CORPUS, kbActiveShare: 0.6 }],
  ];
  return variants.map(([label, shape]) => {
    const rows = corpus(size, shape);
    const tokens = rows.reduce((a, r) => a + r.tokens, 0);
    const at = (order: Row[]) => {
      let spent = 0;
      let asked = 0;
      for (const r of order) {
        spent += r.tokens;
        if (spent > GOAL.time * tokens) break;
        asked += r.asked;
      }
      return pct(asked / size.queries);
    };
    const chunkShare = rows.filter((r) => r.source === 'doc_chunk').reduce((a, r) => a + r.asked, 0) / size.queries;
    return [label, pct(chunkShare), at(productOrder(rows)), pct(bestMerge(rows, GOAL.time)),
      at([...rows].sort((a, b) => weightOf(b.source) - weightOf(a.source) || a.id - b.id)), at([...rows].sort((a, b) => b.asked / b.tokens - a.asked / a.tokens))];
  });
}

function weightOf(source: SourceName): number {
  return SOURCES.find((s) => s.name === source)!.weight;
}

async function measure(cluster: Cluster, database: string, label: string, hotFirst: boolean, rows: Row[], queryLog: Row[], tpm: number,
  say: (line: string) => void): Promise<Run> {
  const { url, client } = await cluster.database(database);
  say(`${label}: loading ${fmtInt(rows.length)} rows`);
  await client.query(`create table kb (id int primary key, tenant_id text not null, body text not null, active boolean not null, updated_at timestamptz not null);
                      create table help (id int primary key, tenant_id text not null, body text not null, views int not null);
                      create table chunks (id int primary key, tenant_id text not null, body text not null)`);
  const of = (source: SourceName) => rows.filter((r) => r.source === source);
  const ids = (rs: Row[]) => rs.map((r) => r.id);
  const bodies = (rs: Row[]) => rs.map((r) => r.body);
  const kb = of('kb_article');
  const help = of('help_article');
  const chunks = of('doc_chunk');
  await client.query(`insert into kb select i, $5, b, a, u from unnest($1::int[], $2::text[], $3::boolean[], $4::timestamptz[]) t(i, b, a, u)`,
    [ids(kb), bodies(kb), kb.map((r) => r.active), kb.map((r) => r.updatedAt.toISOString()), TENANT]);
  await client.query(`insert into help select i, $4, b, v from unnest($1::int[], $2::text[], $3::int[]) t(i, b, v)`,
    [ids(help), bodies(help), help.map((r) => r.views), TENANT]);
  await client.query(`insert into chunks select i, $3, b from unnest($1::int[], $2::text[]) t(i, b)`, [ids(chunks), bodies(chunks), TENANT]);
  await client.query('analyze kb; analyze help; analyze chunks');
  const tag = 'bench-hot@1';
  await client.query(`select regen.create_version($1, 'local-hash', $2, settings => '{"send_dimensions": true, "chunk_chars": 5000}')`, [tag, DIMENSIONS]);
  for (const s of SOURCES) {
    await client.query(`select regen.register_source(name => $1, relation => $2, id_column => 'id', content_expression => 'body',
                          tenant_column => 'tenant_id', priority_expression => $3, weight => $4, version => $5)`,
    [s.name, s.table, hotFirst ? s.priority : '-id', hotFirst ? s.weight : 1, tag]);
  }
  // The index changes how fast rows become current, not in what order; without it search is exact.
  for (const { name } of (await client.query<{ name: string }>(
    `select indexname as name from pg_indexes where schemaname = 'regen' and tablename = '_embeddings' and indexdef like '%USING hnsw%'`)).rows) {
    await client.query(`drop index regen.${name}`);
  }
  await analyzeItems(client);

  const server = await startEmbeddingServer({ dimensions: DIMENSIONS, latencyMs: 0, seed: 1 });
  const worker = await startWorkerProcess(workerEnv(url, server.url, { REGEN_TPM: String(tpm) }), say);
  const searcher = new pg.Client({ connectionString: url, application_name: 'pgregen bench search' });
  await searcher.connect();
  const searches: Run['searches'] = [];
  let t0 = 0;
  let rebuildMs = 0;
  let exitCode: number | null;
  try {
    const { rows: [clock] } = await client.query<{ now: number }>('select extract(epoch from clock_timestamp()) * 1000 as now');
    t0 = Number(clock!.now);
    const start = performance.now();
    await client.query('select * from regen.rebuild()');
    rebuildMs = performance.now() - start;
    let done = false;
    const sampling = (async () => {
      const random = prng(7);
      while (!done) {
        for (let i = 0; i < 10; i++) {
          const q = queryLog[Math.floor(random() * queryLog.length)]!;
          searches.push({ ...(await search(searcher, q)), key: keyOf(q) });
        }
        await sleep(500);
      }
    })();
    let lastSay = Date.now();
    for (const deadline = Date.now() + 20 * 60_000; ;) {
      const { rows: [gap] } = await client.query<{ open: string; current: string; failed: string }>(
        `select sum(missing + stale + outdated) as open, sum(current) as current, sum(failed) as failed from regen.embedding_gap`);
      if (Number(gap!.failed) > 0) throw new Error(`${label}: ${gap!.failed} failed items`);
      if (Number(gap!.open) === 0) break;
      if (worker.child.exitCode !== null) throw new Error(`the worker exited with ${worker.child.exitCode}:\n${worker.tail()}`);
      if (Date.now() > deadline) throw new Error(`${label}: the gap did not close in 20 minutes`);
      if (Date.now() - lastSay > 15_000) {
        lastSay = Date.now();
        say(`${label}: ${fmtInt(Number(gap!.current))} / ${fmtInt(rows.length)} current`);
      }
      await sleep(250);
    }
    done = true;
    await sampling;
  } finally {
    exitCode = await worker.stop();
    await server.close();
    await searcher.end();
  }
  const { rows: written } = await client.query<{ source: string; id: string; at: number }>(
    `select s.name as source, e.row_id as id, max(extract(epoch from e.embedded_at) * 1000) as at
       from regen._embeddings e join regen._sources s on s.id = e.source_id group by 1, 2`);
  if (written.length !== rows.length) throw new Error(`${label}: ${written.length} rows have vectors, ${rows.length} expected`);
  const currentAt = new Map(written.map((w) => [keyOf(w), Number(w.at) - t0]));
  const { rows: jobs } = await client.query<{ source: string; rows: string[] }>(
    `select data->>'source' as source, data->'rows' as rows from pgboss.job
      where name like 'regen\\_embed\\_v%' order by priority desc, created_on, id`);
  const queueOrder = jobs.flatMap((j) => j.rows.map((id) => `${j.source}/${id}`));
  if (new Set(queueOrder).size !== rows.length) throw new Error(`${label}: the jobs hold ${new Set(queueOrder).size} distinct rows, ${rows.length} expected`);
  const endMs = Math.max(...currentAt.values());
  say(`${label}: rebuild done in ${(endMs / 1000).toFixed(1)} s, ${fmtInt(searches.length)} searches`);
  return { label, currentAt, queueOrder, rebuildMs, endMs, searches: searches.map((s) => ({ ...s, at: s.at - t0 })), exitCode };

  async function search(c: pg.Client, q: Row): Promise<{ at: number; found: boolean }> {
    const vector = `[${Array.from(hashedEmbedding([q.body], DIMENSIONS)[0]!).join(',')}]`;
    await c.query('begin');
    try {
      await c.query(`select regen.set_tenant($1), set_config('regen.search_exact_max_rows', '100000000', true)`, [TENANT]);
      const { rows: [clock] } = await c.query<{ now: number }>('select extract(epoch from clock_timestamp()) * 1000 as now');
      const { rows: hits } = await c.query<{ source: string; row_id: string }>('select source, row_id from regen.search_scoped($1::vector, 10)', [vector]);
      return { at: Number(clock!.now), found: hits.some((h) => h.source === q.source && h.row_id === String(q.id)) };
    } finally {
      await c.query('commit');
    }
  }
}

/** Spearman's rank correlation (ties broken by position: fine for a description). */
function spearman(a: number[], b: number[]): number {
  const ranks = (v: number[]) => {
    const r = new Float64Array(v.length);
    v.map((x, i) => [x, i] as const).sort((p, q) => p[0] - q[0]).forEach(([, i], k) => { r[i] = k; });
    return r;
  };
  const ra = ranks(a);
  const rb = ranks(b);
  const n = a.length;
  let d2 = 0;
  for (let i = 0; i < n; i++) d2 += (ra[i]! - rb[i]!) ** 2;
  return 1 - (6 * d2) / (n * (n * n - 1));
}
