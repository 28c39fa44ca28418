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

/** An identifier as SQL spells it: quoted only when it must be. */
function ident(name: string): string {
  return /^[a-z_][a-z0-9_]*$/.test(name) ? name : pg.escapeIdentifier(name);
}

/** Schema of the pgvector extension (its name, unquoted), installing it when missing and allowed. */
async function ensureVector(client: pg.Client): Promise<string> {
  const found = await client.query<{ schema: string; version: string }>(
    `select n.nspname as schema, e.extversion as version from pg_extension e join pg_namespace n on n.oid = e.extnamespace
      where e.extname = 'vector'`);
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
    // pgvector is not a trusted extension: on managed PostgreSQL only the administrator creates it.
    const { database, role } = (await client.query<{ database: string; role: string }>(
      'select current_database() as database, current_user as role')).rows[0]!;
    throw new PgregenError(
      `extension vector is not created in database ${ident(database)}, and role ${ident(role)} cannot create it: ${(err as Error).message}`,
      `a superuser (on managed PostgreSQL: the administrator role) must run once, connected to database ${ident(database)}: ` +
      'create extension vector; (or, to keep extensions in a schema of their own: create schema extensions; ' +
      `grant usage on schema extensions to ${ident(role)} with grant option; create extension vector schema extensions;), ` +
      'then run pgregen install again', 'RG070');
  }
  return ensureVector(client);
}

/**
 * What the installing role needs and only an administrator can give, checked before anything is
 * changed: use of pgvector's schema, and CREATE on the database for what does not exist yet (the
 * first migration creates schema regen; pg-boss its schema). An upgrade needs neither: only the
 * ownership of schema regen. A superuser passes every check.
 */
async function checkPrivileges(client: pg.Client, vectorSchema: string): Promise<void> {
  const { rows: [p] } = await client.query<{
    role: string; database: string; vector_usage: boolean; create_db: boolean;
    regen_owner: string | null; regen_ours: boolean | null; pgboss_missing: boolean;
  }>(`select current_user as role, current_database() as database,
             has_schema_privilege($1::text, 'USAGE') as vector_usage,
             has_database_privilege(current_database(), 'CREATE') as create_db,
             (select n.nspowner::regrole::text from pg_namespace n where n.nspname = 'regen') as regen_owner,
             (select pg_has_role(n.nspowner, 'USAGE') from pg_namespace n where n.nspname = 'regen') as regen_ours,
             to_regnamespace('pgboss') is null as pgboss_missing`,
  [vectorSchema]);
  const role = ident(p!.role);
  if (p!.regen_owner !== null && !p!.regen_ours) {
    throw new PgregenError(`schema regen belongs to role ${p!.regen_owner}, not to ${role}`,
      `run pgregen install as ${p!.regen_owner}, the role that installed it (or as a member of it)`, 'RG070');
  }
  const missing: string[] = [];
  const statements: string[] = [];
  if (!p!.vector_usage) {
    missing.push(`USAGE on schema ${ident(vectorSchema)}, where pgvector is installed`);
    statements.push(`grant usage on schema ${ident(vectorSchema)} to ${role} with grant option;`);
  }
  const fresh = !(await appliedNames(client)).includes('tables');
  const toCreate = [...(fresh ? ['regen'] : []), ...(p!.pgboss_missing ? ['pgboss'] : [])];
  if (toCreate.length > 0 && !p!.create_db) {
    missing.push(`CREATE on database ${ident(p!.database)} (for schema ${toCreate.join(' and ')})`);
    statements.push(`grant create on database ${ident(p!.database)} to ${role};`);
  }
  if (missing.length > 0) {
    throw new PgregenError(`role ${role} cannot install pgregen into database ${ident(p!.database)}: it lacks ${missing.join('; ')}`,
      `a superuser (on managed PostgreSQL: the administrator role) must run once, connected to database ${ident(p!.database)}: ` +
      `${statements.join(' ')} then run pgregen install again`, 'RG070');
  }
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
      await checkPrivileges(client, vectorSchema);
      await checkUnchanged(client, dir);
      // pgvector's library, loaded in this session: a function's SET clause may name an extension's
      // parameter (hnsw.ef_search) only once the extension has defined it, unless run by a superuser.
      await client.query(`select ${pg.escapeIdentifier(vectorSchema)}.vector_dims('[1]'::${pg.escapeIdentifier(vectorSchema)}.vector)`);
      const before = await appliedNames(client);
      await installQueue(client, log);   // first: regen's SQL functions refer to pg-boss's tables
      // CREATE SCHEMA IF NOT EXISTS needs CREATE on the database even when the schema exists.
      if ((await client.query(`select to_regnamespace('regen') is null as missing`)).rows[0].missing) {
        await client.query('create schema regen');
      }
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
        await callIfPresent(client, 'regen._refresh_grants()');
        // Functions that name pgvector's types and functions find them in pgvector's schema, wherever
        // it is now (after alter extension vector set schema, too) and whatever the caller's search_path.
        await callIfPresent(client, 'regen._pin_search_paths()');
        // Functions that keep generic plans plan them without JIT (sql/0040), whatever a file restated.
        await callIfPresent(client, 'regen._pin_plans_without_jit()');
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
  // pg-boss's CREATE SCHEMA IF NOT EXISTS needs CREATE on the database even when the schema exists
  // (made beforehand by an administrator, for a role that owns only its schemas).
  const exists = (await client.query(`select to_regnamespace('pgboss') is not null as present`)).rows[0].present as boolean;
  const boss = new PgBoss({
    db: { executeSql: (text: string, values?: unknown[]) => client.query(text, values) },
    supervise: false,
    schedule: false,
    migrate: true,
    createSchema: !exists,
  });
  boss.on('error', (err: Error) => log(`pg-boss: ${err.message}`));
  await boss.start();
  await boss.stop({ graceful: false, close: false });
}

/** Runs a housekeeping function of the schema, when the migrations applied define it. */
async function callIfPresent(client: pg.Client, signature: string): Promise<void> {
  const { rows: [row] } = await client.query<{ present: boolean }>('select to_regprocedure($1) is not null as present', [signature]);
  if (row?.present) await client.query(`select ${signature}`);   // a constant of this file, not input
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
      // USAGE on pgvector's schema that regen.grant_app() gave application roles (not in schema regen)
      if ((await client.query(`select to_regprocedure('regen._revoke_vector_usage(regrole)') is not null as present`)).rows[0].present) {
        await client.query(`select regen._revoke_vector_usage(a.role_oid::regrole) from regen._app_roles() a`);
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
