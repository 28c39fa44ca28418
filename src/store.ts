// Typed calls to the worker-facing SQL: prepare_inputs and write_embeddings. No decisions here:
// SQL judges every vector; this file only shapes arguments and results.
import { vectorArrayParam, type Db } from './db.ts';
import { PgregenError } from './errors.ts';

export interface Input {
  rowId: string;
  chunkNo: number;
  contentHash: Buffer;
  textHash: Buffer;
  /** Text to embed; null when an earlier input of the same batch has the same textHash, or when deferred. */
  input: string | null;
  /** Another batch is embedding this text right now: prepare the row again once that batch is done. */
  deferred: boolean;
}

export interface VectorItem {
  rowId: string;
  chunkNo: number;
  contentHash: Buffer;
  embedding: ArrayLike<number>;
}

/** Why regen.write_embeddings refused a vector: branch on this, the reason is for people. */
export type RefusalKind = 'malformed' | 'unknown_source' | 'unknown_version' | 'duplicate' | 'nan' | 'dimensions'
  | 'untracked' | 'stale' | 'unplanned';

export interface WriteResult {
  rowId: string;
  chunkNo: number;
  stored: boolean;
  /** null when stored */
  kind: RefusalKind | null;
  reason: string | null;
}

export async function prepareInputs(db: Db, source: string, version: string, rowIds: string[],
  options: { jobId?: string; force?: boolean } = {}): Promise<Input[]> {
  const { rows } = await db.query<{ row_id: string; chunk_no: number; content_hash: Buffer; text_hash: Buffer; input: string | null; deferred: boolean }>(
    'select * from regen.prepare_inputs($1::text, $2::text, $3::text[], job_id => $4::uuid, force => $5::boolean)',
    [source, version, rowIds, options.jobId ?? null, options.force ?? false]);
  return rows.map((r) => ({ rowId: r.row_id, chunkNo: r.chunk_no, contentHash: r.content_hash, textHash: r.text_hash, input: r.input,
                            deferred: r.deferred }));
}

/**
 * regen.apply_rows: applies the logged changes of these rows now, in a statement (and transaction)
 * of its own, so that the long prepare and write that follow rarely hold the source's applier lock.
 */
export async function applyRows(db: Db, source: string, rowIds: string[]): Promise<number> {
  const { rows } = await db.query<{ n: string }>('select regen.apply_rows($1::text, $2::text[]) as n', [source, rowIds]);
  return Number(rows[0]?.n ?? 0);
}

/** regen.release_claims: the texts these jobs claimed in prepare_inputs are free again; returns how many. */
export async function releaseClaims(db: Db, jobIds: string[]): Promise<number> {
  const { rows } = await db.query<{ n: string }>('select regen.release_claims($1::uuid[]) as n', [jobIds]);
  return Number(rows[0]?.n ?? 0);
}

/** regen.fresh_priority(): the lowest pg-boss priority of a fresh-edit job (backfill is below). */
export async function freshPriority(db: Db): Promise<number> {
  const { rows } = await db.query<{ p: number }>('select regen.fresh_priority() as p');
  return rows[0]!.p;
}

const vectorOids = new WeakMap<Db, number>();

/** The vector type's OID, found through the extension: the caller's search_path need not reach pgvector's schema. */
async function vectorOid(db: Db): Promise<number> {
  let oid = vectorOids.get(db);
  if (oid === undefined) {
    const { rows } = await db.query<{ oid: number }>(
      `select t.oid::int as oid from pg_extension e join pg_type t on t.typnamespace = e.extnamespace and t.typname = 'vector'
        where e.extname = 'vector'`);
    if (!rows[0]) throw new PgregenError('extension vector is not created in this database', 'run pgregen install');
    oid = rows[0].oid;
    vectorOids.set(db, oid);
  }
  return oid;
}

/**
 * Hands vectors to regen.write_embeddings, which judges each one. pgvector cannot represent NaN or
 * infinity, so such a vector travels as NULL, and SQL refuses it with that reason. The vectors are not
 * cast by name (`::vector[]` would need pgvector's schema on the search_path): the parameter takes the
 * function's argument type, and the array carries the element type's OID.
 */
export async function writeEmbeddings(db: Db, source: string, version: string, items: VectorItem[]): Promise<WriteResult[]> {
  const vectors = items.map((item) => (Array.prototype.every.call(item.embedding, Number.isFinite) ? item.embedding : null));
  const { rows } = await db.query<{ row_id: string; chunk_no: number; stored: boolean; kind: RefusalKind | null; reason: string | null }>(
    'select * from regen.write_embeddings($1::text, $2::text, $3::text[], $4::integer[], $5::bytea[], $6)',
    [source, version, items.map((i) => i.rowId), items.map((i) => i.chunkNo), items.map((i) => i.contentHash),
     vectorArrayParam(await vectorOid(db), vectors)]);
  return rows.map((r) => ({ rowId: r.row_id, chunkNo: r.chunk_no, stored: r.stored, kind: r.kind, reason: r.reason }));
}

