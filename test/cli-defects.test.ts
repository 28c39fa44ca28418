// Defects a newcomer found in the command line (issue 11, items 8 and 9), each with the behaviour
// that replaces it: evaluation runs that could only score 0 are refused, `gap --source` with an
// unknown name fails, a cutover to the active version says nothing changed, `search` checks its
// arguments before the provider is called and names an endpoint it cannot reach, malformed URLs and
// missing passwords are explained, --version, a closed pipe, one JSON convention, unsupported
// providers and non-boolean filters are refused, and search() throws one error type.
import { execFile, spawn } from 'node:child_process';
import { mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PgregenError } from '../src/errors.ts';
import { readGap } from '../src/gap.ts';
import { startEmbeddingServer, type EmbeddingServer } from '../src/provider-server.ts';
import { search } from '../src/search.ts';
import { freshDatabase, keepOnFailure } from './support/db.ts';
import { embedRows } from './support/fixtures.ts';

const BIN = fileURLToPath(new URL('../bin/pgregen.js', import.meta.url));
const VERSION = JSON.parse(await readFile(new URL('../package.json', import.meta.url), 'utf8')).version as string;
const execFileAsync = promisify(execFile);
const DIMS = 16;

type Run = { code: number; stdout: string; stderr: string };

const db = await freshDatabase();
keepOnFailure(db);
let server: EmbeddingServer;
let dir: string;

