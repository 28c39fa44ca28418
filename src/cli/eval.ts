// `pgregen eval`: scores a version's search on a labelled query set (recall@k, MRR, nDCG@k) and
// stores the run; `pgregen eval --cranfield` loads the Cranfield collection as a source table and
// writes its query set. `pgregen shadow`: how far two versions' results agree for the same queries.
import { Command, InvalidArgumentError, Option } from 'commander';
import OpenAI from 'openai';
import pg from 'pg';
import { openPool, withInstalled } from '../connect.ts';
import { PgregenError } from '../errors.ts';
import { versionCoverage } from '../gap.ts';
import { toJson } from '../json.ts';
import { CRANFIELD_DIR_ENV, defaultCranfieldDir, loadCranfield, registerCranfieldSource, type CranfieldLoad } from '../eval/cranfield.ts';
import { readQuerySet, writeQuerySet, type QuerySet } from '../eval/query-set.ts';
import { evaluate, shadowCompare, type EvalRun, type ShadowRun } from '../eval/run.ts';
import { databaseUrl } from './options.ts';

interface RunOptions { queries?: string; source: string[]; tenant?: string; k: number; limit?: number; json?: boolean }
interface EvalOptions extends RunOptions {
  version?: string; cranfield?: string | true; table?: string; out?: string;
}
interface ShadowCliOptions extends RunOptions { a?: string; b?: string }

const DEFAULT_QUERY_SET_FILE = 'cranfield.query-set.json';

export function evalCommand(): Command {
  return withRunOptions(new Command('eval')
    .description('score a version\'s search on a labelled query set (recall@k, MRR, nDCG@k) and store the run in regen.eval_runs')
    .option('--version <tag>', 'the version to evaluate')
    .option('--cranfield [dir]', `instead of a run: load the Cranfield collection into a table and write its query set (dir default: $${CRANFIELD_DIR_ENV} or ../shared/data/cranfield beside the project)`)
    .option('--table <name>', 'with --cranfield: the table to create and fill', 'public.cranfield_documents')
    .option('--out <file>', `with --cranfield: where to write the query set`, DEFAULT_QUERY_SET_FILE), 'every source that uses the version')
    .addHelpText('after', `
With --cranfield [dir]: loads the collection's 1,400 documents into --table (tenant --tenant, default
cranfield), registers the table as source --source (default cranfield) when --version is given and
enqueues it, and writes the 225 labelled queries to --out. Nothing is copied from the data folder.

Query-set file (JSON): {"name": "...", "queries": [{"id": "1", "text": "...", "judgements": {"<row id>": <grade>}}]}
  a grade above 0 is relevant, higher is more relevant; rows not listed are not relevant.
  A run over several sources ranks rows as "source:row_id"; its judgements use that form too.

Examples:
  pgregen eval --cranfield --version text-embedding-3-small@1 --source cranfield   # load, register, write ${DEFAULT_QUERY_SET_FILE}
  pgregen worker                                                                   # until regen.embedding_gap shows coverage 1
  pgregen eval --version text-embedding-3-small@1 --queries ${DEFAULT_QUERY_SET_FILE} --tenant cranfield
  select * from regen.migration_status;                                            -- scores next to coverage

Provider: OPENAI_API_KEY and OPENAI_BASE_URL, as for pgregen worker.`)
    .action(async (opts: EvalOptions, command: Command) => {
      const url = databaseUrl(command);
      if (opts.cranfield !== undefined) return loadCranfieldCommand(url, opts, command);
      if (!opts.version) usage(command, '--version is required (or --cranfield to load the Cranfield collection)');
      const querySet = await readQueries(opts, command);
      await withContext(url, 'pgregen eval', async (context) => {
        const run = await evaluate(context, { version: opts.version!, querySet, tenant: tenantOf(opts, command), sources: sourcesOf(opts), k: opts.k });
        const coverage = await versionCoverage(context.pool, run.version, run.sources);
        console.log(opts.json ? toJson({ ...run, coverage }) : formatEvalRun(run, coverage));
      });
    });
}

export function shadowCommand(): Command {
  return withRunOptions(new Command('shadow')
    .description('compare two versions\' top k rows for the same queries (overlap@k, rank agreement) and store it in regen.shadow_runs')
    .option('--a <tag>', 'the first version (usually the active one)')
    .option('--b <tag>', 'the second version (usually the one being built)'), 'every source that uses both versions')
    .addHelpText('after', `
Reads only the "id" and "text" of each query of the query-set file; judgements are not needed.
Example:
  pgregen shadow --a text-embedding-3-small@1 --b text-embedding-3-large@1 --queries ${DEFAULT_QUERY_SET_FILE} --tenant cranfield`)
    .action(async (opts: ShadowCliOptions, command: Command) => {
      const url = databaseUrl(command);
      if (!opts.a || !opts.b) usage(command, '--a and --b are required');
      const querySet = await readQueries(opts, command);
      await withContext(url, 'pgregen shadow', async (context) => {
        const run = await shadowCompare(context, { versionA: opts.a!, versionB: opts.b!, queries: querySet.queries,
          querySet: querySet.name, tenant: tenantOf(opts, command), sources: sourcesOf(opts), k: opts.k });
        console.log(opts.json ? toJson(run) : formatShadowRun(run));
      });
    });
}

