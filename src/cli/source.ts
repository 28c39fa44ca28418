// `pgregen source register|list|unregister`: the content types that carry embeddings.
import { Command, InvalidArgumentError } from 'commander';
import Table from 'cli-table3';
import type { Db } from '../db.ts';
import { withInstalled } from '../connect.ts';
import { jsonRows, toJson } from '../json.ts';
import { databaseUrl } from './options.ts';

export interface SourceRow {
  name: string;
  relation: string;
  id_column: string;
  content_expression: string;
  tenant_column: string | null;
  priority_expression: string | null;
  weight: number;
  filter_expression: string | null;
  active_version: string;
  /** ISO 8601. */
  created_at: string;
}

export interface SourceDefinition {
  table: string;
  idColumn: string;
  content: string;
  tenantColumn?: string;
  priority?: string;
  weight: number;
  filter?: string;
  version: string;
}

export interface RegisteredSource { name: string; table: string; version: string; rows: number }

export async function registerSource(db: Db, name: string, def: SourceDefinition): Promise<RegisteredSource> {
  await db.query(
    `select regen.register_source(name => $1::text, relation => $2::text::regclass, id_column => $3::name,
                                  content_expression => $4::text, tenant_column => $5::name, priority_expression => $6::text,
                                  weight => $7::float8, filter_expression => $8::text, version => $9::text)`,
    [name, def.table, def.idColumn, def.content, def.tenantColumn ?? null, def.priority ?? null, def.weight, def.filter ?? null, def.version]);
  const { rows: [gap] } = await db.query<{ relation: string; expected: string }>(
    `select s.relation::text as relation, g.expected from regen.sources s
       join regen.embedding_gap g on g.source = s.name and g.role = 'active' where s.name = $1`, [name]);
  return { name, table: gap?.relation ?? def.table, version: def.version, rows: Number(gap?.expected ?? 0) };
}

export async function listSources(db: Db): Promise<SourceRow[]> {
  const result = await db.query(
    `select name, relation::text as relation, id_column::text as id_column, content_expression, tenant_column::text as tenant_column,
            priority_expression, weight, filter_expression, active_version, created_at
       from regen.sources order by name`);
  return jsonRows<SourceRow>(result);
}

export async function unregisterSource(db: Db, name: string): Promise<{ name: string; table: string }> {
  const { rows: [row] } = await db.query<{ relation: string }>('select relation::text as relation from regen.sources where name = $1', [name]);
  await db.query('select regen.unregister_source($1::text)', [name]);   // RG010 for an unknown name, with its hint
  return { name, table: row?.relation ?? '' };
}

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

  return source;
}
