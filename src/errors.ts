// Errors that reach a person: what was wrong, then what to do.
export class PgregenError extends Error {
  readonly hint: string | undefined;
  readonly code: string | undefined;
  readonly detail: string | undefined;

  constructor(message: string, hint?: string, code?: string, detail?: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'PgregenError';
    this.hint = hint;
    this.code = code;
    this.detail = detail;
  }

  /**
   * pgregen's own SQL errors (SQLSTATE RGnnn) as a PgregenError with the same code, message, detail
   * and hint, so that a caller sees one error type for a refused argument whichever side refused it.
   * Any other error is returned as it is.
   */
  static fromSql(err: unknown): unknown {
    const e = err as { code?: unknown; message?: string; hint?: string; detail?: string };
    if (err instanceof PgregenError || typeof e?.code !== 'string' || !/^RG\d{3}$/.test(e.code)) return err;
    return new PgregenError(e.message ?? String(err), e.hint, e.code, e.detail, { cause: err });
  }
}

/** Message, detail and hint of any error, as one text for a terminal. */
export function describeError(err: unknown): string {
  if (err instanceof PgregenError) {
    return [err.message, ...(err.detail ? [`  detail: ${err.detail}`] : []), ...(err.hint ? [`  hint: ${err.hint}`] : [])].join('\n');
  }
  const e = err as { message?: string; hint?: string; detail?: string };
  const lines = [e.message ?? String(err)];
  if (e.detail) lines.push(`  detail: ${e.detail}`);
  if (e.hint) lines.push(`  hint: ${e.hint}`);
  return lines.join('\n');
}
