// `pgregen worker`: the sidecar. Configuration comes from the environment (see --help).
import { Command } from 'commander';
import { describeSettings, readConfig } from '../worker/config.ts';
import { startWorker } from '../worker/run.ts';

// How often the worker looks whether the process that started it is still there.
const PARENT_CHECK_MS = 1_000;

export function workerCommand(): Command {
  return new Command('worker')
    .description('embed queued rows: a pg-boss consumer that calls the embeddings API and hands vectors back to SQL')
    .addHelpText('after', `\nConfiguration (environment variables):\n${describeSettings()}\n\n`
      + 'SIGTERM or SIGINT: stop fetching, let in-flight batches finish (REGEN_SHUTDOWN_TIMEOUT_MS), hand back the rest, exit 0.\n'
      + 'Under a supervisor, start this command itself (node_modules/.bin/pgregen worker), not through npx or npm:\n'
      + 'they exit on SIGTERM without passing it on. Should the process that started the worker go away, the worker\n'
      + 'drains and exits as on SIGTERM.')
    .action(async (_opts: unknown, command: Command) => {
      const url = command.optsWithGlobals().databaseUrl as string | undefined;
      const config = readConfig(url ? { ...process.env, DATABASE_URL: url } : process.env);
      const worker = await startWorker(config);
      const shutdown = () => {
        // a hard bound, whatever happens: the queue hands unfinished batches to another worker
        setTimeout(() => process.exit(1), config.shutdownTimeoutMs + 10_000).unref();
        void worker.stop();
      };
      process.once('SIGTERM', shutdown).once('SIGINT', shutdown);
      // npx and npm run exit at once on SIGTERM and leave their child behind, re-parented: drain then too.
      const parent = process.ppid;
      const watch = parent > 1 ? setInterval(() => {
        if (process.ppid !== parent) {
          clearInterval(watch);
          process.stderr.write(`pgregen worker: the process that started it (pid ${parent}) is gone: draining and exiting\n`);
          shutdown();
        }
      }, PARENT_CHECK_MS) : undefined;
      watch?.unref();
      await worker.done;
      if (watch) clearInterval(watch);
    });
}
