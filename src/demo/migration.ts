// Step 5: the policies move to a second version (same model, 200-character chunks, lowercased text) while the first
// keeps serving: the gate refuses an early cutover, the build runs hot first, the cutover flips,
// and the rollback flips back without a single provider call.
import pg from 'pg';
import { readGap } from '../gap.ts';
import { formatGap } from '../format/gap.ts';
import { cutover, rollback, startMigration } from '../migrate.ts';
import { QUESTION, heading, type DemoContext } from './context.ts';
import { createSecondVersion, V1, V2 } from './setup.ts';
import { ask, follow, hitsTable, ms, table } from './show.ts';

const SOURCE = 'policy';

export async function migrationStep(ctx: DemoContext): Promise<void> {
  const { db, say, server, app } = ctx;
  const tenant = ctx.corpus.tenants[ctx.corpus.tenants.length - 1]!;
  heading(ctx, '5. migrating to a second version');
  say(`${V1} serves the policies; ${V2} embeds them lowercased, in 200-character chunks. it is built beside the one in service:`);
  await createSecondVersion(db);
  const started = await startMigration(db, SOURCE, V2);
  say(`select * from regen.start_migration('${SOURCE}', '${V2}');  -- ${started.items} items in ${started.jobs} job(s)`);
  say('');
  say(`an eager cutover, at once: select regen.cutover('${SOURCE}', '${V2}');`);
  try {
    await cutover(db, SOURCE, V2);
    throw new Error('the cutover gate let an unbuilt version through');
  } catch (err) {
    if (!(err instanceof pg.DatabaseError)) throw err;
    say(`  ERROR:  ${err.message}`);
    if (err.detail) say(`  DETAIL: ${err.detail}`);
  }
  say('');
  say('the build, while searches go on reading the active version:');
  await follow(db, { targets: [{ source: SOURCE, version: V2 }], force: false }, started.items, ctx.stop, say);
  say(formatGap(await readGap(db, { source: SOURCE })));
  const { rows: vectors } = await db.query<{ tag: string; n: number }>(`select v.tag, count(*)::int as n from regen._embeddings e
      join regen._versions v on v.id = e.version_id join regen._sources s on s.id = e.source_id
     where s.name = $1 group by v.tag order by v.tag`, [SOURCE]);
  say(`vectors of the ${ctx.corpus.policies.length} policies: ${vectors.map((r) => `${r.n} in ${r.tag}`).join(', ')} (the longer ones take two chunks now)`);
  say('');
  const active = await cutover(db, SOURCE, V2);
  say(`select regen.cutover('${SOURCE}', '${V2}');  -- now active: ${active}`);
  const hits = await ask(db, app, QUESTION, tenant, { sources: [SOURCE] });
  say(`tenant ${tenant} asks again, answered from the new version (the query embedded for it):`);
  say(hitsTable(hits, true));
  say('');
  const requests = server.stats.requests;
  const t0 = performance.now();
  const back = await rollback(db, SOURCE, 'demo: changed our mind');
  const took = performance.now() - t0;
  const calls = server.stats.requests - requests;
  say(`select regen.rollback('${SOURCE}', reason => 'demo: changed our mind');  -- now active: ${back}`);
  say(`rollback took ${ms(took)} and ${calls} provider calls: ${V1} was kept current all along, nothing is re-embedded.`);
  say('');
  say('select * from regen.version_events;');
  const { rows } = await db.query<{ at: Date; event: string; version: string; from_version: string | null; coverage: number | null; forced: boolean; reason: string | null }>(
    'select at, event, version, from_version, coverage, forced, reason from regen.version_events where source = $1 order by at', [SOURCE]);
  const t = table(['at', 'event', 'version', 'from', 'coverage', 'forced', 'reason']);
  for (const r of rows) {
    t.push([r.at.toISOString().slice(11, 23), r.event, r.version, r.from_version ?? '', r.coverage === null ? '' : `${(Number(r.coverage) * 100).toFixed(1)}%`,
      r.forced ? 'yes' : 'no', r.reason ?? '']);
  }
  say(t.toString());
}
