// The worker under a process supervisor: the README's command (the package's bin, as npm links it
// into node_modules/.bin) drains and exits 0 on SIGTERM sent to its PID; started through npx, which
// exits on SIGTERM without passing it on, the worker notices and drains instead of running on as an
// orphan; a health port that is taken stops it at once with what to do; metric names follow
// Prometheus' conventions.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, mkdtemp, rm, symlink } from 'node:fs/promises';
import { createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startEmbeddingServer, type EmbeddingServer } from '../src/provider-server.ts';
import { freshDatabase, keepOnFailure, type TestDatabase } from './support/db.ts';
import { waitFor, waitForClosedGap, workerEnv } from './support/worker.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const BIN = join(ROOT, 'bin', 'pgregen.js');

type Started = { child: ChildProcess; output(): string; exited: Promise<number | null> };

function start(command: string, args: string[], env: Record<string, string>, cwd = ROOT): Started {
  // PATH keeps the project's Node (node_modules/.bin) first, as `npm test` set it
  const child = spawn(command, args, { cwd, env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout!.on('data', (d) => { output += d; });
  child.stderr!.on('data', (d) => { output += d; });
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code, signal) => resolve(code ?? (signal ? 128 : null))));
  return { child, output: () => output, exited };
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** The pid the worker logs in its 'worker started' line (pino, JSON). */
async function workerPid(started: Started): Promise<number> {
  return waitFor('the worker to start', async () => {
    const line = started.output().split('\n').find((l) => l.includes('"worker started"'));
    return line ? (JSON.parse(line) as { pid: number }).pid : undefined;
  }, 30_000);
}

describe('the worker under a supervisor', () => {
  let db: TestDatabase;
  let server: EmbeddingServer;
  let linked: string;
  keepOnFailure(() => db);

  beforeAll(async () => {
    db = await freshDatabase('worker_supervision');
    server = await startEmbeddingServer({ dimensions: 8 });
    await db.query(`create table notes (id int primary key, body text not null)`);
    await db.query(`insert into notes select g, 'note ' || g from generate_series(1, 40) g`);
    await db.query(`select regen.create_version('hash@1', 'local-hash', 8, settings => '{"send_dimensions": true}')`);
    await db.query(`select regen.register_source('notes', 'notes', 'id', 'body', version => 'hash@1')`);
    // what `npm install pgregen` makes: node_modules/.bin/pgregen, a link to the package's bin
    linked = await mkdtemp(join(tmpdir(), 'pgregen-app-'));
    await mkdir(join(linked, 'node_modules', '.bin'), { recursive: true });
    await symlink(BIN, join(linked, 'node_modules', '.bin', 'pgregen'));
  });
  afterAll(async () => {
    await server?.close();
    if (linked) await rm(linked, { recursive: true, force: true });
  });

  const env = (extra: Record<string, string> = {}) => workerEnv(db.url, server, { REGEN_LOG_LEVEL: 'info', REGEN_SHUTDOWN_TIMEOUT_MS: '3000', ...extra });

  it('node_modules/.bin/pgregen worker (the README\'s command) drains and exits 0 on SIGTERM to its PID', async () => {
    server.setLatency(800);
    try {
      await db.query(`select * from regen.rebuild('notes')`);
      const worker = start(join(linked, 'node_modules', '.bin', 'pgregen'), ['worker'], env({ REGEN_JOBS_PER_FETCH: '1', REGEN_CONCURRENCY: '1' }), linked);
      expect(await workerPid(worker)).toBe(worker.child.pid);   // no wrapper process between the supervisor and the worker
      await waitFor('a request in flight', async () => server.stats.requests > 0);
      const sent = Date.now();
      worker.child.kill('SIGTERM');
      expect(await worker.exited).toBe(0);
      expect(Date.now() - sent).toBeLessThan(3_000 + 5_000);
      expect(worker.output()).toMatch(/"msg":"worker stopped"/);
    } finally {
      server.setLatency(0);
    }
  });

  it('started through npx: SIGTERM to npx leaves no orphan; the worker drains and exits', async () => {
    const npx = start('npx', ['--no-install', 'pgregen', 'worker'], env());
    const pid = await workerPid(npx);
    expect(pid).not.toBe(npx.child.pid);
    npx.child.kill('SIGTERM');
    await npx.exited;   // npx's own code (143) is npm's: it does not wait for its child
    await waitFor('the worker to exit', async () => !alive(pid), 15_000, 100);
    // the rows are all embedded by a worker that comes after it: nothing was lost
    const again = start(process.execPath, [BIN, 'worker'], env());
    await workerPid(again);
    await waitForClosedGap(db, 'notes', 60_000);
    again.child.kill('SIGTERM');
    expect(await again.exited).toBe(0);
  });

  it('a health port that is taken exits 1 at once, saying what to do, and takes no work', async () => {
    const holder = createServer();
    await new Promise<void>((resolve) => holder.listen(0, '0.0.0.0', resolve));
    const port = (holder.address() as AddressInfo).port;
    try {
      await db.query(`update notes set body = body || ' edited' where id <= 5`);   // fresh work in the queue
      const started = Date.now();
      const worker = start(process.execPath, [BIN, 'worker'], env({ REGEN_PORT: String(port) }));
      expect(await worker.exited).toBe(1);
      expect(Date.now() - started).toBeLessThan(15_000);
      expect(worker.output()).toContain(`pgregen: cannot serve /healthz, /readyz and /metrics: port ${port} (REGEN_PORT) is already in use\n`
        + '  hint: stop the process that holds it (another worker?), or set REGEN_PORT to a free port (0 picks one)');
      const stale = await db.query(`select stale::int from regen.embedding_gap where source = 'notes'`);
      expect(stale.rows[0].stale).toBe(5);
    } finally {
      holder.close();
    }
  });

  it('serves metrics whose names follow Prometheus\' conventions: counters end in _total, nothing else does', async () => {
    const worker = start(process.execPath, [BIN, 'worker'], env({ REGEN_PORT: '0' }));
    try {
      const line = await waitFor('the worker to start', async () => worker.output().split('\n').find((l) => l.includes('"worker started"')), 30_000);
      const { port } = JSON.parse(line) as { port: number };
      const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
      const types = [...text.matchAll(/^# TYPE (\S+) (\S+)$/gm)].map((m) => ({ name: m[1]!, type: m[2]! }));
      expect(types.length).toBeGreaterThan(20);
      for (const { name, type } of types) {
        expect(name, `${name} (${type})`).toMatch(/^[a-zA-Z_:][a-zA-Z0-9_:]*$/);
        if (type === 'counter') expect(name, `counter ${name}`).toMatch(/_total$/);
        else expect(name, `${type} ${name}`).not.toMatch(/_total$/);
      }
      expect(types).toContainEqual({ name: 'pgregen_worker_nodejs_active_handles', type: 'gauge' });
    } finally {
      worker.child.kill('SIGTERM');
      expect(await worker.exited).toBe(0);
    }
  });
});
