// `pgregen reconcile`: makes pgregen's bookkeeping agree with the store after it changed behind
// pgregen's back (a restore without the vectors, a partial restore, TRUNCATE, VACUUM FULL), then
// re-enqueues what was lost unless auto-recovery is off. See "Disaster recovery" in the README.
import { Command } from 'commander';
import Table from 'cli-table3';
import { withInstalled } from '../connect.ts';
import { toJson } from '../json.ts';
import { reconcile, recover, type ReconcileRow, type Recovered } from '../store.ts';
import { databaseUrl } from './options.ts';

export interface ReconcileOutcome { reconciled: ReconcileRow[]; enqueued: Recovered[] }

export function formatReconcile(outcome: ReconcileOutcome): string {
  const table = new Table({ head: ['source', 'version', 'unsettled', 'settled', 'orphans removed', 'tenants fixed'], style: { head: [], border: [] } });
  for (const r of outcome.reconciled) table.push([r.source, r.version, r.unsettled, r.settled, r.orphansRemoved, r.tenantsFixed]);
  const out = [outcome.reconciled.length ? table.toString() : 'no source registered: nothing to reconcile'];
  const enqueued = outcome.enqueued.filter((r) => r.source !== null);
  if (enqueued.length) {
    out.push(...enqueued.map((r) => `enqueued again: ${r.items} item(s) of ${r.source} ${r.version}, hot-first`));
  } else if (outcome.reconciled.some((r) => r.unsettled > 0)) {
    out.push('lost vectors wait for the rebuild button (auto-recovery is off): select * from regen.rebuild()');
  }
  return out.join('\n');
}

export function reconcileCommand(): Command {
  return new Command('reconcile')
    .description('make the items agree with the store after a restore, truncate or VACUUM FULL (regen.reconcile), ' +
      'then enqueue what lost its vectors, hot-first (regen.recover; the worker does both by itself)')
    .option('--json', 'print the outcome as JSON')
    .action(async (opts: { json?: boolean }, command: Command) => {
      const outcome = await withInstalled(databaseUrl(command), 'pgregen reconcile', async (db) => {
        const reconciled = await reconcile(db);
        return { reconciled, enqueued: await recover(db) };
      });
      console.log(opts.json ? toJson(outcome) : formatReconcile(outcome));
    });
}
