// `pgregen install` and `pgregen uninstall`.
import { Command } from 'commander';
import { install, uninstall } from '../install.ts';
import { toJson } from '../json.ts';
import { databaseUrl } from './options.ts';

export function installCommand(): Command {
  return new Command('install')
    .description('install or upgrade schema regen (idempotent; safe to run from several places at once)')
    .option('--json', 'print the result as JSON')
    .action(async (opts: { json?: boolean }, command: Command) => {
      const result = await install({ connectionString: databaseUrl(command) });
      if (opts.json) {
        console.log(toJson(result));
      } else if (result.applied.length === 0) {
        console.log(`schema regen is up to date (${result.alreadyApplied.length} migrations applied earlier)`);
      } else {
        console.log(`applied ${result.applied.length} migration(s): ${result.applied.join(', ')}`);
      }
    });
}

export function uninstallCommand(): Command {
  return new Command('uninstall')
    .description('remove schema regen and its triggers on your tables; your tables and rows stay')
    .option('--json', 'print the result as JSON')
    .action(async (opts: { json?: boolean }, command: Command) => {
      const result = await uninstall({ connectionString: databaseUrl(command) });
      if (opts.json) {
        console.log(toJson(result));
      } else if (!result.removed) {
        console.log('schema regen is not installed: nothing to remove');
      } else {
        const from = result.sources.length ? ` and the triggers of ${result.sources.length} source(s): ${result.sources.join(', ')}` : '';
        console.log(`removed schema regen${from}`);
      }
    });
}
