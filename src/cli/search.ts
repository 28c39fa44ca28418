// `pgregen search`: a similarity search inside one tenant, from the command line. Embeds the query
// through the OpenAI-compatible endpoint of the environment (as the worker does) with the version's
// model, then asks regen.search_scoped, or regen.search_rows with --rows (see src/search.ts).
import { Command, InvalidArgumentError } from 'commander';
import Table from 'cli-table3';
import OpenAI from 'openai';
import { PgregenError } from '../errors.ts';
import { openPool } from '../connect.ts';
import { checkSearchArguments, search, type SearchHit, type SearchOptions } from '../search.ts';
import { toJson } from '../json.ts';
import { databaseUrl } from './options.ts';

/** An OpenAI client configured from OPENAI_API_KEY and OPENAI_BASE_URL, like the worker's. */
export function openaiFromEnv(env: NodeJS.ProcessEnv = process.env): OpenAI {
  const apiKey = env.OPENAI_API_KEY;
  if (!apiKey) {
    throw new PgregenError('OPENAI_API_KEY is not set: the query is embedded with the version\'s model before searching',
      'set OPENAI_API_KEY (any non-empty value for a local server that needs none), and OPENAI_BASE_URL for an endpoint other than OpenAI');
  }
  return new OpenAI({ apiKey, baseURL: env.OPENAI_BASE_URL || undefined, maxRetries: 2, timeout: 60_000 });
}

export function formatHits(hits: SearchHit[], tenant: string, rows = false): string {
  if (hits.length === 0) return `no match for tenant ${tenant}: nothing of it is embedded in this scope yet (see pgregen gap --by-tenant)`;
  const table = new Table({ head: ['#', 'source', 'row id', 'chunk', 'distance'], style: { head: [], border: [] } });
  hits.forEach((h, i) => table.push([i + 1, h.source, h.rowId, h.chunkNo, h.distance.toFixed(4)]));
  return `${hits.length} nearest ${rows ? 'row(s), each at its best chunk,' : 'chunk(s)'} for tenant ${tenant} in version ${hits[0]!.version}\n${table.toString()}`;
}

function integerArg(value: string): number {
  if (!/^-?\d+$/.test(value.trim())) throw new InvalidArgumentError('expected an integer');
  return Number(value);
}

function numberArg(value: string): number {
  const n = Number(value);
  if (value.trim() === '' || !Number.isFinite(n)) throw new InvalidArgumentError('expected a number');
  return n;
}

const collect = (value: string, previous: string[]) => [...previous, value];

interface SearchCliOptions { tenant: string; k: number; rows?: boolean; source: string[]; version?: string; maxDistance?: number; json?: boolean }

export function searchCommand(): Command {
  return new Command('search')
    .description("the tenant's nearest chunks (or rows) to a text (regen.search_scoped, regen.search_rows): filtered by tenant before ranking")
    .argument('<text>', 'the text to search for')
    .requiredOption('--tenant <tenant>', 'the tenant whose rows are searched (the only one whose rows can come back)')
    .option('--k <n>', 'how many chunks (or rows), 1 to 1000', integerArg, 10)
    .option('--rows', 'the k nearest distinct rows, each at its best chunk (regen.search_rows), instead of chunks')
    .option('--source <name>', 'search this source (repeat for several; default: every source)', collect, [])
    .option('--version <tag>', 'read this version instead of the active one (a shadow read during a migration)')
    .option('--max-distance <d>', "only chunks at most this far away, in the version's distance", numberArg)
    .option('--json', 'print the hits as JSON')
    .addHelpText('after', '\nThe query is embedded through OPENAI_BASE_URL (default: OpenAI) with OPENAI_API_KEY, like the worker.')
    .action(async (text: string, opts: SearchCliOptions, command: Command) => {
      const options: SearchOptions = {
        tenant: opts.tenant, k: opts.k, rows: opts.rows ?? false, sources: opts.source.length ? opts.source : undefined,
        version: opts.version, maxDistance: opts.maxDistance,
      };
      checkSearchArguments(text, options);   // before the database and the provider are asked anything
      const url = databaseUrl(command);
      const openai = openaiFromEnv();
      const pool = await openPool(url, 'pgregen search');
      try {
        const hits = await search({ pool, openai }, text, options);
        console.log(opts.json ? toJson(hits) : formatHits(hits, opts.tenant, opts.rows));
      } finally {
        await pool.end();
      }
    });
}
