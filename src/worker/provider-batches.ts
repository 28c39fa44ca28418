// Batch mode (sql/0027_batch_mode.sql): the backfill of a version in batch mode goes to the
// provider's Batch API, at half the price, instead of its synchronous endpoint. This file only
// moves texts and vectors between SQL and the provider: SQL prepares the inputs (cache hits,
// claims), records each provider batch before it is submitted, judges every vector on the way back
// (regen.write_embeddings) and queues again what a batch did not embed.
//
// Submission: per source and version, one line per distinct text (custom_id: its sha256 in hex),
// recorded, uploaded, created (metadata pgregen_batch: the record's id), marked submitted; then
// the queue jobs complete. A worker that died between recording and marking leaves the record
// submitting: the poller looks the batch up by its metadata, and gives the record up (its items
// queued again) when the provider has no such batch.
// Write-back: a finished batch (completed, expired, failed, cancelled) is written a slice at a time,
// each slice in a transaction that holds its record and marks the slice's chunks written, so that
// each result is written once and no item stays locked through a long write-back.
import OpenAI, { toFile } from 'openai';
import type pg from 'pg';
import { applyRows, prepareInputs, writeEmbeddings, type Input, type VersionInfo } from '../store.ts';
import type { BatchJob } from './batch.ts';

export interface ProviderBatchDeps {
  pool: pg.Pool;
  /** The client of the default API key (batch mode serves the jobs without a tenant key). */
  client(): OpenAI;
  version(tag: string): Promise<VersionInfo>;
  onError(err: Error, what: string): void;
}

const FINISHED = new Set(['completed', 'expired', 'failed', 'cancelled']);
/** Chunks written back per transaction: the items of a slice stay locked until it commits. */
const WRITE_SLICE = 500;
/** A record left submitting longer than this is looked up at the provider (its worker died). */
const SUBMITTING_GRACE_MS = 60_000;

/** Whether these jobs go to the Batch API: backfill of a version in batch mode, on the default key, not forced. */
export async function inBatchMode(db: pg.Pool, job: BatchJob): Promise<boolean> {
  if (job.data.fresh || job.data.force || job.data.key) return false;
  const { rows: [row] } = await db.query<{ on: boolean }>('select regen.batch_mode($1) as on', [job.data.version]);
  return row?.on === true;
}

/**
 * Prepares the jobs and submits what is left for the provider as provider batches; returns the
 * jobs with the rows another batch was embedding (deferred), for the synchronous path.
 */
