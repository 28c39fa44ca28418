// The documentation stays in step with the code: every public SQL object carries a COMMENT and is
// described in the README, and the README's worker table lists every setting the worker reads.
import { readFile } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import { SETTINGS } from '../src/worker/config.ts';
import { freshDatabase, keepOnFailure } from './support/db.ts';
import { embedRows } from './support/fixtures.ts';

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

/** The SQL block that follows `<!-- checked by test/docs.test.ts: NAME -->` in the README. */
function readmeSql(name: string): string {
  const marker = `<!-- checked by test/docs.test.ts: ${name} -->\n\`\`\`sql\n`;
  const at = readme.indexOf(marker);
  if (at < 0) throw new Error(`README has no SQL block marked ${name}`);
  const start = at + marker.length;
  return readme.slice(start, readme.indexOf('```', start));
}

describe('the README\'s SQL, as written', () => {
  it('registers the example source and joins search hits back to the rows, nearest first', async () => {
    const example = await freshDatabase('docs_example');
    try {
      await example.query(`create table public.kb_articles (id bigint primary key, tenant_id text not null, title text not null,
                             body text not null, active boolean not null, updated_at timestamptz not null)`);
      // long bodies: several chunks per article (chunk_chars 2000)
      await example.query(`insert into public.kb_articles
                           select g, 'tenant_' || (g % 2), 'Article ' || g, repeat('Paragraph ' || g || ' of the knowledge base. ', 120),
                                  g % 5 <> 0, timestamptz '2026-01-01' + g * interval '1 hour'
                             from generate_series(1, 12) g`);
      const registered = await example.query(readmeSql('register'));
      expect(registered).toHaveLength(3);   // three statements, the last one the gap
      const gap = (registered as unknown as Array<{ rows: Array<{ expected: string; missing: string }> }>)[2]!.rows[0]!;
      expect([Number(gap.expected), Number(gap.missing)]).toEqual([12, 12]);
      const version = 'text-embedding-3-small@1/chunk-2000';
      const { results } = await embedRows(example, Array.from({ length: 12 }, (_, i) => String(i + 1)), 'kb_article', version, 1536);
      expect(results.every((r) => r.stored)).toBe(true);
      expect(results.length).toBeGreaterThan(12);   // several chunks per article

      const client = await example.pool.connect();
      try {
        await client.query('begin');
        await client.query(`select regen.set_tenant('tenant_0')`);
        const { rows: [probe] } = await client.query<{ embedding: string }>(
          `select embedding::text from regen._embeddings where row_id = '4' and chunk_no = 2`);
        const joined = await client.query<{ id: string; title: string; distance: number }>(readmeSql('join'), [probe!.embedding]);
        expect(joined.rows).toHaveLength(10);
        expect(joined.rows[0]).toMatchObject({ id: '4', title: 'Article 4' });
        expect(joined.rows.map((r) => r.distance)).toEqual([...joined.rows.map((r) => r.distance)].sort((a, b) => a - b));
        expect(new Set(joined.rows.map((r) => Number(r.id) % 2))).toEqual(new Set([0]));   // the tenant's rows only

        const perRow = await client.query<{ id: string; distance: number }>(readmeSql('join-rows'), [probe!.embedding]);
        expect(perRow.rows.map((r) => r.id)).toHaveLength(6);   // tenant_0 has six articles, each once
        expect(new Set(perRow.rows.map((r) => r.id)).size).toBe(6);
        expect(perRow.rows[0]).toMatchObject({ id: '4', distance: 0 });
        expect(perRow.rows.map((r) => r.distance)).toEqual([...perRow.rows.map((r) => r.distance)].sort((a, b) => a - b));
        await client.query('rollback');
        // one statement, no transaction: the same rows, the tenant named in the call
        const oneStatement = await client.query<{ id: string; distance: number }>(readmeSql('join-one-statement').replace("'acme'", "'tenant_0'"),
          [probe!.embedding]);
        expect(oneStatement.rows).toEqual(perRow.rows);
      } finally {
        client.release();
      }
      await example.drop();
    } catch (error) {
      await example.close();
      throw error;
    }
  });
});
