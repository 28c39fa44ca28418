// A slow self-hosted endpoint (issue 14, item 1): the worker learns what the endpoint can take
// (adaptive.ts) instead of timing out forever on requests sent again unchanged. Here the local
// server computes 60 ms per input, one request at a time, and the worker's request timeout is
// 1.5 s: its first requests (32 inputs, 1.9 s) time out; they are split, the limits shrink, and the
// gap closes with every text embedded once. The server stops computing for a client that has gone.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startEmbeddingServer, type EmbeddingServer } from '../src/provider-server.ts';
import { Adaptive } from '../src/worker/adaptive.ts';
import type { RunningWorker } from '../src/worker/run.ts';
import { freshDatabase, keepOnFailure, type TestDatabase } from './support/db.ts';
import { assertStoreConsistent, inProcessWorker, waitForClosedGap, workerEnv } from './support/worker.ts';

describe('the adaptive limits', () => {
  const options = { maxInputs: 512, maxConcurrency: 4, timeoutMs: 10_000 };

  it('start small and double on fast answers, up to the ceilings', () => {
    const a = new Adaptive(options);
    expect(a.state()).toMatchObject({ inputs: 32, concurrency: 1, slowStart: true });
    for (let i = 0; i < 5; i++) a.answered(a.inputs, 0.1);
    expect(a.state()).toMatchObject({ inputs: 512, concurrency: 4, slowStart: true });
  });

  it('halve on a timeout or a slow answer, then grow additively; never more inputs than fit the timeout', () => {
    const a = new Adaptive(options);
    for (let i = 0; i < 5; i++) a.answered(a.inputs, 0.1);
    a.timedOut();
    expect(a.state()).toMatchObject({ concurrency: 2, slowStart: false });
    const afterTimeout = a.inputs;
    expect(afterTimeout).toBeLessThanOrEqual(256);
    a.answered(100, 6);   // over half the timeout: 60 ms an input
    expect(a.state().concurrency).toBe(1);
    // a quarter of the 10 s timeout at about 60 ms an input: at most some 40 inputs now
    expect(a.inputs).toBeLessThanOrEqual(Math.floor(2.5 / a.state().secondsPerInput!));
    const before = a.state();
    a.answered(10, 0.5);   // fast: one step up, not a doubling
    expect(a.state().concurrency).toBe(before.concurrency + 1);
  });

  it('stay at the ceilings with REGEN_ADAPTIVE=false', () => {
    const a = new Adaptive({ ...options, adapt: false });
    expect(a.state()).toMatchObject({ inputs: 512, concurrency: 4 });
    a.timedOut();
    a.answered(512, 9);
    expect(a.state()).toMatchObject({ inputs: 512, concurrency: 4 });
  });

  it('keep at most `concurrency` requests in flight', async () => {
    const a = new Adaptive({ ...options, maxConcurrency: 1 });
    const first = await a.slot();
    let second = false;
    const waiting = a.slot().then((release) => { second = true; release(); });
    await new Promise((r) => setTimeout(r, 20));
    expect(second).toBe(false);
    first();
    await waiting;
    expect(second).toBe(true);
  });
});

describe('a slow endpoint, one request at a time', () => {
  let db: TestDatabase;
  let server: EmbeddingServer;
  let worker: RunningWorker | undefined;
  beforeAll(async () => {
    db = await freshDatabase();
    server = await startEmbeddingServer({ dimensions: 8, msPerInput: 60, oneAtATime: true });
  });
  keepOnFailure(() => db);
  afterAll(async () => {
    await worker?.stop();
    await server.close();
  });

  it('converges with the default settings: timed-out requests are split, later ones are smaller, nothing is embedded twice', async () => {
    await db.query(`select regen.create_version('slow@1', 'local-hash', 8, settings => '{"send_dimensions": true}')`);
    await db.query('create table notes (id int primary key, body text not null)');
    await db.query(`insert into notes select g, 'slow note number ' || g from generate_series(1, 100) g`);
    await db.query(`select regen.register_source('notes', 'notes', 'id', 'body', version => 'slow@1')`);
    await db.query('select * from regen.rebuild()');
    worker = await inProcessWorker(workerEnv(db.url, server, { REGEN_REQUEST_TIMEOUT_MS: '1500' }));
    await waitForClosedGap(db, 'notes', 90_000);
    await assertStoreConsistent(db);

    const log = server.stats.log;
    const firstGone = log.findIndex((r) => r.status === 499);
    expect(firstGone).toBeGreaterThanOrEqual(0);   // a request timed out, and the server stopped computing it
    const largest = Math.max(...log.slice(0, firstGone + 1).map((r) => r.inputs));
    const answered = log.filter((r) => r.status === 200);
    expect(Math.max(...answered.map((r) => r.inputs))).toBeLessThan(largest);   // what was answered was smaller
    // every text embedded once: what timed out was never answered, and its halves were
    expect(server.stats.inputs).toBe(100);
    expect([...server.stats.texts.values()].every((n) => n === 1)).toBe(true);
  }, 120_000);
});