export function formatEvalRun(run: EvalRun, coverage: number | null): string {
  const lines = [
    `eval run ${run.id}: version ${run.version}, query set ${run.querySet} (${run.queries} queries), k = ${run.k}, ` +
    `tenant ${run.tenant}, sources ${run.sources.join(', ')}`,
    `  recall@${run.k} ${fixed(run.recallAtK)}   MRR ${fixed(run.mrr)}   nDCG@${run.k} ${fixed(run.ndcgAtK)}`,
  ];
  if (coverage !== null && coverage < 1) {
    lines.push(`  note: coverage of this version is ${(coverage * 100).toFixed(1)}%: rows without vectors cannot be found, scores are lower than they will be`);
  }
  return lines.join('\n');
}

export function formatShadowRun(run: ShadowRun): string {
  return [
    `shadow run ${run.id}: ${run.versionA} vs ${run.versionB}, ${run.queries} queries, k = ${run.k}, tenant ${run.tenant}, ` +
    `sources ${run.sources.join(', ')}`,
    `  overlap@${run.k} ${fixed(run.overlapAtK)}   rank agreement ${fixed(run.rankAgreement)}`,
  ].join('\n');
}

async function loadCranfieldCommand(url: string, opts: EvalOptions, command: Command): Promise<void> {
  const dir = typeof opts.cranfield === 'string' ? opts.cranfield : defaultCranfieldDir();
  const tenant = opts.tenant ?? 'cranfield';
  if (opts.source.length > 1) usage(command, '--cranfield registers one source: give --source once');
  await withInstalled(url, 'pgregen eval', async (client) => {
    await client.query('begin');
    let loaded: CranfieldLoad;
    let source: { source: string; registered: boolean } | undefined;
    try {
      loaded = await loadCranfield(client, { dir, table: opts.table, tenant });
      source = opts.version
        ? await registerCranfieldSource(client, { source: opts.source[0], version: opts.version, table: loaded.table })
        : undefined;
      await client.query('commit');
    } catch (err) {
      await client.query('rollback').catch(() => {});
      throw err;
    }
    await writeQuerySet(opts.out!, loaded.querySet);
    const summary = { dir, table: loaded.table, tenant, documents: loaded.documents, queries: loaded.querySet.queries.length,
      querySetFile: opts.out, source: source?.source ?? null, registered: source?.registered ?? false };
    console.log(opts.json ? toJson(summary) : [
      `loaded ${loaded.documents} Cranfield documents from ${dir} into ${loaded.table} (tenant ${tenant})`,
      source ? (source.registered ? `registered source ${source.source} under version ${opts.version}: run pgregen worker to embed it`
        : `source ${source.source} was registered on ${loaded.table} already: left as it is`)
        : 'to embed them, register the table as a source: pgregen eval --cranfield --version TAG [--source NAME]',
      `wrote ${loaded.querySet.queries.length} labelled queries to ${opts.out}`,
    ].join('\n'));
  });
}

function withRunOptions(command: Command, allSources: string): Command {
  return command
    .option('--queries <file>', 'the query-set JSON file')
    .addOption(new Option('--source <name>', 'a source to search (repeatable)').argParser(collect).default([], allSources))
    .option('--tenant <tenant>', 'the tenant whose rows are searched')
    .option('--k <n>', 'rows per query that count (1 to 1000)', integer, 10)
    .option('--limit <n>', 'only the first n queries of the set', integer)
    .option('--json', 'print the run as JSON');
}

async function readQueries(opts: RunOptions, command: Command): Promise<QuerySet> {
  if (!opts.queries) usage(command, '--queries FILE is required (pgregen eval --cranfield writes a query-set file)');
  const querySet = await readQuerySet(opts.queries);
  return opts.limit === undefined ? querySet : { ...querySet, queries: querySet.queries.slice(0, opts.limit) };
}

async function withContext(url: string, name: string, work: (context: { pool: pg.Pool; openai: OpenAI }) => Promise<void>): Promise<void> {
  const apiKey = process.env.OPENAI_API_KEY;
  if (!apiKey) {
    throw new PgregenError('OPENAI_API_KEY is not set: the queries are embedded with the version\'s model',
      'set OPENAI_API_KEY (any non-empty value for local servers that need none) and, for another endpoint, OPENAI_BASE_URL');
  }
  const pool = await openPool(url, name);
  try {
    await work({ pool, openai: new OpenAI({ apiKey, baseURL: process.env.OPENAI_BASE_URL || undefined }) });
  } finally {
    await pool.end();
  }
}

function tenantOf(opts: RunOptions, command: Command): string {
  if (!opts.tenant) usage(command, '--tenant is required: a run searches the rows of one tenant (e.g. --tenant cranfield)');
  return opts.tenant;
}

function sourcesOf(opts: RunOptions): string[] | undefined {
  return opts.source.length > 0 ? opts.source : undefined;
}

/** Bad usage: commander prints it and main() exits 2. */
function usage(command: Command, message: string): never {
  command.error(`error: ${message}`, { exitCode: 2, code: 'pgregen.usage' });
}

function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}

function integer(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError('expected a positive integer');
  return n;
}

function fixed(value: number): string {
  return value.toFixed(4);
}
