// `pgregen gap`: how many vectors are missing, stale, outdated or failed, per source and version.
import { Command } from 'commander';
import Table from 'cli-table3';
import { connect, requireSchema } from '../connect.ts';
import { readGap, type GapRow } from '../gap.ts';
import { databaseUrl } from './options.ts';

export function formatGap(rows: GapRow[], byTenant = false): string {
  if (rows.length === 0) return 'no sources registered: see regen.register_source()';
  const head = ['source', 'version', ...(byTenant ? ['tenant'] : []), 'expected', 'current', 'missing', 'stale', 'outdated', 'failed', 'queued', 'coverage'];
  const table = new Table({ head, style: { head: [], border: [] } });
  for (const r of rows) {
    table.push([r.source, r.role === 'building' ? `${r.version} (building)` : r.version, ...(byTenant ? [r.tenant ?? '-'] : []),
      r.expected, r.current, r.missing, r.stale, r.outdated, r.failed, r.queued, `${(r.coverage * 100).toFixed(1)}%`]);
  }
  return table.toString();
}

export function gapCommand(): Command {
  return new Command('gap')
    .description('show the embedding gap per source and version (regen.embedding_gap)')
    .option('--by-tenant', 'one row per tenant (regen.embedding_gap_by_tenant)')
    .option('--source <name>', 'only this source')
    .option('--json', 'print rows as JSON')
    .action(async (opts: { byTenant?: boolean; source?: string; json?: boolean }, command: Command) => {
      const client = await connect(databaseUrl(command), 'pgregen gap');
      try {
        await requireSchema(client);
        const rows = await readGap(client, { byTenant: opts.byTenant, source: opts.source });
        console.log(opts.json ? JSON.stringify(rows) : formatGap(rows, opts.byTenant));
      } finally {
        await client.end();
      }
    });
}
