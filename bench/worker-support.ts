// Shared by the worker benchmarks (worker-throttled, worker-unthrottled, time-to-answer): a
// throwaway cluster with pgregen installed, a documents table, the real `pgregen worker` binary as a
// child process (its JSON log parsed, its memory sampled from /proc), the header lines of a RESULTS.md section,
// small formatting helpers and a dependency-free PNG line chart.
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import os from 'node:os';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { deflateSync, crc32 } from 'node:zlib';
import pg from 'pg';
import { install } from '../src/install.ts';
import { startLocalPostgres, type LocalPostgres } from '../src/local-postgres.ts';
import { commandLine, revision } from './support.ts';
import { mulberry32 } from '../src/prng.ts';

export interface BenchResult {
  /** The marker name of the section in bench/RESULTS.md: <!-- bench:NAME:start --> … <!-- bench:NAME:end --> */
  name: string;
  /** The section's content, without the markers. */
  markdown: string;
}

export const RESULTS = fileURLToPath(new URL('./RESULTS.md', import.meta.url));
const BIN = fileURLToPath(new URL('../bin/pgregen.js', import.meta.url));

export const log = (bench: string) => (line: string) => process.stderr.write(`${bench}: ${line}\n`);
export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

export interface Machine {
  postgres: string;
  pgvector: string;
}

/** The header lines every section starts with: date, command, code, machine. */
export function headerLines(started: Date, machine: Machine): string[] {
  const cpus = os.cpus();
  return [
    `date: ${started.toISOString().replace('T', ' ').slice(0, 16)} UTC, took ${((Date.now() - started.getTime()) / 60_000).toFixed(1)} min`,
    `command: \`${commandLine()}\``,
    `code: ${revision()}`,
    `machine: ${cpus.length} cores (${cpus[0]?.model ?? 'unknown CPU'}), ${(os.totalmem() / 2 ** 30).toFixed(1)} GiB memory, ${os.platform()} ${os.release()}`,
    `Node ${process.version}; PostgreSQL ${machine.postgres}; pgvector ${machine.pgvector}`,
    `load average at the end (1/5/15 min): ${os.loadavg().map((l) => l.toFixed(2)).join(' / ')} (shared machine: other work shows here)`,
  ];
}

// ---------------------------------------------------------------------------------------------
// Database

export interface Cluster {
  pg: LocalPostgres;
  machine: Machine;
  /** A new database with `create extension vector` and pgregen installed; track_functions = all. */
  database(name: string): Promise<{ url: string; client: pg.Client }>;
  stop(): Promise<void>;
}

export async function startCluster(say: (line: string) => void): Promise<Cluster> {
  const local = await startLocalPostgres({ log: say });
  const admin = new pg.Client({ connectionString: local.url });
  await admin.connect();
  const { rows: [v] } = await admin.query<{ version: string }>(`select current_setting('server_version') as version`);
  await admin.query('create extension if not exists vector');
  const { rows: [e] } = await admin.query<{ extversion: string }>(`select extversion from pg_extension where extname = 'vector'`);
  await admin.query('drop extension vector');
  const clients: pg.Client[] = [];
  return {
    pg: local,
    machine: { postgres: v!.version, pgvector: e!.extversion },
    async database(name) {
      await admin.query(`create database ${name}`);
      // Per-function timings of the worker's SQL calls (pg_stat_user_functions), at no measurable cost.
      await admin.query(`alter database ${name} set track_functions = 'all'`);
      const url = new URL(local.url);
      url.pathname = `/${name}`;
      const client = new pg.Client({ connectionString: url.toString(), application_name: 'pgregen bench' });
      await client.connect();
      clients.push(client);
      await client.query('create extension vector');
      await install({ connectionString: url.toString() });
      return { url: url.toString(), client };
    },
    async stop() {
      for (const c of clients) await c.end().catch(() => {});
      await admin.end().catch(() => {});
      await local.stop();
    },
  };
}

/** Seeded, so every run builds the same documents. */
export const prng = mulberry32;

/** Standard normal deviate (Box–Muller) from a uniform source. */
export function gaussian(random: () => number): number {
  return Math.sqrt(-2 * Math.log(1 - random())) * Math.cos(2 * Math.PI * random());
}

