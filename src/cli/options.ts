// Options shared by several commands.
import type { Command } from 'commander';
import { PgregenError } from '../errors.ts';

/** The database URL from --database-url or DATABASE_URL, or a clear error. */
export function databaseUrl(command: Command): string {
  const url = (command.optsWithGlobals().databaseUrl as string | undefined) ?? process.env.DATABASE_URL;
  if (!url) throw new PgregenError('no database given', 'set DATABASE_URL or pass --database-url postgres://user@host/db');
  return url;
}
