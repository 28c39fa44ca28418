// Versions: one vector space each (provider, model, dimensions, chunking), through
// regen.create_version and regen.versions.
import type { Db } from './db.ts';
import { PgregenError } from './errors.ts';
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
  /** The state of the version's HNSW index: ready, missing, invalid (an interrupted build) or building. */
  index_state: IndexState;
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
    `select v.tag, v.provider, v.model, v.dimensions, v.settings, v.index_type, v.created_at, v.index_state,
            coalesce((select array_agg(g.source || ' (' || g.role || ')' order by g.source)
                        from regen.embedding_gap g where g.version = v.tag), '{}') as sources
       from regen.versions v order by v.created_at, v.tag`);
  return jsonRows<VersionRow>(result);
}

// ---------------------------------------------------------------------------------------------
// Version indexes: SQL plans them (regen.version_index_plan, regen.index_deferral_plan); this runs
// the statements, one at a time and outside a transaction, because CREATE and DROP INDEX
// CONCURRENTLY cannot run in one. Only the owner of regen._embeddings may run them.

export type IndexState = 'ready' | 'missing' | 'invalid' | 'building';

export interface IndexStep {
  version: string;
  /** create: CREATE INDEX CONCURRENTLY; drop: DROP INDEX CONCURRENTLY (an invalid leftover, or a deferral); wait: another session builds it. */
  action: 'create' | 'drop' | 'wait';
  state: IndexState;
  indexName: string;
  statement: string | null;
  /** Rows of the version still to embed, and all its rows (over the sources using it). */
  open: number;
  expected: number;
  /** At most 1% of its rows still to embed: the time to build. */
  backfilled: boolean;
  /** Milliseconds the step took; absent until it ran. */
  ms?: number;
}

export interface IndexProgress { version: string; indexName: string; phase: string; blocksDone: number; blocksTotal: number; tuplesDone: number }

export interface BuildIndexOptions {
  /** Only this version (default: every version a source uses). */
  version?: string;
  /** Only versions whose backfill is complete (IndexStep.backfilled); the others are left for later. */
  backfilledOnly?: boolean;
  /** maintenance_work_mem for the builds, e.g. '1GB': an HNSW graph that fits builds several times faster. */
  maintenanceWorkMem?: string;
  /** Called before each step runs. */
  onStep?: (step: IndexStep) => void;
  /** Reports pg_stat_progress_create_index every `everyMs` (default 1,000) while a build runs, read through `db`
   *  (another connection than the build's; default: the pool given as the build's `db`). */
  progress?: { report: (p: IndexProgress) => void; db?: Db; everyMs?: number };
}

type PlanRow = { version: string; state: IndexState; action: IndexStep['action']; index_name: string; statement: string | null;
  open: string; expected: string; backfilled: boolean };

/** What the indexes of the versions in use (or of the one named) need to be ready (regen.version_index_plan). */
export async function versionIndexPlan(db: Db, version?: string): Promise<IndexStep[]> {
  const { rows } = await db.query<PlanRow>('select * from regen.version_index_plan($1::text)', [version ?? null]);
  return rows.map((r) => ({ version: r.version, action: r.action, state: r.state, indexName: r.index_name, statement: r.statement,
    open: Number(r.open), expected: Number(r.expected), backfilled: r.backfilled }));
}

