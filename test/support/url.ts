// Small helpers shared by test/global-setup.ts (main process) and test/support/db.ts (test workers).

/** The same server URL pointed at another database; keeps credentials and query parameters (sslmode...). */
export function withDatabase(url: string, database: string): string {
  const parsed = new URL(url);
  parsed.pathname = `/${encodeURIComponent(database)}`;
  return parsed.toString();
}

/** Quotes an SQL identifier (database names cannot be bound as query parameters). */
export function quoteIdent(name: string): string {
  return `"${name.replaceAll('"', '""')}"`;
}