const SYLLABLES = 'ka lo mi ne ru sa ti vo za be da fe gi ho ju ke la mo nu pi qu re si to vu wa xe yo ze'.split(' ');

/**
 * A document of exactly `bytes` ASCII bytes (so ceil(bytes / 3) tokens for models without a known
 * tokenizer, as the worker and the local server both count): "doc <id>:" and pseudo-words drawn
 * from a 5,000-word vocabulary. Every document is distinct (it names its id), so no cache hits.
 */
export function documentText(id: number, bytes: number, random: () => number): string {
  let text = `doc ${id}:`;
  while (text.length < bytes) {
    const w = Math.floor(random() * 5000);
    text += ` ${SYLLABLES[w % 30]}${SYLLABLES[Math.floor(w / 30) % 30]}${w >= 900 ? SYLLABLES[Math.floor(w / 900) % 30] : ''}`;
  }
  return text.slice(0, bytes);
}

/** Creates `docs (id bigint primary key, rank integer, popularity float8, body text)` and fills it. */
export async function createDocs(client: pg.Client, rows: Array<{ id: number; rank: number; popularity: number; body: string }>): Promise<void> {
  await client.query('create table docs (id bigint primary key, rank integer not null, popularity float8 not null, body text not null)');
  for (let i = 0; i < rows.length; i += 10_000) {
    const part = rows.slice(i, i + 10_000);
    await client.query('insert into docs select * from unnest($1::bigint[], $2::integer[], $3::float8[], $4::text[])',
      [part.map((r) => r.id), part.map((r) => r.rank), part.map((r) => r.popularity), part.map((r) => r.body)]);
  }
  await client.query('analyze docs');
}

/** The version and the source, as the brief sets them up: the local server's model, dimensions sent. */
export async function registerDocs(client: pg.Client, options: { tag: string; dimensions: number; priority: string }): Promise<void> {
  await client.query(`select regen.create_version($1, 'local-hash', $2, settings => '{"send_dimensions": true}')`, [options.tag, options.dimensions]);
  await client.query(`select regen.register_source(name => 'docs', relation => 'docs', id_column => 'id', content_expression => 'body',
                        priority_expression => $1, version => $2)`, [options.priority, options.tag]);
}

/**
 * Drops the version's HNSW index: for comparison runs only (the product always keeps it). It
 * changes how fast items become current, not which vectors are written or in what order.
 */
export async function dropHnswIndex(client: pg.Client): Promise<void> {
  const { rows } = await client.query<{ name: string }>(
    `select indexname as name from pg_indexes where schemaname = 'regen' and tablename = '_embeddings' and indexdef like '%USING hnsw%'`);
  if (rows.length !== 1) throw new Error(`expected one HNSW index on regen._embeddings, found ${rows.length}`);
  await client.query(`drop index regen.${rows[0]!.name}`);
}

/**
 * ANALYZE regen._items. Right after register_source the table has never been analyzed, and
 * regen.prepare_inputs then runs with a plan that scans every item of the source once per row of the
 * batch (see section D), until autovacuum analyzes the table. Benchmarks that measure something else
 * (pacing, order) run this first and say so.
 */
export async function analyzeItems(client: pg.Client): Promise<void> {
  await client.query('analyze regen._items');
}

/** Seconds from `since` (ms since the epoch) to autovacuum's first analyze of regen._items; undefined if none. */
export async function itemsAutoAnalyzedAfter(client: pg.Client, since: number): Promise<number | undefined> {
  await client.query('select pg_stat_clear_snapshot()');
  const { rows: [r] } = await client.query<{ at: number | null }>(
    `select extract(epoch from last_autoanalyze) * 1000 as at from pg_stat_user_tables where schemaname = 'regen' and relname = '_items'`);
  return r?.at == null ? undefined : (Number(r.at) - since) / 1000;
}

/** Logs the plans of statements slower than `minMs` in this database, nested ones included (auto_explain, estimates only). */
export async function autoExplain(client: pg.Client, database: string, minMs: number): Promise<void> {
  await client.query(`alter database ${database} set session_preload_libraries = 'auto_explain'`);
  await client.query(`alter database ${database} set auto_explain.log_min_duration = ${Number(minMs)}`);
  await client.query(`alter database ${database} set auto_explain.log_nested_statements = on`);
}

