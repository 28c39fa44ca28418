// One fetched batch of queue jobs: ask SQL for the inputs (cache hits are settled there), embed
// each distinct text once, hand the vectors back to SQL. SQL decides what is embedded and what is
// stored; this file only counts tokens, packs requests within the provider's limits and routes
// vectors to the rows that asked for them. Rows whose text another batch is embedding (SQL says
// deferred) are prepared again once that batch is done, when its vector is a cache hit.
import type { Db } from '../db.ts';
import { countTokens } from '../tokens.ts';
import { applyRows, failInputs, prepareInputs, releaseClaims, reportError, writeEmbeddings, type Input, type Refusal, type VersionInfo } from '../store.ts';
import type { EmbedOutcome, EmbedRequest, Provider } from './provider.ts';
import { keyRefs, MissingKey, type KeyRef } from './keys.ts';

export interface JobData {
  source: string;
  version: string;
  rows: string[];
  /** The tenant's key reference when the job was enqueued: it only groups rows into jobs. The key
   *  used is the one SQL names when the job is worked (regen.key_refs). */
  key?: string | null;
  force?: boolean;
  /** A fresh-edit job (new rows, changed texts), above every backfill job in the queue. */
  fresh?: boolean;
}

export interface BatchJob {
  id: string;
  data: JobData;
}

export interface BatchDeps {
  db: Db;
  version(tag: string): Promise<VersionInfo>;
  provider(keyRef: string | null): Provider;
  maxInputsPerRequest: number;
  maxTokensPerRequest: number;
  onStored?(version: string, count: number): void;
  onRefused?(kind: string, count: number): void;
}

interface Unit {
  source: string;
  version: string;
  input: Input;
}

interface Text {
  text: string;
  tokens: number;
  outcome?: EmbedOutcome;
}

export interface BatchResult {
  stored: number;
  refused: number;
  providerInputs: number;
  /** Rows whose text another batch was embedding, waited for (counted once per round). */
  deferred: number;
  rounds: number;
}

export async function processBatch(jobs: BatchJob[], deps: BatchDeps, signal?: AbortSignal): Promise<BatchResult> {
  const result: BatchResult = { stored: 0, refused: 0, providerInputs: 0, deferred: 0, rounds: 0 };
  let pending = jobs;
  for (let round = 0; pending.length > 0; round++) {
    // Rows whose text another batch was embedding: prepared again at once (that batch may have been
    // a job of this one, written just now), then after growing pauses until that batch is done. The
    // caller's signal (the jobs' time limit, shutdown) ends the wait.
    if (round > 1) await pause(Math.min(2_000, 125 * 2 ** round), signal);
    signal?.throwIfAborted();
    pending = await embedRound(pending, deps, result, signal);
    result.rounds = round + 1;
  }
  return result;
}

