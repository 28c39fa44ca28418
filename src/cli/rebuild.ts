// `pgregen rebuild`: the rebuild button (regen.rebuild). Enqueues the gap, then follows it to the
// end with a progress bar (plain lines when stdout is not a terminal); Ctrl-C stops following and
// leaves the queued work to the workers. --dry-run shows items, tokens and an estimated cost.
// Following a large gap, it loads it without the version's HNSW index (regen.index_deferral_plan)
// and builds the index of each version whose backfill it saw complete, concurrently.
import { Command, InvalidArgumentError } from 'commander';
import Table from 'cli-table3';
import cliProgress from 'cli-progress';
import type { Db } from '../db.ts';
import { PgregenError, describeError } from '../errors.ts';
import { withInstalled } from '../connect.ts';
import { toJson } from '../json.ts';
import { rebuild, trackProgress, type Progress, type RebuildOptions, type RebuildRow, type Scope } from '../rebuild.ts';
import { count, duration, progressLine } from '../format/progress.ts';
import { untilInterrupted } from './gap.ts';
import { databaseUrl } from './options.ts';
import { buildVersionIndexes, deferVersionIndexes, type IndexStep } from '../versions.ts';
import { describeStep, indexBuildView } from './version.ts';

/** USD per million tokens of text-embedding-3-small: the default of --price-per-mtok. */
export const DEFAULT_PRICE_PER_MTOK = 0.02;

/** Dollars with two significant digits below a cent: $0.000012, $0.0080, $0.50, $12.30. */
const usd = (n: number) => `$${n.toFixed(n > 0 && n < 1 ? Math.min(10, Math.max(2, 1 - Math.floor(Math.log10(n)))) : 2)}`;

/** The Batch API's price against the synchronous one (OpenAI: half). */
export const BATCH_API_PRICE_FACTOR = 0.5;

/** `batchMode`: the versions in batch mode (regen.set_batch_mode), whose backfill goes through the Batch API. */
export function formatDryRun(rows: RebuildRow[], pricePerMTok: number, batchMode: Set<string> = new Set()): string {
  if (rows.length === 0) return 'no sources registered: nothing to rebuild';
  const table = new Table({ head: ['source', 'version', 'items', 'estimated tokens', 'jobs', 'estimated cost', 'through the Batch API', 'mode'],
    style: { head: [], border: [] } });
  let items = 0;
  let tokens = 0;
  for (const r of rows) {
    items += r.items;
    tokens += r.estimated_tokens ?? 0;
    const cost = (r.estimated_tokens ?? 0) / 1e6 * pricePerMTok;
    table.push([r.source, r.version, count(r.items), count(r.estimated_tokens ?? 0), count(r.jobs), usd(cost), usd(cost * BATCH_API_PRICE_FACTOR),
      batchMode.has(r.version) ? 'batch' : 'sync']);
  }
  const total = tokens / 1e6 * pricePerMTok;
  return `dry run: nothing was enqueued\n${table.toString()}\n` +
    `total: ${count(items)} items, about ${count(tokens)} tokens, about ${usd(total)} at $${pricePerMTok} per million tokens, ` +
    `${usd(total * BATCH_API_PRICE_FACTOR)} through the Batch API (half the price; a version in batch mode sends its backfill there: ` +
    'select regen.set_batch_mode(version, true))\n' +
    '(an estimate: 4 bytes a token, before the cache; texts the cache already holds cost nothing, and the worker counts tokens exactly)';
}

function priceArg(value: string): number {
  const n = Number(value);
  if (value.trim() === '' || !Number.isFinite(n) || n < 0) throw new InvalidArgumentError('expected a price in USD of 0 or more');
  return n;
}

