// Proves the test harness itself: the server has pgvector, and freshDatabase() hands out
// separate databases, so test files cannot see each other's tables.
import { beforeAll, describe, expect, it } from 'vitest';
import { freshDatabase, keepOnFailure, type TestDatabase } from './support/db.ts';

let first: TestDatabase;
let second: TestDatabase;

beforeAll(async () => {
  [first, second] = await Promise.all([freshDatabase('harness a'), freshDatabase('harness b')]);
});
keepOnFailure(() => first);
keepOnFailure(() => second);

describe('test harness', () => {
  it('copies the template with pgvector >= 0.8 installed', async () => {
    const { rows } = await first.query<{ extversion: string }>("SELECT extversion FROM pg_extension WHERE extname = 'vector'");
    expect(rows, 'extension vector is missing from the template').toHaveLength(1);
    const [major, minor] = rows[0]!.extversion.split('.').map(Number);
    expect(major! > 0 || minor! >= 8, `pgvector ${rows[0]!.extversion} is older than 0.8`).toBe(true);
    // Not just installed: the type works.
    const distance = await first.query<{ d: number }>("SELECT '[1,0]'::vector <-> '[0,1]'::vector AS d");
    expect(distance.rows[0]!.d).toBeCloseTo(Math.SQRT2);
  });

  it('gives each call its own database', async () => {
    expect(first.name).not.toBe(second.name);
    expect(first.name).toMatch(/^pgregen_harness_a_[0-9a-f]{8}$/);
    const [a, b] = await Promise.all([first, second].map((db) => db.query<{ db: string }>('SELECT current_database() AS db')));
    expect(a!.rows[0]!.db).toBe(first.name);
    expect(b!.rows[0]!.db).toBe(second.name);
  });

  it('isolates the databases from each other', async () => {
    await first.query('CREATE TABLE only_in_first (id int)');
    const lookup = "SELECT to_regclass('public.only_in_first') IS NOT NULL AS present";
    expect((await first.query<{ present: boolean }>(lookup)).rows[0]!.present).toBe(true);
    expect((await second.query<{ present: boolean }>(lookup)).rows[0]!.present).toBe(false);
  });
});
