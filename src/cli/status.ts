// `pgregen status`: one screen: schema, sources and their versions, the queue, failures, progress,
// and model migrations when the installed schema has regen.migration_status.
import { readdirSync } from 'node:fs';
import { Command } from 'commander';
import Table from 'cli-table3';
import type { Db } from '../db.ts';
import { withInstalled } from '../connect.ts';
import { readGap, type GapRow } from '../gap.ts';
import { jsonRows, toIsoTime, toJson } from '../json.ts';
import { databaseUrl } from './options.ts';

const SQL_DIR = new URL('../../sql/', import.meta.url);

export interface Status {
  /** lastAppliedAt: ISO 8601. */
  schema: { applied: string[]; pending: string[]; lastAppliedAt: string | null };
  sources: GapRow[];
  queue: Array<{ version: string; state: string; jobs: number; items: number }>;
  failed: number;
  /** Rows of regen.rebuild_progress (counts and rates as numbers, eta_seconds, last_error_at in ISO 8601). */
  progress: Array<Record<string, unknown>>;
  /** Rows of regen.migration_status (counts and scores as numbers, times in ISO 8601); null when the installed schema has no such view. */
  migrations: Array<Record<string, unknown>> | null;
  /** regen.recovery_status (verifiedAt, lostSince in ISO 8601); null when the installed schema has no such view. */
  recovery: { storeVerified: boolean; verifiedAt: string | null; autoRecover: boolean; lostItemsWaiting: number; lostSince: string | null } | null;
}

export async function readStatus(db: Db): Promise<Status> {
  // executed_at is a timestamp without time zone, written by the server's clock in its time zone
  const { rows: applied } = await db.query<{ name: string; executed_at: Date | null }>(
    `select name, executed_at::timestamptz as executed_at from regen.migrations where id > 0 order by id`);
  const known = readdirSync(SQL_DIR).filter((f) => /^\d{4}_\w+\.sql$/.test(f)).sort().map((f) => f.slice(5, -'.sql'.length));
  const names = applied.map((r) => r.name);
  const queue = await db.query<{ version: string; state: string; jobs: string; items: string }>('select * from regen.queue_depth()');
  const sources = await readGap(db);
  const progress = await db.query(
    `select source, version, done, total, percent, queued, rate_per_minute, extract(epoch from eta)::float8 as eta_seconds,
            failures, last_error, last_error_at
       from regen.rebuild_progress
      where queued > 0 or rate_per_minute > 0 or last_error_at > now() - interval '1 hour'
      order by source, version`);
  const { rows: [view] } = await db.query<{ present: boolean }>(`select to_regclass('regen.migration_status') is not null as present`);
  const migrations = view?.present ? jsonRows(await db.query('select * from regen.migration_status')) : null;
  const { rows: [recoveryView] } = await db.query<{ present: boolean }>(`select to_regclass('regen.recovery_status') is not null as present`);
  const recoveryRow = recoveryView?.present
    ? (await db.query<{ store_verified: boolean; verified_at: Date | null; auto_recover: boolean; lost_items_waiting: string; lost_since: Date | null }>(
      'select * from regen.recovery_status')).rows[0] : undefined;
  return {
    schema: { applied: names, pending: known.filter((n) => !names.includes(n)), lastAppliedAt: toIsoTime(applied.at(-1)?.executed_at) },
    sources,
    queue: queue.rows.map((r) => ({ version: r.version, state: r.state, jobs: Number(r.jobs), items: Number(r.items) })),
    failed: sources.reduce((n, s) => n + s.failed, 0),
    progress: jsonRows(progress),
    migrations,
    recovery: recoveryRow ? {
      storeVerified: recoveryRow.store_verified, verifiedAt: toIsoTime(recoveryRow.verified_at), autoRecover: recoveryRow.auto_recover,
      lostItemsWaiting: Number(recoveryRow.lost_items_waiting), lostSince: toIsoTime(recoveryRow.lost_since),
    } : null,
  };
}

const plain = { head: [], border: [] };

