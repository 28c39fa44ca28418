// `pgregen version create|list`: the vector spaces (regen.create_version, regen.versions), and
// `pgregen index build`: their HNSW indexes, built concurrently by the owner (regen.version_index_plan).
import { Command, InvalidArgumentError } from 'commander';
import Table from 'cli-table3';
import type pg from 'pg';
import { connect, withInstalled } from '../connect.ts';
import { toJson } from '../json.ts';
import { duration } from '../format/progress.ts';
import {
  SUPPORTED_PROVIDERS, buildVersionIndexes, createVersion, listVersions, versionIndexPlan,
  type BuildIndexOptions, type IndexProgress, type IndexStep, type VersionRow,
} from '../versions.ts';
import { databaseUrl } from './options.ts';

export function formatVersions(rows: VersionRow[]): string {
  if (rows.length === 0) return 'no versions: create one with pgregen version create <tag> --model M --dimensions N';
  const table = new Table({ head: ['tag', 'provider', 'model', 'dims', 'index', 'settings', 'used by'], style: { head: [], border: [] } });
  for (const r of rows) {
    table.push([r.tag, r.provider, r.model, r.dimensions, `${r.index_type} (${r.index_state})`, JSON.stringify(r.settings), r.sources.join(', ') || '-']);
  }
  return table.toString();
}

function dimensionsArg(value: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value.trim()) || n < 1) throw new InvalidArgumentError('expected a positive integer');
  return n;
}

function providerArg(value: string): string {
  if (!(SUPPORTED_PROVIDERS as readonly string[]).includes(value)) {
    throw new InvalidArgumentError(`the worker embeds only through ${SUPPORTED_PROVIDERS.join(', ')}: use openai, ` +
      'which also covers OpenAI-compatible endpoints (Azure, Ollama, vLLM, TEI) through the worker\'s OPENAI_BASE_URL');
  }
  return value;
}

function settingsArg(value: string): Record<string, unknown> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(value);
  } catch (err) {
    throw new InvalidArgumentError(`not JSON: ${(err as Error).message}`);
  }
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) {
    throw new InvalidArgumentError('expected a JSON object, e.g. \'{"chunk_chars": 2000}\'');
  }
  return parsed as Record<string, unknown>;
}

interface CreateOptions { model: string; dimensions: number; provider: string; settings: Record<string, unknown>; json?: boolean }

export function versionCommand(): Command {
  const version = new Command('version')
    .description('create and list versions: one vector space each (provider, model, dimensions, chunking)');

  version.command('create')
    .description('register a version and its queue (regen.create_version; idempotent); its HNSW index comes when a source ' +
      'serves it, or once a migration to it is built (pgregen index build)')
    .argument('<tag>', 'the version tag, e.g. text-embedding-3-small@1/chunk-2000')
    .requiredOption('--model <model>', 'embedding model, e.g. text-embedding-3-small')
    .requiredOption('--dimensions <n>', 'vector dimensions (1 to 4000)', dimensionsArg)
    .option('--provider <provider>', `embedding provider: ${SUPPORTED_PROVIDERS.join(', ')} (any OpenAI-compatible endpoint)`, providerArg, 'openai')
    .option('--settings <json>', 'chunking and preprocessing settings as a JSON object (see the README)', settingsArg, {})
    .option('--json', 'print the result as JSON')
    .action(async (tag: string, opts: CreateOptions, command: Command) => {
      const result = await withInstalled(databaseUrl(command), 'pgregen version', (db) =>
        createVersion(db, tag, opts.model, opts.dimensions, opts.provider, opts.settings));
      if (opts.json) console.log(toJson(result));
      else if (result.created) console.log(`created version ${tag} (${opts.provider} ${opts.model}, ${opts.dimensions} dimensions)`);
      else console.log(`version ${tag} already exists with the same settings: nothing to do`);
    });

  version.command('batch-mode')
    .description('send a version\'s backfill (rebuilds, migrations) through the provider\'s Batch API at half the price, ' +
      'results within 24 hours, or back through the synchronous endpoint (regen.set_batch_mode); fresh edits always go synchronous')
    .argument('<tag>', 'the version tag')
    .argument('<mode>', 'on or off', (value: string) => {
      if (value !== 'on' && value !== 'off') throw new InvalidArgumentError('expected on or off');
      return value;
    })
    .action(async (tag: string, mode: string, _opts: unknown, command: Command) => {
      await withInstalled(databaseUrl(command), 'pgregen version', (db) =>
        db.query('select regen.set_batch_mode($1::text, $2::boolean)', [tag, mode === 'on']));
      console.log(mode === 'on'
        ? `version ${tag}: backfill through the Batch API (submitted by the worker, written back as batches finish; see regen.provider_batches)`
        : `version ${tag}: backfill through the synchronous endpoint`);
    });

  version.command('list')
    .description('list the versions and the sources using them (regen.versions)')
    .option('--json', 'print rows as JSON')
    .action(async (opts: { json?: boolean }, command: Command) => {
      const rows = await withInstalled(databaseUrl(command), 'pgregen version', listVersions);
      console.log(opts.json ? toJson(rows) : formatVersions(rows));
    });

  return version;
}

// ---------------------------------------------------------------------------------------------
// Index builds, shared by pgregen index build, migrate cutover|rollback and rebuild

