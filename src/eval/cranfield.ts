// The Cranfield collection (1,400 aeronautics abstracts, 225 queries, graded relevance judgements)
// as pgregen's first labelled set. It is read where it lies, never copied into the repository: by
// default `../shared/data/cranfield/` beside the project (resolved from the package root), or the
// folder in $REGEN_CRANFIELD_DIR, or one given explicitly.
//
// loadCranfield() creates a source table (id, tenant, title, author, body), loads the documents
// into it (idempotent: a second load changes nothing) and returns the query set;
// registerCranfieldSource() makes that table a pgregen source under a version and enqueues it.
import { readFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import type { Db } from '../db.ts';
import { PgregenError } from '../errors.ts';
import type { LabelledQuery, QuerySet } from './query-set.ts';

export const CRANFIELD_DIR_ENV = 'REGEN_CRANFIELD_DIR';
const FILES = { documents: 'cranfield-documents.json', queries: 'cranfield-queries.json', qrels: 'cranfield-qrels.json' } as const;

interface Document { id: number; title: string; author: string; body: string }
interface Query { id: number; text: string }
interface Judgement { queryId: number; docId: number; relevance: number }

export interface CranfieldOptions {
  /** Folder holding the three JSON files (default: $REGEN_CRANFIELD_DIR, else ../shared/data/cranfield beside the project). */
  dir?: string;
  /** Table to create and fill, optionally schema-qualified (default public.cranfield_documents). */
  table?: string;
  /** Tenant of every document (default 'cranfield'): searches run inside one tenant. */
  tenant?: string;
}

export interface CranfieldLoad {
  /** The table, as given (schema.table). */
  table: string;
  /** Documents in the collection (two of them are empty and are not embedded). */
  documents: number;
  querySet: QuerySet;
}

/** Where the collection is looked for when no folder is given. */
export function defaultCranfieldDir(env: NodeJS.ProcessEnv = process.env): string {
  const given = env[CRANFIELD_DIR_ENV];
  if (given) return resolve(given);
  // this file is <package>/src/eval/cranfield.ts; the data lies beside the package
  return fileURLToPath(new URL('../../../shared/data/cranfield/', import.meta.url));
}

/** The collection's queries with their judgements, as a query set (row ids are the document ids). */
export async function cranfieldQuerySet(dir = defaultCranfieldDir()): Promise<QuerySet> {
  const queries = await readJson<Query[]>(dir, FILES.queries, (q) => Number.isInteger(q.id) && typeof q.text === 'string');
  const qrels = await readJson<Judgement[]>(dir, FILES.qrels,
    (j) => Number.isInteger(j.queryId) && Number.isInteger(j.docId) && typeof j.relevance === 'number');
  const judgements = new Map<number, Record<string, number>>();
  for (const j of qrels) {
    const forQuery = judgements.get(j.queryId) ?? {};
    forQuery[String(j.docId)] = j.relevance;
    judgements.set(j.queryId, forQuery);
  }
  const labelled: LabelledQuery[] = queries
    .map((q) => ({ id: String(q.id), text: q.text, judgements: judgements.get(q.id) ?? {} }))
    // a query without a relevant document has no recall or nDCG (none in the published set)
    .filter((q) => Object.values(q.judgements).some((grade) => grade > 0));
  return { name: 'cranfield', queries: labelled };
}

export async function loadCranfield(db: Db, options: CranfieldOptions = {}): Promise<CranfieldLoad> {
  const dir = options.dir ?? defaultCranfieldDir();
  const table = options.table ?? 'public.cranfield_documents';
  const tenant = options.tenant ?? 'cranfield';
  const relation = qualifiedName(table);
  const documents = await readJson<Document[]>(dir, FILES.documents,
    (d) => Number.isInteger(d.id) && typeof d.body === 'string');
  const querySet = await cranfieldQuerySet(dir);

  await db.query(`create table if not exists ${relation} (
    id integer primary key,
    tenant text not null,
    title text not null,
    author text not null,
    body text not null)`);
  await db.query(`comment on table ${relation} is 'The Cranfield collection (see ATTRIBUTION.md beside its JSON files), loaded by pgregen eval cranfield'`);
  await db.query(
    `insert into ${relation} as t (id, tenant, title, author, body)
     select d.id, $2, coalesce(d.title, ''), coalesce(d.author, ''), d.body
       from jsonb_to_recordset($1::jsonb) as d(id integer, title text, author text, body text)
     on conflict (id) do update set tenant = excluded.tenant, title = excluded.title, author = excluded.author, body = excluded.body
      where (t.tenant, t.title, t.author, t.body) is distinct from (excluded.tenant, excluded.title, excluded.author, excluded.body)`,
    [JSON.stringify(documents), tenant]);
  return { table, documents: documents.length, querySet };
}

/**
 * Registers the loaded table as a source: the body (which starts with the title) is embedded, empty
 * bodies are not, and the tenant column scopes searches; its rows are enqueued for the worker at once.
 * A source of that name on the same table is left as it is (registered: false); on another table, regen.register_source refuses (RG011).
 */
export async function registerCranfieldSource(db: Db, options: { source?: string; version: string; table?: string }): Promise<{
  source: string; registered: boolean;
}> {
  const source = options.source ?? 'cranfield';
  const table = options.table ?? 'public.cranfield_documents';
  qualifiedName(table);
  const { rows } = await db.query<{ same: boolean }>(
    'select s.relation = $2::regclass as same from regen.sources s where s.name = $1', [source, table]);
  if (rows[0]?.same) return { source, registered: false };
  await db.query(
    `select regen.register_source($1::text, $2::regclass, 'id', $$nullif(body, '')$$, tenant_column => 'tenant', version => $3::text)`,
    [source, table, options.version]);
  await db.query('select * from regen.rebuild(source => $1::text)', [source]);
  return { source, registered: true };
}

/** "schema.table" or "table", each part a plain lowercase identifier, quoted for SQL. */
function qualifiedName(table: string): string {
  if (!/^[a-z_][a-z0-9_]{0,62}(\.[a-z_][a-z0-9_]{0,62})?$/.test(table)) {
    throw new PgregenError(`table name ${JSON.stringify(table)} is not a plain (optionally schema-qualified) identifier`,
      'use lowercase letters, digits and underscores, e.g. public.cranfield_documents');
  }
  return table.split('.').map((part) => pg.escapeIdentifier(part)).join('.');
}

async function readJson<T extends unknown[]>(dir: string, file: string, valid: (entry: T[number]) => boolean): Promise<T> {
  const path = join(dir, file);
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    const missing = (err as NodeJS.ErrnoException).code === 'ENOENT';
    throw new PgregenError(
      missing ? `the Cranfield collection is not at ${dir}: ${file} is missing` : `cannot read ${path}: ${(err as Error).message}`,
      `put cranfield-documents.json, cranfield-queries.json and cranfield-qrels.json in ../shared/data/cranfield/ beside the project, ` +
      `or point ${CRANFIELD_DIR_ENV} (or --dir) at the folder that holds them`);
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new PgregenError(`${path} is not valid JSON: ${(err as Error).message}`, 'restore the file from the Cranfield collection');
  }
  if (!Array.isArray(value) || value.length === 0) {
    throw new PgregenError(`${path} must hold a non-empty JSON array`, 'restore the file from the Cranfield collection');
  }
  const bad = value.findIndex((entry) => typeof entry !== 'object' || entry === null || !valid(entry));
  if (bad >= 0) {
    throw new PgregenError(`${path}: entry ${bad} is not in the expected shape: ${JSON.stringify(value[bad]).slice(0, 120)}`,
      'restore the file from the Cranfield collection');
  }
  return value as T;
}
