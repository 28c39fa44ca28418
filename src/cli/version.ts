// `pgregen version create|list`: the vector spaces (regen.create_version, regen.versions).
import { Command, InvalidArgumentError } from 'commander';
import Table from 'cli-table3';
import { withInstalled } from '../connect.ts';
import { toJson } from '../json.ts';
import { SUPPORTED_PROVIDERS, createVersion, listVersions, type VersionRow } from '../versions.ts';
import { databaseUrl } from './options.ts';

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
