// pgbench for benchmark F (bench/capture-overhead.ts): a custom write mix on one table, with
// PostgreSQL's own load generator, so the client side is the same C program for every table.
import { execFile } from 'node:child_process';
import { constants } from 'node:fs';
import { access, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';
import { BODY_CHARS, TENANTS } from './capture-tables.ts';
import { check } from './support.ts';

const run = promisify(execFile);

/** The mix: script, weight (pgbench's -f file@weight). */
export const MIX = [
  { name: 'hits', weight: 7, label: 'UPDATE hits (no expression uses it)' },
  { name: 'body', weight: 2, label: 'UPDATE body (the embedded text)' },
  { name: 'insert', weight: 1, label: 'INSERT' },
] as const;

export interface PgbenchRun {
  tps: number;
  transactions: number;
  /** Transactions per script, in MIX order. */
  perScript: number[];
}

/**
 * pgbench from the PostgreSQL that is measured: $PG_BIN, else the server's own BINDIR (pg_config
 * view, superuser only, when client and server share the machine), else `pg_config --bindir`, else PATH.
 */
export async function findPgbench(client: pg.Client): Promise<string> {
  const dirs: string[] = [];
  if (process.env.PG_BIN) dirs.push(process.env.PG_BIN);
  try {
    const { rows } = await client.query<{ setting: string }>(`select setting from pg_config where name = 'BINDIR'`);
    if (rows[0]) dirs.push(rows[0].setting);
  } catch { /* not a superuser: the view is not readable */ }
  try {
    dirs.push((await run('pg_config', ['--bindir'])).stdout.trim());
  } catch { /* no pg_config on PATH */ }
  for (const dir of dirs) {
    const file = join(dir, 'pgbench');
    if (await access(file, constants.X_OK).then(() => true, () => false)) return file;
  }
  return 'pgbench';
}

/** "pgbench (PostgreSQL) 15.x", for the report (the binary's path is this machine's business). */
export async function pgbenchVersionOf(bin: string): Promise<string> {
  return (await run(bin, ['--version'])).stdout.trim();
}

/** Writes the mix's three scripts for `table` (ids 1..rows updated at random; inserts from the sequence `table`_bench_ids). */
export async function writeScripts(dir: string, table: string, rows: number): Promise<string[]> {
  const body: Record<(typeof MIX)[number]['name'], string> = {
    hits: `\\set id random(1, ${rows})\nupdate ${table} set hits = hits + 1 where id = :id;\n`,
    body: `\\set id random(1, ${rows})\nupdate ${table} set body = md5(random()::text) || substr(body, 33) where id = :id;\n`,
    insert: `insert into ${table} (id, tenant, title, body, views, hits)
      values (nextval('${table}_bench_ids'), 'tenant-' || lpad(floor(random() * ${TENANTS})::int::text, 3, '0'), 'Document',
              left(repeat(md5(random()::text) || ' ', 20), ${BODY_CHARS}), floor(random() * 10000)::int, 0);\n`,
  };
  const args: string[] = [];
  for (const s of MIX) {
    const file = join(dir, `${table}-${s.name}.sql`);
    await writeFile(file, body[s.name]);
    args.push('-f', `${file}@${s.weight}`);
  }
  return args;
}

export async function scriptDir(): Promise<{ dir: string; remove: () => Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), 'pgregen-pgbench-'));
  return { dir, remove: () => rm(dir, { recursive: true, force: true }) };
}

/** One pgbench run: `clients` connections, prepared statements, for `seconds`. Fails on any failed transaction. */
export async function pgbench(bin: string, url: string, scripts: string[], clients: number, seconds: number): Promise<PgbenchRun> {
  const args = ['-n', '-M', 'prepared', '-c', String(clients), '-j', String(Math.min(clients, 2)), '-T', String(seconds), ...scripts, url];
  const env = { ...process.env, PGOPTIONS: '-c synchronous_commit=off' };
  const { stdout } = await run(bin, args, { env, maxBuffer: 16 * 2 ** 20 });
  const tps = stdout.match(/^tps = ([\d.]+) \(without initial connection time\)/m);
  const total = stdout.match(/^number of transactions actually processed: (\d+)/m);
  const failed = stdout.match(/^number of failed transactions: (\d+)/m);
  check(tps !== null && total !== null, `pgbench printed no tps: ${stdout}`);
  check(failed === null || failed[1] === '0', `pgbench: ${failed?.[1]} failed transactions`);
  const perScript = [...stdout.matchAll(/^SQL script \d+: .*\n - weight: \d+ .*\n - (\d+) transactions/gm)].map((m) => Number(m[1]));
  check(perScript.length === MIX.length, `pgbench printed ${perScript.length} script summaries, expected ${MIX.length}: ${stdout}`);
  return { tps: Number(tps[1]), transactions: Number(total[1]), perScript };
}

/** Calls `work` every `everyMs` from its own connection until stopped, as a worker would; returns the calls' total time. */
export function every(url: string, everyMs: number, work: (client: pg.Client) => Promise<void>): { stop: () => Promise<{ calls: number; ms: number }> } {
  let stopped = false;
  let calls = 0;
  let ms = 0;
  const loop = (async () => {
    const client = new pg.Client({ connectionString: url, application_name: 'pgregen bench drain' });
    await client.connect();
    try {
      while (!stopped) {
        const start = performance.now();
        await work(client);
        const took = performance.now() - start;
        calls++;
        ms += took;
        await new Promise((resolve) => setTimeout(resolve, Math.max(0, everyMs - took)));
      }
    } finally {
      await client.end();
    }
  })();
  loop.catch(() => {});   // reported by stop()
  return { stop: async () => { stopped = true; await loop; return { calls, ms }; } };
}
