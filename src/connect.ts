// Opening connections with errors that say what to fix.
import pg from 'pg';
import { PgregenError } from './errors.ts';

/** Where a connection string points, without the password. */
export function describeUrl(url: string): string {
  try {
    const u = new URL(url);
    return `${u.hostname || 'localhost'}:${u.port || 5432}${u.pathname}`;
  } catch {
    return 'the given database';
  }
}

export async function connect(connectionString: string, applicationName: string): Promise<pg.Client> {
  const client = new pg.Client({ connectionString, application_name: applicationName });
  try {
    await client.connect();
  } catch (err) {
    throw new PgregenError(`cannot connect to the database at ${describeUrl(connectionString)}: ${(err as Error).message}`,
      'check DATABASE_URL (host, port, user, password, database) and that the server is running');
  }
  return client;
}

/** Refuses, with the fix, when schema regen is not installed. */
export async function requireSchema(db: pg.Client): Promise<void> {
  const { rows } = await db.query(`select to_regclass('regen.migrations') is not null as installed, current_database() as name`);
  if (!rows[0].installed) {
    throw new PgregenError(`pgregen is not installed in database ${rows[0].name}`, 'run: pgregen install');
  }
}
