// `pgregen status`: one screen: schema, sources and their versions, the queue, failures, freshness, progress,
// and model migrations when the installed schema has regen.migration_status.
import { Command } from 'commander';
import Table from 'cli-table3';
import { withInstalled } from '../connect.ts';
import { toJson } from '../json.ts';
import { readStatus, type Status } from '../status.ts';
import { databaseUrl } from './options.ts';

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

  if (s.freshness !== null) {
    out.push('\nfreshness (regen.freshness: edits not yet searchable, backfill waiting, edit-to-vector delay over 5 minutes)');
    if (s.freshness.length === 0) out.push('  no sources registered');
    else {
      const secs = (v: number | null) => (v === null ? '-' : `${v < 10 ? v.toFixed(2) : v.toFixed(0)} s`);
      const table = new Table({ head: ['source', 'version', 'role', 'edits waiting', 'oldest edit', 'backfill waiting', 'oldest backfill',
        'edits settled', 'delay p50', 'delay p99'], style: plain });
      for (const f of s.freshness) {
        table.push([f.source, f.version, f.role, f.edits_waiting, secs(f.oldest_edit_seconds), f.backfill_waiting, secs(f.oldest_backfill_seconds),
          f.edits_settled_5m, secs(f.edit_delay_p50_seconds), secs(f.edit_delay_p99_seconds)]);
      }
      out.push(table.toString());
    }
  }

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
