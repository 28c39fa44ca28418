// Typed calls to the worker-facing SQL: prepare_inputs and write_embeddings. No decisions here:
// SQL judges every vector; this file only shapes arguments and results.
import { float4ArrayParam, type Db } from './db.ts';

export interface Input {
  rowId: string;
  chunkNo: number;
  contentHash: Buffer;
  textHash: Buffer;
  /** Text to embed; null when an earlier input of the same batch has the same textHash. */
  input: string | null;
}

export interface VectorItem {
  rowId: string;
  chunkNo: number;
  contentHash: Buffer;
  embedding: ArrayLike<number>;
}

export interface WriteResult {
  rowId: string;
  chunkNo: number;
  stored: boolean;
  reason: string | null;
}

export async function prepareInputs(db: Db, source: string, version: string, rowIds: string[]): Promise<Input[]> {
  const { rows } = await db.query<{ row_id: string; chunk_no: number; content_hash: Buffer; text_hash: Buffer; input: string | null }>(
    'select * from regen.prepare_inputs($1::text, $2::text, $3::text[])', [source, version, rowIds]);
  return rows.map((r) => ({ rowId: r.row_id, chunkNo: r.chunk_no, contentHash: r.content_hash, textHash: r.text_hash, input: r.input }));
}

export async function writeEmbeddings(db: Db, source: string, version: string, items: VectorItem[]): Promise<WriteResult[]> {
  const lengths = items.map((item) => item.embedding.length);
  const flat = new Float32Array(lengths.reduce((a, b) => a + b, 0));
  let at = 0;
  for (const item of items) {
    flat.set(item.embedding, at);
    at += item.embedding.length;
  }
  const { rows } = await db.query<{ row_id: string; chunk_no: number; stored: boolean; reason: string | null }>(
    `select * from regen.write_embeddings($1::text, $2::text, $3::text[], $4::integer[], $5::bytea[],
                                          lengths => $6::integer[], embeddings => $7::real[])`,
    [source, version, items.map((i) => i.rowId), items.map((i) => i.chunkNo), items.map((i) => i.contentHash),
     lengths, float4ArrayParam(flat)]);
  return rows.map((r) => ({ rowId: r.row_id, chunkNo: r.chunk_no, stored: r.stored, reason: r.reason }));
}
