// The one convention of every JSON value pgregen prints (`--json`): counts, ratios and scores are
// JSON numbers, never numeric strings (pg hands bigint and numeric columns over as strings);
// timestamps are ISO 8601 strings in UTC (2026-05-01T12:00:00.000Z), never PostgreSQL's text form;
// durations are ISO 8601 durations (PT1M23S) unless a field says its unit (`eta_seconds`).

/** The column information of a pg result, as pg.QueryResult carries it. */
export interface FieldInfo { name: string; dataTypeID: number }

// Type OIDs of pg_catalog: fixed in every PostgreSQL database.
const INT8 = 20;
const NUMERIC = 1700;
const TIMESTAMP = 1114;
const TIMESTAMPTZ = 1184;
const INTERVAL = 1186;
const INT8_ARRAY = 1016;
const NUMERIC_ARRAY = 1231;

/** A number from a bigint or numeric value as pg returns it (a string); null stays null. */
export function toNumber(value: unknown): number | null {
  if (value === null || value === undefined) return null;
  return typeof value === 'number' ? value : Number(value);
}

/** An ISO 8601 timestamp from a Date (pg's timestamp and timestamptz) or a timestamp text; null stays null. */
export function toIsoTime(value: unknown): string | null {
  if (value === null || value === undefined) return null;
  const date = value instanceof Date ? value : new Date(String(value));
  return Number.isNaN(date.getTime()) ? String(value) : date.toISOString();
}

function convert(value: unknown, type: number): unknown {
  if (value === null || value === undefined) return value;
  switch (type) {
    case INT8:
    case NUMERIC:
      return toNumber(value);
    case TIMESTAMP:
    case TIMESTAMPTZ:
      return toIsoTime(value);
    case INTERVAL: {
      const interval = value as { toISOString?: () => string };
      return typeof interval.toISOString === 'function' ? interval.toISOString() : value;
    }
    case INT8_ARRAY:
    case NUMERIC_ARRAY:
      return Array.isArray(value) ? value.map(toNumber) : value;
    default:
      return value;
  }
}

/**
 * The rows of a result with the convention applied by column type: bigint and numeric columns
 * (and arrays of them) become numbers, timestamp columns ISO 8601 strings, intervals ISO 8601
 * durations. Other columns are left as pg parsed them. A result without `fields` is returned as is.
 */
export function jsonRows<R = Record<string, unknown>>(result: { rows: object[]; fields?: FieldInfo[] }): R[] {
  const fields = result.fields ?? [];
  return result.rows.map((row) => {
    const out: Record<string, unknown> = { ...(row as Record<string, unknown>) };
    for (const f of fields) if (f.name in out) out[f.name] = convert(out[f.name], f.dataTypeID);
    return out as R;
  });
}

/** JSON text under the convention: Dates as ISO 8601 (their toJSON), BigInts as numbers. */
export function toJson(value: unknown): string {
  return JSON.stringify(value, (_key, v: unknown) => (typeof v === 'bigint' ? Number(v) : v));
}
