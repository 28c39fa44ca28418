// Installs and removes pgregen's schema. `sql/NNNN_name.sql` is the only source of the schema; a
// fresh install replays every file. The runner is postgres-migrations, made safe for databases
// that already have a table named `migrations` (TypeORM's default, or any other tool's):
// postgres-migrations looks for a table of that name in *any* schema and then reads and writes it
// through the search_path. So the installer runs it on a session whose search_path starts with
// schema `regen`, after creating `regen.migrations` itself: every unqualified `migrations` then
// means pgregen's own bookkeeping table, and a table of that name elsewhere is never touched.
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { loadMigrationFiles, migrate } from 'postgres-migrations';
import { PgBoss } from 'pg-boss';
import { PgregenError } from './errors.ts';
import { connect } from './connect.ts';

export const SQL_DIR = fileURLToPath(new URL('../sql/', import.meta.url));

// Same key in every installer: two installers started at once take turns.
const INSTALL_LOCK = 'pgregen.install';

export interface InstallOptions {
  connectionString?: string;
  /** An already connected client; used as is and left open. */
  client?: pg.Client;
  log?: (line: string) => void;
  /** Folder of migration files; defaults to the package's sql/. */
  migrationsDir?: string;
}

export interface InstallResult {
  /** Migration files applied by this call, in order. */
  applied: string[];
  /** Migration files found already applied. */
  alreadyApplied: string[];
}

export interface UninstallResult {
  /** Sources whose triggers were removed. */
  sources: string[];
  /** False when there was no schema to remove. */
  removed: boolean;
}

async function withClient<T>(options: InstallOptions, fn: (client: pg.Client) => Promise<T>): Promise<T> {
  if (options.client) return fn(options.client);
  if (!options.connectionString) {
    throw new PgregenError('no database given', 'set DATABASE_URL or pass --database-url postgres://user@host/db');
  }
  const client = await connect(options.connectionString, 'pgregen install');
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}

/** Schema of the pgvector extension, installing it when missing and allowed. */
async function ensureVector(client: pg.Client): Promise<string> {
  const found = await client.query<{ schema: string; version: string }>(
    `select extnamespace::regnamespace::text as schema, extversion as version from pg_extension where extname = 'vector'`);
  if (found.rows[0]) {
    const [major = 0, minor = 0] = found.rows[0].version.split('.').map(Number);
    if (major === 0 && minor < 8) {
      throw new PgregenError(`pgvector ${found.rows[0].version} is too old: pgregen needs pgvector 0.8 or newer (iterative index scans)`,
        'upgrade the package, then run: alter extension vector update;');
    }
    return found.rows[0].schema;
  }
  const available = await client.query(`select 1 from pg_available_extensions where name = 'vector'`);
  if (available.rowCount === 0) {
    throw new PgregenError('pgvector is not installed on the database server',
      'install it (Debian/Ubuntu: apt-get install postgresql-NN-pgvector; from source: https://github.com/pgvector/pgvector), then run pgregen install again');
  }
  try {
    await client.query('create extension if not exists vector');
  } catch (err) {
    throw new PgregenError(`cannot create extension vector: ${(err as Error).message}`,
      'ask a superuser to run: create extension vector;');
  }
  return ensureVector(client);
}

async function checkUnchanged(client: pg.Client, dir: string): Promise<void> {
  const exists = await client.query(`select to_regclass('regen.migrations') is not null as present`);
  if (!exists.rows[0].present) return;
  const files = await loadMigrationFiles(dir);
  const applied = await client.query<{ id: number; name: string; hash: string }>(
    'select id, name, hash from regen.migrations order by id');
  for (const row of applied.rows) {
    const file = files.find((f) => f.id === row.id);
    if (file && file.hash !== row.hash) {
      throw new PgregenError(
        `migration ${file.fileName} was changed after it was applied to this database (applied hash ${row.hash}, file hash ${file.hash})`,
        'applied migrations are frozen: restore the original file and put the change in a new sql/NNNN_name.sql');
    }
    if (!file && row.id > 0) {
      throw new PgregenError(`this database has migration ${row.id} (${row.name}), which this version of pgregen does not know`,
        'upgrade pgregen to the version that installed it');
    }
  }
}

