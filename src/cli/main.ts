// The `pgregen` command line: parses arguments and turns results into output and exit codes.
// Each command lives in its own file; they return values, and only this file decides exit codes.
import { Command, CommanderError } from 'commander';
import { describeError } from '../errors.ts';
import { explainError } from '../connect.ts';
import { installCommand, uninstallCommand } from './install.ts';
import { versionCommand } from './version.ts';
import { sourceCommand } from './source.ts';
import { gapCommand } from './gap.ts';
import { rebuildCommand } from './rebuild.ts';
import { workerCommand } from './worker.ts';
import { statusCommand } from './status.ts';
import { searchCommand } from './search.ts';
import { migrateCommand } from './migrate.ts';
import { demoCommand } from './demo.ts';
import { evalCommand, shadowCommand } from './eval.ts';
import { tenantIndexesCommand } from './tenant-indexes.ts';

export const EXIT = { ok: 0, failure: 1, usage: 2 } as const;

/** Commander's own exit and error display, for a command and every subcommand below it. */
function overrideExits(command: Command): void {
  command.exitOverride().showHelpAfterError('(run with --help for usage)');
  for (const sub of command.commands) overrideExits(sub);
}

export function program(): Command {
  const cli = new Command('pgregen')
    .description('Keep pgvector embeddings in sync with the text they were computed from.')
    .option('-d, --database-url <url>', 'PostgreSQL connection string (default: $DATABASE_URL)')
    .addHelpText('after', '\nExit codes: 0 success, 1 failure (the message says what to fix), 2 bad usage.');
  cli.addCommand(installCommand());
  cli.addCommand(uninstallCommand());
  cli.addCommand(versionCommand());
  cli.addCommand(sourceCommand());
  cli.addCommand(gapCommand());
  cli.addCommand(rebuildCommand());
  cli.addCommand(workerCommand());
  cli.addCommand(statusCommand());
  cli.addCommand(searchCommand());
  cli.addCommand(migrateCommand());
  cli.addCommand(evalCommand());
  cli.addCommand(shadowCommand());
  cli.addCommand(tenantIndexesCommand());
  cli.addCommand(demoCommand());
  overrideExits(cli);
  return cli;
}

export async function main(argv: string[]): Promise<number> {
  try {
    await program().parseAsync(argv);
    return EXIT.ok;
  } catch (err) {
    if (err instanceof CommanderError) {
      // --help and --version end here too, with exit code 0
      return err.exitCode === 0 ? EXIT.ok : EXIT.usage;
    }
    process.stderr.write(`pgregen: ${describeError(explainError(err))}\n`);
    return EXIT.failure;
  }
}
