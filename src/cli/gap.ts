// `pgregen gap`: how many vectors are missing, stale, outdated or failed, per source and version;
// with --watch, refreshed until Ctrl-C.
import { Command, InvalidArgumentError } from 'commander';
import Table from 'cli-table3';
import { withInstalled } from '../connect.ts';
import { readGap, type GapRow } from '../gap.ts';
import { toJson } from '../json.ts';
import { databaseUrl } from './options.ts';

export function formatGap(rows: GapRow[], byTenant = false, source?: string): string {
  if (rows.length === 0) {
    // readGap refuses an unknown source: a known one without rows has nothing to count yet
    if (source !== undefined) return `source ${source} has no rows${byTenant ? ' of any tenant' : ''} to embed: its gap is empty`;
    return 'no sources registered: see pgregen source register --help (regen.register_source())';
  }
  const head = ['source', 'version', ...(byTenant ? ['tenant'] : []), 'expected', 'current', 'missing', 'stale', 'outdated', 'failed', 'queued', 'coverage'];
  const table = new Table({ head, style: { head: [], border: [] } });
  for (const r of rows) {
    table.push([r.source, r.role === 'building' ? `${r.version} (building)` : r.version, ...(byTenant ? [r.tenant ?? '-'] : []),
      r.expected, r.current, r.missing, r.stale, r.outdated, r.failed, r.queued, `${(r.coverage * 100).toFixed(1)}%`]);
  }
  return table.toString();
}

function seconds(value: string): number {
  const n = Number(value);
  if (value.trim() === '' || !Number.isFinite(n) || n < 0.2 || n > 3600) {
    throw new InvalidArgumentError('expected a number of seconds between 0.2 and 3600');
  }
  return n;
}

/** Resolves after `ms`, or at once when `stop` fires. */
export function pause(ms: number, stop: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (stop.aborted) return resolve();
    const timer = setTimeout(done, ms);
    stop.addEventListener('abort', done, { once: true });
    function done() {
      clearTimeout(timer);
      stop.removeEventListener('abort', done);
      resolve();
    }
  });
}

/** An AbortSignal fired by the first SIGINT (Ctrl-C) while `work` runs; the handler is removed after. */
export async function untilInterrupted<T>(work: (stop: AbortSignal) => Promise<T>): Promise<T> {
  const controller = new AbortController();
  const onSignal = () => controller.abort();
  process.once('SIGINT', onSignal);
  try {
    return await work(controller.signal);
  } finally {
    process.off('SIGINT', onSignal);
  }
}

interface GapOptions { byTenant?: boolean; source?: string; json?: boolean; watch?: boolean; interval: number }

export function gapCommand(): Command {
  return new Command('gap')
    .description('show the embedding gap per source and version (regen.embedding_gap)')
    .option('--by-tenant', 'one row per tenant (regen.embedding_gap_by_tenant)')
    .option('--source <name>', 'only this source')
    .option('--json', 'print rows as JSON (with --watch: one JSON array per line)')
    .option('--watch', 'refresh until Ctrl-C')
    .option('--interval <seconds>', 'seconds between refreshes with --watch', seconds, 2)
    .action(async (opts: GapOptions, command: Command) => {
      await withInstalled(databaseUrl(command), 'pgregen gap', async (client) => {
        const show = async () => {
          const rows = await readGap(client, { byTenant: opts.byTenant, source: opts.source });
          return opts.json ? toJson(rows) : formatGap(rows, opts.byTenant, opts.source);
        };
        if (!opts.watch) {
          console.log(await show());
          return;
        }
        const tty = process.stdout.isTTY === true && !opts.json;
        await untilInterrupted(async (stop) => {
          while (!stop.aborted) {
            const text = await show();
            if (opts.json) {
              console.log(text);
            } else {
              // clear the screen on a terminal; elsewhere one timestamped table after another
              if (tty) process.stdout.write('\x1b[2J\x1b[H');
              console.log(`${new Date().toISOString()}  (every ${opts.interval} s; Ctrl-C to stop)\n${text}`);
            }
            await pause(opts.interval * 1000, stop);
          }
        });
      });
    });
}
