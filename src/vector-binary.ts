// A query vector as pgvector's binary wire format (vector_recv: int16 dimensions, int16 unused = 0,
// then each element as a big-endian float4). node-postgres sends a Buffer parameter in binary, so
// the server copies the floats instead of parsing their text: for 1,536 dimensions that saves the
// text's formatting here and its parsing there (about 0.1 ms per search, measured with bench P).
// The parameter must take the type vector from the statement (a function argument, a cast).

/** pgvector's limit on a vector's dimensions (VECTOR_MAX_DIM). */
export const VECTOR_MAX_DIMENSIONS = 16_000;
const FLOAT4_MAX = 3.4028234663852886e38;

/** The vector in binary, or a RangeError naming what does not fit a vector of float4. */
export function vectorBinary(values: readonly number[]): Buffer {
  if (values.length > VECTOR_MAX_DIMENSIONS) {
    throw new RangeError(`a vector has at most ${VECTOR_MAX_DIMENSIONS} dimensions, not ${values.length}`);
  }
  const out = Buffer.allocUnsafe(4 + 4 * values.length);
  out.writeInt16BE(values.length, 0);
  out.writeInt16BE(0, 2);
  for (let i = 0; i < values.length; i++) {
    const x = values[i]!;
    if (!(Math.abs(x) <= FLOAT4_MAX)) throw new RangeError(`element ${i} of the vector (${x}) is not a finite float4`);
    out.writeFloatBE(x, 4 + 4 * i);
  }
  return out;
}