/** A pg.Pool (it hands out connections) rather than one connection. */
function asPool(db: Db): { connect(): Promise<Db & { release(): void }> } | undefined {
  const candidate = db as unknown as { connect?: unknown; totalCount?: unknown };
  return typeof candidate.connect === 'function' && typeof candidate.totalCount === 'number'
    ? (db as unknown as { connect(): Promise<Db & { release(): void }> }) : undefined;
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/**
 * Makes the HNSW index of every version in use (or of `options.version`) valid: builds a missing one
 * with CREATE INDEX CONCURRENTLY (searches and writes go on meanwhile), drops the invalid leftover
 * of an interrupted build first, waits for a build another session runs; then checks that the
 * index is valid (RG058 when it is not). Returns the steps taken. `db` must not be inside a
 * transaction: a pool (one connection is checked out for the builds) or a client in autocommit,
 * connected as the owner of regen._embeddings (RG059 otherwise).
 */
export async function buildVersionIndexes(db: Db, options: BuildIndexOptions = {}): Promise<IndexStep[]> {
  const pool = asPool(db);
  const session = pool ? await pool.connect() : db;
  const watch = options.progress?.db ?? (pool ? db : undefined);
  let before: string | undefined;   // the session's maintenance_work_mem, given back afterwards
  try {
    if (options.maintenanceWorkMem) {
      before = (await session.query<{ value: string }>(`select current_setting('maintenance_work_mem') as value`)).rows[0]!.value;
      await session.query(`select set_config('maintenance_work_mem', $1, false)`, [options.maintenanceWorkMem]);
    }
    const done: IndexStep[] = [];
    const built = new Set<string>();
    for (;;) {
      const steps = (await versionIndexPlan(session, options.version)).filter((s) => !options.backfilledOnly || s.backfilled);
      if (steps.length === 0) return done;
      for (const step of steps) {
        if (step.action !== 'wait' && built.has(step.version)) {
          throw new PgregenError(`the concurrent build of ${step.indexName} (version ${step.version}) ended without a valid index (${step.state})`,
            'see the server log for why; run pgregen index build again: it drops the invalid index and builds it anew', 'RG058');
        }
        options.onStep?.(step);
        const started = performance.now();
        const running = step.action === 'wait' ? waitForOtherBuild(session, step) : runStatement(session, step);
        await withProgress(running, step, watch, options.progress);
        if (step.action === 'create') built.add(step.version);
        step.ms = Math.round(performance.now() - started);
        done.push(step);
      }
    }
  } finally {
    if (before !== undefined) await session.query(`select set_config('maintenance_work_mem', $1, false)`, [before]).catch(() => {});
    if (pool) (session as Db & { release(): void }).release();
  }
}

async function runStatement(db: Db, step: IndexStep): Promise<void> {
  try {
    await db.query(step.statement!);
  } catch (err) {
    if ((err as { code?: string }).code === '42501') {
      const { rows: [r] } = await db.query<{ owner: string; me: string }>(
        `select relowner::regrole::text as owner, current_user as me from pg_class where oid = 'regen._embeddings'::regclass`);
      throw new PgregenError(`role ${r!.me} may not build or drop the indexes of regen._embeddings: only its owner, ${r!.owner}, can`,
        `run pgregen index build as ${r!.owner} (the role that installed pgregen); the worker's admin role never builds indexes`,
        'RG059', undefined, { cause: err });
    }
    // a failed concurrent build leaves an invalid index behind, which every write would still update
    if (step.action === 'create') await db.query(`drop index concurrently if exists ${step.indexName}`).catch(() => {});
    throw err;
  }
}

/** Until the build another session runs on the version's index is over (the next plan says what is left). */
async function waitForOtherBuild(db: Db, step: IndexStep): Promise<void> {
  for (;;) {
    const { rows: [r] } = await db.query<{ state: IndexState }>('select state from regen._version_indexes where version = $1', [step.version]);
    if (r?.state !== 'building') return;
    await sleep(1000);
  }
}

async function withProgress(running: Promise<void>, step: IndexStep, watch: Db | undefined, progress: BuildIndexOptions['progress']): Promise<void> {
  if (!progress || !watch || step.action === 'drop') return running;
  let over = false;
  const poll = (async () => {
    while (!over) {
      await Promise.race([running.catch(() => {}), sleep(progress.everyMs ?? 1000)]);
      if (over) return;
      const { rows: [p] } = await watch.query<{ phase: string; blocks_done: string; blocks_total: string; tuples_done: string }>(
        `select p.phase, p.blocks_done, p.blocks_total, p.tuples_done from pg_stat_progress_create_index p
          where p.relid = 'regen._embeddings'::regclass and p.index_relid = to_regclass($1)`, [step.indexName]);
      if (p && !over) progress.report({ version: step.version, indexName: step.indexName, phase: p.phase,
        blocksDone: Number(p.blocks_done), blocksTotal: Number(p.blocks_total), tuplesDone: Number(p.tuples_done) });
    }
  })();
  try {
    await running;
  } finally {
    over = true;
    await poll.catch(() => {});
  }
}

export interface DeferOptions {
  /** The rebuild's scope, as regen.rebuild takes it: one source (default all), one version (default each one's active). */
  source?: string;
  version?: string;
  /** The fewest missing rows worth loading without the index (default 10,000). */
  minRows?: number;
  /** Return the plan without running it. */
  dryRun?: boolean;
}

/**
 * Before a large load: drops, with DROP INDEX CONCURRENTLY, the HNSW index of each version in the
 * scope of which more than half the rows and at least `minRows` are missing (regen.index_deferral_plan).
 * Searches take the exact path until buildVersionIndexes() builds it again. Same connection rules
 * as buildVersionIndexes.
 */
export async function deferVersionIndexes(db: Db, options: DeferOptions = {}): Promise<IndexStep[]> {
  const { rows } = await db.query<{ version: string; index_name: string; missing: string; expected: string; statement: string }>(
    'select * from regen.index_deferral_plan($1::text, $2::text, min_rows => $3::bigint)',
    [options.source ?? null, options.version ?? null, options.minRows ?? 10_000]);
  const steps: IndexStep[] = rows.map((r) => ({ version: r.version, action: 'drop', state: 'ready', indexName: r.index_name,
    statement: r.statement, open: Number(r.missing), expected: Number(r.expected), backfilled: false }));
  if (options.dryRun) return steps;
  for (const step of steps) {
    const started = performance.now();
    await runStatement(db, step);
    step.ms = Math.round(performance.now() - started);
  }
  return steps;
}
