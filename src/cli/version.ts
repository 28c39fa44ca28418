// `pgregen version create|list`: the vector spaces (regen.create_version, regen.versions).
import { Command, InvalidArgumentError } from 'commander';
import Table from 'cli-table3';
import type { Db } from '../db.ts';
import { withInstalled } from '../connect.ts';
import { jsonRows, toJson } from '../json.ts';
import { databaseUrl } from './options.ts';

export interface VersionRow {
  tag: string;
  provider: string;
  model: string;
  dimensions: number;
  settings: Record<string, unknown>;
  index_type: string;
  /** ISO 8601. */
  created_at: string;
  /** Sources using it, as "name (role)". */
  sources: string[];
}

export interface CreatedVersion { tag: string; created: boolean }

export async function createVersion(db: Db, tag: string, model: string, dimensions: number,
  provider: string, settings: Record<string, unknown>): Promise<CreatedVersion> {
  const before = await db.query('select 1 from regen.versions where tag = $1', [tag]);
  await db.query('select regen.create_version($1::text, $2::text, $3::integer, provider => $4::text, settings => $5::jsonb)',
    [tag, model, dimensions, provider, JSON.stringify(settings)]);
  return { tag, created: before.rows.length === 0 };
}

export async function listVersions(db: Db): Promise<VersionRow[]> {
  const result = await db.query(
    `select v.tag, v.provider, v.model, v.dimensions, v.settings, v.index_type, v.created_at,
            coalesce((select array_agg(g.source || ' (' || g.role || ')' order by g.source)
                        from regen.embedding_gap g where g.version = v.tag), '{}') as sources
       from regen.versions v order by v.created_at, v.tag`);
  return jsonRows<VersionRow>(result);
}

export function formatVersions(rows: VersionRow[]): string {
  if (rows.length === 0) return 'no versions: create one with pgregen version create <tag> --model M --dimensions N';
  const table = new Table({ head: ['tag', 'provider', 'model', 'dims', 'index', 'settings', 'used by'], style: { head: [], border: [] } });
  for (const r of rows) {
    table.push([r.tag, r.provider, r.model, r.dimensions, r.index_type, JSON.stringify(r.settings), r.sources.join(', ') || '-']);
  }
  return table.toString();
}

function dimensionsArg(value: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value.trim()) || n < 1) throw new InvalidArgumentError('expected a positive integer');
  return n;
}

/**
 * Providers the worker can embed with: 'openai' is the official OpenAI client, which speaks to
 * OpenAI and to any OpenAI-compatible endpoint (Azure, Ollama, vLLM, TEI) through OPENAI_BASE_URL.
 * regen.create_version refuses any other provider too (RG003).
 */
export const SUPPORTED_PROVIDERS = ['openai'] as const;

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
    .description('register a version and create its HNSW index and queue (regen.create_version; idempotent)')
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

  version.command('list')
    .description('list the versions and the sources using them (regen.versions)')
    .option('--json', 'print rows as JSON')
    .action(async (opts: { json?: boolean }, command: Command) => {
      const rows = await withInstalled(databaseUrl(command), 'pgregen version', listVersions);
      console.log(opts.json ? toJson(rows) : formatVersions(rows));
    });

  return version;
}