/** Prepares, embeds and writes back the rows of these jobs; returns the jobs with the rows deferred. */
async function embedRound(jobs: BatchJob[], deps: BatchDeps, result: BatchResult, signal?: AbortSignal): Promise<BatchJob[]> {
  try {
    const prepared = await Promise.all(jobs.map(async (job) => {
      await applyRows(deps.db, job.data.source, job.data.rows);   // pending edits, in a short transaction (regen.apply_rows)
      const inputs = await againOnDeadlock(() =>
        prepareInputs(deps.db, job.data.source, job.data.version, job.data.rows, { jobId: job.id, force: job.data.force }));
      // Each row's key reference as it is now, not as it was when the job was enqueued.
      const keys = await keyRefs(deps.db, job.data.source, job.data.version, [...new Set(inputs.map((i) => i.rowId))]);
      return { job, inputs, keys };
    }));
    const deferred = prepared.map(({ job, inputs }) => ({
      id: job.id, data: { ...job.data, rows: [...new Set(inputs.filter((i) => i.deferred).map((i) => i.rowId))] },
    })).filter((j) => j.data.rows.length > 0);
    result.deferred += deferred.reduce((n, j) => n + j.data.rows.length, 0);

    // Rows of the same version and API key share provider requests, whichever jobs they came in.
    const groups = new Map<string, { version: string; key: KeyRef | undefined; units: Unit[] }>();
    for (const { job, inputs, keys } of prepared) {
      // A text shared by rows of this job comes once (input null for the others); after a key change
      // those rows may use different keys, so each row carries the text into its own key's group.
      const textOf = new Map(inputs.filter((i) => i.input !== null).map((i) => [i.textHash.toString('hex'), i.input]));
      for (const shared of inputs) {
        if (shared.deferred) continue;
        const input = shared.input === null ? { ...shared, input: textOf.get(shared.textHash.toString('hex')) ?? null } : shared;
        const key = keys.get(input.rowId);
        const id = `${job.data.version}\u0000${key?.ref ?? ''}`;
        const group = groups.get(id) ?? { version: job.data.version, key, units: [] };
        group.units.push({ source: job.data.source, version: job.data.version, input });
        groups.set(id, group);
      }
    }

    const errors: unknown[] = [];
    for (const group of groups.values()) {
      if (group.key?.problem) {
        // SQL refuses this reference: its rows stay queued, and the error shows in rebuild_progress.
        errors.push(new MissingKey(group.key.problem));
        continue;
      }
      const version = await deps.version(group.version);
      const texts = distinctTexts(group.units, version);
      const requests = pack([...texts.entries()].filter(([, t]) => t.outcome === undefined), version, deps);
      result.providerInputs += requests.reduce((n, r) => n + r.hashes.length, 0);
      // Each request's rows are written back as soon as it answers (a row whose chunks span requests
      // once its last one has), so the hottest rows of a batch are searchable before the rest is
      // embedded; whatever was embedded is stored even if another request of the batch failed.
      const rows = new Map<string, Unit[]>();
      for (const unit of group.units) {
        const id = `${unit.source}\u0000${unit.input.rowId}`;
        rows.set(id, [...(rows.get(id) ?? []), unit]);
      }
      const decided = (u: Unit) => texts.get(u.input.textHash.toString('hex'))?.outcome !== undefined;
      const flush = async (all: boolean) => {
        const ready: Unit[] = [];
        for (const [id, units] of rows) {
          if (all || units.every(decided)) { ready.push(...units); rows.delete(id); }
        }
        if (ready.length === 0) return;
        const written = await writeBack(ready, texts, deps);
        result.stored += written.stored;
        result.refused += written.refused;
      };
      const settled = await Promise.allSettled(requests.map(async (r) => {
        const outcomes = await deps.provider(group.key?.ref ?? null).embed(r.request, signal);
        r.hashes.forEach((hash, i) => { texts.get(hash)!.outcome = outcomes[i]; });
        await flush(false);
      }));
      for (const s of settled) if (s.status === 'rejected') errors.push(s.reason);
      await flush(true);
    }
    // cancelled (time limit, jobs lost, shutdown): say why, not how the request ended
    if (errors.length > 0 && signal?.aborted) errors.unshift(signal.reason);
    if (errors.length > 0) {
      const message = (errors[0] as Error).message ?? String(errors[0]);
      for (const { job } of prepared) await reportError(deps.db, job.data.source, job.data.version, message).catch(() => {});
      throw errors[0];
    }
    return deferred;
  } finally {
    // The texts are written (or refused): a batch waiting for one of them may go on. Should this fail,
    // the claims lapse with the jobs.
    await releaseClaims(deps.db, jobs.map((j) => j.id)).catch(() => {});
  }
}

/**
 * A statement PostgreSQL chose as a deadlock's victim (40P01) was rolled back whole: run it again,
 * a few times, rather than hand the whole batch back to the queue's retry delay.
 */
async function againOnDeadlock<T>(work: () => Promise<T>, attempts = 3): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await work();
    } catch (err) {
      if ((err as { code?: string }).code !== '40P01' || attempt >= attempts) throw err;
    }
  }
}

