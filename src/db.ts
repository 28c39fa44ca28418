// The one database interface the TypeScript side needs: pg.Pool, pg.Client and pg.PoolClient fit it.
export interface Db {
  query<R extends object = Record<string, unknown>>(text: string, values?: unknown[]):
    Promise<{ rows: R[]; rowCount: number | null; fields?: Array<{ name: string; dataTypeID: number }> }>;
}

/**
 * A vector[] parameter in PostgreSQL's binary array format (pg sends Buffer parameters as binary),
 * each element in pgvector's binary format: int16 dimensions, int16 unused, float4 big-endian.
 * About four times cheaper for the server than text or float4[] slices. A null element is sent as
 * SQL NULL. `elementOid` is the vector type's OID in the database (it differs per database).
 */
export function vectorArrayParam(elementOid: number, vectors: Array<ArrayLike<number> | null>): Buffer {
  const size = 20 + vectors.reduce((n, v) => n + 4 + (v ? 4 + v.length * 4 : 0), 0);
  const buf = Buffer.allocUnsafe(size);
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  view.setInt32(0, 1);                                   // one dimension
  view.setInt32(4, vectors.some((v) => v === null) ? 1 : 0);
  view.setInt32(8, elementOid);
  view.setInt32(12, vectors.length);
  view.setInt32(16, 1);                                  // lower bound
  let at = 20;
  for (const v of vectors) {
    if (v === null) {
      view.setInt32(at, -1);
      at += 4;
      continue;
    }
    view.setInt32(at, 4 + v.length * 4);
    view.setInt16(at + 4, v.length);
    view.setInt16(at + 6, 0);
    at += 8;
    for (let i = 0; i < v.length; i++, at += 4) view.setFloat32(at, v[i]!);
  }
  return buf;
}