export async function submitBackfill(jobs: BatchJob[], deps: ProviderBatchDeps): Promise<BatchJob[]> {
  interface Group { source: string; version: string; rows: Array<{ rowId: string; chunkNo: number; contentHash: Buffer; textHash: Buffer }>; texts: Map<string, string> }
  const groups = new Map<string, Group>();
  const prepared: Array<{ job: BatchJob; group: Group; inputs: Input[] }> = [];
  for (const job of jobs) {
    await applyRows(deps.pool, job.data.source, job.data.rows);
    const inputs = await prepareInputs(deps.pool, job.data.source, job.data.version, job.data.rows, { jobId: job.id });
    const id = `${job.data.source}\u0000${job.data.version}`;
    const group: Group = groups.get(id) ?? { source: job.data.source, version: job.data.version, rows: [], texts: new Map<string, string>() };
    groups.set(id, group);
    prepared.push({ job, group, inputs });
    for (const i of inputs) if (!i.deferred && i.input !== null) group.texts.set(i.textHash.toString('hex'), i.input);
  }
  // A row deferred because another job of this submission claimed its text rides along in the same
  // provider batch (one line per text); one deferred for a job elsewhere waits for it the synchronous way.
  const deferred: BatchJob[] = [];
  for (const { job, group, inputs } of prepared) {
    const waiting = new Set<string>();
    for (const i of inputs) {
      if (i.deferred && !group.texts.has(i.textHash.toString('hex'))) {
        waiting.add(i.rowId);
        continue;
      }
      group.rows.push({ rowId: i.rowId, chunkNo: i.chunkNo, contentHash: i.contentHash, textHash: i.textHash });
    }
    if (waiting.size > 0) deferred.push({ id: job.id, data: { ...job.data, rows: [...waiting] } });
  }
  // a row waiting elsewhere with one chunk here and one there goes the synchronous way whole
  for (const d of deferred) {
    const group = groups.get(`${d.data.source}\u0000${d.data.version}`)!;
    group.rows = group.rows.filter((r) => !d.data.rows.includes(r.rowId));
  }
  for (const group of groups.values()) {
    if (group.rows.length === 0) continue;
    const version = await deps.version(group.version);
    const { rows: [recorded] } = await deps.pool.query<{ id: string }>(
      'select regen.record_provider_batch($1, $2, $3, $4, $5, $6) as id',
      [group.version, group.source, group.rows.map((r) => r.rowId), group.rows.map((r) => r.chunkNo),
       group.rows.map((r) => r.contentHash), group.rows.map((r) => r.textHash)]);
    const id = recorded!.id;
    const lines = [...group.texts].map(([hash, text]) => JSON.stringify({
      custom_id: hash, method: 'POST', url: '/v1/embeddings',
      body: { model: version.model, input: text, encoding_format: 'float', ...(version.sendDimensions ? { dimensions: version.dimensions } : {}) },
    }));
    const client = deps.client();
    const file = await client.files.create({ file: await toFile(Buffer.from(`${lines.join('\n')}\n`), `pgregen-${id}.jsonl`), purpose: 'batch' });
    const batch = await client.batches.create({ input_file_id: file.id, endpoint: '/v1/embeddings', completion_window: '24h',
      metadata: { pgregen_batch: id } });
    await deps.pool.query('select regen.provider_batch_submitted($1, $2, $3, to_timestamp($4))', [id, batch.id, file.id, batch.expires_at ?? null]);
  }
  // Rows whose text another submission claimed: they join its provider batch once it is recorded
  // (it may be about to be); those that cannot wait for it the synchronous way.
  const left: BatchJob[] = [];
  for (const d of deferred) {
    const chunks = prepared.find((p) => p.job.id === d.id)!.inputs.filter((i) => d.data.rows.includes(i.rowId));
    let waiting = d.data.rows;
    for (let attempt = 0; attempt < 4 && waiting.length > 0; attempt++) {
      if (attempt > 0) await new Promise((r) => setTimeout(r, 500));
      const mine = chunks.filter((c) => waiting.includes(c.rowId));
      const { rows: [attached] } = await deps.pool.query<{ rows: string[] }>(
        'select regen.attach_to_provider_batches($1, $2, $3, $4, $5, $6) as rows',
        [d.data.version, d.data.source, mine.map((c) => c.rowId), mine.map((c) => c.chunkNo), mine.map((c) => c.contentHash), mine.map((c) => c.textHash)]);
      waiting = waiting.filter((r) => !attached!.rows.includes(r));
    }
    if (waiting.length > 0) left.push({ id: d.id, data: { ...d.data, rows: waiting } });
  }
  return left;
}

interface OpenBatch { id: string; version: string; state: 'submitting' | 'submitted'; provider_batch_id: string | null; created_at: Date }

/** Looks at every provider batch in flight; writes back those that finished. */
export async function pollProviderBatches(deps: ProviderBatchDeps): Promise<void> {
  const { rows } = await deps.pool.query<OpenBatch>(
    `select id, version, state, provider_batch_id, created_at from regen.provider_batches where state in ('submitting', 'submitted') order by created_at`);
  const client = deps.client();
  for (const open of rows) {
    try {
      if (open.state === 'submitting') {
        if (Date.now() - open.created_at.getTime() < SUBMITTING_GRACE_MS) continue;
        await resumeSubmitting(open, client, deps);
        continue;
      }
      const batch = await client.batches.retrieve(open.provider_batch_id!);
      await deps.pool.query('select regen.provider_batch_checked($1, $2, $3, $4)',
        [open.id, batch.status, batch.request_counts?.completed ?? null, batch.request_counts?.failed ?? null]);
      if (FINISHED.has(batch.status)) await writeBack(open, batch, client, deps);
    } catch (err) {
      deps.onError(err as Error, `checking provider batch ${open.provider_batch_id ?? open.id} failed`);
    }
  }
}