/** Shows progress on the terminal: a bar on a TTY, a plain line per change (or every 10 s) elsewhere. */
function progressView(json: boolean) {
  if (json) return { show: (_p: Progress) => {}, end: () => {} };
  if (process.stdout.isTTY) {
    const bar = new cliProgress.SingleBar({
      format: ' {bar} {percentage}% | {value}/{total} items | {rate} items/s | eta {etaText} | failed {failed}{note}',
      stream: process.stdout, hideCursor: true, barsize: 30,
    }, cliProgress.Presets.shades_classic);
    let started = false;
    return {
      show(p: Progress) {
        const payload = { rate: p.rate.toFixed(1), etaText: duration(p.etaSeconds), failed: p.failed, note: p.note ? ` | ${p.note}` : '' };
        if (!started) bar.start(p.total, p.done, payload);
        started = true;
        bar.setTotal(p.total);
        bar.update(p.done, payload);
      },
      end: () => { if (started) bar.stop(); },
    };
  }
  let last = '';
  let lastAt = 0;
  return {
    show(p: Progress) {
      const line = progressLine(p);
      const key = `${p.done}/${p.total}/${p.failed}/${p.note}`;
      if (key !== last || Date.now() - lastAt >= 10_000) console.log(line);
      last = key;
      lastAt = Date.now();
    },
    end: () => {},
  };
}

interface CliOptions extends RebuildOptions { json?: boolean; wait: boolean; pricePerMtok: number }

/** Runs an index step; a role that may not (RG059: not the owner, e.g. an admin role) gets a note instead of a failure. */
async function ownerOnly(opts: CliOptions, step: () => Promise<unknown>): Promise<boolean> {
  try {
    await step();
    return true;
  } catch (err) {
    if ((err as { code?: string }).code !== 'RG059') throw err;
    if (!opts.json) process.stderr.write(`${describeError(err)}\n`);
    return false;
  }
}

async function enqueueAndFollow(db: Db, url: string, opts: CliOptions): Promise<void> {
  // Only a rebuild followed to its end loads without the index: it is also the one to build it again.
  // A tenant's rebuild or a forced one leaves the index alone (the rows it loads are few, or have vectors).
  const deferred: IndexStep[] = [];
  if (opts.wait && !opts.force && !opts.tenant) {
    for (const step of await deferVersionIndexes(db, { source: opts.source, version: opts.version, dryRun: true })) {
      if (!opts.json) process.stderr.write(`${describeStep(step)}\n`);
      if (await ownerOnly(opts, () => deferVersionIndexes(db, { source: opts.source, version: step.version }))) deferred.push(step);
    }
  }
  const rows = await rebuild(db, opts);
  const enqueued = rows.reduce((n, r) => n + r.items, 0);
  const scope: Scope = { targets: rows.map((r) => ({ source: r.source, version: r.version })), tenant: opts.tenant, force: opts.force ?? false };
  if (!opts.json) {
    if (rows.length === 0) console.log('no sources registered: nothing to rebuild');
    else console.log(`enqueued ${count(enqueued)} item(s) in ${count(rows.reduce((n, r) => n + r.jobs, 0))} job(s): ` +
      rows.map((r) => `${r.source} ${r.version} ${count(r.items)}`).join(', '));
  }
  if (!opts.wait || rows.length === 0) {
    if (opts.json) console.log(toJson({ enqueued: rows }));
    return;
  }
  const view = progressView(opts.json ?? false);
  const started = Date.now();
  // nothing enqueued and nothing open: no progress to show
  const outcome = await untilInterrupted((stop) => trackProgress(db, scope, enqueued, stop, (p) => { if (p.total > 0) view.show(p); }));
  view.end();
  const took = (Date.now() - started) / 1000;
  const final = outcome.last;
  // the index of each version whose backfill is complete: built now if it has none (deferred above, or a migration's)
  const indexes: IndexStep[] = [];
  if (outcome.kind === 'closed') {
    const build = await indexBuildView(url, opts.json ?? false);
    try {
      for (const version of new Set(scope.targets.map((t) => t.version))) {
        await ownerOnly(opts, async () => indexes.push(...await buildVersionIndexes(db, { ...build.options, version, backfilledOnly: true })));
      }
    } finally {
      await build.close();
    }
  } else if (deferred.length && !opts.json) {
    process.stderr.write(`the HNSW index of version(s) ${deferred.map((d) => d.version).join(', ')} is still to build: ` +
      'run pgregen index build once the gap is closed (searches are exact until then)\n');
  }
  if (opts.json) {
    console.log(toJson({ enqueued: rows, outcome: outcome.kind, done: final.done, remaining: final.remaining, failed: final.failed, seconds: took,
      indexes }));
  } else if (outcome.kind === 'interrupted') {
    console.log(`stopped watching: ${count(final.remaining)} item(s) stay queued and the workers go on with them (follow with pgregen gap --watch)`);
  } else if (outcome.kind === 'closed') {
    console.log(final.total === 0 ? 'nothing to rebuild: the gap is closed'
      : `gap closed: ${count(final.done)} item(s) settled in ${duration(took)}`);
  }
  if (outcome.kind === 'stuck') {
    throw new PgregenError(`${count(final.remaining)} item(s) of the rebuild are still open, but no job is queued for them any more`,
      'their jobs ended without settling them (see the last error in pgregen status); fix the cause and run pgregen rebuild again');
  }
  if (outcome.kind === 'closed' && final.failed > 0) {
    throw new PgregenError(`the rebuild ended with ${count(final.failed)} failed item(s)`,
      'see their reasons in regen.failed_items; once the cause is fixed, queue them again with: select regen.retry_failed()');
  }
}

