// The gap as a text table, as `pgregen gap` and the demo print it.
import Table from 'cli-table3';
import type { GapRow } from '../gap.ts';

export function formatGap(rows: GapRow[], byTenant = false, source?: string): string {
  if (rows.length === 0) {
    // readGap refuses an unknown source: a known one without rows has nothing to count yet
    if (source !== undefined) return `source ${source} has no rows${byTenant ? ' of any tenant' : ''} to embed: its gap is empty`;
    return 'no sources registered: see pgregen source register --help (regen.register_source())';
  }
  // the adopted column only once something is adopted unverified (pgregen adopt --force)
  const adopted = rows.some((r) => r.adopted > 0);
  const head = ['source', 'version', ...(byTenant ? ['tenant'] : []), 'expected', 'current', 'missing', 'stale', 'outdated', 'failed',
    ...(adopted ? ['adopted'] : []), 'queued', 'coverage'];
  const table = new Table({ head, style: { head: [], border: [] } });
  for (const r of rows) {
    table.push([r.source, r.role === 'building' ? `${r.version} (building)` : r.version, ...(byTenant ? [r.tenant ?? '-'] : []),
      r.expected, r.current, r.missing, r.stale, r.outdated, r.failed, ...(adopted ? [r.adopted] : []), r.queued,
      `${(r.coverage * 100).toFixed(1)}%`]);
  }
  return table.toString();
}
