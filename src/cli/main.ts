// The `pgregen` command line: parses arguments and turns results into output and exit codes.
// Each command lives in its own file; they return values, and only this file decides exit codes.
import { readFileSync } from 'node:fs';
import { Command, CommanderError, Help, Option } from 'commander';
import { describeError } from '../errors.ts';
import { explainError } from '../connect.ts';
import { installCommand, uninstallCommand } from './install.ts';
import { indexCommand, versionCommand } from './version.ts';
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
import { reconcileCommand } from './reconcile.ts';
import { adoptCommand } from './adopt.ts';

export const EXIT = { ok: 0, failure: 1, usage: 2 } as const;

/** The version of this pgregen, from its package.json. */
export const VERSION: string = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')).version;

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
  cli.addCommand(indexCommand());
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
  cli.addCommand(reconcileCommand());
  cli.addCommand(adoptCommand());
  cli.addCommand(demoCommand());
  // -V/--version is read by main() before parsing, not declared: declared on the program, commander
  // would take it anywhere on the line, also from subcommands whose --version <tag> names a version.
  const versionFlag = new Option('-V, --version', 'print the version of pgregen');
  cli.configureHelp({
    visibleOptions(cmd) {
      const options = Help.prototype.visibleOptions.call(this, cmd);
      return cmd === cli ? [versionFlag, ...options] : options;
    },
  });
  overrideExits(cli);
  return cli;
}

export async function main(argv: string[]): Promise<number> {
  if (argv[2] === '--version' || argv[2] === '-V') {
    process.stdout.write(`${VERSION}\n`);
    return EXIT.ok;
  }
  try {
    await program().parseAsync(argv);
    return EXIT.ok;
  } catch (err) {
    if (err instanceof CommanderError) {
      // --help ends here too, with exit code 0
      return err.exitCode === 0 ? EXIT.ok : EXIT.usage;
    }
    process.stderr.write(`pgregen: ${describeError(explainError(err))}\n`);
    return EXIT.failure;
  }
}
