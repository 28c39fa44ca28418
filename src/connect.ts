// Opening connections, and the common failures turned into errors that say what to fix.
import pg from 'pg';
import type { Db } from './db.ts';
import { PgregenError } from './errors.ts';

/**
 * A connection string as a URL. pg (like libpq) also takes `postgres://USER@/DATABASE?host=/run/postgresql`,
 * a Unix socket with a user name, which a WHATWG URL refuses for its empty host: parsed here as pg
 * parses it, with a placeholder host that the host parameter overrides.
 */
function parseUrl(url: string): URL {
  try {
    return new URL(url);
  } catch (err) {
    if (!/^[a-z]+:\/\/[^/]*@\//i.test(url)) throw err;
    return new URL(url.replace('@/', '@localhost/'));
  }
}

/** Where a connection string points, without the password. */
export function describeUrl(url: string): string {
  try {
    const u = parseUrl(url);
    const host = u.searchParams.get('host') || u.hostname || 'localhost';
    return `${host}:${u.searchParams.get('port') || u.port || 5432}${u.pathname}`;
  } catch {
    return 'the given database';
  }
}

/** A connection string with its password masked (user:***@host), for messages. */
export function redactUrl(url: string): string {
  return url.replace(/^([a-z][a-z0-9+.-]*:\/\/)?([^:/@\s]*):(.*)@/i, (_m, scheme: string | undefined, user: string) => `${scheme ?? ''}${user}:***@`);
}

const URL_FORM = 'the form is postgres://USER:PASSWORD@HOST:PORT/DATABASE, in DATABASE_URL or --database-url';

/**
 * Refuses a connection string pg would misread: anything but a postgres:// or postgresql:// URL
 * (pg takes "mydb" for a database on a host named "base", and fails with ENOTFOUND base), an
 * invalid URL, or one with a fragment (an unencoded # in the password). Messages never show the password.
 */
export function checkUrl(url: string): void {
  const shown = JSON.stringify(redactUrl(url));
  if (/^socket:/i.test(url) || url.startsWith('/')) return;   // pg's Unix-socket forms
  if (!/^postgres(ql)?:\/\//i.test(url)) {
    throw new PgregenError(`the database URL ${shown} is not a PostgreSQL URL: it must start with postgres:// or postgresql://`, URL_FORM);
  }
  let parsed: URL;
  try {
    parsed = parseUrl(url);
  } catch {
    throw new PgregenError(`the database URL ${shown} is not a valid URL`,
      `${URL_FORM}; the port must be a number, and @ : / ? # % in the user name or password must be percent-encoded (@ as %40, / as %2F, # as %23)`);
  }
  if (parsed.hash) {
    throw new PgregenError(`the database URL ${shown} has a # in it, which ends the URL there`,
      `percent-encode # as %23 (in a password, say); ${URL_FORM}`);
  }
}

/** The error of a failed connection attempt: where it tried to go, and what to check. */
export function connectionError(connectionString: string, err: unknown): PgregenError {
  const message = (err as Error).message ?? String(err);
  if (/client password must be a (non-empty )?string/.test(message)) {
    let user = '';
    try { user = decodeURIComponent(parseUrl(connectionString).username); } catch { /* described below anyway */ }
    return new PgregenError(`the database at ${describeUrl(connectionString)} asks for a password${user ? ` for user ${user}` : ''}, and none was given`,
      'put it in the URL (postgres://USER:PASSWORD@HOST/DATABASE, percent-encoded), or set PGPASSWORD, or add it to ~/.pgpass',
      undefined, undefined, { cause: err });
  }
  return new PgregenError(`cannot connect to the database at ${describeUrl(connectionString)}: ${message}`,
    'check DATABASE_URL or --database-url (host, port, user, password, database) and that the server is running',
    undefined, undefined, { cause: err });
}

export async function connect(connectionString: string, applicationName: string): Promise<pg.Client> {
  checkUrl(connectionString);
  const client = new pg.Client({ connectionString, application_name: applicationName });
  try {
    await client.connect();
  } catch (err) {
    // a refusal on the client's side (no password to give) leaves the socket open: the server would
    // wait for the answer until its authentication_timeout, and this process with it
    await client.end().catch(() => {});
    throw connectionError(connectionString, err);
  }
  return client;
}

/**
 * Refuses, with the fix, when schema regen is not installed; when the server lacks pgvector as
 * well, says how to get it first.
 */
export async function requireSchema(db: Db): Promise<void> {
  const { rows: [row] } = await db.query<{ installed: boolean; name: string; vector: boolean; major: number }>(
    `select to_regclass('regen.migrations') is not null as installed, current_database() as name,
            exists (select 1 from pg_available_extensions where name = 'vector') as vector,
            current_setting('server_version_num')::int / 10000 as major`);
  if (!row || row.installed) return;
  if (!row.vector) {
    throw new PgregenError(`pgregen is not installed in database ${row.name}, and the server has no pgvector extension`,
      `install pgvector on the database server first (create extension vector needs its package: Debian/Ubuntu ` +
      `apt-get install postgresql-${row.major}-pgvector; from source: https://github.com/pgvector/pgvector), then run: pgregen install`);
  }
  throw new PgregenError(`pgregen is not installed in database ${row.name}`, 'run: pgregen install');
}

/** Connects, checks that pgregen is installed, runs `work` and disconnects. */
export async function withInstalled<T>(connectionString: string, applicationName: string,
  work: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = await connect(connectionString, applicationName);
  try {
    await requireSchema(client);
    return await work(client);
  } finally {
    await client.end();
  }
}

/**
 * A pool for a database that was reached and checked (pgregen installed) over a first connection of
 * its own: pg-pool leaves the socket of a connection refused on the client's side open (no password
 * to give), which would keep the process waiting on the server's authentication_timeout.
 */
export async function openPool(connectionString: string, applicationName: string, max = 2): Promise<pg.Pool> {
  const first = await connect(connectionString, applicationName);
  try {
    await requireSchema(first);
  } finally {
    await first.end();
  }
  return new pg.Pool({ connectionString, application_name: applicationName, max });
}

/**
 * Errors PostgreSQL raises in plain terms, given a pgregen meaning: an older schema than this
 * pgregen, a server that lost the pgvector package, a role without the grants. Any other error
 * (pgregen's own RGnnn errors carry their hints already) is returned as it is.
 */
export function explainError(err: unknown): unknown {
  if (err instanceof PgregenError) return err;
  const e = err as { code?: string; message?: string };
  const message = e.message ?? String(err);
  if (e.code === '42883' && /regen\./.test(message)) {
    return new PgregenError(`${message}: the database has an older pgregen schema than this command`, 'run: pgregen install (it upgrades the schema)');
  }
  if (e.code === '3F000' && /"regen"/.test(message)) {
    return new PgregenError('pgregen is not installed in this database', 'run: pgregen install');
  }
  if (e.code === '58P01' && /vector/.test(message)) {
    return new PgregenError(`the pgvector library is missing on the database server: ${message}`,
      'reinstall the pgvector package for this PostgreSQL version (Debian/Ubuntu: apt-get install postgresql-NN-pgvector)');
  }
  if (e.code === '42501') {
    return new PgregenError(message, 'connect as the owner of schema regen, or as a role given regen.grant_admin()');
  }
  return err;
}
