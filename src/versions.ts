// Versions: one vector space each (provider, model, dimensions, chunking), through
// regen.create_version and regen.versions.
import type { Db } from './db.ts';
import { jsonRows } from './json.ts';

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

/**
 * Providers the worker can embed with: 'openai' is the official OpenAI client, which speaks to
 * OpenAI and to any OpenAI-compatible endpoint (Azure, Ollama, vLLM, TEI) through OPENAI_BASE_URL.
 * regen.create_version refuses any other provider too (RG003).
 */
export const SUPPORTED_PROVIDERS = ['openai'] as const;

/** Registers a version (idempotent: the same settings again change nothing; other settings for the tag fail, RG002). */
export async function createVersion(db: Db, tag: string, model: string, dimensions: number,
  provider = 'openai', settings: Record<string, unknown> = {}): Promise<CreatedVersion> {
  const before = await db.query('select 1 from regen.versions where tag = $1', [tag]);
  await db.query('select regen.create_version($1::text, $2::text, $3::integer, provider => $4::text, settings => $5::jsonb)',
    [tag, model, dimensions, provider, JSON.stringify(settings)]);
  return { tag, created: before.rows.length === 0 };
}

/** The versions, oldest first, with the sources using them. */
export async function listVersions(db: Db): Promise<VersionRow[]> {
  const result = await db.query(
    `select v.tag, v.provider, v.model, v.dimensions, v.settings, v.index_type, v.created_at,
            coalesce((select array_agg(g.source || ' (' || g.role || ')' order by g.source)
                        from regen.embedding_gap g where g.version = v.tag), '{}') as sources
       from regen.versions v order by v.created_at, v.tag`);
  return jsonRows<VersionRow>(result);
}
