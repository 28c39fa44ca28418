import { readdirSync } from 'node:fs';
// The real `pgregen` binary, spawned against the test database: exit codes and messages.
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { freshDatabase, keepOnFailure } from './support/db.ts';
import { setupArticles } from './support/fixtures.ts';

// The migrations in sql/, by name, in order (sql/NNNN_name.sql).
const MIGRATIONS = readdirSync(new URL('../sql/', import.meta.url)).filter((f) => /^\d{4}_\w+\.sql$/.test(f)).sort()
  .map((f) => f.slice(5, -'.sql'.length));

const BIN = fileURLToPath(new URL('../bin/pgregen.js', import.meta.url));
const execFileAsync = promisify(execFile);

async function pgregen(args: string[], env: Record<string, string | undefined> = {}) {
  try {
    const { stdout, stderr } = await execFileAsync(process.execPath, [BIN, ...args], {
      env: { ...process.env, DATABASE_URL: undefined, ...env }, timeout: 60_000,
    });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

const db = await freshDatabase();
keepOnFailure(db);

describe('pgregen CLI', () => {
  it('install is idempotent and says so', async () => {
    const run = await pgregen(['install'], { DATABASE_URL: db.url });
    expect(run).toMatchObject({ code: 0, stdout: `schema regen is up to date (${MIGRATIONS.length} migrations applied earlier)\n` });
    const json = await pgregen(['install', '--json', '--database-url', db.url]);
    expect(JSON.parse(json.stdout)).toEqual({ applied: [], alreadyApplied: MIGRATIONS });
  });

  it('gap --json prints the rows of regen.embedding_gap', async () => {
    await setupArticles(db, { rows: 12 });
    const run = await pgregen(['gap', '--json'], { DATABASE_URL: db.url });
    expect(run.code).toBe(0);
    expect(JSON.parse(run.stdout)).toEqual([expect.objectContaining({
      source: 'articles', version: 'test@1', expected: 12, current: 0, missing: 12, coverage: 0, cutover_ready: false })]);
    const byTenant = JSON.parse((await pgregen(['gap', '--json', '--by-tenant'], { DATABASE_URL: db.url })).stdout);
    expect(byTenant.map((r: { tenant: string; expected: number }) => [r.tenant, r.expected]))
      .toEqual([['tenant_0', 4], ['tenant_1', 4], ['tenant_2', 4]]);
    const table = await pgregen(['gap'], { DATABASE_URL: db.url });
    expect(table.stdout).toMatch(/│ articles │ test@1 +│ 12 +│ 0 +│ 12 /);
  });

  it('exits 2 with usage on bad arguments, 1 with a fix on bad configuration', async () => {
    const unknown = await pgregen(['frobnicate']);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toMatch(/unknown command 'frobnicate'/);
    const noDb = await pgregen(['gap']);
    expect(noDb).toMatchObject({ code: 1, stderr: 'pgregen: no database given\n  hint: set DATABASE_URL or pass --database-url postgres://user@host/db\n' });
    const unreachable = await pgregen(['gap'], { DATABASE_URL: 'postgres://nobody@127.0.0.1:1/none' });
    expect(unreachable.code).toBe(1);
    expect(unreachable.stderr).toMatch(/^pgregen: cannot connect to the database at 127\.0\.0\.1:1\/none: .*\n  hint: check DATABASE_URL/);
    const help = await pgregen(['--help']);
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/Usage: pgregen/);
  });

  it('gap refuses clearly when pgregen is not installed', async () => {
    const bare = new URL(db.url);
    bare.pathname = '/postgres';
    const run = await pgregen(['gap'], { DATABASE_URL: bare.toString() });
    expect(run).toMatchObject({ code: 1, stderr: 'pgregen: pgregen is not installed in database postgres\n  hint: run: pgregen install\n' });
  });

  it('demo --help names the short and keep modes (the run itself: test/demo.test.ts)', async () => {
    const run = await pgregen(['demo', '--help']);
    expect(run.code).toBe(0);
    expect(run.stdout).toMatch(/--short +a smaller corpus/);
    expect(run.stdout).toMatch(/--keep +leave the demo tables/);
  });
});
