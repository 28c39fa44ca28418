// The installer: postgres-migrations made safe beside another tool's `migrations` table, concurrent
// installs, re-runs, modified migrations, and an uninstall that leaves user data alone.
import { cp, mkdtemp, appendFile, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { afterAll, describe, expect, inject, it } from 'vitest';
import { install, uninstall, SQL_DIR } from '../src/install.ts';
import { quoteIdent, withDatabase } from './support/url.ts';
import { adminPool } from './support/db.ts';

const admin = adminPool();
const created: string[] = [];

/** A database with pgvector but without pgregen (the shared template already has pgregen). */
async function emptyDatabase(): Promise<{ url: string; pool: pg.Pool }> {
  const name = `pgregen_install_${randomBytes(4).toString('hex')}`;
  await admin.query(`create database ${quoteIdent(name)} template template0`);
  created.push(name);
  const url = withDatabase(inject('serverUrl'), name);
  const pool = new pg.Pool({ connectionString: url, max: 4 });
  await pool.query('create extension vector');
  return { url, pool };
}

afterAll(async () => {
  for (const name of created) await admin.query(`drop database if exists ${quoteIdent(name)} with (force)`);
  await admin.end();
});

// every migration file, by name: 0009_migration.sql -> migration
const ALL = (await readdir(SQL_DIR)).filter((f) => /^\d{4}_.+\.sql$/.test(f)).sort()
  .map((f) => f.replace(/^\d{4}_|\.sql$/g, ''));

describe('install', () => {
  it('applies every migration into schema regen and is a no-op when run again', async () => {
    const { url, pool } = await emptyDatabase();
    const first = await install({ connectionString: url });
    expect(first.applied).toEqual(ALL);
    expect(first.alreadyApplied).toEqual([]);

    const fingerprint = () => pool.query(
      `select count(*)::int as objects, max(xmin::text::bigint) as newest from pg_class
        where relnamespace = 'regen'::regnamespace`);
    const before = (await fingerprint()).rows[0];
    const second = await install({ connectionString: url });
    expect(second.applied).toEqual([]);
    expect(second.alreadyApplied).toEqual(ALL);
    expect((await fingerprint()).rows[0]).toEqual(before);
    const ids = await pool.query('select id from regen.migrations order by id');
    expect(ids.rows.map((r) => r.id)).toEqual(Array.from({ length: ALL.length + 1 }, (_, i) => i));
    await pool.end();
  });

  it('leaves another tool\'s public.migrations table untouched', async () => {
    const { url, pool } = await emptyDatabase();
    // TypeORM's default bookkeeping table, with a row of its own.
    await pool.query(`create table public.migrations (id serial primary key, "timestamp" bigint not null, name varchar not null)`);
    await pool.query(`insert into public.migrations ("timestamp", name) values (1700000000000, 'CreateUsers1700000000000')`);
    const columnsBefore = await pool.query(
      `select column_name, data_type from information_schema.columns where table_schema = 'public' and table_name = 'migrations' order by ordinal_position`);

    const result = await install({ connectionString: url });
    expect(result.applied).toEqual(ALL);

    const rows = await pool.query('select id, "timestamp", name from public.migrations');
    expect(rows.rows).toEqual([{ id: 1, timestamp: '1700000000000', name: 'CreateUsers1700000000000' }]);
    const columnsAfter = await pool.query(
      `select column_name, data_type from information_schema.columns where table_schema = 'public' and table_name = 'migrations' order by ordinal_position`);
    expect(columnsAfter.rows).toEqual(columnsBefore.rows);
    const ours = await pool.query('select count(*)::int as n from regen.migrations');
    expect(ours.rows[0].n).toBe(ALL.length + 1);
    // and a second run still sees only its own table
    expect((await install({ connectionString: url })).applied).toEqual([]);
    await pool.end();
  });

  it('lets two installers started at the same moment both succeed, applying each migration once', async () => {
    const { url, pool } = await emptyDatabase();
    const [a, b] = await Promise.all([install({ connectionString: url }), install({ connectionString: url })]);
    expect([...a.applied, ...b.applied].sort()).toEqual([...ALL].sort());
    expect(a.applied.length === 0 || b.applied.length === 0).toBe(true);
    const counts = await pool.query('select id, count(*)::int as n from regen.migrations group by id order by id');
    expect(counts.rows.every((r) => r.n === 1)).toBe(true);
    expect(counts.rows).toHaveLength(ALL.length + 1);
    await pool.end();
  });

  it('refuses with a clear error when an applied migration file was modified, changing nothing', async () => {
    const { url, pool } = await emptyDatabase();
    await install({ connectionString: url });
    const dir = await mkdtemp(join(tmpdir(), 'pgregen-sql-'));
    try {
      await cp(SQL_DIR, dir, { recursive: true });
      await appendFile(join(dir, '0003_sources.sql'), '\n-- an innocent-looking edit\n');
      await expect(install({ connectionString: url, migrationsDir: dir })).rejects.toThrow(
        /migration 0003_sources\.sql was changed after it was applied to this database \(applied hash [0-9a-f]{40}, file hash [0-9a-f]{40}\)/);
      const err = await install({ connectionString: url, migrationsDir: dir }).catch((e) => e);
      expect(err.hint).toMatch(/restore the original file and put the change in a new sql\/NNNN_name\.sql/);
      const ids = await pool.query('select count(*)::int as n from regen.migrations');
      expect(ids.rows[0].n).toBe(ALL.length + 1);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
    await pool.end();
  });

  it('upgrades a database installed with the first eleven migrations: sources, grants and capture carry over', async () => {
    const { url, pool } = await emptyDatabase();
    const dir = await mkdtemp(join(tmpdir(), 'pgregen-sql-'));
    const roles = [`pgregen_up_app_${randomBytes(3).toString('hex')}`, `pgregen_up_admin_${randomBytes(3).toString('hex')}`];
    try {
      // the schema as a database had it before the generated functions were made private (0012 on)
      for (const file of (await readdir(SQL_DIR)).filter((f) => /^00(0\d|1[01])_/.test(f))) await cp(join(SQL_DIR, file), join(dir, file));
      expect((await install({ connectionString: url, migrationsDir: dir })).applied).toHaveLength(11);
      await pool.query(`select regen.create_version('up@1', 'm', 4)`);
      await pool.query(`create table notes (id int primary key, body text not null)`);
      await pool.query(`insert into notes select g, 'note ' || g from generate_series(1, 20) g`);
      await pool.query(`select regen.register_source('notes', 'notes', 'id', 'body', version => 'up@1')`);
      for (const role of roles) await pool.query(`create role ${role} login`);
      await pool.query(`select regen.grant_app($1), regen.grant_admin($2)`, roles);
      const publicCapture = () => pool.query<{ n: number }>(`select count(*)::int as n from pg_proc p where p.pronamespace = 'regen'::regnamespace
                                       and exists (select 1 from aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a where a.grantee = 0)`);
      expect((await publicCapture()).rows[0]!.n).toBe(1);   // the generated capture function: the hole the upgrade closes

      expect((await install({ connectionString: url })).applied).toEqual(ALL.slice(11));
      expect((await publicCapture()).rows[0]!.n).toBe(0);
      // the admin role has what the new files added, the source captures as the new code does
      const can = await pool.query(`select has_function_privilege($1, 'regen.recover()', 'execute') as ok`, [roles[1]]);
      expect(can.rows[0].ok).toBe(true);
      await pool.query(`update notes set body = 'edited' where id = 1`);
      expect((await pool.query(`select count(*)::int as n from regen._changes`)).rows[0].n).toBe(1);
      expect((await pool.query(`select regen.apply_changes() as n`)).rows[0].n).toBe('1');
      expect((await pool.query(`select count(*)::int as n from regen._items where fresh`)).rows[0].n).toBe(1);
      expect((await pool.query(`select missing::int from regen.embedding_gap where source = 'notes'`)).rows[0].missing).toBe(20);
    } finally {
      await pool.query(`select regen.unregister_source('notes')`).catch(() => {});
      for (const role of roles) await pool.query(`drop owned by ${role}`).catch(() => {});
      await pool.end();
      for (const role of roles) await admin.query(`drop role if exists ${role}`).catch(() => {});
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('says what to do when the database cannot be reached', async () => {
    await expect(install({ connectionString: 'postgres://nobody@127.0.0.1:1/nothing' }))
      .rejects.toMatchObject({ message: expect.stringMatching(/^cannot connect to the database at 127.0.0.1:1\/nothing: /), hint: expect.stringMatching(/DATABASE_URL/) });
  });
});

describe('uninstall', () => {
  it('removes schema regen and every trigger it put on user tables, leaving tables and rows untouched', async () => {
    const { url, pool } = await emptyDatabase();
    const defaultAcls = async () => (await pool.query('select count(*)::int as n from pg_default_acl')).rows[0].n as number;
    const aclsBefore = await defaultAcls();
    await install({ connectionString: url });
    await pool.query(`create role pgregen_uninstall_app`).catch(() => {});
    await pool.query(`create role pgregen_uninstall_admin`).catch(() => {});
    await pool.query(`select regen.grant_app('pgregen_uninstall_app'), regen.grant_admin('pgregen_uninstall_admin')`);
    await pool.query(`create table public.notes (id int primary key, body text)`);
    await pool.query(`insert into public.notes select g, 'note ' || g from generate_series(1, 50) g`);
    await pool.query(`select regen.create_version('t@1', 'm', 3)`);
    await pool.query(`select regen.register_source('notes', 'public.notes', 'id', 'body', version => 't@1')`);
    const triggers = () => pool.query(`select tgname from pg_trigger where tgrelid = 'public.notes'::regclass and not tgisinternal`);
    expect((await triggers()).rows).toHaveLength(4);

    const result = await uninstall({ connectionString: url });
    expect(result).toEqual({ sources: ['notes'], removed: true });
    expect((await triggers()).rows).toHaveLength(0);
    expect((await pool.query(`select to_regnamespace('regen') as ns`)).rows[0].ns).toBeNull();
    expect((await pool.query('select count(*)::int as n, sum(id)::int as s from public.notes')).rows[0]).toEqual({ n: 50, s: 1275 });
    // writes to the table work without pgregen
    await pool.query(`update public.notes set body = 'changed' where id = 1`);
    // grants, policies and default privileges went with the schema; the role is the user's and stays
    expect(await defaultAcls()).toBe(aclsBefore);
    expect((await pool.query(`select count(*)::int as n from pg_roles where rolname like 'pgregen\\_uninstall\\_%'`)).rows[0].n).toBe(2);
    await pool.query('drop role pgregen_uninstall_app, pgregen_uninstall_admin');   // nothing of pgregen holds on to them any more
    // pgvector stays: it is not pgregen's to remove
    expect((await pool.query(`select count(*)::int as n from pg_extension where extname = 'vector'`)).rows[0].n).toBe(1);
    expect(await uninstall({ connectionString: url })).toEqual({ sources: [], removed: false });
    // and it installs again from scratch
    expect((await install({ connectionString: url })).applied).toEqual(ALL);
    await pool.end();
  });
});