export interface SlowPlan {
  ms: number;
  /** First words of the statement. */
  query: string;
  /** The planner's row estimate for the first scan of regen._items in the plan, if any. */
  itemsEstimate: number | undefined;
  /** Whether that scan is the outer side of a nested loop (the inner side then runs once per item). */
  itemsOuterOfNestedLoop: boolean;
}

/** The plans auto_explain wrote to the throwaway cluster's log (src/local-postgres.ts keeps it beside the data directory). */
export async function slowPlans(client: pg.Client): Promise<SlowPlan[]> {
  const { rows: [r] } = await client.query<{ dir: string }>(`select current_setting('data_directory') as dir`);
  const text = await readFile(`${r!.dir.replace(/\/data\/?$/, '')}/postgres.log`, 'utf8').catch(() => '');
  const plans: SlowPlan[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const head = /LOG:  duration: ([\d.]+) ms  plan:/.exec(lines[i]!);
    if (!head) continue;
    const block: string[] = [];
    for (let j = i + 1; j < lines.length && lines[j]!.startsWith('\t'); j++) block.push(lines[j]!);
    const query = block.slice(1).map((l) => l.trim()).find((l) => l.length > 0) ?? '';
    const scan = block.findIndex((l) => /Scan using _items_pkey on _items it\b/.test(l) || /Seq Scan on _items it\b/.test(l));
    const estimate = scan >= 0 ? Number(/rows=(\d+)/.exec(block[scan]!)?.[1]) : undefined;
    plans.push({ ms: Number(head[1]), query: query.slice(0, 60), itemsEstimate: estimate, itemsOuterOfNestedLoop: scan >= 0 && isOuterOfNestedLoop(block, scan) });
  }
  return plans;
}

/** Whether plan line `at` is the first child (outer side) of a Nested Loop node. */
function isOuterOfNestedLoop(plan: string[], at: number): boolean {
  const indent = (line: string) => line.indexOf('->');
  const mine = indent(plan[at]!);
  for (let i = at - 1; i >= 0; i--) {
    const other = indent(plan[i]!);
    if (other < 0) continue;              // a node's attribute line (Join Filter, Index Cond, ...)
    if (other === mine) return false;     // an earlier sibling: this scan is not the first child
    if (other < mine) return /Nested Loop/.test(plan[i]!);
  }
  return false;
}

export async function rebuild(client: pg.Client): Promise<{ items: number; jobs: number; ms: number }> {
  const started = performance.now();
  const { rows } = await client.query<{ items: string; jobs: string }>('select items, jobs from regen.rebuild()');
  return { items: rows.reduce((n, r) => n + Number(r.items), 0), jobs: rows.reduce((n, r) => n + Number(r.jobs), 0), ms: performance.now() - started };
}

export interface Gap {
  expected: number;
  current: number;
  open: number;
  failed: number;
  queued: number;
}

export async function readGap(client: pg.Client): Promise<Gap> {
  const { rows: [r] } = await client.query<Record<string, string>>(
    `select expected, current, missing + stale + outdated as open, failed, queued from regen.embedding_gap where source = 'docs'`);
  return { expected: Number(r!.expected), current: Number(r!.current), open: Number(r!.open), failed: Number(r!.failed), queued: Number(r!.queued) };
}

/** Polls regen.embedding_gap until nothing is missing, stale or outdated; returns when (Date.now()). */
export async function waitForClosedGap(client: pg.Client, options: {
  timeoutMs: number; everyMs?: number; onTick?: (gap: Gap, now: number) => Promise<void> | void; worker?: WorkerProcess;
}): Promise<number> {
  const deadline = Date.now() + options.timeoutMs;
  for (;;) {
    const gap = await readGap(client);
    const now = Date.now();
    await options.onTick?.(gap, now);
    if (gap.open === 0) return now;
    if (options.worker && options.worker.child.exitCode !== null) {
      throw new Error(`the worker exited with ${options.worker.child.exitCode} before the gap closed:\n${options.worker.tail()}`);
    }
    if (now > deadline) throw new Error(`the gap did not close within ${options.timeoutMs / 1000} s (${JSON.stringify(gap)})`);
    await sleep(options.everyMs ?? 200);
  }
}

