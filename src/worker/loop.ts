// One fetch loop of the worker, over the queues of every version it serves. pg-boss's own work()
// fetches one queue by priority only, so with a steady stream of edits every fetch would take
// fresh-edit jobs first, and a rebuild or migration would wait behind them. This loop uses pg-boss's
// fetch, touch, complete and fail itself:
//
// - Fair share: `backfillShare` of the worker's loops take their batches from the backfill first
//   (below the fresh band), the others fresh edits first; each fills the room left with the other
//   kind. With 4 loops and a share of 0.5, two loops are on the backfill whenever it waits: a share
//   of the worker's time, whatever a batch of either kind costs (a fresh edit of the version in
//   service, with its HNSW index, costs more than a row of a version being built). A fraction of a
//   loop alternates (0.5 of one loop: every other batch). When only one kind waits, every loop takes
//   it. The loops fetch from every version's queue, in turn, so the share holds for the worker as
//   a whole (a migration's edits also queue fresh jobs for the version in service).
// - Kept alive: while a batch works, its jobs' heartbeat is refreshed three times per heartbeat
//   period; a job that is no longer this worker's (taken back, cancelled) aborts the batch.
// - Bounded: a batch is aborted at 90% of its jobs' expiry, before pg-boss would hand them to
//   another worker; what it embedded by then is written, the rest is retried.
// Retries, expiry and crashed workers stay pg-boss's: a failed batch fails its jobs, which retry.
import type { PgBoss } from 'pg-boss';
import type { JobData } from './batch.ts';

export interface FetchedJob {
  id: string;
  queue: string;
  data: JobData;
  retryCount: number;
  expireInSeconds: number;
  heartbeatSeconds: number | null;
  /** The job's pg-boss priority (higher first). */
  priority?: number;
}

export interface LoopOptions {
  boss: Pick<PgBoss, 'fetch' | 'touch' | 'complete' | 'fail'>;
  /** The queues served now (one per version); new versions join as they are found. */
  queues(): string[];
  /** This loop's number (0, 1, ...) among the worker's `loops()`: the first ones take the backfill's share. */
  index: number;
  loops(): number;
  jobsPerFetch: number;
  backfillShare: number;
  /** regen.fresh_priority(): fresh-edit jobs have this priority or more. */
  freshPriority: number;
  pollIntervalMs: number;
  /** How an idle loop waits for its next poll (default: a plain pause); a notification may end it early. */
  sleep?(ms: number, signal: AbortSignal): Promise<void>;
  /** Called when a fetch found jobs: there may be more, for another loop. */
  found?(): void;
  /** Aborted when the worker stops: the loop fetches no more, and lets its batch finish. */
  stopping: AbortSignal;
  /** Aborted when the worker must give up its batches (shutdown timeout). */
  cancel: AbortSignal;
  handle(jobs: FetchedJob[], signal: AbortSignal): Promise<void>;
  onError(err: Error, what: string): void;
}

const pause = (ms: number, signal: AbortSignal) => new Promise<void>((resolve) => {
  if (signal.aborted) return resolve();
  const timer = setTimeout(done, ms);
  function done() { clearTimeout(timer); signal.removeEventListener('abort', done); resolve(); }
  signal.addEventListener('abort', done, { once: true });
});

/** Runs until `stopping` is aborted and its last batch has ended. */
export async function runLoop(o: LoopOptions): Promise<void> {
  let credit = 0;
  let turn = 0;
  const backfill = { maxPriority: o.freshPriority - 1 };
  const fresh = { minPriority: o.freshPriority };
  const take = async (): Promise<FetchedJob[]> => {
    const queues = o.queues();
    const start = turn++ % Math.max(1, queues.length);
    const order = [...queues.slice(start), ...queues.slice(0, start)];
    const jobs: FetchedJob[] = [];
    const fill = async (upTo: number, range: typeof backfill | typeof fresh) => {
      for (const queue of order) {
        if (jobs.length >= upTo) return;
        const got = await o.boss.fetch<JobData>(queue, { batchSize: upTo - jobs.length, includeMetadata: true, ...range });
        jobs.push(...got.map((j) => ({ ...j, queue })));
      }
    };
    // this loop's part of the share: 1 (always backfill first), 0 (never), or a fraction (alternating)
    credit += Math.min(1, Math.max(0, o.backfillShare * o.loops() - o.index));
    const backfillFirst = credit >= 1 - 1e-9;
    if (backfillFirst) credit -= 1;
    await fill(o.jobsPerFetch, backfillFirst ? backfill : fresh);
    await fill(o.jobsPerFetch, backfillFirst ? fresh : backfill);   // the room left
    // pg-boss returns a fetch's jobs in no particular order: the hottest first, as the batch works them
    return jobs.sort((a, b) => (b.priority ?? 0) - (a.priority ?? 0));
  };
  while (!o.stopping.aborted) {
    let jobs: FetchedJob[];
    try {
      jobs = await take();
    } catch (err) {
      o.onError(err as Error, 'fetching jobs failed');
      await pause(o.pollIntervalMs, o.stopping);
      continue;
    }
    if (jobs.length === 0) {
      await (o.sleep ?? pause)(o.pollIntervalMs, o.stopping);
      continue;
    }
    o.found?.();
    await work(o, jobs);
  }
}

/** The jobs by queue, as pg-boss's calls take them: a queue name and the fetched attempts. */
function byQueue(jobs: FetchedJob[]): Map<string, Array<{ id: string; retryCount: number }>> {
  const out = new Map<string, Array<{ id: string; retryCount: number }>>();
  for (const j of jobs) out.set(j.queue, [...(out.get(j.queue) ?? []), { id: j.id, retryCount: j.retryCount }]);
  return out;
}

async function work(o: LoopOptions, jobs: FetchedJob[]): Promise<void> {
  const batch = new AbortController();
  const signal = AbortSignal.any([batch.signal, o.cancel]);
  const queues = byQueue(jobs);
  const expireMs = Math.min(...jobs.map((j) => j.expireInSeconds)) * 1000;
  const limit = setTimeout(() => batch.abort(new Error(`batch ran out of time: its jobs expire after ${expireMs / 1000} s; `
    + 'what was embedded is written, the rest is retried')), expireMs * 0.9);
  const heartbeat = Math.min(...jobs.map((j) => j.heartbeatSeconds ?? Infinity));
  const beat = Number.isFinite(heartbeat) ? setInterval(() => {
    for (const [queue, held] of queues) {
      o.boss.touch(queue, held).then((touched) => {
        const kept = (touched as { settled?: string[] }).settled;
        const lost = kept ? held.filter((j) => !kept.includes(j.id)) : [];
        if (lost.length > 0) batch.abort(new Error(`job ${lost[0]!.id} is no longer this worker's (taken back or cancelled)`));
      }, (err: Error) => o.onError(err, 'heartbeat failed'));
    }
  }, (heartbeat * 1000) / 3) : undefined;
  try {
    await o.handle(jobs, signal);
    for (const [queue, held] of queues) await o.boss.complete(queue, held);
  } catch (err) {
    for (const [queue, held] of queues) {
      await o.boss.fail(queue, held, err as object)
        .catch((e: Error) => o.onError(e, 'handing jobs back failed (they come back after their heartbeat)'));
    }
  } finally {
    clearTimeout(limit);
    clearInterval(beat);
  }
}
