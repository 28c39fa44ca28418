// `pgregen demo`: installs pgregen on a throwaway database (or $DATABASE_URL), loads the sample
// corpus, registers three sources and shows the gap moving as rows change. Cleans up after itself.
import { Command } from 'commander';
import pg from 'pg';
import { install } from '../install.ts';
import { startLocalPostgres, type LocalPostgres } from '../local-postgres.ts';
import { readGap } from '../gap.ts';
import { handbooks, helpArticles, policies } from '../demo/corpus.ts';
import { formatGap } from './gap.ts';

const SCHEMA = 'pgregen_demo';

async function loadCorpus(db: pg.Client): Promise<void> {
  await db.query(`create schema ${SCHEMA}`);
  await db.query(`create table ${SCHEMA}.policies (id int primary key, tenant text not null, title text not null,
                    body text not null, active boolean not null, updated_at date not null)`);
  await db.query(`create table ${SCHEMA}.help_articles (id int primary key, tenant text not null, title text not null,
                    body text not null, views int not null)`);
  await db.query(`create table ${SCHEMA}.handbooks (id int primary key, tenant text not null, title text not null, body text not null)`);
  // json_populate_recordset: one round trip per table
  await db.query(`insert into ${SCHEMA}.policies select * from json_populate_recordset(null::${SCHEMA}.policies, $1)`, [JSON.stringify(policies())]);
  await db.query(`insert into ${SCHEMA}.help_articles select * from json_populate_recordset(null::${SCHEMA}.help_articles, $1)`, [JSON.stringify(helpArticles())]);
  await db.query(`insert into ${SCHEMA}.handbooks select * from json_populate_recordset(null::${SCHEMA}.handbooks, $1)`, [JSON.stringify(handbooks())]);
}

async function registerSources(db: pg.Client, version: string): Promise<void> {
  await db.query(`select regen.create_version($1, 'text-embedding-3-small', 512, 'openai', '{"chunk_chars": 600, "chunk_overlap": 60}')`, [version]);
  // hot first: active policies newest first, help articles by views, handbook chunks last
  await db.query(`select regen.register_source('policy', '${SCHEMA}.policies', 'id', $$title || E'\\n\\n' || body$$, 'tenant',
                    priority_expression => $$case when active then extract(epoch from updated_at) else 0 end$$, weight => 3, version => $1)`, [version]);
  await db.query(`select regen.register_source('help_article', '${SCHEMA}.help_articles', 'id', $$title || E'\\n\\n' || body$$, 'tenant',
                    priority_expression => 'views', weight => 2, version => $1)`, [version]);
  await db.query(`select regen.register_source('handbook', '${SCHEMA}.handbooks', 'id', $$title || E'\\n\\n' || body$$, 'tenant',
                    weight => 1, version => $1)`, [version]);
}

async function cleanUp(db: pg.Client): Promise<void> {
  await db.query(`select regen.unregister_source(name) from regen._sources where name in ('policy', 'help_article', 'handbook')`);
  await db.query(`drop schema if exists ${SCHEMA} cascade`);
}

export function demoCommand(): Command {
  return new Command('demo')
    .description('walk through pgregen on a throwaway database (or $DATABASE_URL) with a sample corpus')
    .option('--keep', 'leave the demo tables and sources in place (only with $DATABASE_URL or --database-url)')
    .action(async (opts: { keep?: boolean }, command: Command) => {
      const given = (command.optsWithGlobals().databaseUrl as string | undefined) ?? process.env.DATABASE_URL;
      let local: LocalPostgres | undefined;
      const say = (line = '') => console.log(line);
      const stopLocal = () => { void local?.stop(); };
      process.once('SIGINT', stopLocal).once('SIGTERM', stopLocal);
      try {
        if (!given) say('no DATABASE_URL: starting a throwaway PostgreSQL with pgvector ...');
        local = given ? undefined : await startLocalPostgres();
        const db = new pg.Client({ connectionString: given ?? local!.url, application_name: 'pgregen demo' });
        await db.connect();
        try {
          const installed = await install({ client: db });
          say(`installed schema regen (${installed.applied.length} migrations applied, ${installed.alreadyApplied.length} already there)`);
          await db.query(`drop schema if exists ${SCHEMA} cascade`);
          await loadCorpus(db);
          await registerSources(db, 'text-embedding-3-small@1/chunk-600');
          say('\n1. the gap right after registering three sources: nothing is embedded yet');
          say(formatGap(await readGap(db)));

          say('\n2. the gap per tenant');
          say(formatGap(await readGap(db, { byTenant: true, source: 'policy' }), true));

          say('\n3. rows come and go: the triggers keep the counts exact (two new policies, one deleted)');
          await db.query(`insert into ${SCHEMA}.policies values (1001, 'northwind', 'Winter schedule', 'From December the early shift starts at 6:30.', true, '2026-11-20'),
                                                               (1002, 'kestrel', 'Winter schedule', 'From December the early shift starts at 7:00.', true, '2026-11-21')`);
          await db.query(`delete from ${SCHEMA}.policies where id = 1`);
          await db.query(`update ${SCHEMA}.help_articles set views = views + 1`);  // not in the embedded text: no change
          say(formatGap(await readGap(db, { source: 'policy' })));
          say('\n(rebuilding and the worker arrive with the next milestone: see README)');
          if (!opts.keep || !given) await cleanUp(db);
        } finally {
          await db.end();
        }
      } finally {
        process.off('SIGINT', stopLocal).off('SIGTERM', stopLocal);
        await local?.stop();
      }
    });
}