/** Waiting and in-flight queue jobs (regen.queue_depth). */
export async function queueJobs(client: pg.Client): Promise<{ waiting: number; active: number }> {
  const { rows } = await client.query<{ state: string; jobs: string }>('select state, jobs from regen.queue_depth()');
  const jobs = (state: string) => rows.filter((r) => r.state === state).reduce((n, r) => n + Number(r.jobs), 0);
  return { waiting: jobs('created') + jobs('retry'), active: jobs('active') };
}

export interface FunctionStats {
  calls: number;
  totalMs: number;
}

/** pg_stat_user_functions for the worker-facing functions (track_functions = all). */
export async function functionStats(client: pg.Client): Promise<Record<'prepare_inputs' | 'write_embeddings', FunctionStats>> {
  // Backends flush their function statistics at most once a second and when they exit.
  await client.query('select pg_stat_clear_snapshot()');
  const { rows } = await client.query<{ funcname: string; calls: string; total_time: number }>(
    `select funcname, calls, total_time from pg_stat_user_functions where schemaname = 'regen' and funcname in ('prepare_inputs', 'write_embeddings')`);
  const get = (name: string) => {
    const r = rows.find((x) => x.funcname === name);
    return { calls: Number(r?.calls ?? 0), totalMs: Number(r?.total_time ?? 0) };
  };
  return { prepare_inputs: get('prepare_inputs'), write_embeddings: get('write_embeddings') };
}

// ---------------------------------------------------------------------------------------------
// The worker, as a child process

export interface BatchLine {
  /** pino's time: when the batch ended (ms since the epoch). */
  time: number;
  ms: number;
  jobs: number;
  stored: number;
  refused: number;
  providerInputs: number;
}

export interface WorkerProcess {
  child: ChildProcess;
  pid: number;
  port: number;
  batches: BatchLine[];
  warnings: string[];
  /** VmRSS samples, once a second, in kB. */
  rss: Array<{ at: number; kb: number }>;
  /** Highest V8 heap figures seen in /metrics, scraped every 5 s (bytes). */
  heap: { totalMax: number; usedMax: number; externalMax: number; samples: number };
  /** VmHWM (peak resident set) now, in kB; undefined once the process has exited. */
  peakKb(): number | undefined;
  tail(lines?: number): string;
  /** SIGTERM, then waits for the exit code. */
  stop(): Promise<number | null>;
}

/** The environment the worker runs with (as test/support/worker.ts's workerEnv, at production defaults otherwise). */
export function workerEnv(databaseUrl: string, providerUrl: string, extra: Record<string, string>): Record<string, string> {
  return {
    DATABASE_URL: databaseUrl,
    OPENAI_API_KEY: 'bench-key',
    OPENAI_BASE_URL: providerUrl,
    REGEN_PORT: '0',
    REGEN_LOG_LEVEL: 'info',
    ...extra,
  };
}

function procStatus(pid: number, field: string): number | undefined {
  try {
    const match = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return match ? Number(match[1]) : undefined;
  } catch {
    return undefined;
  }
}

/** The node flags the sidecar image (Dockerfile) runs the worker with: a small young generation. */
export const SIDECAR_NODE_ARGS = ['--max-semi-space-size=2'];