/** A record whose worker died before it was marked submitted: the batch found by its metadata, or given up. */
async function resumeSubmitting(open: OpenBatch, client: OpenAI, deps: ProviderBatchDeps): Promise<void> {
  for await (const batch of client.batches.list({ limit: 100 })) {
    if (batch.metadata?.pgregen_batch === open.id) {
      await deps.pool.query('select regen.provider_batch_submitted($1, $2, $3, to_timestamp($4))',
        [open.id, batch.id, batch.input_file_id, batch.expires_at ?? null]);
      return;
    }
    if (batch.created_at * 1000 < open.created_at.getTime() - 60_000) break;   // listed newest first: older ones cannot be it
  }
  await inTransaction(deps.pool, open.id, async (db) => {
    await db.query(`select regen.provider_batch_done($1, 'abandoned', 'never created at the provider (its worker stopped first)')`, [open.id]);
  });
}

async function writeBack(open: OpenBatch, batch: OpenAI.Batches.Batch, client: OpenAI, deps: ProviderBatchDeps): Promise<void> {
  const vectors = new Map<string, number[]>();
  if (batch.output_file_id) {
    const text = await (await client.files.content(batch.output_file_id)).text();
    for (const line of text.split('\n')) {
      if (line.trim() === '') continue;
      const answer = JSON.parse(line) as { custom_id: string; response?: { status_code: number; body?: { data?: Array<{ embedding: number[] }> } } };
      const embedding = answer.response?.status_code === 200 ? answer.response.body?.data?.[0]?.embedding : undefined;
      if (embedding) vectors.set(answer.custom_id, embedding);
    }
  }
  // a slice at a time, each in a transaction of its own that marks its chunks written
  for (let more = true; more;) {
    await inTransaction(deps.pool, open.id, async (db) => {
      const { rows } = await db.query<{ source: string; row_id: string; chunk_no: number; content_hash: Buffer; text_hash: Buffer }>(
        `select s.name as source, r.row_id, r.chunk_no, r.content_hash, r.text_hash
           from regen._provider_batch_rows r join regen._sources s on s.id = r.source_id
          where r.batch_id = $1 and not r.written order by s.name, r.row_id, r.chunk_no limit $2`, [open.id, WRITE_SLICE]);
      if (rows.length === 0) {
        const problem = batch.status === 'completed' ? null : `provider batch ${batch.status}`;
        await db.query(`select regen.provider_batch_done($1, 'written', $2)`, [open.id, problem]);
        more = false;
        return;
      }
      for (const source of new Set(rows.map((r) => r.source))) {
        const mine = rows.filter((r) => r.source === source);
        const items = mine.filter((r) => vectors.has(r.text_hash.toString('hex')))
          .map((r) => ({ rowId: r.row_id, chunkNo: r.chunk_no, contentHash: r.content_hash, embedding: vectors.get(r.text_hash.toString('hex'))! }));
        const stored = items.length === 0 ? 0 : (await writeEmbeddings(db, source, open.version, items)).filter((w) => w.stored).length;
        await db.query('select regen.provider_batch_slice_written($1, $2, $3, $4, $5)',
          [open.id, source, mine.map((r) => r.row_id), mine.map((r) => r.chunk_no), stored]);
      }
    }).then((held) => { if (!held) more = false; });
  }
}

/**
 * Runs `work` in a transaction that holds the provider batch's record, if no other worker does and it
 * is still open; false when it did not run.
 */
async function inTransaction(pool: pg.Pool, id: string, work: (db: pg.PoolClient) => Promise<void>): Promise<boolean> {
  const db = await pool.connect();
  try {
    await db.query('begin');
    const { rows } = await db.query(
      `select 1 from regen._provider_batches where id = $1 and state in ('submitting', 'submitted') for update skip locked`, [id]);
    if (rows.length === 0) {
      await db.query('rollback');
      return false;
    }
    await work(db);
    await db.query('commit');
    return true;
  } catch (err) {
    await db.query('rollback').catch(() => {});
    throw err;
  } finally {
    db.release();
  }
}