function cell(value: unknown): string {
  if (value === null || value === undefined) return '-';
  if (value instanceof Date) return value.toISOString();
  return typeof value === 'object' ? JSON.stringify(value) : String(value);
}

/** A table of arbitrary rows: the `preferred` columns the rows have, else all of them. */
function genericTable(rows: Array<Record<string, unknown>>, preferred: string[] = []): string {
  const all = Object.keys(rows[0] ?? {});
  const chosen = preferred.filter((k) => all.includes(k));
  const head = chosen.length ? chosen : all;
  const table = new Table({ head, style: plain });
  for (const r of rows) table.push(head.map((k) => cell(r[k])));
  return table.toString();
}

export function formatStatus(s: Status): string {
  const out: string[] = [];
  const pending = s.schema.pending.length ? `; ${s.schema.pending.length} pending (${s.schema.pending.join(', ')}): run pgregen install` : '';
  out.push(`schema regen: ${s.schema.applied.length} migration(s) applied, last ${s.schema.applied.at(-1) ?? '-'} at ${s.schema.lastAppliedAt ?? '-'}${pending}`);

  if (s.recovery && !s.recovery.storeVerified) {
    out.push('\nstore NOT VERIFIED: it changed behind pgregen\'s back (a restore, TRUNCATE without its trigger, VACUUM FULL, CLUSTER); '
      + 'the gap below is judged against the store row by row. A running worker reconciles it within 10 seconds; '
      + 'else run: pgregen reconcile');
  }
  if (s.recovery && s.recovery.lostItemsWaiting > 0) {
    out.push(`\n${s.recovery.lostItemsWaiting} item(s) lost their vectors since ${s.recovery.lostSince} and are not enqueued again: `
      + (s.recovery.autoRecover ? 'the worker re-enqueues them within 10 seconds (is one running?)' : 'auto-recovery is off: select * from regen.rebuild()'));
  }

  out.push('\nsources');
  if (s.sources.length === 0) {
    out.push('  no sources registered: see pgregen source register --help');
  } else {
    const table = new Table({ head: ['source', 'version', 'role', 'expected', 'current', 'open', 'failed', 'queued', 'coverage', 'cutover ready'], style: plain });
    for (const r of s.sources) {
      table.push([r.source, r.version, r.role ?? '-', r.expected, r.current, r.missing + r.stale + r.outdated, r.failed, r.queued,
        `${(r.coverage * 100).toFixed(1)}%`, r.cutover_ready ? 'yes' : 'no']);
    }
    out.push(table.toString());
  }

  out.push('\nqueue');
  if (s.queue.length === 0) out.push('  empty: no job waiting or in flight');
  else {
    const table = new Table({ head: ['version', 'state', 'jobs', 'items'], style: plain });
    for (const q of s.queue) table.push([q.version, q.state, q.jobs, q.items]);
    out.push(table.toString());
  }

  out.push(`\nfailed items: ${s.failed}${s.failed ? ' (reasons in regen.failed_items; queue them again with select regen.retry_failed())' : ''}`);

  out.push('\nrebuild progress (queued, moving, or an error in the last hour)');
  out.push(s.progress.length === 0 ? '  nothing in progress' : genericTable(s.progress));

  if (s.migrations !== null) {
    out.push('\nmodel migrations (regen.migration_status)');
    out.push(s.migrations.length === 0 ? '  none' : genericTable(s.migrations,
      ['source', 'version', 'role', 'coverage', 'cutover_ready', 'recall_at_k', 'mrr', 'ndcg_at_k', 'overlap_at_k', 'evaluated_at']));
  }
  return out.join('\n');
}

export function statusCommand(): Command {
  return new Command('status')
    .description('one screen: schema, sources with their versions and coverage, queue depth, failures, rebuild progress, migrations')
    .option('--json', 'print the status as JSON')
    .action(async (opts: { json?: boolean }, command: Command) => {
      const status = await withInstalled(databaseUrl(command), 'pgregen status', readStatus);
      console.log(opts.json ? toJson(status) : formatStatus(status));
    });
}
