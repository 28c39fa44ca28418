// PostgreSQL binary formats written by hand, so the ceilings measure the server, not a text
// formatter: the COPY stream for rows of regen._embeddings (https://www.postgresql.org/docs/current/sql-copy.html,
// binary format), and the two array parameters a batch of vectors can travel in: one float4[] of
// every vector end to end, or a vector[]. pgvector's binary vector is int16 dim, int16 unused, dim float4 BE.
import os from 'node:os';

export interface EmbeddingRow {
  rowId: string;
  chunkNo: number;
  tenant: string | null;
  contentHash: Buffer;
  textHash: Buffer;
  embedding: Float32Array;
}

/** Column list the stream below matches, in order. */
export const COPY_COLUMNS = '(version_id, source_id, row_id, chunk_no, tenant, content_hash, text_hash, embedding)';

const SIGNATURE = Buffer.from('PGCOPY\n\xff\r\n\0', 'latin1');
// Float32Array holds host byte order; the wire wants big-endian.
const SWAP = os.endianness() === 'LE';

/** The whole COPY stream in chunks of `rowsPerChunk` rows: header, tuples, trailer. */
export function* binaryCopy(rows: EmbeddingRow[], versionId: number, sourceId: number, rowsPerChunk = 256): Generator<Buffer> {
  const header = Buffer.alloc(SIGNATURE.length + 8); // flags and header-extension length stay 0
  SIGNATURE.copy(header);
  yield header;
  for (let first = 0; first < rows.length; first += rowsPerChunk) {
    const chunk = rows.slice(first, first + rowsPerChunk);
    const buf = Buffer.allocUnsafe(chunk.reduce((size, row) => size + tupleSize(row), 0));
    let at = 0;
    for (const row of chunk) at = writeTuple(buf, at, row, versionId, sourceId);
    yield buf;
  }
  const trailer = Buffer.alloc(2);
  trailer.writeInt16BE(-1);
  yield trailer;
}

function tupleSize(row: EmbeddingRow): number {
  return 2 + 8 + 8 + 4 + Buffer.byteLength(row.rowId) + 8 + 4 + (row.tenant === null ? 0 : Buffer.byteLength(row.tenant))
    + 4 + row.contentHash.length + 4 + row.textHash.length + 4 + 4 + row.embedding.byteLength;
}

function writeTuple(buf: Buffer, start: number, row: EmbeddingRow, versionId: number, sourceId: number): number {
  let at = buf.writeInt16BE(8, start);
  const int4 = (value: number) => (at = buf.writeInt32BE(value, buf.writeInt32BE(4, at)));
  const bytes = (value: Buffer | string | null) => {
    if (value === null) return (at = buf.writeInt32BE(-1, at));
    const length = typeof value === 'string' ? buf.write(value, at + 4, 'utf8') : value.copy(buf, at + 4);
    buf.writeInt32BE(length, at);
    at += 4 + length;
  };
  int4(versionId);
  int4(sourceId);
  bytes(row.rowId);
  int4(row.chunkNo);
  bytes(row.tenant);
  bytes(row.contentHash);
  bytes(row.textHash);
  return writeVector(buf, at, row.embedding);
}

/** Length word, then the vector in pgvector's binary format; returns the offset after it. */
function writeVector(buf: Buffer, start: number, vector: Float32Array): number {
  let at = buf.writeInt32BE(4 + vector.byteLength, start);
  at = buf.writeInt16BE(vector.length, at);
  at = buf.writeInt16BE(0, at);
  const floats = Buffer.from(vector.buffer, vector.byteOffset, vector.byteLength);
  floats.copy(buf, at);
  if (SWAP) buf.subarray(at, at + floats.length).swap32();
  return at + floats.length;
}

/** A one-dimensional vector[] in binary wire format (pg sends Buffer parameters as binary). */
export function vectorArrayParam(vectors: Float32Array[], vectorTypeOid: number): Buffer {
  const buf = Buffer.allocUnsafe(20 + vectors.reduce((size, v) => size + 8 + v.byteLength, 0));
  let at = buf.writeInt32BE(1, 0);          // dimensions
  at = buf.writeInt32BE(0, at);             // no nulls
  at = buf.writeInt32BE(vectorTypeOid, at); // element type
  at = buf.writeInt32BE(vectors.length, at);
  at = buf.writeInt32BE(1, at);             // lower bound
  for (const v of vectors) at = writeVector(buf, at, v);
  return buf;
}

/**
 * One float4[] holding every vector end to end, each element preceded by its length word, as
 * PostgreSQL's binary array format wants (the wire format regen.write_embeddings took at first).
 */
export function float4ArrayParam(vectors: Float32Array[]): Buffer {
  const count = vectors.reduce((n, v) => n + v.length, 0);
  const buf = Buffer.allocUnsafe(20 + count * 8);
  let at = buf.writeInt32BE(1, 0);   // dimensions
  at = buf.writeInt32BE(0, at);      // no nulls
  at = buf.writeInt32BE(700, at);    // element type: float4
  at = buf.writeInt32BE(count, at);
  at = buf.writeInt32BE(1, at);      // lower bound
  for (const v of vectors) {
    for (let i = 0; i < v.length; i++) at = buf.writeFloatBE(v[i]!, buf.writeInt32BE(4, at));
  }
  return buf;
}