/** Spawns `node [nodeArgs] bin/pgregen.js worker` and resolves once it logged "worker started". */
export async function startWorkerProcess(env: Record<string, string>, say: (line: string) => void,
  nodeArgs: string[] = SIDECAR_NODE_ARGS): Promise<WorkerProcess> {
  const child = spawn(process.execPath, [...nodeArgs, BIN, 'worker'], { env: { PATH: process.env.PATH ?? '', ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  const recent: string[] = [];
  const batches: BatchLine[] = [];
  const warnings: string[] = [];
  const rss: Array<{ at: number; kb: number }> = [];
  let port = 0;
  let resolveStarted!: () => void;
  const started = new Promise<void>((resolve) => { resolveStarted = resolve; });
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  const onLine = (line: string) => {
    recent.push(line);
    if (recent.length > 200) recent.shift();
    let entry: Record<string, unknown>;
    try {
      entry = JSON.parse(line) as Record<string, unknown>;
    } catch {
      return;
    }
    if (entry.msg === 'worker started') {
      port = Number(entry.port);
      resolveStarted();
    } else if (entry.msg === 'batch done') {
      batches.push({ time: Number(entry.time), ms: Number(entry.ms), jobs: Number(entry.jobs), stored: Number(entry.stored),
        refused: Number(entry.refused), providerInputs: Number(entry.providerInputs) });
    } else if (Number(entry.level) >= 40) {
      warnings.push(line);
      if (warnings.length <= 5) say(`worker: ${line}`);
    }
  };
  createInterface({ input: child.stdout! }).on('line', onLine);
  createInterface({ input: child.stderr! }).on('line', onLine);
  const pid = child.pid!;
  // Never leave the worker behind if the benchmark dies.
  const reap = () => { if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL'); };
  process.on('exit', reap);
  void exited.then(() => process.off('exit', reap));
  const sampler = setInterval(() => {
    const kb = procStatus(pid, 'VmRSS');
    if (kb !== undefined) rss.push({ at: Date.now(), kb });
  }, 1000);
  sampler.unref();
  void exited.then(() => clearInterval(sampler));
  const heap = { totalMax: 0, usedMax: 0, externalMax: 0, samples: 0 };
  const heapSampler = setInterval(() => {
    if (!port) return;
    scrapeMetrics(port).then((m) => {
      heap.samples++;
      heap.totalMax = Math.max(heap.totalMax, m.get('pgregen_worker_nodejs_heap_size_total_bytes') ?? 0);
      heap.usedMax = Math.max(heap.usedMax, m.get('pgregen_worker_nodejs_heap_size_used_bytes') ?? 0);
      heap.externalMax = Math.max(heap.externalMax, m.get('pgregen_worker_nodejs_external_memory_bytes') ?? 0);
    }, () => {});
  }, 5000);
  heapSampler.unref();
  void exited.then(() => clearInterval(heapSampler));
  const tail = (n = 30) => recent.slice(-n).join('\n');
  const outcome = await Promise.race([started.then(() => 'started'), exited.then((code) => `exited with ${code}`), sleep(30_000).then(() => 'timed out')]);
  if (outcome !== 'started') {
    child.kill('SIGKILL');
    throw new Error(`the worker did not start (${outcome}):\n${tail()}`);
  }
  return {
    child, pid, port, batches, warnings, rss, heap,
    peakKb: () => procStatus(pid, 'VmHWM'),
    tail,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      const code = await Promise.race([exited, sleep(40_000).then(() => 'timeout' as const)]);
      if (code === 'timeout') {
        child.kill('SIGKILL');
        return exited;
      }
      return code;
    },
  };
}

/**
 * The idle gaps of the worker's fetch loops, reconstructed from the batch log: each batch (start =
 * end - ms) is given to the loop that became free last before it started; a loop's gap is the time
 * from the end of one of its batches to the start of its next (fetching, and pg-boss's wait for the
 * polling interval). Approximate when batches of several loops start at nearly the same moment.
 */
export function loopGaps(batches: BatchLine[], loops: number): number[] {
  const free: number[] = Array.from({ length: loops }, () => -Infinity);
  const gaps: number[] = [];
  for (const b of [...batches].sort((x, y) => (x.time - x.ms) - (y.time - y.ms))) {
    const start = b.time - b.ms;
    let best = -1;
    for (let i = 0; i < loops; i++) if (free[i]! <= start + 5 && (best < 0 || free[i]! > free[best]!)) best = i;
    if (best < 0) best = free.indexOf(Math.min(...free));
    if (Number.isFinite(free[best]!)) gaps.push(Math.max(0, start - free[best]!));
    free[best] = b.time;
  }
  return gaps;
}

/** The worker's Prometheus metrics as name{labels} → value. */
export async function scrapeMetrics(port: number): Promise<Map<string, number>> {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const at = line.lastIndexOf(' ');
    out.set(line.slice(0, at), Number(line.slice(at + 1)));
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Formatting

export function fmtInt(n: number): string {
  return Math.round(n).toLocaleString('en-US');
}

/** Three significant figures, thousands separators. */
export function fmt3(n: number): string {
  if (n === 0) return '0';
  const digits = Math.max(0, 2 - Math.floor(Math.log10(Math.abs(n))));
  return Number(n.toPrecision(3)).toLocaleString('en-US', { maximumFractionDigits: digits });
}

export function pct(fraction: number, digits = 1): string {
  return `${(fraction * 100).toFixed(digits)}%`;
}

export function mb(kb: number): string {
  return `${((kb * 1024) / 1e6).toFixed(0)} MB (${(kb / 1024).toFixed(0)} MiB)`;
}

export function median(samples: number[]): number {
  const s = [...samples].sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

export function percentile(samples: number[], p: number): number {
  const s = [...samples].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]!;
}

export function sum(values: number[]): number {
  return values.reduce((a, b) => a + b, 0);
}

/** A markdown table with aligned columns (figures right-aligned), readable in a terminal too. */
export function table(headers: string[], rows: string[][]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const right = headers.map((_, i) => rows.length > 0 && rows.every((r) => /^[-\d<>≤≥—~+.]/.test(r[i] ?? '')));
  const line = (cells: string[]) => `| ${cells.map((c, i) => (right[i] ? c.padStart(widths[i]!) : c.padEnd(widths[i]!))).join(' | ')} |`;
  const rule = `|${widths.map((w, i) => `${'-'.repeat(w + 1)}${right[i] ? ':' : '-'}`).join('|')}|`;
  return [line(headers), rule, ...rows.map(line)].join('\n');
}

export interface Goal {
  name: string;
  measured: string;
  wanted: string;
  met: boolean;
}

export function goalsTable(goals: Goal[]): string {
  return table(['goal', 'measured', 'wanted', 'result'], goals.map((g) => [g.name, g.measured, g.wanted, g.met ? 'met' : 'NOT MET']));
}

// ---------------------------------------------------------------------------------------------
// PNG line chart, without dependencies: 8-bit RGB, deflated with node:zlib, text in a 5x7 bitmap font.

const FONT: Record<string, string[]> = {
  '0': ['01110', '10001', '10011', '10101', '11001', '10001', '01110'],
  '1': ['00100', '01100', '00100', '00100', '00100', '00100', '01110'],
  '2': ['01110', '10001', '00001', '00010', '00100', '01000', '11111'],
  '3': ['11111', '00010', '00100', '00010', '00001', '10001', '01110'],
  '4': ['00010', '00110', '01010', '10010', '11111', '00010', '00010'],
  '5': ['11111', '10000', '11110', '00001', '00001', '10001', '01110'],
  '6': ['00110', '01000', '10000', '11110', '10001', '10001', '01110'],
  '7': ['11111', '00001', '00010', '00100', '01000', '01000', '01000'],
  '8': ['01110', '10001', '10001', '01110', '10001', '10001', '01110'],
  '9': ['01110', '10001', '10001', '01111', '00001', '00010', '01100'],
  A: ['01110', '10001', '10001', '11111', '10001', '10001', '10001'],
  B: ['11110', '10001', '10001', '11110', '10001', '10001', '11110'],
  C: ['01110', '10001', '10000', '10000', '10000', '10001', '01110'],
  D: ['11100', '10010', '10001', '10001', '10001', '10010', '11100'],
  E: ['11111', '10000', '10000', '11110', '10000', '10000', '11111'],
  F: ['11111', '10000', '10000', '11110', '10000', '10000', '10000'],
  G: ['01110', '10001', '10000', '10111', '10001', '10001', '01111'],
  H: ['10001', '10001', '10001', '11111', '10001', '10001', '10001'],
  I: ['01110', '00100', '00100', '00100', '00100', '00100', '01110'],
  J: ['00111', '00010', '00010', '00010', '00010', '10010', '01100'],
  K: ['10001', '10010', '10100', '11000', '10100', '10010', '10001'],
  L: ['10000', '10000', '10000', '10000', '10000', '10000', '11111'],
  M: ['10001', '11011', '10101', '10101', '10001', '10001', '10001'],
  N: ['10001', '10001', '11001', '10101', '10011', '10001', '10001'],
  O: ['01110', '10001', '10001', '10001', '10001', '10001', '01110'],
  P: ['11110', '10001', '10001', '11110', '10000', '10000', '10000'],
  Q: ['01110', '10001', '10001', '10001', '10101', '10010', '01101'],
  R: ['11110', '10001', '10001', '11110', '10100', '10010', '10001'],
  S: ['01111', '10000', '10000', '01110', '00001', '00001', '11110'],
  T: ['11111', '00100', '00100', '00100', '00100', '00100', '00100'],
  U: ['10001', '10001', '10001', '10001', '10001', '10001', '01110'],
  V: ['10001', '10001', '10001', '10001', '10001', '01010', '00100'],
  W: ['10001', '10001', '10001', '10101', '10101', '10101', '01010'],
  X: ['10001', '10001', '01010', '00100', '01010', '10001', '10001'],
  Y: ['10001', '10001', '01010', '00100', '00100', '00100', '00100'],
  Z: ['11111', '00001', '00010', '00100', '01000', '10000', '11111'],
  '%': ['11000', '11001', '00010', '00100', '01000', '10011', '00011'],
  '.': ['00000', '00000', '00000', '00000', '00000', '01100', '01100'],
  ',': ['00000', '00000', '00000', '00000', '01100', '00100', '01000'],
  '-': ['00000', '00000', '00000', '11111', '00000', '00000', '00000'],
  '=': ['00000', '00000', '11111', '00000', '11111', '00000', '00000'],
  '(': ['00010', '00100', '01000', '01000', '01000', '00100', '00010'],
  ')': ['01000', '00100', '00010', '00010', '00010', '00100', '01000'],
  ':': ['00000', '01100', '01100', '00000', '01100', '01100', '00000'],
  '/': ['00000', '00001', '00010', '00100', '01000', '10000', '00000'],
  ' ': ['00000', '00000', '00000', '00000', '00000', '00000', '00000'],
};

type RGB = [number, number, number];

export class Canvas {
  readonly width: number;
  readonly height: number;
  private readonly pixels: Buffer;

  constructor(width: number, height: number, background: RGB = [255, 255, 255]) {
    this.width = width;
    this.height = height;
    this.pixels = Buffer.alloc(width * height * 3);
    for (let i = 0; i < width * height; i++) this.pixels.set(background, i * 3);
  }

  set(x: number, y: number, color: RGB): void {
    x = Math.round(x);
    y = Math.round(y);
    if (x < 0 || y < 0 || x >= this.width || y >= this.height) return;
    this.pixels.set(color, (y * this.width + x) * 3);
  }

  rect(x: number, y: number, w: number, h: number, color: RGB): void {
    for (let i = 0; i < w; i++) for (let j = 0; j < h; j++) this.set(x + i, y + j, color);
  }

  /** A line `thickness` pixels wide; dashed when `dash` > 0 (pixels on, pixels off). */
  line(x0: number, y0: number, x1: number, y1: number, color: RGB, thickness = 1, dash = 0): void {
    const steps = Math.max(1, Math.ceil(Math.hypot(x1 - x0, y1 - y0)));
    const r = (thickness - 1) / 2;
    for (let s = 0; s <= steps; s++) {
      if (dash > 0 && Math.floor(s / dash) % 2 === 1) continue;
      const x = x0 + ((x1 - x0) * s) / steps;
      const y = y0 + ((y1 - y0) * s) / steps;
      for (let i = -Math.floor(r); i <= Math.ceil(r); i++) for (let j = -Math.floor(r); j <= Math.ceil(r); j++) this.set(x + i, y + j, color);
    }
  }

  /** Text in the 5x7 font (upper case; lower case is drawn as upper case), `scale` pixels per dot. */
  text(x: number, y: number, text: string, color: RGB, scale = 2): void {
    let cx = x;
    for (const ch of text.toUpperCase()) {
      const glyph = FONT[ch] ?? FONT[' ']!;
      glyph.forEach((row, j) => [...row].forEach((bit, i) => { if (bit === '1') this.rect(cx + i * scale, y + j * scale, scale, scale, color); }));
      cx += 6 * scale;
    }
  }

  static textWidth(text: string, scale = 2): number {
    return text.length * 6 * scale - scale;
  }

  png(): Buffer {
    const raw = Buffer.alloc((this.width * 3 + 1) * this.height);
    for (let y = 0; y < this.height; y++) {
      raw[y * (this.width * 3 + 1)] = 0; // filter: none
      this.pixels.copy(raw, y * (this.width * 3 + 1) + 1, y * this.width * 3, (y + 1) * this.width * 3);
    }
    const chunk = (type: string, data: Buffer) => {
      const head = Buffer.alloc(8);
      head.writeUInt32BE(data.length, 0);
      head.write(type, 4, 'ascii');
      const crc = Buffer.alloc(4);
      crc.writeUInt32BE(crc32(Buffer.concat([head.subarray(4), data])) >>> 0, 0);
      return Buffer.concat([head, data, crc]);
    };
    const ihdr = Buffer.alloc(13);
    ihdr.writeUInt32BE(this.width, 0);
    ihdr.writeUInt32BE(this.height, 4);
    ihdr.writeUInt8(8, 8);  // bit depth
    ihdr.writeUInt8(2, 9);  // colour type: RGB
    return Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), chunk('IHDR', ihdr),
      chunk('IDAT', deflateSync(raw)), chunk('IEND', Buffer.alloc(0))]);
  }
}

export interface Series {
  label: string;
  color: RGB;
  points: Array<[number, number]>;  // x, y in 0..1
  dash?: number;
  thickness?: number;
}

/** A line chart of shares (both axes 0..100%), with grid, tick labels, axis titles and a legend. */
export function lineChart(options: { title: string; xLabel: string; yLabel: string; series: Series[];
  marks?: Array<{ x?: number; y?: number; label: string }> }): Buffer {
  const W = 900;
  const H = 640;
  const left = 90;
  const right = 45;
  const top = 60;
  const bottom = 90;
  const c = new Canvas(W, H);
  const black: RGB = [0, 0, 0];
  const grey: RGB = [220, 220, 220];
  const dark: RGB = [90, 90, 90];
  const pw = W - left - right;
  const ph = H - top - bottom;
  const px = (x: number) => left + x * pw;
  const py = (y: number) => top + (1 - y) * ph;
  c.text((W - Canvas.textWidth(options.title)) / 2, 20, options.title, black);
  for (let i = 0; i <= 10; i++) {
    const f = i / 10;
    c.line(px(f), py(0), px(f), py(1), grey);
    c.line(px(0), py(f), px(1), py(f), grey);
    const label = `${i * 10}%`;
    c.text(px(f) - Canvas.textWidth(label) / 2, py(0) + 10, label, dark);
    c.text(px(0) - Canvas.textWidth(label) - 8, py(f) - 7, label, dark);
  }
  for (const mark of options.marks ?? []) {
    const red: RGB = [200, 0, 0];
    if (mark.x !== undefined) c.line(px(mark.x), py(0), px(mark.x), py(1), red, 1, 4);
    if (mark.y !== undefined) c.line(px(0), py(mark.y), px(1), py(mark.y), red, 1, 4);
    // The label sits low, right of the vertical mark, where the curves of a hot-first plot do not run.
    c.text(px(mark.x ?? 0) + 8, py(0.06), mark.label, red);
  }
  c.line(px(0), py(0), px(1), py(0), black, 2);
  c.line(px(0), py(0), px(0), py(1), black, 2);
  c.text((W - Canvas.textWidth(options.xLabel)) / 2, H - 45, options.xLabel, black);
  // The y-axis title goes above the axis (the font has no rotation).
  c.text(10, top - 22, options.yLabel, black);
  for (const s of options.series) {
    for (let i = 1; i < s.points.length; i++) {
      const [x0, y0] = s.points[i - 1]!;
      const [x1, y1] = s.points[i]!;
      c.line(px(x0), py(y0), px(x1), py(y1), s.color, s.thickness ?? 3, s.dash ?? 0);
    }
  }
  // Legend, bottom right inside the plot.
  const lx = px(0.4);
  let ly = py(0.27);
  c.rect(lx - 10, ly - 10, px(1) - lx, options.series.length * 26 + 10, [255, 255, 255]);
  for (const s of options.series) {
    c.line(lx, ly + 6, lx + 40, ly + 6, s.color, s.thickness ?? 3, s.dash ?? 0);
    c.text(lx + 50, ly, s.label, black);
    ly += 26;
  }
  return c.png();
}
