// Running the real worker against a test database and the local embedding server: as a child
// process (the real `pgregen worker` binary, so it can be killed with SIGKILL) or in-process.
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { Db } from '../../src/db.ts';
import type { EmbeddingServer } from '../../src/provider-server.ts';
import { readConfig } from '../../src/worker/config.ts';
import { startWorker, type RunningWorker } from '../../src/worker/run.ts';
import pino from 'pino';

const BIN = fileURLToPath(new URL('../../bin/pgregen.js', import.meta.url));

export function workerEnv(databaseUrl: string, server: EmbeddingServer, extra: Record<string, string> = {}): Record<string, string> {
  return {
    DATABASE_URL: databaseUrl,
    OPENAI_API_KEY: 'test-key',
    OPENAI_BASE_URL: server.url,
    REGEN_PORT: '0',
    REGEN_POLL_INTERVAL_SECONDS: '1',
    REGEN_SUPERVISE_INTERVAL_SECONDS: '1',
    REGEN_REQUEST_TIMEOUT_MS: '5000',
    REGEN_LOG_LEVEL: 'warn',
    ...extra,
  };
}

export interface SpawnedWorker {
  child: ChildProcess;
  output(): string;
  exited: Promise<number | null>;
}

export function spawnWorker(env: Record<string, string>): SpawnedWorker {
  const child = spawn(process.execPath, [BIN, 'worker'], {
    env: { PATH: process.env.PATH ?? '', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout!.on('data', (d) => { output += d; });
  child.stderr!.on('data', (d) => { output += d; });
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  return { child, output: () => output, exited };
}

/** The worker in this process, quiet unless it fails. */
export async function inProcessWorker(env: Record<string, string>): Promise<RunningWorker> {
  return startWorker(readConfig(env), pino({ level: 'warn' }));
}

export async function waitFor<T>(what: string, probe: () => Promise<T | undefined | false>, timeoutMs = 60_000, everyMs = 200): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined && value !== false) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, everyMs));
  }
}

/** Waits until the gap of a source is closed: every item current or failed, nothing queued. */
export async function waitForClosedGap(db: Db, source: string, timeoutMs = 60_000): Promise<void> {
  await waitFor(`the gap of ${source} to close`, async () => {
    const { rows } = await db.query<{ open: string }>(
      `select missing + stale + outdated as open from regen.embedding_gap where source = $1 and role = 'active'`, [source]);
    return rows[0] && Number(rows[0].open) === 0;
  }, timeoutMs);
}

/** No stored vector may carry a hash other than its row's current text, and no chunk may appear twice. */
export async function assertStoreConsistent(db: Db): Promise<{ vectors: number }> {
  const wrong = await db.query<{ n: string }>(
    `select count(*) as n from regen._embeddings e
       join regen._items it on it.source_id = e.source_id and it.version_id = e.version_id and it.row_id = e.row_id
      where it.embedded_hash = it.content_hash and e.content_hash <> it.content_hash`);
  if (Number(wrong.rows[0]!.n) !== 0) throw new Error(`${wrong.rows[0]!.n} current items have a vector of another text`);
  const orphans = await db.query<{ n: string }>(
    `select count(*) as n from regen._embeddings e
      where not exists (select 1 from regen._items it where it.source_id = e.source_id and it.version_id = e.version_id and it.row_id = e.row_id)`);
  if (Number(orphans.rows[0]!.n) !== 0) throw new Error(`${orphans.rows[0]!.n} vectors have no item`);
  const total = await db.query<{ n: string }>('select count(*) as n from regen._embeddings');
  return { vectors: Number(total.rows[0]!.n) };
}
