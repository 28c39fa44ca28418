// `pgregen demo --short`, the real binary end to end against a fresh test database: the five steps,
// the gate's refusal, a rollback without provider calls, and nothing of the demo left behind.
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { freshDatabase, keepOnFailure } from './support/db.ts';

const BIN = fileURLToPath(new URL('../bin/pgregen.js', import.meta.url));
const execFileAsync = promisify(execFile);

const db = await freshDatabase();
keepOnFailure(db);

describe('pgregen demo --short', () => {
  it('tells the whole story against a given database and cleans up after itself', async () => {
    const { stdout, stderr } = await execFileAsync(process.execPath, [BIN, 'demo', '--short'], {
      env: { ...process.env, DATABASE_URL: db.url }, timeout: 120_000, maxBuffer: 16 * 1024 * 1024,
    }).catch((err: { code: number; stdout: string; stderr: string }) => {
      throw new Error(`pgregen demo --short exited with ${err.code}\n${err.stdout}\n${err.stderr}`);
    });
    expect(stderr).toBe('');
    for (const heading of ['1. the gap', '2. the rebuild, hot first', '3. one question, answered inside each tenant',
      '4. disaster and recovery', '5. migrating to a second version']) {
      expect(stdout).toContain(`\n${heading}\n`);
    }
    // the hot set first: the first batch stored holds policies
    expect(stdout).toMatch(/│ \+0 ms +│ policy +│/);
    // each tenant gets its own policy: 16 weeks at northwind, 12 at kestrel
    expect(stdout).toMatch(/northwind +│ Parental leave +│ Employees with one year of service receive 16 weeks/);
    expect(stdout).toMatch(/kestrel +│ Parental leave +│ Employees with one year of service receive 12 weeks/);
    // a given database: only the demo's vectors go, and the recovery answers before it is complete
    expect(stdout).toContain("delete the demo sources' vectors");
    expect(stdout).toMatch(/time to first working answer: [\d.]+ m?s/);
    expect(stdout).toMatch(/ERROR: {2}version 'use-lite@2\/chunk-200\/lower' of source policy covers [\d.]+% of its rows, below the cutover gate of 99\.50%/);
    expect(stdout).toMatch(/DETAIL: \d+ of \d+ rows current/);
    expect(stdout).toMatch(/rollback took \d+ ms and 0 provider calls/);
    expect(stdout).toMatch(/│ [\d:.]+ +│ rollback +│ use-lite@1\/chunk-600 +│ use-lite@2\/chunk-200\/lower /);

    const sources = await db.query(`select count(*)::int as n from regen._sources where name in ('policy', 'help_article', 'handbook')`);
    expect(sources.rows[0].n).toBe(0);
    expect((await db.query(`select to_regnamespace('pgregen_demo') as ns`)).rows[0].ns).toBeNull();
    expect((await db.query(`select count(*)::int as n from pg_roles where rolname like 'pgregen_demo_app_%'`)).rows[0].n).toBe(0);
    expect((await db.query('select count(*)::int as n from regen._embeddings')).rows[0].n).toBe(0);
  }, 150_000);
});
