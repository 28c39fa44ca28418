// `pgregen source register|list|unregister|mirror`: the content types that carry embeddings.
import { Command, InvalidArgumentError } from 'commander';
import Table from 'cli-table3';
import { withInstalled } from '../connect.ts';
import { toJson } from '../json.ts';
import { PgregenError } from '../errors.ts';
import { listSources, registerSource, setMirror, unregisterSource, type SourceRow } from '../sources.ts';
import { databaseUrl } from './options.ts';

export function formatSources(rows: SourceRow[]): string {
  if (rows.length === 0) return 'no sources registered: see pgregen source register --help';
  const table = new Table({
    head: ['name', 'table', 'id', 'content', 'tenant', 'priority', 'weight', 'filter', 'active version'],
    style: { head: [], border: [] },
  });
  for (const r of rows) {
    table.push([r.name, r.relation, r.id_column, r.content_expression, r.tenant_column ?? '-', r.priority_expression ?? '-',
      r.weight, r.filter_expression ?? '-', r.active_version]);
  }
  return table.toString();
}

function weightArg(value: string): number {
  const n = Number(value);
  if (value.trim() === '' || !Number.isFinite(n)) throw new InvalidArgumentError('expected a number');
  return n;
}

interface RegisterOptions {
  table: string; idColumn: string; content: string; tenantColumn?: string; priority?: string; weight: number;
  filter?: string; version: string; json?: boolean;
}

export function sourceCommand(): Command {
  const source = new Command('source')
    .description('register, list and unregister sources: tables whose rows carry embeddings');

  source.command('register')
    .description('install change capture on a table and track its rows for a version (regen.register_source)')
    .argument('<name>', 'source name: 1 to 40 of [a-z0-9_], starting with a letter')
    .requiredOption('--table <table>', 'the table, optionally schema-qualified')
    .requiredOption('--id-column <column>', 'a column with a primary key or unique index of its own')
    .requiredOption('--content <expression>', "SQL expression of the text to embed, e.g. \"title || E'\\n\\n' || body\"")
    .requiredOption('--version <tag>', 'the version to build and serve (see pgregen version list)')
    .option('--tenant-column <column>', 'the column naming the tenant of a row')
    .option('--priority <expression>', 'SQL expression (float8), higher is embedded first')
    .option('--weight <w>', 'weight of the source in rebuilds: heavier sources go first', weightArg, 1)
    .option('--filter <expression>', 'SQL expression (boolean): only rows where it is true are embedded')
    .option('--json', 'print the result as JSON')
    .action(async (name: string, opts: RegisterOptions, command: Command) => {
      const result = await withInstalled(databaseUrl(command), 'pgregen source', (db) => registerSource(db, name, opts));
      if (opts.json) console.log(toJson(result));
      else console.log(`registered source ${name} on ${result.table} for version ${result.version}: ${result.rows} row(s) to embed; ` +
        'run pgregen rebuild to enqueue them');
    });

  source.command('list')
    .description('list the sources with their expressions and active version (regen.sources)')
    .option('--json', 'print rows as JSON')
    .action(async (opts: { json?: boolean }, command: Command) => {
      const rows = await withInstalled(databaseUrl(command), 'pgregen source', listSources);
      console.log(opts.json ? toJson(rows) : formatSources(rows));
    });

  source.command('unregister')
    .description('drop the capture triggers, items and vectors of a source (vectors move to the cache); the table stays')
    .argument('<name>', 'the source')
    .option('--json', 'print the result as JSON')
    .action(async (name: string, opts: { json?: boolean }, command: Command) => {
      const result = await withInstalled(databaseUrl(command), 'pgregen source', (db) => unregisterSource(db, name));
      if (opts.json) console.log(toJson(result));
      else console.log(`unregistered source ${name}: its triggers on ${result.table} and its vectors are gone; the table and its rows stay`);
    });

  source.command('mirror')
    .description('keep a vector column of the source\'s table equal to its active version\'s vectors (regen.set_mirror); the worker writes it')
    .argument('<name>', 'the source')
    .argument('[column]', 'the vector column to mirror into')
    .option('--off', 'stop mirroring (the column keeps what it holds)')
    .option('--json', 'print the result as JSON')
    .addHelpText('after', `
Every vector written back, and every row at a cutover or rollback, becomes an UPDATE of your table
(a new row version; your other triggers on it fire), made by the worker in short transactions that
skip rows your application holds locked. Rows whose text is several chunks get NULL. Off by default.`)
    .action(async (name: string, column: string | undefined, opts: { off?: boolean; json?: boolean }, command: Command) => {
      if (!opts.off && !column) throw new PgregenError('name the column to mirror into, or pass --off', 'pgregen source mirror kb_article embedding');
      if (opts.off && column) throw new PgregenError('--off takes no column', 'pgregen source mirror kb_article --off');
      const result = await withInstalled(databaseUrl(command), 'pgregen source', (db) => setMirror(db, name, opts.off ? null : column!));
      if (opts.json) console.log(toJson({ source: name, column: result }));
      else console.log(result ? `source ${name} mirrors its active version's vectors into column ${result}: the worker writes them`
        : `source ${name} no longer mirrors its vectors`);
    });

  return source;
}
