// `pgregen worker`: the sidecar. Configuration comes from the environment (see --help).
import { Command } from 'commander';
import { describeSettings, readConfig } from '../worker/config.ts';
import { startWorker } from '../worker/run.ts';

export function workerCommand(): Command {
  return new Command('worker')
    .description('embed queued rows: a pg-boss consumer that calls the embeddings API and hands vectors back to SQL')
    .addHelpText('after', `\nConfiguration (environment variables):\n${describeSettings()}\n\nSIGTERM or SIGINT: stop fetching, let in-flight batches finish (REGEN_SHUTDOWN_TIMEOUT_MS), hand back the rest, exit 0.`)
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
      await worker.done;
    });
}
