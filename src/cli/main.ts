// The `pgregen` command line: parses arguments and turns results into output and exit codes.
// Each command lives in its own file; they return values, and only this file decides exit codes.
import { Command, CommanderError } from 'commander';
import { describeError } from '../errors.ts';
import { installCommand, uninstallCommand } from './install.ts';
import { gapCommand } from './gap.ts';
import { demoCommand } from './demo.ts';
import { workerCommand } from './worker.ts';

export const EXIT = { ok: 0, failure: 1, usage: 2 } as const;

export function program(): Command {
  const cli = new Command('pgregen')
    .description('Keep pgvector embeddings in sync with the text they were computed from.')
    .option('-d, --database-url <url>', 'PostgreSQL connection string (default: $DATABASE_URL)')
    .showHelpAfterError('(run with --help for usage)')
    .exitOverride();
  cli.addCommand(installCommand());
  cli.addCommand(uninstallCommand());
  cli.addCommand(gapCommand());
  cli.addCommand(workerCommand());
  cli.addCommand(demoCommand());
  for (const command of cli.commands) command.exitOverride();
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
    process.stderr.write(`pgregen: ${describeError(err)}\n`);
    return EXIT.failure;
  }
}
