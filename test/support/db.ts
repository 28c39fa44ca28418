/// <reference path="./provided.d.ts" />
// Per-test-file databases: each file gets its own copy of the template that test/global-setup.ts
// built (pgvector + the pgregen schema), so files can run in parallel without seeing each other.
import { randomBytes } from 'node:crypto';
import { basename } from 'node:path';
import pg from 'pg';
import { afterAll, expect, inject } from 'vitest';
import { quoteIdent, withDatabase } from './url.ts';

export type TestDatabase = {
  url: string;
  name: string;
  pool: pg.Pool;
  query: pg.Pool['query'];
  /** Closes the pool, keeping the database (for inspection after a failure). */
  close(): Promise<void>;
  /** Closes the pool and drops the database. */
  drop(): Promise<void>;
};

/**
 * Creates a database copied from the template. `label` (default: the test file's name) only
 * makes the name recognisable; a random suffix keeps it unique.
 */
export async function freshDatabase(label?: string): Promise<TestDatabase> {
  const serverUrl = inject('serverUrl');
  const name = uniqueName(label ?? testFileLabel());
  await createFromTemplate(serverUrl, name, inject('templateDatabase'));

  const url = withDatabase(serverUrl, name);
  const pool = new pg.Pool({ connectionString: url, max: 10 });
  let closing: Promise<void> | undefined;
  const close = () => (closing ??= pool.end());
  return {
    url,
    name,
    pool,
    query: pool.query.bind(pool) as pg.Pool['query'],
    close,
    async drop() {
      await close();
      // pool.end() resolves before the server has seen every socket close; give the backends a
      // moment to go, so FORCE (for a client the test opened itself and forgot) kills nobody we own.
      await withAdmin(async (admin) => {
        for (let attempt = 0; attempt < 20; attempt++) {
          const { rows } = await admin.query('select count(*)::int as n from pg_stat_activity where datname = $1', [name]);
          if (rows[0].n === 0) break;
          await new Promise((resolve) => setTimeout(resolve, 50));
        }
        await admin.query(`DROP DATABASE IF EXISTS ${quoteIdent(name)} WITH (FORCE)`);
      });
    },
  };
}

/**
 * Registers an afterAll in the current file (or describe) that drops the database when every test
 * passed, and otherwise keeps it and prints its URL so the failure can be inspected.
 * Pass a getter when the database is created in beforeAll.
 */
export function keepOnFailure(db: TestDatabase | (() => TestDatabase | undefined)): void {
  // Vitest requires the first (context) argument to be a destructuring pattern, even when unused.
  afterAll(async ({}, suite) => {
    const database = typeof db === 'function' ? db() : db;
    if (!database) return;
    if (anyFailed(suite)) {
      await database.close();
      // A throwaway local or container server takes it along when it stops; TEST_DATABASE_URL keeps it.
      process.stderr.write(`pgregen tests: kept database ${database.name} for inspection: ${database.url}\n`);
    } else {
      await database.drop();
    }
  });
}

/** A pool on the server's maintenance database (for CREATE/DROP DATABASE and the like); end() it when done. */
export function adminPool(): pg.Pool {
  return new pg.Pool({ connectionString: inject('serverUrl'), max: 2 });
}

async function createFromTemplate(serverUrl: string, name: string, template: string): Promise<void> {
  const sql = `CREATE DATABASE ${quoteIdent(name)} TEMPLATE ${quoteIdent(template)}`;
  for (let attempt = 1; ; attempt++) {
    try {
      await withAdmin((admin) => admin.query(sql), serverUrl);
      return;
    } catch (error) {
      // 55006: something is connected to the template (usually an autovacuum worker, briefly); retry.
      const busy = (error as { code?: string }).code === '55006';
      if (!busy || attempt >= 5) {
        throw new Error(`could not create test database ${name} from ${template}: ${(error as Error).message}`, { cause: error });
      }
      await new Promise((resolve) => setTimeout(resolve, 200 * attempt));
    }
  }
}

async function withAdmin<T>(work: (client: pg.Client) => Promise<T>, serverUrl = inject('serverUrl')): Promise<T> {
  const client = new pg.Client({ connectionString: serverUrl });
  await client.connect();
  try {
    return await work(client);
  } finally {
    await client.end();
  }
}

function testFileLabel(): string {
  const path = expect.getState().testPath;
  return path ? basename(path).replace(/\.test\.ts$|\.ts$/, '') : 'test';
}

/** Lowercase [a-z0-9_], at most 63 bytes (PostgreSQL truncates longer identifiers). */
function uniqueName(label: string): string {
  const suffix = randomBytes(4).toString('hex');
  const cleaned = label.toLowerCase().replace(/[^a-z0-9]+/g, '_').replace(/^_+|_+$/g, '');
  const prefix = 'pgregen_';
  const room = 63 - prefix.length - 1 - suffix.length;
  return `${prefix}${cleaned.slice(0, room) || 'test'}_${suffix}`;
}

type TaskLike = { result?: { state?: string; errors?: unknown[] }; tasks?: readonly TaskLike[] };

function anyFailed(task: TaskLike): boolean {
  if (task.result?.state === 'fail' || task.result?.errors?.length) return true;
  return (task.tasks ?? []).some(anyFailed);
}
