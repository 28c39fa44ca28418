// `pgregen adopt`: stores vectors a table already holds as a version's, re-embedding only a sample
// to check them (regen.start_adoption / regen.finish_adoption, see src/adopt.ts).
import { Command, InvalidArgumentError } from 'commander';
import Table from 'cli-table3';
import { adopt, type Adoption } from '../adopt.ts';
import { withInstalled } from '../connect.ts';
import { toJson } from '../json.ts';
import { databaseUrl, numberBetween } from './options.ts';
import { openaiFromEnv } from './search.ts';

function count(value: string): number {
  if (!/^\d+$/.test(value.trim()) || Number(value) < 1) throw new InvalidArgumentError('expected a whole number of at least 1');
  return Number(value);
}

const VERDICTS: Record<string, string> = {
  ok: 'adoptable', current: 'already current (left as they are)', null: 'NULL vector: stay missing',
  wrong_dimensions: 'vector of another size: stay missing', chunked: 'several chunks, one vector: stay missing',
  not_given: 'not in the table of vectors: stay missing', unknown: 'rows of the table of vectors that the source does not have',
};

export function formatAdoption(a: Adoption): string {
  const table = new Table({ head: ['rows', 'verdict'], style: { head: [], border: [] } });
  for (const [verdict, n] of Object.entries(a.judged)) table.push([n, VERDICTS[verdict] ?? verdict]);
  const sample = a.sampledChunks > 0
    ? `sample: ${a.sampledRows} row(s), ${a.sampledChunks} chunk(s) re-embedded; cosine similarity lowest ${a.sampleMinCosine?.toFixed(4)}, ` +
      `mean ${a.sampleMeanCosine?.toFixed(4)}, ${a.sampleBelow} below ${a.minCosine}`
    : 'sample: nothing to adopt, nothing re-embedded';
  const outcome = a.state === 'adopted'
    ? `adopted ${a.adoptedRows} row(s) into ${a.version}: current, with no provider call beyond the sample`
    : `stored ${a.adoptedRows} row(s) into ${a.version}, ${a.unverifiedRows} of them unverified: they show as adopted in ` +
      `regen.embedding_gap, are searchable, and the next rebuild re-embeds them hot-first`;
  return `adoption ${a.id} of source ${a.source}\n${table.toString()}\n${sample}\n${outcome}`;
}

interface AdoptCliOptions {
  source: string; version: string; column: string; from?: string; idColumn?: string; chunkColumn?: string;
  sample: number; sampleMin: number; minCosine: number; force?: boolean; json?: boolean;
}

export function adoptCommand(): Command {
  return new Command('adopt')
    .description('store existing vectors (a column of the source table, or a table keyed by row id) as a version\'s, ' +
      'checked by re-embedding a sample (regen.start_adoption, regen.finish_adoption)')
    .requiredOption('--source <name>', 'the registered source whose rows the vectors belong to')
    .requiredOption('--version <tag>', 'the version to adopt them into (the model that computed them)')
    .requiredOption('--column <name>', 'the column that holds the vectors')
    .option('--from <table>', 'a table of vectors keyed by row id (default: the source table)')
    .option('--id-column <name>', "--from's column of row ids (default: the source's id column name)")
    .option('--chunk-column <name>', "--from's column of chunk numbers, from 1 (needed for a version that chunks texts)")
    .option('--sample <fraction>', 'share of the adoptable rows re-embedded to check them', numberBetween(0, 1), 0.01)
    .option('--sample-min <n>', 'at least this many rows re-embedded', count, 50)
    .option('--min-cosine <c>', 'lowest cosine similarity of a re-embedded chunk to the vector to adopt', numberBetween(-1, 1), 0.99)
    .option('--force', 'store the vectors even when the sample does not match, marked adopted (re-embedded by the next rebuild)')
    .option('--json', 'print the adoption as JSON')
    .addHelpText('after', `
The sample is embedded through OPENAI_BASE_URL (default: OpenAI) with OPENAI_API_KEY, like the worker:
those are the only provider calls. NULL vectors and vectors of another size stay missing; regen.adoptions
keeps every adoption with its figures. Run it as the schema's owner.

Examples:
  pgregen adopt --source kb --version text-embedding-3-small@1 --column embedding
  pgregen adopt --source handbooks --version text-embedding-3-small@1 --from old_chunks --id-column doc_id \\
                --chunk-column chunk_no --column vec`)
    .action(async (opts: AdoptCliOptions, command: Command) => {
      const openai = openaiFromEnv();
      const adoption = await withInstalled(databaseUrl(command), 'pgregen adopt', (db) => adopt(db, openai, {
        source: opts.source, version: opts.version, column: opts.column, fromTable: opts.from, idColumn: opts.idColumn,
        chunkColumn: opts.chunkColumn, sampleFraction: opts.sample, sampleMin: opts.sampleMin, minCosine: opts.minCosine,
        force: opts.force ?? false,
      }));
      console.log(opts.json ? toJson(adoption) : formatAdoption(adoption));
    });
}
