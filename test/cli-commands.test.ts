// The real `pgregen` binary against the test database: version, source, gap, rebuild --dry-run,
// status and migrate, bad arguments (exit 2) and bad configuration (exit 1), with their messages.
// (Rebuilding with a worker, search and Ctrl-C: test/cli-rebuild.test.ts.)
import { execFile } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { beforeAll, describe, expect, it } from 'vitest';
import { freshDatabase, keepOnFailure } from './support/db.ts';

const BIN = fileURLToPath(new URL('../bin/pgregen.js', import.meta.url));
const execFileAsync = promisify(execFile);
const MIGRATIONS = readdirSync(new URL('../sql/', import.meta.url)).filter((f) => /^\d{4}_\w+\.sql$/.test(f)).sort()
  .map((f) => f.slice(5, -'.sql'.length));

type Run = { code: number; stdout: string; stderr: string };

async function pgregen(args: string[], env: Record<string, string | undefined> = {}): Promise<Run> {
  try {
    const { stdout, stderr } = await execFileAsync(process.execPath, [BIN, ...args], {
      env: { ...process.env, DATABASE_URL: db.url, OPENAI_API_KEY: undefined, OPENAI_BASE_URL: undefined, ...env }, timeout: 60_000,
    });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

const json = (run: Run) => {
  expect(run.stderr).toBe('');
  expect(run.code).toBe(0);
  return JSON.parse(run.stdout);
};

const db = await freshDatabase();
keepOnFailure(db);

const queuedJobs = async () => Number((await db.query(
  `select count(*) as n from pgboss.job where name like 'regen\\_embed%' and state in ('created', 'retry', 'active')`)).rows[0].n);

beforeAll(async () => {
  await db.query(`create table notes (id int primary key, tenant text not null, body text not null)`);
  await db.query(`insert into notes select g, 'tenant_' || (g % 3), repeat('Note number ' || g || '. ', g) from generate_series(1, 12) g`);
});

describe('pgregen version', () => {
  it('create registers a version (idempotent), refuses other settings for the same tag, and list shows it', async () => {
    const args = ['version', 'create', 'cli@1', '--model', 'local-hash', '--dimensions', '16', '--settings', '{"send_dimensions": true, "chunk_overlap": 0}'];
    expect(await pgregen(args)).toEqual({ code: 0, stdout: 'created version cli@1 (openai local-hash, 16 dimensions)\n', stderr: '' });
    expect(await pgregen(args)).toMatchObject({ code: 0, stdout: 'version cli@1 already exists with the same settings: nothing to do\n' });
    const clash = await pgregen(['version', 'create', 'cli@1', '--model', 'local-hash', '--dimensions', '32']);
    expect(clash.code).toBe(1);
    expect(clash.stderr).toMatch(/^pgregen: version cli@1 already exists with other settings/);

    const rows = json(await pgregen(['version', 'list', '--json']));
    expect(rows).toEqual([expect.objectContaining({
      tag: 'cli@1', provider: 'openai', model: 'local-hash', dimensions: 16, index_type: 'vector', sources: [],
      settings: expect.objectContaining({ send_dimensions: true, chunk_overlap: 0, chunk_chars: 2000 }) })]);
    expect((await db.query(`select count(*)::int as n from regen.versions where tag = 'cli@1'`)).rows[0].n).toBe(1);
    expect((await pgregen(['version', 'list'])).stdout).toMatch(/│ cli@1 +│ openai +│ local-hash +│ 16 /);
  });

  it('refuses bad option values as usage errors (exit 2) before touching the database', async () => {
    const settings = await pgregen(['version', 'create', 'x@1', '--model', 'm', '--dimensions', '8', '--settings', '{chunk'], { DATABASE_URL: undefined });
    expect(settings.code).toBe(2);
    expect(settings.stderr).toMatch(/option '--settings <json>' argument '\{chunk' is invalid\. not JSON/);
    const dims = await pgregen(['version', 'create', 'x@1', '--model', 'm', '--dimensions', 'many'], { DATABASE_URL: undefined });
    expect(dims.code).toBe(2);
    expect(dims.stderr).toMatch(/option '--dimensions <n>' argument 'many' is invalid\. expected a positive integer/);
  });
});

describe('pgregen source', () => {
  it('register captures the table, list shows it, unknown versions and columns fail with the fix', async () => {
    const run = await pgregen(['source', 'register', 'notes', '--table', 'notes', '--id-column', 'id', '--content', 'body',
      '--tenant-column', 'tenant', '--priority', 'id', '--weight', '2', '--version', 'cli@1']);
    expect(run).toEqual({ code: 0, stderr: '',
      stdout: 'registered source notes on notes for version cli@1: 12 row(s) to embed; run pgregen rebuild to enqueue them\n' });
    expect(json(await pgregen(['source', 'list', '--json']))).toEqual([expect.objectContaining({
      name: 'notes', relation: 'notes', id_column: 'id', content_expression: 'body', tenant_column: 'tenant',
      priority_expression: 'id', weight: 2, filter_expression: null, active_version: 'cli@1' })]);
    expect(json(await pgregen(['version', 'list', '--json']))[0].sources).toEqual(['notes (active)']);

    const version = await pgregen(['source', 'register', 'other', '--table', 'notes', '--id-column', 'id', '--content', 'body', '--version', 'nope@1']);
    expect(version.code).toBe(1);
    expect(version.stderr).toMatch(/^pgregen: unknown version 'nope@1'.*\n  hint: create it with regen\.create_version\(\)/s);
    const column = await pgregen(['source', 'register', 'other', '--table', 'notes', '--id-column', 'id', '--content', 'body',
      '--tenant-column', 'owner', '--version', 'cli@1']);
    expect(column.code).toBe(1);
    expect(column.stderr).toMatch(/^pgregen: .*owner/);
    expect((await db.query(`select count(*)::int as n from regen.sources where name = 'other'`)).rows[0].n).toBe(0);
  });

  it('unregister removes a source; an unknown one fails with RG010 and its hint', async () => {
    await db.query(`create table scratch (id int primary key, body text)`);
    expect((await pgregen(['source', 'register', 'scratch', '--table', 'scratch', '--id-column', 'id', '--content', 'body', '--version', 'cli@1'])).code).toBe(0);
    const run = await pgregen(['source', 'unregister', 'scratch']);
    expect(run).toMatchObject({ code: 0, stdout: 'unregistered source scratch: its triggers on scratch and its vectors are gone; the table and its rows stay\n' });
    expect((await db.query(`select count(*)::int as n from regen.sources where name = 'scratch'`)).rows[0].n).toBe(0);
    const unknown = await pgregen(['source', 'unregister', 'scratch']);
    expect(unknown).toMatchObject({ code: 1,
      stderr: "pgregen: unknown source 'scratch'\n  hint: register it with regen.register_source(), or list the sources with: select * from regen.sources\n" });
  });
});

describe('pgregen gap and rebuild --dry-run', () => {
  it('gap --json has the numbers of regen.embedding_gap', async () => {
    const { rows } = await db.query(`select source, version, role, expected::int, current::int, missing::int, stale::int, outdated::int,
                                            failed::int, queued::int, coverage::float8, cutover_ready, store_verified, adopted::int
                                       from regen.embedding_gap`);
    expect(rows).toEqual([expect.objectContaining({ source: 'notes', expected: 12, missing: 12 })]);
    expect(json(await pgregen(['gap', '--json']))).toEqual(rows);
    expect(json(await pgregen(['gap', '--json', '--by-tenant'])).map((r: { tenant: string; missing: number }) => [r.tenant, r.missing]))
      .toEqual([['tenant_0', 4], ['tenant_1', 4], ['tenant_2', 4]]);
  });

  it('rebuild --dry-run --json shows what regen.rebuild(dry_run) would enqueue, with a cost estimate, and enqueues nothing', async () => {
    const { rows: [expected] } = await db.query(`select items::int, estimated_tokens::int from regen.rebuild(dry_run => true)`);
    expect(expected).toMatchObject({ items: 12 });
    expect(expected.estimated_tokens).toBeGreaterThan(100);
    const result = json(await pgregen(['rebuild', '--dry-run', '--json']));
    expect(result).toEqual({
      dryRun: true, items: 12, estimatedTokens: expected.estimated_tokens, pricePerMTok: 0.02,
      estimatedCostUsd: expected.estimated_tokens / 1e6 * 0.02, estimatedBatchApiCostUsd: expected.estimated_tokens / 1e6 * 0.01,
      batchModeVersions: [],
      rows: [{ source: 'notes', version: 'cli@1', items: 12, estimated_tokens: expected.estimated_tokens, jobs: 1 }],
    });
    const tenant = json(await pgregen(['rebuild', '--dry-run', '--json', '--tenant', 'tenant_1', '--price-per-mtok', '1000']));
    expect(tenant).toMatchObject({ items: 4, pricePerMTok: 1000 });
    expect(tenant.estimatedCostUsd).toBeCloseTo(tenant.estimatedTokens / 1000, 9);

    const text = await pgregen(['rebuild', '--dry-run', '--price-per-mtok', '1000']);
    expect(text.code).toBe(0);
    expect(text.stdout).toMatch(/^dry run: nothing was enqueued\n/);
    expect(text.stdout).toMatch(/│ notes +│ cli@1 +│ 12 +│ [\d,]+ +│ 1 +│ \$\d+\.\d\d +│ \$\d+\.\d\d +│ sync +│/);
    expect(text.stdout).toContain(`total: 12 items, about ${expected.estimated_tokens.toLocaleString('en-US')} tokens, ` +
      `about $${(expected.estimated_tokens / 1000).toFixed(2)} at $1000 per million tokens, ` +
      `$${(expected.estimated_tokens / 2000).toFixed(2)} through the Batch API`);
    expect(await queuedJobs()).toBe(0);
    expect((await db.query(`select queued::int from regen.embedding_gap`)).rows[0].queued).toBe(0);
  });

  it('version batch-mode sets the mode that the worker and the dry run read, and refuses anything but on or off', async () => {
    expect(await pgregen(['version', 'batch-mode', 'cli@1', 'on'])).toMatchObject({ code: 0, stdout: expect.stringMatching(/Batch API/) });
    expect(json(await pgregen(['rebuild', '--dry-run', '--json'])).batchModeVersions).toEqual(['cli@1']);
    expect((await pgregen(['rebuild', '--dry-run'])).stdout).toMatch(/│ cli@1 +│.*│ batch +│/);
    expect((await pgregen(['version', 'batch-mode', 'cli@1', 'off'])).code).toBe(0);
    expect((await db.query(`select regen.batch_mode('cli@1') as on`)).rows[0].on).toBe(false);
    expect(await pgregen(['version', 'batch-mode', 'cli@1', 'maybe'])).toMatchObject({ code: 2, stderr: expect.stringMatching(/expected on or off/) });
  });
});

describe('pgregen status', () => {
  it('shows the schema, sources, queue and failures in one screen', async () => {
    const status = json(await pgregen(['status', '--json']));
    expect(status.schema).toMatchObject({ applied: MIGRATIONS, pending: [] });
    expect(status.sources).toEqual([expect.objectContaining({ source: 'notes', version: 'cli@1', role: 'active', expected: 12, current: 0 })]);
    expect(status).toMatchObject({ queue: [], failed: 0, progress: [] });
    const view = (await db.query(`select to_regclass('regen.migration_status') is not null as present`)).rows[0].present;
    expect(status.migrations === null).toBe(!view);
    const text = await pgregen(['status']);
    expect(text.code).toBe(0);
    expect(text.stdout).toContain(`schema regen: ${MIGRATIONS.length} migration(s) applied, last ${MIGRATIONS.at(-1)} at `);
    expect(text.stdout).toMatch(/│ notes +│ cli@1 +│ active +│ 12 +│ 0 +│ 12 +│ 0 +│ 0 +│ 0\.0% +│ no /);
    expect(text.stdout).toContain('queue\n  empty: no job waiting or in flight\n\nfailed items: 0\n');
  });
});

describe('bad arguments and bad configuration', () => {
  it('exits 2 for an unknown command or a missing option, 1 for an unknown source or k out of range', async () => {
    const unknown = await pgregen(['frobnicate']);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toMatch(/^error: unknown command 'frobnicate'/);
    const missing = await pgregen(['search', 'invoices']);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toMatch(/^error: required option '--tenant <tenant>' not specified/);
    const noArg = await pgregen(['migrate', 'start', 'notes']);
    expect(noArg.code).toBe(2);
    expect(noArg.stderr).toMatch(/^error: missing required argument 'version'/);
    const coverage = await pgregen(['migrate', 'cutover', 'notes', 'cli@2', '--min-coverage', '1.5']);
    expect(coverage.code).toBe(2);
    expect(coverage.stderr).toMatch(/argument '1\.5' is invalid\. expected a fraction between 0 and 1/);

    const source = await pgregen(['rebuild', '--source', 'nope']);
    expect(source).toMatchObject({ code: 1, stdout: '',
      stderr: "pgregen: unknown source 'nope'\n  hint: register it with regen.register_source(), or list the sources with: select * from regen.sources\n" });
    // k is checked before the query is embedded (test/cli-defects.test.ts: the provider is not asked)
    const { startEmbeddingServer } = await import('../src/provider-server.ts');
    const server = await startEmbeddingServer({ dimensions: 16 });
    try {
      const k = await pgregen(['search', 'invoices', '--tenant', 'tenant_1', '--k', '0'], { OPENAI_API_KEY: 'test', OPENAI_BASE_URL: server.url });
      expect(k).toMatchObject({ code: 1, stderr: 'pgregen: k must be between 1 and 1000, not 0\n' });
      const noKey = await pgregen(['search', 'invoices', '--tenant', 'tenant_1']);
      expect(noKey.code).toBe(1);
      expect(noKey.stderr).toMatch(/^pgregen: OPENAI_API_KEY is not set.*\n  hint: set OPENAI_API_KEY/);
    } finally {
      await server.close();
    }
  });

  it('says where an unreachable database is and how to point elsewhere', async () => {
    for (const command of [['status'], ['version', 'list'], ['rebuild', '--dry-run']]) {
      const run = await pgregen(command, { DATABASE_URL: 'postgres://nobody@127.0.0.1:1/none' });
      expect(run.code).toBe(1);
      expect(run.stderr).toMatch(/^pgregen: cannot connect to the database at 127\.0\.0\.1:1\/none: .*ECONNREFUSED.*\n  hint: check DATABASE_URL or --database-url/);
    }
  });

  it('says to run pgregen install where the schema is not installed', async () => {
    const bare = new URL(db.url);
    bare.pathname = '/postgres';
    for (const command of [['status'], ['source', 'list'], ['rebuild']]) {
      const run = await pgregen([...command, '--json'], { DATABASE_URL: bare.toString() });
      expect(run).toMatchObject({ code: 1, stdout: '', stderr: 'pgregen: pgregen is not installed in database postgres\n  hint: run: pgregen install\n' });
    }
  });
});

describe('pgregen migrate', () => {
  it('start builds a new version beside the active one; cutover is refused below the gate, forced with a reason, rolled back', async () => {
    expect((await pgregen(['version', 'create', 'cli@2', '--model', 'local-hash', '--dimensions', '8'])).code).toBe(0);
    const started = json(await pgregen(['migrate', 'start', 'notes', 'cli@2', '--json']));
    expect(started).toEqual([{ source: 'notes', version: 'cli@2', items: 12, jobs: 1 }]);
    const { rows: gap } = await db.query(`select version, role, expected::int, current::int from regen.embedding_gap order by version`);
    expect(gap).toEqual([{ version: 'cli@1', role: 'active', expected: 12, current: 0 }, { version: 'cli@2', role: 'building', expected: 12, current: 0 }]);

    const refused = await pgregen(['migrate', 'cutover', 'notes', 'cli@2']);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/^pgregen: version 'cli@2' of source notes covers 0\.00% of its rows, below the cutover gate of 99\.50%\n  detail: 0 of 12 rows current/);
    const noReason = await pgregen(['migrate', 'cutover', 'notes', 'cli@2', '--force']);
    expect(noReason).toMatchObject({ code: 1, stderr: expect.stringMatching(/^pgregen: a forced cutover needs a reason\n/) });
    expect((await db.query(`select active_version from regen.sources`)).rows[0].active_version).toBe('cli@1');

    const forced = await pgregen(['migrate', 'cutover', 'notes', 'cli@2', '--force', '--reason', 'cli test']);
    expect(forced).toMatchObject({ code: 0, stdout: 'source notes now serves version cli@2; pgregen migrate rollback notes flips back\n' });
    expect((await db.query(`select active_version from regen.sources`)).rows[0].active_version).toBe('cli@2');
    expect(json(await pgregen(['migrate', 'rollback', 'notes', '--reason', 'cli test', '--json']))).toEqual({ source: 'notes', active: 'cli@1' });
    expect((await db.query(`select active_version from regen.sources`)).rows[0].active_version).toBe('cli@1');

    const window = await pgregen(['migrate', 'retire', 'notes', 'cli@2']);
    expect(window.code).toBe(1);
    expect(window.stderr).toMatch(/^pgregen: version 'cli@2' of source notes is inside its rollback window/);
    expect(json(await pgregen(['migrate', 'retire', 'notes', 'cli@2', '--min-age', '0 seconds', '--json'])))
      .toEqual({ source: 'notes', version: 'cli@2', removed: 0, droppedIndexes: [expect.stringMatching(/^regen\._embeddings_hnsw_v\d+$/)] });
    expect((await db.query(`select count(*)::int as n from regen.embedding_gap`)).rows[0].n).toBe(1);

    // a schema older than the command (here: a function taken away) asks for an upgrade
    await db.query('drop function regen.start_migration(text, text)');
    expect(await pgregen(['migrate', 'start', 'notes', 'cli@2'])).toMatchObject({ code: 1, stderr: 'pgregen: function regen.start_migration(text, text) ' +
      'does not exist: the database has an older pgregen schema than this command\n  hint: run: pgregen install (it upgrades the schema)\n' });
  });
});