export function rebuildCommand(): Command {
  return new Command('rebuild')
    .description('enqueue the gap (missing, stale, outdated items) hot-first and follow it until it is closed (regen.rebuild)')
    .option('--source <name>', 'only this source (default: every source)')
    .option('--version <tag>', 'this version instead of the active one (e.g. one being built)')
    .option('--tenant <tenant>', 'only the rows of this tenant')
    .option('--force', 'every item, current or not, skipping the cache')
    .option('--dry-run', 'enqueue nothing; show items, estimated tokens and cost')
    .option('--price-per-mtok <usd>', 'USD per million tokens for the --dry-run cost estimate (text-embedding-3-small: 0.02)',
      priceArg, DEFAULT_PRICE_PER_MTOK)
    .option('--no-wait', 'return once enqueued; the workers do the rest')
    .option('--json', 'print the result as JSON (no progress display)')
    .addHelpText('after', '\nWithout --no-wait, follows the rebuild every second until its gap is closed or only failed items remain.\n' +
      'Ctrl-C stops following (exit 0); the queued work stays with the workers.\n' +
      'A large gap (more than half of a version\'s rows and at least 10,000 missing) is loaded without the version\'s HNSW\n' +
      'index, dropped concurrently first (searches are exact meanwhile); once the gap is closed the index of each version\n' +
      'whose backfill is complete is built concurrently (progress on stderr). Run it as the owner for that.\n' +
      'Exit 1 when items failed, or when open items are left with no job queued for them.')
    .action(async (opts: CliOptions, command: Command) => {
      await withInstalled(databaseUrl(command), 'pgregen rebuild', async (db) => {
        if (!opts.dryRun) return enqueueAndFollow(db, databaseUrl(command), opts);
        const rows = await rebuild(db, opts);
        const { rows: modes } = await db.query<{ tag: string }>(
          `select tag from regen.versions where to_regprocedure('regen.batch_mode(text)') is not null and regen.batch_mode(tag)`);
        const batchMode = new Set(modes.map((m) => m.tag));
        if (opts.json) {
          const tokens = rows.reduce((n, r) => n + (r.estimated_tokens ?? 0), 0);
          console.log(toJson({
            dryRun: true, rows, items: rows.reduce((n, r) => n + r.items, 0), estimatedTokens: tokens,
            pricePerMTok: opts.pricePerMtok, estimatedCostUsd: tokens / 1e6 * opts.pricePerMtok,
            estimatedBatchApiCostUsd: tokens / 1e6 * opts.pricePerMtok * BATCH_API_PRICE_FACTOR,
            batchModeVersions: [...batchMode].sort(),
          }));
        } else {
          console.log(formatDryRun(rows, opts.pricePerMtok, batchMode));
        }
      });
    });
}