/** One line per step and per progress change (at most every 5 s), on stderr: stdout keeps each command's result. */
export function describeStep(step: IndexStep): string {
  const what = `the HNSW index ${step.indexName} of version ${step.version}`;
  if (step.action === 'wait') return `${what} is being built by another session: waiting for it`;
  if (step.action === 'drop' && step.state === 'ready') {
    return `dropping ${what} concurrently: ${step.open.toLocaleString('en-US')} of its ${step.expected.toLocaleString('en-US')} rows are missing, ` +
      'and they load faster without it (searches are exact meanwhile); it is built again once the gap is closed';
  }
  if (step.action === 'drop') return `${what} is invalid (an interrupted concurrent build left it): dropping it concurrently, to build it anew`;
  return `building ${what} concurrently (searches and writes go on)`;
}

function progressText(p: IndexProgress): string {
  const share = p.blocksTotal > 0 ? `, ${(100 * p.blocksDone / p.blocksTotal).toFixed(0)}% of the table scanned` : '';
  return `  ${p.indexName}: ${p.phase}${share}${p.tuplesDone > 0 ? `, ${p.tuplesDone.toLocaleString('en-US')} vectors` : ''}`;
}

/**
 * Build options that show each step and the build's progress on stderr (nothing with `quiet`),
 * reading pg_stat_progress_create_index over a second connection; close() ends it.
 */
export async function indexBuildView(url: string, quiet: boolean, maintenanceWorkMem?: string):
  Promise<{ options: Omit<BuildIndexOptions, 'version' | 'backfilledOnly'>; close(): Promise<void> }> {
  if (quiet) return { options: { maintenanceWorkMem }, close: async () => {} };
  const watcher: pg.Client = await connect(url, 'pgregen index progress');
  let last = '';
  let lastAt = 0;
  const report = (p: IndexProgress) => {
    const line = progressText(p);
    // a new phase at once; the same phase again every 5 s at most
    const samePhase = line.replace(/[\d,]+/g, '#') === last.replace(/[\d,]+/g, '#');
    if (samePhase && Date.now() - lastAt < 5000) return;
    process.stderr.write(`${line}\n`);
    last = line;
    lastAt = Date.now();
  };
  return {
    options: { maintenanceWorkMem, onStep: (step) => process.stderr.write(`${describeStep(step)}\n`), progress: { db: watcher, report } },
    close: () => watcher.end().catch(() => {}),
  };
}

export function formatIndexSteps(steps: IndexStep[], dryRun: boolean): string {
  if (steps.length === 0) return dryRun ? 'nothing to do: every version in use has a valid HNSW index' : 'every version in use has a valid HNSW index: nothing to do';
  const table = new Table({ head: ['version', 'index', 'action', 'state', 'backfill', ...(dryRun ? [] : ['took'])], style: { head: [], border: [] } });
  for (const s of steps) {
    table.push([s.version, s.indexName, s.action, s.state, `${(s.expected - s.open).toLocaleString('en-US')}/${s.expected.toLocaleString('en-US')}` +
      (s.backfilled ? '' : ' (not complete)'), ...(dryRun ? [] : [duration((s.ms ?? 0) / 1000)])]);
  }
  return `${dryRun ? 'would run (dry run):' : 'done:'}\n${table.toString()}`;
}

interface IndexOptions { version?: string; backfilled?: boolean; maintenanceWorkMem?: string; dryRun?: boolean; json?: boolean }

export function indexCommand(): Command {
  const index = new Command('index')
    .description('the HNSW index of each version: built concurrently by the owner, once a version\'s backfill is complete');
  index.command('build')
    .description('build the missing HNSW index of each version in use (or of --version) with CREATE INDEX CONCURRENTLY, ' +
      'replacing an invalid one an interrupted build left (regen.version_index_plan); searches and writes go on')
    .option('--version <tag>', 'only this version (default: every version a source uses)')
    .option('--backfilled', 'only versions whose backfill is complete (at most 1% of rows still to embed)')
    .option('--maintenance-work-mem <size>', 'maintenance_work_mem for the build, e.g. 1GB (an HNSW graph that fits builds much faster)')
    .option('--dry-run', 'print the plan without running it')
    .option('--json', 'print the steps as JSON')
    .addHelpText('after', '\nRun it as the owner of schema regen (the role that installed pgregen). Progress goes to stderr.\n' +
      'pgregen migrate cutover builds the version\'s index itself before it cuts over; pgregen rebuild builds it once the gap is closed.')
    .action(async (opts: IndexOptions, command: Command) => {
      const url = databaseUrl(command);
      const steps = await withInstalled(url, 'pgregen index', async (db) => {
        if (opts.dryRun) return (await versionIndexPlan(db, opts.version)).filter((s) => !opts.backfilled || s.backfilled);
        const view = await indexBuildView(url, opts.json ?? false, opts.maintenanceWorkMem);
        try {
          return await buildVersionIndexes(db, { ...view.options, version: opts.version, backfilledOnly: opts.backfilled });
        } finally {
          await view.close();
        }
      });
      console.log(opts.json ? toJson(steps) : formatIndexSteps(steps, opts.dryRun ?? false));
    });
  return index;
}