export interface VersionInfo {
  tag: string;
  provider: string;
  model: string;
  dimensions: number;
  maxInputTokens: number;
  sendDimensions: boolean;
}

export async function versionInfo(db: Db, tag: string): Promise<VersionInfo | undefined> {
  const { rows } = await db.query<{ tag: string; provider: string; model: string; dimensions: number; max_input_tokens: number; send_dimensions: boolean }>(
    `select tag, provider, model, dimensions, (settings->>'max_input_tokens')::int as max_input_tokens,
            (settings->>'send_dimensions')::boolean as send_dimensions
       from regen.versions where tag = $1`, [tag]);
  const r = rows[0];
  return r && { tag: r.tag, provider: r.provider, model: r.model, dimensions: r.dimensions,
                maxInputTokens: r.max_input_tokens, sendDimensions: r.send_dimensions };
}

export interface Refusal {
  rowId: string;
  contentHash: Buffer;
  reason: string;
}

/** Dead-letters items the provider refused one by one; returns how many items failed. */
export async function failInputs(db: Db, source: string, version: string, refusals: Refusal[]): Promise<number> {
  if (refusals.length === 0) return 0;
  const { rows } = await db.query<{ n: string }>(
    'select regen.fail_inputs($1::text, $2::text, $3::text[], $4::bytea[], $5::text[]) as n',
    [source, version, refusals.map((r) => r.rowId), refusals.map((r) => r.contentHash), refusals.map((r) => r.reason)]);
  return Number(rows[0]?.n ?? 0);
}

export async function compactGap(db: Db): Promise<number> {
  const { rows } = await db.query<{ n: string }>('select regen.compact_gap() as n');
  return Number(rows[0]?.n ?? 0);
}

/** regen.enqueue_fresh(): moves the fresh edits the capture triggers marked into the queue; returns the items enqueued. */
export async function enqueueFresh(db: Db): Promise<number> {
  const { rows } = await db.query<{ n: string }>('select regen.enqueue_fresh() as n');
  return Number(rows[0]?.n ?? 0);
}

/** Writes due mirror columns (regen.sync_mirrors), rows the application holds locked left for later; returns the rows written. */
export async function syncMirrors(db: Db): Promise<number> {
  const { rows } = await db.query<{ n: string }>('select regen.sync_mirrors() as n');
  return Number(rows[0]?.n ?? 0);
}

export interface Recovered { source: string | null; version: string | null; items: number; reconciled: boolean }

/**
 * Unattended recovery (regen.recover): reconciles a store that changed behind pgregen's back (a
 * restore, a truncate) and re-enqueues, hot-first, what lost its vectors. Cheap when nothing did.
 */
export async function recover(db: Db): Promise<Recovered[]> {
  const { rows } = await db.query<{ source: string | null; version: string | null; items: string; reconciled: boolean }>(
    'select * from regen.recover()');
  return rows.map((r) => ({ source: r.source, version: r.version, items: Number(r.items), reconciled: r.reconciled }));
}

export interface ReconcileRow {
  source: string; version: string; unsettled: number; settled: number; orphansRemoved: number; tenantsFixed: number;
}

/** regen.reconcile(): makes the items agree with the store, per source and version. */
export async function reconcile(db: Db): Promise<ReconcileRow[]> {
  const { rows } = await db.query<Record<string, string>>('select * from regen.reconcile()');
  return rows.map((r) => ({
    source: r.source!, version: r.version!, unsettled: Number(r.unsettled), settled: Number(r.settled),
    orphansRemoved: Number(r.orphans_removed), tenantsFixed: Number(r.tenants_fixed),
  }));
}

export async function queueDepth(db: Db): Promise<Array<{ version: string; state: string; jobs: number; items: number }>> {
  const { rows } = await db.query<{ version: string; state: string; jobs: string; items: string }>('select * from regen.queue_depth()');
  return rows.map((r) => ({ version: r.version, state: r.state, jobs: Number(r.jobs), items: Number(r.items) }));
}

export async function reportError(db: Db, source: string, version: string, message: string): Promise<void> {
  await db.query('select regen.report_error($1::text, $2::text, $3::text)', [source, version, message]);
}

/** The pg-boss queue of each version (all, or the given tags). */
export async function versionQueues(db: Db, tags: string[] | null): Promise<Array<{ version: string; queue: string }>> {
  const { rows } = await db.query<{ version: string; queue: string }>('select * from regen.version_queues($1::text[])', [tags]);
  return rows;
}