export async function install(options: InstallOptions = {}): Promise<InstallResult> {
  const log = options.log ?? (() => {});
  const dir = options.migrationsDir ?? SQL_DIR;
  return withClient(options, async (client) => {
    await client.query('select pg_advisory_lock(hashtext($1))', [INSTALL_LOCK]);
    const previousPath = (await client.query<{ search_path: string }>('show search_path')).rows[0]!.search_path;
    try {
      const vectorSchema = await ensureVector(client);
      await checkUnchanged(client, dir);
      const before = await appliedNames(client);
      await installQueue(client, log);   // first: regen's SQL functions refer to pg-boss's tables
      await client.query('create schema if not exists regen');
      await client.query(`create table if not exists regen.migrations (
        id integer primary key,
        name varchar(100) unique not null,
        hash varchar(40) not null,
        executed_at timestamp default current_timestamp)`);
      await client.query(`comment on table regen.migrations is 'pgregen: applied schema migrations (postgres-migrations bookkeeping)'`);
      await client.query(`select set_config('search_path', $1, false)`,
        [`regen, ${pg.escapeIdentifier(vectorSchema)}`]);
      try {
        await migrate({ client }, dir, { logger: (line) => log(line) });
        // Functions are executable by the roles pgregen grants, not by PUBLIC, whichever file made them;
        // admin roles get what the new files added.
        await client.query('revoke execute on all functions in schema regen from public');
        await client.query(`select regen._refresh_grants() where to_regprocedure('regen._refresh_grants()') is not null`);
      } catch (err) {
        throw new PgregenError(`installing the schema failed: ${(err as Error).message}`,
          'nothing of the failed migration was kept; fix the cause and run pgregen install again');
      }
      const after = await appliedNames(client);
      return {
        applied: after.filter((name) => !before.includes(name)),
        alreadyApplied: before,
      };
    } finally {
      await client.query(`select set_config('search_path', $1, false)`, [previousPath]);
      await client.query('select pg_advisory_unlock(hashtext($1))', [INSTALL_LOCK]);
    }
  });
}

/**
 * pg-boss keeps its own schema (`pgboss`) and migrations; it is installed (or upgraded) here so that
 * regen.rebuild() can enqueue from SQL before any worker has started. Each version's queue is
 * created by regen.create_version().
 */
async function installQueue(client: pg.Client, log: (line: string) => void): Promise<void> {
  const boss = new PgBoss({
    db: { executeSql: (text: string, values?: unknown[]) => client.query(text, values) },
    supervise: false,
    schedule: false,
    migrate: true,
  });
  boss.on('error', (err: Error) => log(`pg-boss: ${err.message}`));
  await boss.start();
  await boss.stop({ graceful: false, close: false });
}

async function appliedNames(client: pg.Client): Promise<string[]> {
  const exists = await client.query(`select to_regclass('regen.migrations') is not null as present`);
  if (!exists.rows[0].present) return [];
  const rows = await client.query<{ name: string }>('select name from regen.migrations where id > 0 order by id');
  return rows.rows.map((r) => r.name);
}

/** Removes schema `regen` and every trigger it put on user tables; user tables and rows stay. */
export async function uninstall(options: InstallOptions = {}): Promise<UninstallResult> {
  return withClient(options, async (client) => {
    await client.query('select pg_advisory_lock(hashtext($1))', [INSTALL_LOCK]);
    try {
      const present = await client.query(`select to_regnamespace('regen') is not null as present`);
      if (!present.rows[0].present) return { sources: [], removed: false };
      await client.query('begin');
      const sources = await client.query<{ name: string }>(
        `select regen.unregister_source(name) as name from regen._sources order by name`);
      // What regen.grant_admin() gave in pg-boss's schema stays with it: take it back (the rest of the
      // grants and the row-level security policies go with schema regen).
      if ((await client.query(`select to_regprocedure('regen.revoke_admin(regrole)') is not null as present`)).rows[0].present) {
        await client.query(`select regen.revoke_admin(r.oid::regrole)
                              from pg_policy p, unnest(p.polroles) as r(oid)
                             where p.polrelid = 'regen._embeddings'::regclass and p.polname like 'admin\_%'`);
      }
      await client.query('drop schema regen cascade');
      // pg-boss's schema may serve other queues of the application: only pgregen's queues go.
      if ((await client.query(`select to_regclass('pgboss.queue') is not null as present`)).rows[0].present) {
        await client.query(`select pgboss.delete_queue(name) from pgboss.queue where name like 'regen\_embed\_v%'`);
      }
      await client.query('commit');
      return { sources: sources.rows.map((r) => r.name), removed: true };
    } catch (err) {
      await client.query('rollback').catch(() => {});
      throw err;
    } finally {
      await client.query('select pg_advisory_unlock(hashtext($1))', [INSTALL_LOCK]);
    }
  });
}