async function pgregen(args: string[], env: Record<string, string | undefined> = {}): Promise<Run> {
  try {
    const { stdout, stderr } = await execFileAsync(process.execPath, [BIN, ...args], {
      env: { ...process.env, DATABASE_URL: db.url, OPENAI_API_KEY: 'test', OPENAI_BASE_URL: server.url, PGPASSWORD: undefined, ...env },
      timeout: 60_000,
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

const ISO = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/;

/** Where a JSON value breaks the convention: numeric strings, PostgreSQL timestamp text, *_at/*At fields not ISO 8601. */
function conventionProblems(value: unknown, path = '$', textIds = new Set(['rowId', 'row_id', 'tenant', 'id'])): string[] {
  if (Array.isArray(value)) return value.flatMap((v, i) => conventionProblems(v, `${path}[${i}]`, textIds));
  if (value !== null && typeof value === 'object') {
    return Object.entries(value).flatMap(([k, v]) => {
      const here = `${path}.${k}`;
      if (/(_at|At)$/.test(k) && v !== null && (typeof v !== 'string' || !ISO.test(v))) return [`${here} is not ISO 8601: ${JSON.stringify(v)}`];
      if (textIds.has(k) && typeof v === 'string') return [];
      return conventionProblems(v, here, textIds);
    });
  }
  if (typeof value === 'string' && /^-?\d+(\.\d+)?$/.test(value)) return [`${path} is a numeric string: ${value}`];
  if (typeof value === 'string' && /^\d{4}-\d\d-\d\d \d\d:\d\d/.test(value)) return [`${path} is PostgreSQL timestamp text: ${value}`];
  return [];
}

/** A port nothing listens on. */
async function closedPort(): Promise<number> {
  const probe = createServer();
  await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
  const port = (probe.address() as { port: number }).port;
  await new Promise((resolve) => probe.close(resolve));
  return port;
}

/** A PostgreSQL server that asks for a SCRAM-SHA-256 password and never accepts one. */
async function passwordServer(): Promise<{ port: number; close(): Promise<void> }> {
  const sockets = new Set<Socket>();
  const auth = (code: number, data: Buffer) => {
    const msg = Buffer.alloc(9 + data.length);
    msg.write('R', 0);
    msg.writeInt32BE(8 + data.length, 1);
    msg.writeInt32BE(code, 5);
    data.copy(msg, 9);
    return msg;
  };
  const srv: Server = createServer((socket) => {
    sockets.add(socket);
    let stage = 0;
    socket.on('error', () => {});
    socket.on('close', () => sockets.delete(socket));
    socket.on('data', () => {
      // startup message: AuthenticationSASL; SASLInitialResponse: AuthenticationSASLContinue
      if (stage === 0) socket.write(auth(10, Buffer.from('SCRAM-SHA-256\0\0')));
      else if (stage === 1) socket.write(auth(11, Buffer.from('r=clientnonceservernonce,s=c2FsdHNhbHQ=,i=4096')));
      stage++;
    });
  });
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  return {
    port: (srv.address() as { port: number }).port,
    close: () => { for (const s of sockets) s.destroy(); return new Promise((resolve) => srv.close(() => resolve())); },
  };
}

const queriesFile = async (name: string, queries: Array<{ id: string; text: string; judgements: Record<string, number> }>) => {
  const file = join(dir, `${name}.json`);
  await writeFile(file, JSON.stringify({ name, queries }));
  return file;
};

const evalRuns = async () => Number((await db.query('select count(*) as n from regen.eval_runs')).rows[0].n);

beforeAll(async () => {
  server = await startEmbeddingServer({ dimensions: DIMS });
  dir = await mkdtemp(join(tmpdir(), 'pgregen-cli-defects-'));
  await db.query(`create table notes (id int primary key, tenant text not null, body text not null, n int not null default 1)`);
  await db.query(`insert into notes select g, 'tenant_' || (g % 3), 'Note number ' || g, g from generate_series(1, 12) g`);
  await db.query(`create table memos (id int primary key, tenant text not null, body text not null)`);
  await db.query(`insert into memos select g, 'tenant_' || (g % 3), 'Memo number ' || g from generate_series(1, 6) g`);
  await db.query(`select regen.create_version('def@1', 'local-hash', ${DIMS}, settings => '{"send_dimensions": true, "chunk_overlap": 0}')`);
  await db.query(`select regen.register_source('notes', 'notes', 'id', 'body', tenant_column => 'tenant', version => 'def@1')`);
  await db.query(`select regen.register_source('memos', 'memos', 'id', 'body', tenant_column => 'tenant', version => 'def@1')`);
  // vectors for every note and memo, as the worker would write them (fixtures' deterministic embedder)
  await embedRows(db, Array.from({ length: 12 }, (_, i) => String(i + 1)), 'notes', 'def@1', DIMS);
  await embedRows(db, Array.from({ length: 6 }, (_, i) => String(i + 1)), 'memos', 'def@1', DIMS);
});

afterAll(async () => {
  await server?.close();
});

describe('pgregen eval refuses a run in which no result can match a judgement', () => {
  it('a tenant without vectors: refused before any query is embedded, and nothing is stored', async () => {
    const file = await queriesFile('notes', [{ id: 'q1', text: 'Note number 4', judgements: { 4: 2 } }]);
    const before = server.stats.requests;
    const run = await pgregen(['eval', '--version', 'def@1', '--queries', file, '--tenant', 'nobody', '--source', 'notes']);
    expect(run.code).toBe(1);
    expect(run.stderr).toBe("pgregen: tenant 'nobody' has no vectors of version 'def@1' in source(s) notes, so no search result can match a judgement\n" +
      "  hint: check the tenant's name (regen.embedding_gap_by_tenant lists the tenants of each source) and let the workers embed its rows before evaluating\n");
    expect(server.stats.requests).toBe(before);
    expect(await evalRuns()).toBe(0);
  });

  it('several sources without --source: the run ranks source:row_id, the judgements name plain row ids', async () => {
    const file = await queriesFile('notes', [{ id: 'q1', text: 'Note number 4', judgements: { 4: 2, 7: 1 } }]);
    const run = await pgregen(['eval', '--version', 'def@1', '--queries', file, '--tenant', 'tenant_1']);
    expect(run.code).toBe(1);
    expect(run.stderr).toMatch(/^pgregen: the run searches 2 sources \(memos, notes\) and so ranks rows as source:row_id, but the judgements name plain row ids such as '4', '7'\n/);
    expect(run.stderr).toMatch(/\n  hint: search the one source the query set was written for \(pgregen eval --source NAME/);
    expect(await evalRuns()).toBe(0);

    // judgements in the source:row_id form fit a run over both sources
    const qualified = await queriesFile('qualified', [{ id: 'q1', text: 'Note number 4', judgements: { 'notes:4': 2 } }]);
    const accepted = json(await pgregen(['eval', '--version', 'def@1', '--queries', qualified, '--tenant', 'tenant_1', '--json']));
    expect(accepted).toMatchObject({ version: 'def@1', sources: ['memos', 'notes'], queries: 1 });
    expect(await evalRuns()).toBe(1);
  });

  it('judged rows the scope does not hold, and ranked lists that are all empty, are refused in SQL too', async () => {
    const file = await queriesFile('elsewhere', [{ id: 'q1', text: 'Note number 4', judgements: { 998: 1, 999: 2 } }]);
    const run = await pgregen(['eval', '--version', 'def@1', '--queries', file, '--tenant', 'tenant_1', '--source', 'notes']);
    expect(run.code).toBe(1);
    expect(run.stderr).toMatch(/^pgregen: none of the 2 relevant row\(s\) the judgements name \(such as '998', '999'\) has a vector of version 'def@1' for tenant 'tenant_1' in source\(s\) notes, so no search result can match a judgement\n/);

    const record = (tenant: string, results: unknown) => db.query(
      `select * from regen.record_eval_run('def@1', 'direct', 10, $1::jsonb, $2, array['notes'])`, [JSON.stringify(results), tenant]);
    await expect(record('nobody', [{ id: 'q1', ranked: ['4'], judgements: { 4: 1 } }]))
      .rejects.toMatchObject({ code: 'RG061', message: expect.stringMatching(/^tenant 'nobody' has no vectors of version 'def@1'/) });
    await expect(record('tenant_1', [{ id: 'q1', ranked: [], judgements: { 4: 1 } }, { id: 'q2', ranked: [], judgements: { 7: 1 } }]))
      .rejects.toMatchObject({ code: 'RG061', message: 'no query of the run ranked any row, so no result can match a judgement: every score would be 0' });
    // a run that can match, even one that scores 0, is stored
    const { rows: [stored] } = await record('tenant_1', [{ id: 'q1', ranked: ['1'], judgements: { 4: 1 } }]);
    expect(stored).toMatchObject({ queries: 1, recall_at_k: 0, mrr: 0 });
    expect(await evalRuns()).toBe(2);
  });

  it('a run over one source with matching judgements is stored and shown next to coverage', async () => {
    const file = await queriesFile('notes', [{ id: 'q1', text: 'Note number 4', judgements: { 4: 2 } }]);
    const run = json(await pgregen(['eval', '--version', 'def@1', '--queries', file, '--tenant', 'tenant_1', '--source', 'notes', '--json']));
    expect(run).toMatchObject({ version: 'def@1', sources: ['notes'], tenant: 'tenant_1', queries: 1, k: 10, coverage: 1 });
    expect(typeof run.id).toBe('number');
    expect(run.at).toMatch(ISO);
    expect(conventionProblems(run)).toEqual([]);
    const status = json(await pgregen(['status', '--json']));
    const notes = status.migrations.find((m: { source: string }) => m.source === 'notes');
    expect(notes).toMatchObject({ eval_run: run.id, expected: 12, current: 12, coverage: 1 });
    expect(notes.evaluated_at).toMatch(ISO);
  });
});

describe('pgregen gap --source', () => {
  it('fails for an unknown source, naming the registered ones; a known source shows its rows', async () => {
    for (const args of [['gap', '--source', 'nosuch'], ['gap', '--source', 'nosuch', '--by-tenant', '--json']]) {
      expect(await pgregen(args)).toEqual({ code: 1, stdout: '',
        stderr: "pgregen: unknown source 'nosuch'\n  hint: registered sources: memos, notes (pgregen source list)\n" });
    }
    await expect(readGap(db, { source: 'nosuch' })).rejects.toMatchObject({ name: 'PgregenError', code: 'RG010' });
    const rows = json(await pgregen(['gap', '--source', 'notes', '--json']));
    expect(rows).toEqual([expect.objectContaining({ source: 'notes', version: 'def@1', expected: 12, current: 12 })]);
  });
});

describe('pgregen migrate cutover to the active version', () => {
  it('says nothing changed, and records no cutover', async () => {
    const events = async () => Number((await db.query('select count(*) as n from regen.version_events')).rows[0].n);
    const before = await events();
    expect(await pgregen(['migrate', 'cutover', 'notes', 'def@1'])).toEqual({ code: 0, stderr: '',
      stdout: 'source notes already serves version def@1: nothing changed\n' });
    expect(json(await pgregen(['migrate', 'cutover', 'notes', 'def@1', '--json']))).toEqual({ source: 'notes', active: 'def@1', flipped: false });
    expect(await events()).toBe(before);
  });
});

describe('pgregen search', () => {
  it('checks k before the provider is asked, and names an endpoint it cannot reach', async () => {
    const before = server.stats.requests;
    expect(await pgregen(['search', 'note', '--tenant', 'tenant_1', '--k', '0'])).toEqual({ code: 1, stdout: '',
      stderr: 'pgregen: k must be between 1 and 1000, not 0\n' });
    expect(await pgregen(['search', 'note', '--tenant', 'tenant_1', '--k', '1001'], { OPENAI_API_KEY: undefined }))
      .toMatchObject({ code: 1, stderr: 'pgregen: k must be between 1 and 1000, not 1001\n' });
    expect(server.stats.requests).toBe(before);

    const port = await closedPort();
    const unreachable = await pgregen(['search', 'note', '--tenant', 'tenant_1', '--source', 'notes'], { OPENAI_BASE_URL: `http://127.0.0.1:${port}/v1` });
    expect(unreachable.code).toBe(1);
    expect(unreachable.stderr).toMatch(new RegExp(`^pgregen: cannot reach the embeddings endpoint http://127\\.0\\.0\\.1:${port}/v1/embeddings: .*ECONNREFUSED.*\\n` +
      '  hint: check the base URL \\(OPENAI_BASE_URL'));

    const hits = json(await pgregen(['search', 'Note number 4', '--tenant', 'tenant_1', '--source', 'notes', '--k', '3', '--json']));
    expect(hits).toHaveLength(3);
    expect(conventionProblems(hits)).toEqual([]);
  });
});

describe('search() throws PgregenError for every refusal', () => {
  it('bad arguments (before any call), SQL refusals with their code, and an unreachable endpoint', async () => {
    const openai = new OpenAI({ apiKey: 'test', baseURL: server.url, maxRetries: 0 });
    const context = { pool: db.pool, openai };
    const before = server.stats.requests;
    const cases: Array<[string, Parameters<typeof search>[2], string, RegExp]> = [
      [' ', { tenant: 'tenant_1' }, 'RG041', /^the query text is empty$/],
      ['note', { tenant: '' }, 'RG040', /^no tenant given$/],
      ['note', { tenant: 'tenant_1', k: 0 }, 'RG041', /^k must be between 1 and 1000, not 0$/],
      ['note', { tenant: 'tenant_1', k: 2.5 }, 'RG041', /^k must be between 1 and 1000, not 2\.5$/],
      ['note', { tenant: 'tenant_1', maxDistance: Number.NaN }, 'RG041', /^max_distance must be a number, not NaN$/],
      ['note', { tenant: 'tenant_1', sources: ['nope'] }, 'RG010', /^unknown source 'nope'$/],
      ['note', { tenant: 'tenant_1', version: 'nope@1' }, 'RG001', /^unknown version 'nope@1'$/],
    ];
    for (const [text, options, code, message] of cases) {
      const err = await search(context, text, options).then(() => undefined, (e: unknown) => e);
      expect(err, `${code} ${message}`).toBeInstanceOf(PgregenError);
      expect(err).toMatchObject({ code, message: expect.stringMatching(message) });
    }
    expect(server.stats.requests).toBe(before);

    const port = await closedPort();
    const offline = new OpenAI({ apiKey: 'test', baseURL: `http://127.0.0.1:${port}/v1`, maxRetries: 0 });
    const err = await search({ pool: db.pool, openai: offline }, 'note', { tenant: 'tenant_1', sources: ['notes'] }).then(() => undefined, (e: unknown) => e);
    expect(err).toBeInstanceOf(PgregenError);
    expect((err as Error).message).toMatch(new RegExp(`^cannot reach the embeddings endpoint http://127\\.0\\.0\\.1:${port}/v1/embeddings: .*ECONNREFUSED`));
  });
});

describe('database URLs and passwords', () => {
  it('a URL pg would misread is refused with its form, without showing the password', async () => {
    const plain = await pgregen(['gap'], { DATABASE_URL: 'mydb' });
    expect(plain).toEqual({ code: 1, stdout: '', stderr: 'pgregen: the database URL "mydb" is not a PostgreSQL URL: it must start with postgres:// or postgresql://\n' +
      '  hint: the form is postgres://USER:PASSWORD@HOST:PORT/DATABASE, in DATABASE_URL or --database-url\n' });
    const hash = await pgregen(['status', '--database-url', 'postgres://alice:s3cr#et@db.example/app']);
    expect(hash.code).toBe(1);
    expect(hash.stderr).toMatch(/^pgregen: the database URL "postgres:\/\/alice:\*\*\*@db\.example\/app" is not a valid URL\n  hint: .*# as %23/);
    const port = await pgregen(['status'], { DATABASE_URL: 'postgres://alice:s3cret@db.example:port/app' });
    expect(port.stderr).toMatch(/^pgregen: the database URL "postgres:\/\/alice:\*\*\*@db\.example:port\/app" is not a valid URL\n  hint: .*the port must be a number/);
    const noScheme = await pgregen(['status'], { DATABASE_URL: 'alice:s3cret@db.example/app' });
    expect(noScheme.stderr).toMatch(/^pgregen: the database URL "alice:\*\*\*@db\.example\/app" is not a PostgreSQL URL/);
    for (const run of [hash, port, noScheme]) {
      expect(run.stderr).not.toMatch(/s3cr|ENOTFOUND/);
      expect(run.code).toBe(1);
    }
  });

  it('a Unix-socket URL with a user name (USER@/DATABASE?host=DIR, as libpq takes it) is tried, not refused', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'pgregen-socket-'));   // no server listens there
    const run = await pgregen(['status'], { DATABASE_URL: `postgresql://alice:s3cret@/app?host=${dir}&port=6543` });
    expect(run.code).toBe(1);
    expect(run.stderr).toMatch(new RegExp(`^pgregen: cannot connect to the database at ${dir}:6543/app: .*${dir}/\\.s\\.PGSQL\\.6543`));
    expect(run.stderr).not.toMatch(/not a valid URL|s3cr/);
  });

  it('a server asking for a password none was given for says so, and where to put it', async () => {
    const fake = await passwordServer();
    try {
      const home = await mkdtemp(join(tmpdir(), 'pgregen-home-'));
      const run = await pgregen(['status'], { DATABASE_URL: `postgres://alice@127.0.0.1:${fake.port}/app`, HOME: home, PGPASSFILE: join(home, 'none') });
      expect(run).toEqual({ code: 1, stdout: '', stderr: `pgregen: the database at 127.0.0.1:${fake.port}/app asks for a password for user alice, and none was given\n` +
        '  hint: put it in the URL (postgres://USER:PASSWORD@HOST/DATABASE, percent-encoded), or set PGPASSWORD, or add it to ~/.pgpass\n' });
    } finally {
      await fake.close();
    }
  });
});

describe('--version and a closed pipe', () => {
  it('--version and -V print the version; --version after a command still names an embedding version', async () => {
    expect(await pgregen(['--version'])).toEqual({ code: 0, stdout: `${VERSION}\n`, stderr: '' });
    expect(await pgregen(['-V'])).toEqual({ code: 0, stdout: `${VERSION}\n`, stderr: '' });
    expect((await pgregen(['--help'])).stdout).toMatch(/\n  -V, --version +print the version of pgregen\n/);
    const dry = json(await pgregen(['rebuild', '--dry-run', '--version', 'def@1', '--source', 'notes', '--json']));
    expect(dry).toMatchObject({ dryRun: true, rows: [expect.objectContaining({ source: 'notes', version: 'def@1' })] });
  });

  it('a reader that goes away (pgregen --help | head) gets no EPIPE stack trace', async () => {
    for (let i = 0; i < 3; i++) {
      const child = spawn(process.execPath, [BIN, '--help'], { stdio: ['ignore', 'pipe', 'pipe'] });
      child.stdout.destroy();   // before the help is written: the write meets a closed pipe
      let stderr = '';
      child.stderr.on('data', (d) => { stderr += d; });
      const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
      expect(stderr).toBe('');
      expect(code).toBe(0);
    }
  });
});

describe('refusals: unsupported providers and non-boolean filters', () => {
  it('version create --provider cohere is a usage error; regen.create_version refuses it with RG003', async () => {
    const run = await pgregen(['version', 'create', 'cohere@1', '--model', 'embed-english-v3.0', '--dimensions', '1024', '--provider', 'cohere']);
    expect(run.code).toBe(2);
    expect(run.stderr).toMatch(/^error: option '--provider <provider>' argument 'cohere' is invalid\. the worker embeds only through openai: use openai, which also covers OpenAI-compatible endpoints/);
    await expect(db.query(`select regen.create_version('cohere@1', 'embed-english-v3.0', 1024, provider => 'cohere')`)).rejects.toMatchObject({
      code: 'RG003', message: "version cohere@1 names provider 'cohere', which pgregen does not support: the worker embeds only through the OpenAI API",
      hint: expect.stringMatching(/^use provider 'openai' \(the default\): it covers OpenAI and any OpenAI-compatible endpoint/) });
    expect((await db.query(`select count(*)::int as n from regen.versions where tag = 'cohere@1'`)).rows[0].n).toBe(0);
    expect(json(await pgregen(['version', 'create', 'openai@1', '--model', 'local-hash', '--dimensions', '8', '--provider', 'openai', '--json'])))
      .toEqual({ tag: 'openai@1', created: true });
  });

  it('source register --filter with an integer expression is refused (RG016); a boolean one is accepted', async () => {
    const run = await pgregen(['source', 'register', 'ints', '--table', 'notes', '--id-column', 'id', '--content', 'body', '--filter', 'n', '--version', 'def@1']);
    expect(run).toEqual({ code: 1, stdout: '', stderr: 'pgregen: filter expression must be of type boolean, not integer\n  detail: expression: n\n' +
      "  hint: a filter says which rows get vectors: give a condition, e.g. status = 'published' or flags <> 0\n" });
    expect((await db.query(`select count(*)::int as n from regen.sources where name = 'ints'`)).rows[0].n).toBe(0);
    await db.query(`create table flagged (id int primary key, body text not null, n int not null)`);
    await db.query(`insert into flagged values (1, 'one', 1), (2, 'two', 0)`);
    const ok = json(await pgregen(['source', 'register', 'flagged', '--table', 'flagged', '--id-column', 'id', '--content', 'body',
      '--filter', 'n <> 0', '--version', 'def@1', '--json']));
    expect(ok).toEqual({ name: 'flagged', table: 'flagged', version: 'def@1', rows: 1 });
  });

  it('regen._check_expression_type reads the type without evaluating the expression', async () => {
    await db.query(`create domain yes_no as boolean`);
    await db.query(`create function public.explodes(integer) returns boolean language plpgsql volatile as $$ begin raise exception 'evaluated'; end $$`);
    const check = (expr: string, type = 'boolean') => db.query(
      `select regen._check_expression_type('notes'::regclass, 'notes', $1, $2::regtype, 'filter expression', 'pg_catalog, public, pg_temp')`, [expr, type]);
    for (const expr of ['n > 1', '(n > 1)::yes_no', 'explodes(id)', 'body is not null']) await check(expr);
    await check('n', 'float8');   // integer has an implicit cast to float8
    await expect(check('n')).rejects.toMatchObject({ code: 'RG016', message: 'filter expression must be of type boolean, not integer' });
    await expect(check("'t'")).rejects.toMatchObject({ code: 'RG016', message: 'filter expression must be of type boolean, not text' });
    await expect(check('body', 'float8')).rejects.toMatchObject({ code: 'RG016', hint: 'cast it: (body)::double precision' });
    await expect(check('nope')).rejects.toMatchObject({ code: 'RG016', message: 'filter expression does not compile: column "nope" does not exist' });
    await expect(check('true; drop table notes')).rejects.toMatchObject({ code: 'RG015', message: 'filter expression contains a semicolon' });
    expect((await db.query(`show search_path`)).rows[0].search_path).not.toMatch(/pg_temp/);
  });
});

describe('--json: numbers and ISO 8601 everywhere', () => {
  it('every command prints counts as numbers and timestamps as ISO 8601', async () => {
    // something queued, so that rebuild progress has a row
    await db.query(`insert into notes values (13, 'tenant_1', 'Note number 13', 13)`);
    json(await pgregen(['rebuild', '--source', 'notes', '--no-wait', '--json']));
    const outputs: Record<string, unknown> = {
      'version list': json(await pgregen(['version', 'list', '--json'])),
      'source list': json(await pgregen(['source', 'list', '--json'])),
      gap: json(await pgregen(['gap', '--json'])),
      'gap --by-tenant': json(await pgregen(['gap', '--by-tenant', '--json'])),
      status: json(await pgregen(['status', '--json'])),
      'rebuild --dry-run': json(await pgregen(['rebuild', '--dry-run', '--json'])),
      'tenant-indexes --dry-run': json(await pgregen(['tenant-indexes', '--dry-run', '--min-rows', '1', '--json'])),
    };
    for (const [command, value] of Object.entries(outputs)) expect(conventionProblems(value), command).toEqual([]);

    const status = outputs.status as { schema: { lastAppliedAt: string }; progress: Array<Record<string, unknown>>; migrations: Array<Record<string, unknown>> };
    expect(status.schema.lastAppliedAt).toMatch(ISO);
    expect(status.progress).toEqual(expect.arrayContaining([expect.objectContaining({ source: 'notes', queued: expect.any(Number), total: expect.any(Number) })]));
    for (const p of status.progress) expect(p.eta_seconds === null || typeof p.eta_seconds === 'number').toBe(true);
    for (const m of status.migrations) {
      for (const k of ['expected', 'current', 'coverage']) expect(typeof m[k], `${m.source} ${k}`).toBe('number');
    }
    expect((outputs['version list'] as Array<{ created_at: string }>)[0]!.created_at).toMatch(ISO);
    expect((outputs['source list'] as Array<{ created_at: string }>)[0]!.created_at).toMatch(ISO);
    expect((outputs['tenant-indexes --dry-run'] as unknown[]).length).toBeGreaterThan(0);
  });
});