const pause = (ms: number, signal?: AbortSignal) => new Promise<void>((resolve, reject) => {
  if (signal?.aborted) return reject(signal.reason);
  const timer = setTimeout(() => { signal?.removeEventListener('abort', stop); resolve(); }, ms);
  function stop() { clearTimeout(timer); reject(signal!.reason); }
  signal?.addEventListener('abort', stop, { once: true });
});

/** Each text once, by hash; inputs over the model's token limit are refused here, never cut. */
function distinctTexts(units: Unit[], version: VersionInfo): Map<string, Text> {
  const texts = new Map<string, Text>();
  for (const { input } of units) {
    const hash = input.textHash.toString('hex');
    if (input.input === null || texts.has(hash)) continue;
    const tokens = countTokens(input.input, version.model);
    const text: Text = { text: input.input, tokens };
    if (tokens > version.maxInputTokens) {
      text.outcome = { ok: false, reason: `input has ${tokens} tokens, over the model's limit of ${version.maxInputTokens}: `
        + `lower chunk_chars or raise max_input_tokens in a new version` };
    }
    texts.set(hash, text);
  }
  return texts;
}

/** Greedy packing in the queue's (priority) order, within the per-request input and token limits. */
function pack(entries: Array<[string, Text]>, version: VersionInfo, deps: BatchDeps): Array<{ hashes: string[]; request: EmbedRequest }> {
  const requests: Array<{ hashes: string[]; request: EmbedRequest }> = [];
  let current: { hashes: string[]; request: EmbedRequest } | undefined;
  let tokens = 0;
  for (const [hash, text] of entries) {
    if (!current || current.hashes.length >= deps.maxInputsPerRequest || tokens + text.tokens > deps.maxTokensPerRequest) {
      current = { hashes: [], request: { model: version.model, dimensions: version.dimensions, sendDimensions: version.sendDimensions, texts: [], tokens: [] } };
      requests.push(current);
      tokens = 0;
    }
    current.hashes.push(hash);
    current.request.texts.push(text.text);
    current.request.tokens.push(text.tokens);
    tokens += text.tokens;
  }
  return requests;
}

async function writeBack(units: Unit[], texts: Map<string, Text>, deps: BatchDeps): Promise<{ stored: number; refused: number }> {
  const bySource = new Map<string, { source: string; version: string; vectors: Parameters<typeof writeEmbeddings>[3]; refusals: Refusal[] }>();
  for (const { source, version, input } of units) {
    const id = `${source}\u0000${version}`;
    const entry = bySource.get(id) ?? { source, version, vectors: [], refusals: [] };
    bySource.set(id, entry);
    const outcome = texts.get(input.textHash.toString('hex'))?.outcome;
    if (outcome?.ok) {
      entry.vectors.push({ rowId: input.rowId, chunkNo: input.chunkNo, contentHash: input.contentHash, embedding: outcome.embedding });
    } else if (outcome) {
      entry.refusals.push({ rowId: input.rowId, contentHash: input.contentHash, reason: outcome.reason });
    }
  }
  let stored = 0;
  let refused = 0;
  for (const entry of bySource.values()) {
    if (entry.vectors.length > 0) {
      await applyRows(deps.db, entry.source, [...new Set(entry.vectors.map((v) => v.rowId))]);
      const results = await againOnDeadlock(() => writeEmbeddings(deps.db, entry.source, entry.version, entry.vectors));
      const ok = results.filter((r) => r.stored).length;
      stored += ok;
      refused += results.length - ok;
      deps.onStored?.(entry.version, ok);
      if (results.length > ok) deps.onRefused?.('write', results.length - ok);
    }
    if (entry.refusals.length > 0) {
      refused += entry.refusals.length;
      await failInputs(deps.db, entry.source, entry.version, entry.refusals);
      deps.onRefused?.('provider', entry.refusals.length);
    }
  }
  return { stored, refused };
}
