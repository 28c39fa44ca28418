// What the demo's steps share: following a rebuild with a progress bar (plain lines when stdout is
// not a terminal), the order in which vectors came back, and searches shown as tables.
import Table from 'cli-table3';
import cliProgress from 'cli-progress';
import type pg from 'pg';
import { search, type SearchContext, type SearchHit } from '../search.ts';
import { rebuild, trackProgress, type Outcome, type Progress, type Scope } from '../rebuild.ts';
import { progressLine } from '../format/progress.ts';
import { SCHEMA } from './setup.ts';

export const table = (head: string[]) => new Table({ head, style: { head: [], border: [] } });
export const ms = (n: number) => (n < 1000 ? `${Math.round(n)} ms` : `${(n / 1000).toFixed(1)} s`);

function progressView(say: (line: string) => void) {
  if (process.stdout.isTTY) {
    const bar = new cliProgress.SingleBar({ format: ' {bar} {percentage}% | {value}/{total} items | {rate} items/s',
      stream: process.stdout, hideCursor: true, barsize: 30 }, cliProgress.Presets.shades_classic);
    let started = false;
    return {
      show(p: Progress) {
        if (!started) bar.start(p.total, p.done, { rate: p.rate.toFixed(1) });
        started = true;
        bar.setTotal(p.total);
        bar.update(p.done, { rate: p.rate.toFixed(1) });
      },
      end: () => { if (started) bar.stop(); },
    };
  }
  let last = -1;
  return {
    show(p: Progress) {
      if (p.done !== last) say(`  ${progressLine(p)}`);
      last = p.done;
    },
    end: () => {},
  };
}

/** Follows a scope until its gap is closed; throws if it gets stuck or items fail. */
export async function follow(db: pg.Client, scope: Scope, enqueued: number, stop: AbortSignal, say: (line: string) => void): Promise<Progress> {
  const view = progressView(say);
  let outcome: Outcome;
  try {
    outcome = await trackProgress(db, scope, enqueued, stop, (p) => view.show(p), 500);
  } finally {
    view.end();
  }
  if (outcome.kind === 'interrupted') throw new Error('interrupted');
  if (outcome.kind === 'stuck' || outcome.last.failed > 0) {
    throw new Error(`the rebuild did not finish: ${outcome.last.remaining} item(s) open, ${outcome.last.failed} failed (see regen.failed_items)`);
  }
  return outcome.last;
}

/** The rebuild button for every source, then followed to the end. */
export async function rebuildAll(db: pg.Client, stop: AbortSignal, say: (line: string) => void): Promise<{ items: number; seconds: number }> {
  const started = Date.now();
  const rows = await rebuild(db, {});
  const items = rows.reduce((n, r) => n + r.items, 0);
  say(`select * from regen.rebuild();  -- ${items} items in ${rows.reduce((n, r) => n + r.jobs, 0)} job(s): ` +
    rows.map((r) => `${r.source} ${r.items}`).join(', '));
  await follow(db, { targets: rows.map((r) => ({ source: r.source, version: r.version })), force: false }, items, stop, say);
  return { items, seconds: (Date.now() - started) / 1000 };
}

/**
 * The order the vectors came back in: rows grouped by the transaction that stored them (one batch
 * of the worker), first batch first, each with the hottest and the coldest row it held.
 */
export async function arrivalOrder(db: pg.Client, version: string, limit: number): Promise<string> {
  const { rows } = await db.query<{ at: string; source: string; rows: string; hottest: string; coldest: string }>(
    `with stored as (
       select e.embedded_at, s.name as source, e.row_id, it.priority, e.tenant
         from regen._embeddings e
         join regen._sources s on s.id = e.source_id
         join regen._versions v on v.id = e.version_id and v.tag = $1
         join regen._items it on it.source_id = e.source_id and it.version_id = e.version_id and it.row_id = e.row_id
        where e.chunk_no = 1),
     described as (
       select st.*, coalesce(p.title || case when p.active then ' (active, ' || p.updated_at || ')' else '' end,
                             h.title || ' (' || h.views || ' views)', b.title) as what
         from stored st
         left join ${SCHEMA}.policies p on st.source = 'policy' and p.id::text = st.row_id
         left join ${SCHEMA}.help_articles h on st.source = 'help_article' and h.id::text = st.row_id
         left join ${SCHEMA}.handbooks b on st.source = 'handbook' and b.id::text = st.row_id)
     select round(extract(epoch from embedded_at - min(embedded_at) over ()) * 1000) as at, source, count(*) as rows,
            (array_agg(tenant || ': ' || what order by priority desc, row_id))[1] as hottest,
            (array_agg(tenant || ': ' || what order by priority, row_id desc))[1] as coldest
       from described group by embedded_at, source order by embedded_at, min(priority) desc limit $2`, [version, limit]);
  const t = table(['batch stored at', 'source', 'rows', 'hottest row in it', 'coldest row in it']);
  for (const r of rows) t.push([`+${ms(Number(r.at))}`, r.source, r.rows, r.hottest, r.coldest]);
  return t.toString();
}

export interface Titled extends SearchHit { title: string; text: string }

/** search() as the application role, with each hit's title and text looked up for display. */
export async function ask(db: pg.Client, app: SearchContext, question: string, tenant: string,
  options: { k?: number; sources?: string[] } = {}): Promise<Titled[]> {
  const hits = await search(app, question, { tenant, k: options.k ?? 3, sources: options.sources });
  const { rows } = await db.query<{ source: string; row_id: string; title: string; body: string }>(
    `select 'policy' as source, id::text as row_id, title, body from ${SCHEMA}.policies
     union all select 'help_article', id::text, title, body from ${SCHEMA}.help_articles
     union all select 'handbook', id::text, title, body from ${SCHEMA}.handbooks`);
  const byKey = new Map(rows.map((r) => [`${r.source}/${r.row_id}`, r]));
  return hits.map((h) => {
    const row = byKey.get(`${h.source}/${h.rowId}`);
    return { ...h, title: row?.title ?? '?', text: row?.body ?? '' };
  });
}

export function hitsTable(hits: Titled[], withVersion = false): string {
  const t = table(['#', 'source', 'title', ...(withVersion ? ['chunk'] : []), 'distance', ...(withVersion ? ['version'] : [])]);
  hits.forEach((h, i) => t.push([i + 1, h.source, h.title, ...(withVersion ? [h.chunkNo] : []), h.distance.toFixed(3), ...(withVersion ? [h.version] : [])]));
  return t.toString();
}
