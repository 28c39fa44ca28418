// Options shared by several commands.
import { InvalidArgumentError, type Command } from 'commander';
import { PgregenError } from '../errors.ts';

/** The database URL from --database-url or DATABASE_URL, or a clear error. */
export function databaseUrl(command: Command): string {
  const url = (command.optsWithGlobals().databaseUrl as string | undefined) ?? process.env.DATABASE_URL;
  if (!url) throw new PgregenError('no database given', 'set DATABASE_URL or pass --database-url postgres://user@host/db');
  return url;
}

/** A commander parser for a number from min to max. */
export function numberBetween(min: number, max: number): (value: string) => number {
  return (value: string) => {
    const n = Number(value);
    if (value.trim() === '' || !Number.isFinite(n) || n < min || n > max) throw new InvalidArgumentError(`expected a number between ${min} and ${max}`);
    return n;
  };
}
