// The rebuild order across sources, on a corpus shaped like the seed's: active knowledge-base
// articles newest first (weight 3), help articles by views (weight 2), document chunks with no
// priority expression (weight 1), retired articles at priority 0. Every hot row of every source
// comes before every cold one; within a band the heavier source first, then the hotter rows.
import { beforeAll, describe, expect, it } from 'vitest';
import { freshDatabase, keepOnFailure, type TestDatabase } from './support/db.ts';

const db: TestDatabase = await freshDatabase();
keepOnFailure(db);

type Row = { source: string; row: string };

/** Rows in the order pg-boss hands their jobs out: higher priority first, then older. */
async function queueOrder(): Promise<Row[]> {
  const { rows } = await db.query<{ source: string; rows: string[] }>(
    `select data->>'source' as source, data->'rows' as rows from pgboss.job
      where name like 'regen\\_embed\\_v%' and state = 'created' order by priority desc, created_on, id`);
  return rows.flatMap((j) => j.rows.map((row) => ({ source: j.source, row })));
}

describe('hot-first across sources', () => {
  beforeAll(async () => {
    await db.query(`select regen.create_version('hash@1', 'local-hash', 8)`);
    await db.query(`create table kb (id int primary key, body text not null, active boolean not null, updated_at timestamptz not null)`);
    await db.query(`insert into kb select g, 'kb ' || g, g % 4 <> 0, timestamptz '2026-01-01' + g * interval '1 day' from generate_series(1, 100) g`);
    await db.query(`create table help (id int primary key, body text not null, views int not null)`);
    await db.query(`insert into help select g, 'help ' || g, case when g % 5 = 0 then 0 else (g * 37) % 500 + 1 end from generate_series(1, 100) g`);
    await db.query(`create table chunks (id int primary key, body text not null)`);
    await db.query(`insert into chunks select g, 'chunk ' || g from generate_series(1, 100) g`);
    await db.query(`select regen.register_source('kb_article', 'kb', 'id', 'body',
                      priority_expression => $$case when active then extract(epoch from updated_at) else 0 end$$,
                      weight => 3, version => 'hash@1')`);
    await db.query(`select regen.register_source('help_article', 'help', 'id', 'body', priority_expression => 'views', weight => 2, version => 'hash@1')`);
    await db.query(`select regen.register_source('doc_chunk', 'chunks', 'id', 'body', weight => 1, version => 'hash@1')`);
    await db.query(`select * from regen.rebuild()`);
  });

  it('active articles newest first, then help by views, then chunks, then the cold rows (retired, never viewed)', async () => {
    const order = await queueOrder();
    expect(order).toHaveLength(300);
    const kb = await db.query<{ id: number; active: boolean }>(`select id, active from kb order by updated_at desc`);
    const help = await db.query<{ id: number; views: number }>(`select id, views from help order by views desc, id::text`);
    const expected: Row[] = [
      ...kb.rows.filter((r) => r.active).map((r) => ({ source: 'kb_article', row: String(r.id) })),
      ...help.rows.filter((r) => r.views > 0).map((r) => ({ source: 'help_article', row: String(r.id) })),
      ...Array.from({ length: 100 }, (_, i) => String(i + 1)).sort().map((row) => ({ source: 'doc_chunk', row })),
      ...kb.rows.filter((r) => !r.active).map((r) => r.id).sort((a, b) => String(a).localeCompare(String(b)))
        .map((id) => ({ source: 'kb_article', row: String(id) })),
      ...help.rows.filter((r) => r.views === 0).map((r) => r.id).sort((a, b) => String(a).localeCompare(String(b)))
        .map((id) => ({ source: 'help_article', row: String(id) })),
    ];
    expect(order).toEqual(expected);
  });

  it('no job mixes hot and cold rows', async () => {
    const { rows } = await db.query<{ source: string; priority: number; rows: string[] }>(
      `select data->>'source' as source, priority, data->'rows' as rows from pgboss.job where name like 'regen\\_embed\\_v%'`);
    const cold = new Set((await db.query<{ k: string }>(
      `select 'kb_article/' || id as k from kb where not active union all select 'help_article/' || id from help where views = 0`)).rows.map((r) => r.k));
    for (const job of rows) {
      const kinds = new Set(job.rows.map((r) => cold.has(`${job.source}/${r}`)));
      expect(kinds.size, `job of ${job.source} at priority ${job.priority}`).toBe(1);
      expect(job.priority >= 500_000_000).toBe(!cold.has(`${job.source}/${job.rows[0]}`));
    }
  });
});
