// `pgregen tenant-indexes`: gives the largest tenants an HNSW index of their own
// (regen.tenant_index_plan), built with CREATE INDEX CONCURRENTLY while searches and writes go on.
import { Command, InvalidArgumentError } from 'commander';
import Table from 'cli-table3';
import { withInstalled } from '../connect.ts';
import { toJson } from '../json.ts';
import { tenantIndexes, type TenantIndexStep } from '../tenant-indexes.ts';
import { databaseUrl } from './options.ts';

function positiveInt(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError('expected a whole number of vectors, at least 1');
  return n;
}

export function formatSteps(steps: TenantIndexStep[], dryRun: boolean): string {
  if (steps.length === 0) return 'nothing to do: every tenant that earns an index of its own has one';
  const table = new Table({ head: ['action', 'version', 'tenant', 'vectors', 'index', ...(dryRun ? [] : ['ms'])], style: { head: [], border: [] } });
  for (const s of steps) table.push([s.action, s.version ?? '-', s.tenant ?? '-', s.vectors, s.indexName, ...(dryRun ? [] : [s.ms ?? ''])]);
  return `${dryRun ? 'would run (dry run):' : 'done:'}\n${table.toString()}`;
}

export function tenantIndexesCommand(): Command {
  return new Command('tenant-indexes')
    .description('give tenants of at least --min-rows vectors an HNSW index of their own, and drop those of tenants ' +
      'that shrank below half of it (regen.tenant_index_plan; built concurrently, nothing waits)')
    .option('--min-rows <n>', 'vectors a tenant needs, per version', positiveInt, 10_000)
    .option('--version <tag>', 'only this version (default: all)')
    .option('--dry-run', 'print the statements without running them')
    .option('--json', 'print the steps as JSON')
    .action(async (opts: { minRows: number; version?: string; dryRun?: boolean; json?: boolean }, command: Command) => {
      const steps = await withInstalled(databaseUrl(command), 'pgregen tenant-indexes', (db) => tenantIndexes(db, {
        minRows: opts.minRows, version: opts.version, dryRun: opts.dryRun,
        onStep: opts.json ? undefined : (s) => process.stderr.write(`${s.action} ${s.indexName} (${s.tenant ?? 'a tenant no longer in the store'}, ${s.vectors} vectors) ...\n`),
      }));
      console.log(opts.json ? toJson(steps) : formatSteps(steps, opts.dryRun ?? false));
    });
}
