// Step 4: the vectors are lost, and regeneration is the recovery. The store is emptied together with
// the cache tier (regen._cache lives in the same database, so whatever loses the one loses the
// other): every vector is computed again by the provider. Measured: the time until the question of
// step 3 gets its answer again (hot first, so early) and the time until the gap is closed.
import type pg from 'pg';
import { readGap } from '../gap.ts';
import { formatGap } from '../format/gap.ts';
import { pause } from '../pause.ts';
import { QUESTION, heading, type DemoContext } from './context.ts';
import { SOURCES, V1, V2 } from './setup.ts';
import { ask, ms, rebuildAll } from './show.ts';

const count = async (db: pg.Client, sql: string, params: unknown[] = []) =>
  (await db.query<{ n: number }>(sql, params)).rows[0]!.n;

async function destroy(ctx: DemoContext): Promise<void> {
  const { db, say } = ctx;
  if (ctx.throwaway) {
    say('truncate regen._embeddings, regen._cache;   -- on the demo\'s own cluster: the whole store and the cache');
    await db.query('truncate regen._embeddings, regen._cache');
    return;
  }
  // a given database may hold other vectors: only the demo's own go
  say('delete the demo sources\' vectors and their versions\' cache entries (a given database: other vectors stay)');
  await db.query('begin');
  await db.query(`delete from regen._embeddings e using regen._sources s where s.id = e.source_id and s.name = any($1::text[])`, [[...SOURCES]]);
  await db.query(`delete from regen._cache c using regen._versions v where v.id = c.version_id and v.tag = any($1::text[])`, [[V1, V2]]);
  await db.query('commit');
}

/** Resolves with the ms (from `t0`) at which `tenant`'s search answers `expected` again, or null if it never did. */
async function firstAnswer(ctx: DemoContext, tenant: string, expected: { source: string; rowId: string }, t0: number,
  done: AbortSignal, searches: { n: number }): Promise<number | null> {
  for (;;) {
    // cheap check first (is the row's vector back?), then the real search as the application
    const back = await count(ctx.db, `select count(*)::int as n from regen._items it
        join regen._sources s on s.id = it.source_id join regen._versions v on v.id = it.version_id
       where s.name = $1 and v.tag = $2 and it.row_id = $3 and it.embedded_hash = it.content_hash`, [expected.source, V1, expected.rowId]);
    if (back > 0) {
      searches.n++;
      const hits = await ask(ctx.db, ctx.app, QUESTION, tenant, { k: 1 });
      if (hits[0]?.source === expected.source && hits[0].rowId === expected.rowId) return Date.now() - t0;
    }
    if (done.aborted || ctx.stop.aborted) return null;
    await pause(100, done);
  }
}

export async function disasterStep(ctx: DemoContext): Promise<void> {
  const { db, say, server, app } = ctx;
  const tenant = ctx.corpus.tenants[0]!;
  heading(ctx, '4. disaster and recovery');
  const [expected] = await ask(db, app, QUESTION, tenant, { k: 1 });
  if (!expected) throw new Error(`no answer for tenant ${tenant} before the disaster`);
  const vectors = await count(db, 'select count(*)::int as n from regen._embeddings');
  say(`the store holds ${vectors} vectors; tenant ${tenant}'s answer to the question is "${expected.title}".`);
  say('then the vectors are lost:');
  await destroy(ctx);
  const cached = await count(db, `select count(*)::int as n from regen._cache c join regen._versions v on v.id = c.version_id where v.tag = $1`, [V1]);
  say(`vectors left: ${await count(db, 'select count(*)::int as n from regen._embeddings')}, cache entries for ${V1}: ${cached}. ` +
    'the text is all still there, so the gap says exactly what to recompute:');
  say(formatGap(await readGap(db)));
  const empty = await ask(db, app, QUESTION, tenant);
  say(`search for tenant ${tenant} now: ${empty.length} hits.`);
  say('');
  say('recovery: the same rebuild button, hot first.');
  const before = { requests: server.stats.requests, inputs: server.stats.inputs };
  const t0 = Date.now();
  const rebuilt = new AbortController();
  const searches = { n: 0 };
  const answered = firstAnswer(ctx, tenant, expected, t0, rebuilt.signal, searches);
  let items: number;
  try {
    ({ items } = await rebuildAll(db, ctx.stop, say));
  } finally {
    rebuilt.abort();
  }
  const full = Date.now() - t0;
  const first = (await answered) ?? await firstAnswer(ctx, tenant, expected, t0, rebuilt.signal, searches);
  // each search embeds one query: what is left is the worker's
  const requests = server.stats.requests - before.requests - searches.n;
  const texts = server.stats.inputs - before.inputs - searches.n;
  const stored = await count(db, 'select count(*)::int as n from regen._embeddings');
  say('');
  say(`time to first working answer: ${first === null ? 'never' : ms(first)}  (tenant ${tenant}: "${expected.title}" is an active policy, so it came back early)`);
  say(`time to full recovery:        ${ms(full)}  (${items} items, ${stored} vectors)`);
  say(`the worker sent ${requests} provider requests with ${texts} texts for those ${stored} vectors` + (texts < stored
    ? ': a text that several rows share (the same help article in two tenants) is embedded once,\nas the cache is keyed by the hash of the text.'
    : '.') + ` (the watcher's ${searches.n} search(es) embedded ${searches.n} more.)`);
  say('no backup was restored: every vector was recomputed from the rows\' text, and each stored vector was checked');
  say('against the current hash of its text before it counted. had only some vectors been deleted (not truncated), they would');
  say('have moved to the cache tier (regen._cache) and come back with no provider call.');
}
