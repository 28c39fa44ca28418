// adopt(): existing vectors stored as a version's, with no provider call beyond a sample
// (sql/0029_adopt.sql). SQL judges the rows, draws the sample, compares and stores; this embeds the
// sample with the version's model, and loads a large adoption without the version's HNSW index
// (dropped and built again concurrently, as a large rebuild does).
import type OpenAI from 'openai';
import pgvector from 'pgvector';
import type { Db } from './db.ts';
import { PgregenError } from './errors.ts';
import { embedTexts } from './search.ts';
import { buildVersionIndexes, deferVersionIndexes } from './versions.ts';

export interface AdoptOptions {
  source: string;
  version: string;
  /** The column that holds the vectors: of the source table, or of `fromTable`. */
  column: string;
  /** A table of vectors keyed by the row id (default: the source table itself). */
  fromTable?: string;
  /** fromTable's column of row ids (default: the source's id column name). */
  idColumn?: string;
  /** fromTable's column of chunk numbers, pgregen's (1 for the first chunk); none: one vector per row. */
  chunkColumn?: string;
  /** The share of adoptable rows re-embedded to check the vectors (default 0.01). */
  sampleFraction?: number;
  /** At least this many rows re-embedded (default 50). */
  sampleMin?: number;
  /** The lowest cosine similarity of a sample vector to the vector adopted for it (default 0.99). */
  minCosine?: number;
  /** Store the vectors even when the sample does not match, marked adopted (re-embedded by the next rebuild). */
  force?: boolean;
}

export interface Adoption {
  id: number;
  source: string;
  version: string;
  state: 'sampled' | 'adopted' | 'forced' | 'refused';
  /** Rows per verdict: ok, current, null, wrong_dimensions, chunked, not_given, unknown. */
  judged: Record<string, number>;
  sampledRows: number;
  sampledChunks: number;
  minCosine: number;
  sampleMinCosine: number | null;
  sampleMeanCosine: number | null;
  sampleBelow: number | null;
  adoptedRows: number;
  unverifiedRows: number;
}

interface AdoptionRow {
  id: string; source: string; version: string; state: Adoption['state']; judged: Record<string, number> | null;
  sampled_rows: number | null; sampled_chunks: number | null; min_cosine: number; sample_min_cosine: number | null;
  sample_mean_cosine: number | null; sample_below: number | null; adopted_rows: string | null; unverified_rows: string | null;
}

const toAdoption = (r: AdoptionRow): Adoption => ({
  id: Number(r.id), source: r.source, version: r.version, state: r.state, judged: r.judged ?? {},
  sampledRows: r.sampled_rows ?? 0, sampledChunks: r.sampled_chunks ?? 0, minCosine: r.min_cosine,
  sampleMinCosine: r.sample_min_cosine, sampleMeanCosine: r.sample_mean_cosine, sampleBelow: r.sample_below,
  adoptedRows: Number(r.adopted_rows ?? 0), unverifiedRows: Number(r.unverified_rows ?? 0),
});

/** Texts sent to the provider per request while embedding the sample. */
const EMBED_BATCH = 128;

/**
 * Adopts existing vectors as a version's. Throws a PgregenError (code RG083) with the sample's
 * figures when the sample does not match and `force` is not set: nothing is stored then, and
 * regen.adoptions keeps the refused adoption. Needs the schema's owner (it writes the store and
 * may drop and build the version's index).
 */
export async function adopt(db: Db, openai: OpenAI, options: AdoptOptions): Promise<Adoption> {
  const { rows: [started] } = await db.query<AdoptionRow>(
    `select * from regen.start_adoption($1::text, $2::text, $3::name, $4::regclass, $5::name, $6::name,
                                        $7::float8, $8::integer, $9::float8)`,
    [options.source, options.version, options.column, options.fromTable ?? null, options.idColumn ?? null,
      options.chunkColumn ?? null, options.sampleFraction ?? 0.01, options.sampleMin ?? 50, options.minCosine ?? 0.99]);
  const adoption = toAdoption(started!);

  const { rows: sample } = await db.query<{ row_id: string; chunk_no: number; input: string; model: string; dimensions: number; send_dimensions: boolean }>(
    'select * from regen.adoption_sample($1::bigint)', [adoption.id]);
  // one version: every row of the sample names the same model
  const target = sample[0] && { model: sample[0].model, dimensions: sample[0].dimensions, sendDimensions: sample[0].send_dimensions };
  const vectors = target
    ? (await embedTexts(openai, target, sample.map((s) => s.input), EMBED_BATCH)).map((v) => pgvector.toSql(v) as string) : [];

  // A large adoption is loaded without the version's index, which is built again afterwards.
  const deferred = (adoption.judged.ok ?? 0) > 0
    ? await deferVersionIndexes(db, { source: options.source, version: options.version }) : [];
  let finished: Adoption;
  try {
    const { rows: [row] } = await db.query<AdoptionRow>(
      'select * from regen.finish_adoption($1::bigint, $2::text[], $3::integer[], $4, $5::boolean)',
      [adoption.id, sample.map((s) => s.row_id), sample.map((s) => s.chunk_no), vectors, options.force ?? false]);
    finished = toAdoption(row!);
  } finally {
    if (deferred.length > 0) await buildVersionIndexes(db, { version: options.version });
  }
  if (finished.state === 'refused') {
    throw new PgregenError(
      `adoption ${finished.id} refused: ${finished.sampleBelow} of ${finished.sampledChunks} sample vectors are below cosine ` +
      `${finished.minCosine} of the vectors to adopt (lowest ${finished.sampleMinCosine?.toFixed(4)}, mean ` +
      `${finished.sampleMeanCosine?.toFixed(4)}): they were not computed from these texts with ${options.version}'s model. Nothing was stored`,
      'check the column, the source\'s content expression and the version\'s model and settings; or force the adoption: ' +
      'the vectors are then stored as adopted, searchable, and re-embedded hot-first by the next rebuild',
      'RG083');
  }
  return finished;
}
