// `pgregen migrate start|cutover|rollback|retire`: moving a source to a new embedding version
// without downtime (regen.start_migration, regen.cutover, regen.rollback, regen.retire).
import { Command, InvalidArgumentError } from 'commander';
import Table from 'cli-table3';
import { cutover, retire, rollback, startMigration } from '../migrate.ts';
import { withInstalled } from '../connect.ts';
import { toJson } from '../json.ts';
import { databaseUrl } from './options.ts';
import { indexBuildView } from './version.ts';

function coverageArg(value: string): number {
  const n = Number(value);
  if (value.trim() === '' || !Number.isFinite(n) || n < 0 || n > 1) throw new InvalidArgumentError('expected a fraction between 0 and 1, e.g. 0.995');
  return n;
}

const url = (command: Command) => databaseUrl(command);

interface CutoverOptions { minCoverage: number; force?: boolean; reason?: string; maintenanceWorkMem?: string; json?: boolean }
const print = (json: boolean | undefined, value: unknown, text: string) => console.log(json ? toJson(value) : text);

export function migrateCommand(): Command {
  const migrate = new Command('migrate')
    .description('move a source to a new version without downtime: build in parallel, cut over at the gate, roll back, retire')
    .addHelpText('after', '\nA migration: version create, migrate start, rebuild --version NEW (or let the workers catch up),\n' +
      'migrate cutover once coverage passes the gate, migrate rollback if needed, migrate retire after the rollback window.');

  migrate.command('start')
    .description('build <version> for <source> beside the active one; edits are captured for both (regen.start_migration)')
    .argument('<source>', 'the source')
    .argument('<version>', 'the version to build (see pgregen version create)')
    .option('--json', 'print the result as JSON')
    .action(async (source: string, version: string, opts: { json?: boolean }, command: Command) => {
      const rows = [await withInstalled(url(command), 'pgregen migrate', (db) => startMigration(db, source, version))];
      const table = new Table({ head: ['source', 'version', 'items', 'jobs'], style: { head: [], border: [] } });
      for (const r of rows) table.push([r.source, r.version, r.items, r.jobs]);
      print(opts.json, rows, `building version ${version} for ${source}: the active version keeps serving; ` +
        `follow with pgregen gap, cut over with pgregen migrate cutover ${source} ${version}\n${table.toString()}`);
    });

  migrate.command('cutover')
    .description('make <version> the active one of <source>; refused below the coverage gate (regen.cutover). ' +
      'Builds the version\'s HNSW index first, concurrently, when it has none yet (progress on stderr)')
    .argument('<source>', 'the source')
    .argument('<version>', 'the version being built')
    .option('--min-coverage <fraction>', 'the gate: share of items current in the new version', coverageArg, 0.995)
    .option('--force', 'cut over below the gate (needs --reason)')
    .option('--reason <text>', 'why (recorded with the cutover)')
    .option('--maintenance-work-mem <size>', 'maintenance_work_mem for the index build, e.g. 1GB')
    .option('--json', 'print the result as JSON')
    .action(async (source: string, version: string, opts: CutoverOptions, command: Command) => {
      const result = await withInstalled(url(command), 'pgregen migrate', async (db) => {
        // regen.cutover returns quietly (a notice) for the version already served: nothing flips then
        const { rows: [row] } = await db.query<{ role: string }>(
          'select role from regen.embedding_gap where source = $1 and version = $2', [source, version]);
        if (row?.role === 'active') return { active: version, flipped: false };
        const view = await indexBuildView(url(command), opts.json ?? false, opts.maintenanceWorkMem);
        try {
          return { active: await cutover(db, source, version, { ...opts, index: view.options }), flipped: true };
        } finally {
          await view.close();
        }
      });
      print(opts.json, { source, ...result }, result.flipped
        ? `source ${source} now serves version ${result.active}; pgregen migrate rollback ${source} flips back`
        : `source ${source} already serves version ${version}: nothing changed`);
    });

  migrate.command('rollback')
    .description('flip <source> back to the version it served before the last cutover, without re-embedding (regen.rollback)')
    .argument('<source>', 'the source')
    .option('--reason <text>', 'why (recorded with the rollback)')
    .option('--json', 'print the result as JSON')
    .action(async (source: string, opts: { reason?: string; json?: boolean }, command: Command) => {
      const active = await withInstalled(url(command), 'pgregen migrate', async (db) => {
        const view = await indexBuildView(url(command), opts.json ?? false);
        try {
          return await rollback(db, source, opts.reason, { index: view.options });
        } finally {
          await view.close();
        }
      });
      print(opts.json, { source, active }, `source ${source} serves version ${active} again`);
    });

  migrate.command('retire')
    .description('delete the vectors of a version <source> no longer serves, once the rollback window has passed (regen.retire)')
    .argument('<source>', 'the source')
    .argument('<version>', 'the version to retire')
    .option('--min-age <interval>', 'the rollback window: time since the cutover, a PostgreSQL interval', '7 days')
    .option('--json', 'print the result as JSON')
    .action(async (source: string, version: string, opts: { minAge: string; json?: boolean }, command: Command) => {
      // retire() drops a version's index with DROP INDEX CONCURRENTLY: the connection is in autocommit here
      const { vectors, droppedIndexes } = await withInstalled(url(command), 'pgregen migrate', (db) => retire(db, source, version, opts.minAge));
      print(opts.json, { source, version, removed: vectors, droppedIndexes },
        `retired version ${version} of ${source}: ${vectors} vector(s) removed` +
        (droppedIndexes.length ? `; dropped ${droppedIndexes.join(', ')} (no source uses the version any more)` : ''));
    });

  return migrate;
}
