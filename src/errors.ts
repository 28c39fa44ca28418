// Errors that reach a person: what was wrong, then what to do.
export class PgregenError extends Error {
  readonly hint: string | undefined;
  readonly code: string | undefined;

  constructor(message: string, hint?: string, code?: string) {
    super(message);
    this.name = 'PgregenError';
    this.hint = hint;
    this.code = code;
  }
}

/** Message and hint of any error, as one text for a terminal. */
export function describeError(err: unknown): string {
  if (err instanceof PgregenError) return err.hint ? `${err.message}\n  hint: ${err.hint}` : err.message;
  const e = err as { message?: string; hint?: string; detail?: string };
  const lines = [e.message ?? String(err)];
  if (e.detail) lines.push(`  detail: ${e.detail}`);
  if (e.hint) lines.push(`  hint: ${e.hint}`);
  return lines.join('\n');
}
