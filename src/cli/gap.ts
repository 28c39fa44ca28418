// `pgregen gap`: how many vectors are missing, stale, outdated or failed, per source and version;
// with --watch, refreshed until Ctrl-C.
import { Command, InvalidArgumentError } from 'commander';
import { withInstalled } from '../connect.ts';
import { readGap } from '../gap.ts';
import { formatGap } from '../format/gap.ts';
import { toJson } from '../json.ts';
import { pause } from '../pause.ts';
import { databaseUrl } from './options.ts';

function seconds(value: string): number {
  const n = Number(value);
  if (value.trim() === '' || !Number.isFinite(n) || n < 0.2 || n > 3600) {
    throw new InvalidArgumentError('expected a number of seconds between 0.2 and 3600');
  }
  return n;
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
