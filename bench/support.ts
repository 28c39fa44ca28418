// Shared by the benchmarks: where the database comes from, timing, statistics and tables.
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import os from 'node:os';
import pg from 'pg';
import { install } from '../src/install.ts';
import { startLocalPostgres } from '../src/local-postgres.ts';

export interface BenchOptions {
  quick: boolean;
}

export interface Table {
  title: string;
  headers: string[];
  rows: string[][];
  /** Lines printed under the table: what was measured and how. */
  notes?: string[];
}

export interface Target {
  name: string;
  measured: string;
  target: string;
  met: boolean;
}

/** What one benchmark hands back to bench/run.ts: its figures, already laid out as tables. */
export interface BenchReport {
  title: string;
  /** Sizes and other facts of the run, one line each. */
  setup: string[];
  tables: Table[];
  targets: Target[];
  /** Raw figures by label, for anyone who wants numbers rather than text. */
  figures: Record<string, number>;
  server: ServerInfo;
}

export interface ServerInfo {
  postgres: string;
  pgvector: string;
  superuser: boolean;
}

export interface Scratch {
  url: string;
  drop(): Promise<void>;
}

export interface Server {
  /** Where the server came from, for the report. */
  origin: string;
  /** Creates an empty database with the pgregen schema installed. */
  createDatabase(): Promise<Scratch>;
  stop(): Promise<void>;
}

/**
 * The server to measure on: DATABASE_URL when set (the benchmark then only creates and drops its
 * own scratch databases there), otherwise a throwaway local cluster with pgvector.
 */
export async function openServer(log: (line: string) => void): Promise<Server> {
  const given = process.env.DATABASE_URL;
  const local = given ? undefined : await startLocalPostgres({ log });
  const serverUrl = given ?? local!.url;
  return {
    origin: given ? 'DATABASE_URL (scratch database pgregen_bench_<random>)' : 'throwaway local cluster (src/local-postgres.ts)',
    async createDatabase() {
      const name = `pgregen_bench_${randomBytes(4).toString('hex')}`;
      await withClient(serverUrl, (c) => c.query(`create database ${name}`));
      const url = withDatabase(serverUrl, name);
      try {
        await install({ connectionString: url });
      } catch (error) {
        await withClient(serverUrl, (c) => c.query(`drop database ${name} with (force)`));
        throw error;
      }
      return {
        url,
        drop: () => withClient(serverUrl, (c) => c.query(`drop database if exists ${name} with (force)`)).then(() => {}),
      };
    },
    stop: async () => {
      await local?.stop();
    },
  };
}

export async function withClient<T>(url: string, work: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return await work(client);
  } finally {
    await client.end();
  }
}

function withDatabase(url: string, database: string): string {
  const parsed = new URL(url);
  parsed.pathname = `/${database}`;
  return parsed.toString();
}

export async function serverInfo(client: pg.Client): Promise<ServerInfo> {
  const { rows } = await client.query<{ version: string; vector: string | null; superuser: boolean }>(
    `select version(), (select extversion from pg_extension where extname = 'vector') as vector,
            (select rolsuper from pg_roles where rolname = current_user) as superuser`);
  return { postgres: rows[0]!.version, pgvector: rows[0]!.vector ?? 'not installed', superuser: rows[0]!.superuser };
}

export function machineLines(server: ServerInfo): string[] {
  const cpus = os.cpus();
  return [
    `machine: ${cpus.length} cores (${cpus[0]?.model ?? 'unknown CPU'}), ${(os.totalmem() / 2 ** 30).toFixed(1)} GiB memory, ${os.platform()} ${os.release()}`,
    `Node ${process.version}; ${server.postgres}; pgvector ${server.pgvector}`,
    // A shared machine: other work running at the same time shows here, and in the spread of runs.
    `load average at the end (1/5/15 min): ${os.loadavg().map((l) => l.toFixed(2)).join(' / ')}` +
      (os.getPriority() === 0 ? '' : `; the benchmark ran at nice ${os.getPriority()}`),
  ];
}

