// The real `pgregen` binary with a real worker and the local OpenAI-compatible server: rebuild
// follows the gap until it is closed (plain lines: stdout is not a terminal here), search finds the
// tenant's rows and no other tenant's, and Ctrl-C ends `rebuild` and `gap --watch` with exit 0.
import { execFile, spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startEmbeddingServer, type EmbeddingServer } from '../src/provider-server.ts';
import { freshDatabase, keepOnFailure } from './support/db.ts';
import { spawnWorker, waitFor, workerEnv, type SpawnedWorker } from './support/worker.ts';

const BIN = fileURLToPath(new URL('../bin/pgregen.js', import.meta.url));
const execFileAsync = promisify(execFile);

type Run = { code: number; stdout: string; stderr: string };

const db = await freshDatabase();
keepOnFailure(db);
let server: EmbeddingServer;
let worker: SpawnedWorker | undefined;

const env = (extra: Record<string, string> = {}) => ({
  ...process.env, DATABASE_URL: db.url, OPENAI_API_KEY: 'test-key', OPENAI_BASE_URL: server.url, ...extra,
});

async function pgregen(args: string[]): Promise<Run> {
  try {
    const { stdout, stderr } = await execFileAsync(process.execPath, [BIN, ...args], { env: env(), timeout: 60_000 });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

/** The binary as a child whose output can be read while it runs (to send it Ctrl-C). */
function startPgregen(args: string[]) {
  const child = spawn(process.execPath, [BIN, ...args], { env: env(), stdio: ['ignore', 'pipe', 'pipe'] });
  const out = { stdout: '', stderr: '' };
  child.stdout.on('data', (d) => { out.stdout += d; });
  child.stderr.on('data', (d) => { out.stderr += d; });
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  return { child, out, exited };
}

const text = (id: number) => `Document ${id}: ${['invoices', 'passwords', 'billing', 'exports', 'workspaces'][id % 5]} ` +
  `for team ${id * 7919 % 101}, revision ${id}.`;
const tenantOf = (id: number) => (id <= 20 ? 'acme' : 'globex');

async function openGap() {
  const { rows: [g] } = await db.query(`select expected::int, current::int, (missing + stale + outdated)::int as open, failed::int
                                          from regen.embedding_gap where source = 'docs'`);
  return g;
}

const queuedJobs = async () => Number((await db.query(
  `select count(*) as n from pgboss.job where name like 'regen\\_embed%' and state in ('created', 'retry', 'active')`)).rows[0].n);

beforeAll(async () => {
  server = await startEmbeddingServer({ dimensions: 16 });
  await db.query(`create table docs (id int primary key, tenant text not null, body text not null)`);
  const ids = Array.from({ length: 40 }, (_, i) => i + 1);
  await db.query(`insert into docs select * from unnest($1::int[], $2::text[], $3::text[])`, [ids, ids.map(tenantOf), ids.map(text)]);
  await db.query(`select regen.create_version('cli@1', 'local-hash', 16, settings => '{"send_dimensions": true}')`);
  await db.query(`select regen.register_source('docs', 'docs', 'id', 'body', tenant_column => 'tenant', priority_expression => 'id', version => 'cli@1')`);
});

afterAll(async () => {
  if (worker && worker.child.exitCode === null) {
    worker.child.kill('SIGKILL');
    await worker.exited;
  }
  await server?.close();
});

describe('pgregen rebuild with a running worker', () => {
  it('enqueues the gap and shows progress lines until the gap is closed, then exits 0', async () => {
    worker = spawnWorker(workerEnv(db.url, server));
    const run = await pgregen(['rebuild']);
    expect(run.stderr).toBe('');
    expect(run.code).toBe(0);
    const lines = run.stdout.trimEnd().split('\n');
    expect(lines[0]).toBe('enqueued 40 item(s) in 1 job(s): docs cli@1 40');
    const progress = lines.slice(1, -1);
    expect(progress.length).toBeGreaterThan(0);
    for (const line of progress) {
      expect(line).toMatch(/^rebuild: \d+\/40 items \(\d+\.\d%\), \d+\.\d items\/s, eta (-|\d+s|\d+m\d\ds), failed 0(: .*)?$/);
    }
    expect(progress.at(-1)).toMatch(/^rebuild: 40\/40 items \(100\.0%\), \d+\.\d items\/s, eta 0s, failed 0$/);
    expect(lines.at(-1)).toMatch(/^gap closed: 40 item\(s\) settled in \d+s$/);
    expect(await openGap()).toEqual({ expected: 40, current: 40, open: 0, failed: 0 });

    // nothing left: a second rebuild enqueues nothing and says so
    const again = await pgregen(['rebuild', '--json']);
    expect(JSON.parse(again.stdout)).toMatchObject({ outcome: 'closed', done: 0, remaining: 0, failed: 0,
      enqueued: [{ source: 'docs', version: 'cli@1', items: 0, estimated_tokens: null, jobs: 0 }] });
    expect((await pgregen(['rebuild'])).stdout).toBe('enqueued 0 item(s) in 0 job(s): docs cli@1 0\nnothing to rebuild: the gap is closed\n');
  });
});

describe('pgregen search', () => {
  it("finds the tenant's row nearest first, and never another tenant's", async () => {
    const hits = JSON.parse((await pgregen(['search', text(7), '--tenant', 'acme', '--k', '5', '--json'])).stdout);
    expect(hits).toHaveLength(5);
    expect(hits[0]).toMatchObject({ source: 'docs', rowId: '7', chunkNo: 1, version: 'cli@1' });
    expect(hits[0].distance).toBeCloseTo(0, 5);
    expect(hits.every((h: { rowId: string }) => tenantOf(Number(h.rowId)) === 'acme')).toBe(true);

    const other = JSON.parse((await pgregen(['search', text(7), '--tenant', 'globex', '--k', '40', '--json'])).stdout);
    expect(other).toHaveLength(20);
    expect(other.every((h: { rowId: string }) => tenantOf(Number(h.rowId)) === 'globex')).toBe(true);
    expect(JSON.parse((await pgregen(['search', text(7), '--tenant', 'initech', '--json'])).stdout)).toEqual([]);

    const near = await pgregen(['search', text(7), '--tenant', 'acme', '--source', 'docs', '--max-distance', '0.000001']);
    expect(near).toMatchObject({ code: 0, stderr: '' });
    expect(near.stdout).toMatch(/^1 nearest chunk\(s\) for tenant acme in version cli@1\n/);
    expect(near.stdout).toMatch(/│ 1 +│ docs +│ 7 +│ 1 +│ 0\.0000 +│/);

    const unknown = await pgregen(['search', 'invoices', '--tenant', 'acme', '--source', 'nope']);
    expect(unknown).toMatchObject({ code: 1, stderr: expect.stringMatching(/^pgregen: unknown source 'nope'\n  hint: /) });
  });
});

describe('Ctrl-C', () => {
  it('gap --watch refreshes until SIGINT, then exits 0', async () => {
    const watch = startPgregen(['gap', '--watch', '--interval', '0.2']);
    await waitFor('two refreshes', async () => (watch.out.stdout.match(/every 0\.2 s; Ctrl-C to stop/g) ?? []).length >= 2, 30_000, 50);
    watch.child.kill('SIGINT');
    expect(await watch.exited).toBe(0);
    expect(watch.out.stderr).toBe('');
    expect(watch.out.stdout).toMatch(/│ docs +│ cli@1 +│ 40 +│ 40 +│ 0 /);
  });

  it('rebuild --no-wait returns once enqueued; Ctrl-C stops following and leaves the queued work to the workers', async () => {
    worker!.child.kill('SIGTERM');
    expect(await worker!.exited).toBe(0);

    const noWait = await pgregen(['rebuild', '--force', '--tenant', 'acme', '--no-wait', '--json']);
    expect(JSON.parse(noWait.stdout)).toEqual({ enqueued: [{ source: 'docs', version: 'cli@1', items: 20, estimated_tokens: null, jobs: 1 }] });
    expect(await queuedJobs()).toBe(1);

    const following = startPgregen(['rebuild', '--force', '--tenant', 'globex']);
    await waitFor('a progress line', async () => following.out.stdout.includes('\nrebuild: '), 30_000, 50);
    following.child.kill('SIGINT');
    expect(await following.exited).toBe(0);
    expect(following.out.stderr).toBe('');
    expect(following.out.stdout).toMatch(/^enqueued 20 item\(s\) in 1 job\(s\): docs cli@1 20\n/);
    // --force: the versions' queue shows what is left (both tenants' jobs)
    // (the rate is regen.rebuild_status's: items of the scope settled in the last 10 s, the earlier test's included)
    expect(following.out.stdout).toMatch(/\nrebuild: 0\/40 items \(0\.0%\), \d+\.\d items\/s, eta (-|\d+s), failed 0\n/);
    expect(following.out.stdout).toMatch(/\nstopped watching: 40 item\(s\) stay queued and the workers go on with them \(follow with pgregen gap --watch\)\n$/);
    expect(await queuedJobs()).toBe(2);
  });
});
