// The one database interface the TypeScript side needs: pg.Pool, pg.Client and pg.PoolClient fit it.
export interface Db {
  query<R extends object = Record<string, unknown>>(text: string, values?: unknown[]): Promise<{ rows: R[]; rowCount: number | null }>;
}

/** A PostgreSQL float4[] in binary wire format: pg sends Buffer parameters as binary. */
export function float4ArrayParam(values: ArrayLike<number>): Buffer {
  const buf = Buffer.allocUnsafe(20 + values.length * 8);
  buf.writeInt32BE(1, 0);              // dimensions
  buf.writeInt32BE(0, 4);              // no nulls
  buf.writeInt32BE(700, 8);            // element type: float4
  buf.writeInt32BE(values.length, 12); // length
  buf.writeInt32BE(1, 16);             // lower bound
  let at = 20;
  for (let i = 0; i < values.length; i++) {
    buf.writeInt32BE(4, at);
    buf.writeFloatBE(values[i]!, at + 4);
    at += 8;
  }
  return buf;
}
