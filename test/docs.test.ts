// The documentation stays in step with the code: every public SQL object carries a COMMENT and is
// described in the README, and the README's worker table lists every setting the worker reads.
import { readFile } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import { SETTINGS } from '../src/worker/config.ts';
import { freshDatabase, keepOnFailure } from './support/db.ts';

const readme = await readFile(new URL('../README.md', import.meta.url), 'utf8');
const db = await freshDatabase();
keepOnFailure(db);

describe('documentation', () => {
  it('every public function and view of schema regen has a comment and a README entry', async () => {
    const { rows } = await db.query(`
      select p.proname as name, obj_description(p.oid, 'pg_proc') as comment from pg_proc p
       where p.pronamespace = 'regen'::regnamespace and p.proname !~ '^(_|tg_)'
      union all
      select c.relname, obj_description(c.oid, 'pg_class') from pg_class c
       where c.relnamespace = 'regen'::regnamespace and c.relkind = 'v' and c.relname !~ '^_'`);
    expect(rows.length).toBeGreaterThan(20);
    for (const row of rows) {
      expect(row.comment, `COMMENT ON ${row.name}`).toBeTruthy();
      expect(readme, `README entry for regen.${row.name}`).toContain(`regen.${row.name}`);
    }
  });

  it('every private function and trigger function has a comment too', async () => {
    const { rows } = await db.query(`
      select p.proname as name from pg_proc p
       where p.pronamespace = 'regen'::regnamespace and obj_description(p.oid, 'pg_proc') is null`);
    expect(rows).toEqual([]);
  });

  it('the README lists every worker setting', () => {
    for (const setting of SETTINGS) expect(readme).toContain(`| \`${setting.env}\` |`);
  });

  it('the README lists every error code the SQL raises', async () => {
    const { rows } = await db.query(`
      select distinct m[1] as code from pg_proc p, regexp_matches(p.prosrc, 'errcode = ''(RG[0-9]{3})''', 'g') m
       where p.pronamespace = 'regen'::regnamespace`);
    expect(rows.length).toBeGreaterThan(5);
    for (const { code } of rows) expect(readme).toMatch(new RegExp(`^\\| ${code} \\|`, 'm'));
  });
});