/** Runs `work` and returns the wall-clock milliseconds it took. */
export async function timed(work: () => Promise<unknown>): Promise<number> {
  const start = performance.now();
  await work();
  return performance.now() - start;
}

/** Nearest-rank percentile (p in 0..100) of unsorted samples. */
export function percentile(samples: number[], p: number): number {
  const sorted = [...samples].sort((a, b) => a - b);
  const rank = Math.min(sorted.length, Math.max(1, Math.ceil((p / 100) * sorted.length)));
  return sorted[rank - 1]!;
}

export function median(samples: number[]): number {
  const sorted = [...samples].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

/** A rate with three significant figures and thousands separators. */
export function fmtRate(perSecond: number): string {
  const digits = Math.max(0, 2 - Math.floor(Math.log10(Math.max(perSecond, 1e-9))));
  return Number(perSecond.toPrecision(3)).toLocaleString('en-US', { maximumFractionDigits: digits });
}

export function fmtMs(ms: number): string {
  return ms >= 100 ? ms.toFixed(0) : ms >= 10 ? ms.toFixed(1) : ms.toFixed(2);
}

export function fmtInt(n: number): string {
  return n.toLocaleString('en-US');
}

/** A markdown table padded to aligned columns, so the same text reads well in a terminal. */
export function renderTable(table: Table): string {
  const widths = table.headers.map((h, i) => Math.max(h.length, ...table.rows.map((r) => (r[i] ?? '').length)));
  // Figures right-aligned so their digits line up; words left-aligned.
  const right = table.headers.map((_, i) => table.rows.every((r) => /^[\d<>≤≥—]/.test(r[i] ?? '')));
  const line = (cells: string[]) =>
    `| ${cells.map((c, i) => (right[i] ? c.padStart(widths[i]!) : c.padEnd(widths[i]!))).join(' | ')} |`;
  const rule = `|${widths.map((w, i) => `${'-'.repeat(w + 1)}${right[i] ? ':' : '-'}`).join('|')}|`;
  const out = [`**${table.title}**`, '', line(table.headers), rule, ...table.rows.map(line)];
  if (table.notes?.length) out.push('', ...table.notes);
  return out.join('\n');
}

export function renderTargets(targets: Target[]): Table {
  return {
    title: 'Targets',
    headers: ['target', 'measured', 'wanted', 'result'],
    rows: targets.map((t) => [t.name, t.measured, t.target, t.met ? 'met' : 'NOT MET']),
  };
}

/** Deterministic pseudo-random vector in [-1, 1) per seed (mulberry32): same row id, same vector. */
export function seededVector(seed: number, dimensions: number): Float32Array {
  let state = seed >>> 0;
  const out = new Float32Array(dimensions);
  for (let i = 0; i < dimensions; i++) {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    out[i] = (((t ^ (t >>> 14)) >>> 0) / 2 ** 31) - 1;
  }
  return out;
}

/** Throws with `message` when `ok` is false: a benchmark that measured the wrong thing must not report. */
export function check(ok: boolean, message: string): asserts ok {
  if (!ok) throw new Error(`benchmark check failed: ${message}`);
}

/** The command that is running, as a reader would type it. */
export function commandLine(): string {
  const args = process.argv.slice(2);
  return process.env.npm_lifecycle_event === 'bench'
    ? ['npm run bench', ...(args.length ? ['--', ...args] : [])].join(' ')
    : ['node bench/run.ts', ...args].join(' ');
}

/** The commit measured, and whether sql/ or src/ differed from it: figures belong to a version. */
export function revision(): string {
  try {
    const git = (...args: string[]) => execFileSync('git', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    const dirty = git('status', '--porcelain', '--', 'sql', 'src') !== '';
    return `commit ${git('rev-parse', '--short', 'HEAD')}${dirty ? ' with uncommitted changes in sql/ or src/' : ''}`;
  } catch {
    return 'unknown (not a git checkout)';
  }
}
