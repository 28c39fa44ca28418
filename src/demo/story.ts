// The demo's story, step by step: 1. the gap, 2. the rebuild, hot first, 3. a question per tenant,
// 4. a disaster and the recovery (disaster.ts), 5. a migration with its gate, cutover and rollback
// (migration.ts). Each step prints what it does and what it saw; every number shown is measured.
import { readGap } from '../gap.ts';
import { formatGap } from '../format/gap.ts';
import { QUESTION, heading, type DemoContext } from './context.ts';
import { V1 } from './setup.ts';
import { arrivalOrder, ask, hitsTable, ms, rebuildAll, table } from './show.ts';
import { disasterStep } from './disaster.ts';
import { migrationStep } from './migration.ts';

async function gapStep(ctx: DemoContext): Promise<void> {
  const { db, say, corpus } = ctx;
  heading(ctx, '1. the gap');
  say(`loaded ${corpus.policies.length} policies, ${corpus.helpArticles.length} help articles and ${corpus.handbooks.length} handbooks ` +
    `for ${corpus.tenants.length} tenants (${corpus.tenants.join(', ')}) and registered them as three sources.`);
  say('nothing is embedded yet: select * from regen.embedding_gap;');
  say(formatGap(await readGap(db)));
}

async function rebuildStep(ctx: DemoContext): Promise<void> {
  const { db, say, server } = ctx;
  heading(ctx, '2. the rebuild, hot first');
  say('the rebuild button enqueues the gap by source weight, then by priority: active policies newest first,');
  say('help articles by views, handbook chunks last. the worker embeds it with the local USE-Lite model.');
  const before = server.stats.requests;
  const { items, seconds } = await rebuildAll(db, ctx.stop, say);
  say(`gap closed: ${items} items in ${seconds.toFixed(1)} s, ${server.stats.requests - before} provider requests, ` +
    `${(await db.query<{ n: number }>('select count(*)::int as n from regen._embeddings')).rows[0]!.n} vectors stored`);
  say('');
  say('the order the vectors came back in (one row per stored batch and source):');
  say(await arrivalOrder(db, V1, ctx.short ? 6 : 8));
}

async function searchStep(ctx: DemoContext): Promise<void> {
  const { db, say, app, corpus } = ctx;
  heading(ctx, '3. one question, answered inside each tenant');
  say(`the application connects as a role given regen.grant_app and calls search(): the query is embedded,`);
  say(`then regen.search_scoped ranks only the tenant's own vectors (row-level security and a filter before ranking).`);
  say(`question: "${QUESTION}"`);
  const answers = table(['tenant', 'top answer', 'what it says']);
  for (const tenant of corpus.tenants) {
    const hits = await ask(db, app, QUESTION, tenant);
    say('');
    say(`tenant ${tenant}:`);
    say(hitsTable(hits));
    const top = hits[0];
    answers.push([tenant, top?.title ?? '(nothing)', wrap(top?.text ?? '', 60)]);
  }
  say('');
  say('the same question, each tenant its own answer (no row of another tenant can come back):');
  say(answers.toString());
}

function wrap(text: string, width: number): string {
  const lines: string[] = [];
  let line = '';
  for (const word of text.split(/\s+/)) {
    if (line && line.length + word.length + 1 > width) {
      lines.push(line);
      line = word;
    } else {
      line = line ? `${line} ${word}` : word;
    }
  }
  if (line) lines.push(line);
  return lines.slice(0, 3).join('\n') + (lines.length > 3 ? ' ...' : '');
}

export async function runStory(ctx: DemoContext): Promise<void> {
  const started = Date.now();
  await gapStep(ctx);
  await rebuildStep(ctx);
  await searchStep(ctx);
  await disasterStep(ctx);
  await migrationStep(ctx);
  ctx.say('');
  ctx.say(`the story took ${ms(Date.now() - started)}.`);
}
