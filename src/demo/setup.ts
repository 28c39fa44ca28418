// The demo's fixtures in the database: its tables (schema pgregen_demo) filled with the sample
// corpus, two versions served by the local USE-Lite model, three sources, and a login role for the
// application side. cleanUp() removes all of it again (the versions stay: they are only names).
import { randomBytes } from 'node:crypto';
import type pg from 'pg';
import type { Corpus } from './corpus.ts';

export const SCHEMA = 'pgregen_demo';
export const SOURCES = ['policy', 'help_article', 'handbook'] as const;
/** The version in service, and the one the demo migrates the policies to (same model, other chunking, lowercased). */
export const V1 = 'use-lite@1/chunk-600';
export const V2 = 'use-lite@2/chunk-200/lower';

export async function loadCorpus(db: pg.Client, corpus: Corpus): Promise<void> {
  await db.query(`create schema ${SCHEMA}`);
  await db.query(`create table ${SCHEMA}.policies (id int primary key, tenant text not null, title text not null,
                    body text not null, active boolean not null, updated_at date not null)`);
  await db.query(`create table ${SCHEMA}.help_articles (id int primary key, tenant text not null, title text not null,
                    body text not null, views int not null)`);
  await db.query(`create table ${SCHEMA}.handbooks (id int primary key, tenant text not null, title text not null, body text not null)`);
  // json_populate_recordset: one round trip per table
  const load = (table: string, rows: unknown[]) =>
    db.query(`insert into ${SCHEMA}.${table} select * from json_populate_recordset(null::${SCHEMA}.${table}, $1)`, [JSON.stringify(rows)]);
  await load('policies', corpus.policies);
  await load('help_articles', corpus.helpArticles);
  await load('handbooks', corpus.handbooks);
}

export async function createVersions(db: pg.Client): Promise<void> {
  // any model name does: the local server embeds with USE-Lite whatever it is asked for
  await db.query(`select regen.create_version($1, 'use-lite', 512, 'openai', '{"chunk_chars": 600, "chunk_overlap": 60, "send_dimensions": false}')`, [V1]);
}

/** The second version, created when the story migrates to it: until then the worker serves one queue, with one fetch loop. */
export async function createSecondVersion(db: pg.Client): Promise<void> {
  await db.query(`select regen.create_version($1, 'use-lite', 512, 'openai', '{"chunk_chars": 200, "chunk_overlap": 20, "lowercase": true, "send_dimensions": false}')`, [V2]);
}

export async function registerSources(db: pg.Client): Promise<void> {
  // hot first: active policies newest first, then help articles by views, handbook chunks last
  await db.query(`select regen.register_source('policy', '${SCHEMA}.policies', 'id', $$title || E'\\n\\n' || body$$, 'tenant',
                    priority_expression => $$case when active then extract(epoch from updated_at) else 0 end$$, weight => 3, version => $1)`, [V1]);
  await db.query(`select regen.register_source('help_article', '${SCHEMA}.help_articles', 'id', $$title || E'\\n\\n' || body$$, 'tenant',
                    priority_expression => 'views', weight => 2, version => $1)`, [V1]);
  await db.query(`select regen.register_source('handbook', '${SCHEMA}.handbooks', 'id', $$title || E'\\n\\n' || body$$, 'tenant',
                    weight => 1, version => $1)`, [V1]);
}

export interface AppRole { name: string; url: string }

/** A login role with a random name and password, given regen.grant_app: what an application connects as. */
export async function createAppRole(db: pg.Client, databaseUrl: string): Promise<AppRole> {
  const name = `pgregen_demo_app_${randomBytes(3).toString('hex')}`;
  const password = randomBytes(12).toString('hex');
  await db.query(`create role ${name} login password '${password}'`);
  await db.query('select regen.grant_app($1::regrole)', [name]);
  const url = new URL(databaseUrl);
  url.username = name;
  url.password = password;
  return { name, url: url.toString() };
}

/** Removes the demo's sources, tables and role; safe to call when some or none of them exist. */
export async function cleanUp(db: pg.Client, role?: string): Promise<void> {
  await db.query('select regen.unregister_source(name) from regen._sources where name = any($1::text[])', [[...SOURCES]]);
  await db.query(`drop schema if exists ${SCHEMA} cascade`);
  if (role) {
    const { rows } = await db.query('select 1 from pg_roles where rolname = $1', [role]);
    if (rows.length > 0) {
      await db.query('select regen.revoke_app($1::regrole)', [role]);
      await db.query(`drop owned by ${role}`);
      await db.query(`drop role ${role}`);
    }
  }
}
