// API keys: the default key, or a tenant's own key named by reference (regen.set_tenant_key): the
// environment variable of that name, else a secret file of that name. Keys never touch the database.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

export class MissingKey extends Error {
  override name = 'MissingKey';
}

export function resolveKey(ref: string | null | undefined, defaultKey: string, secretsDir: string | undefined,
  env: NodeJS.ProcessEnv = process.env): string {
  if (!ref) return defaultKey;
  const fromEnv = env[ref];
  if (fromEnv) return fromEnv;
  if (secretsDir) {
    try {
      const fromFile = readFileSync(join(secretsDir, ref), 'utf8').trim();
      if (fromFile) return fromFile;
    } catch {
      // fall through to the error below
    }
  }
  throw new MissingKey(`API key reference ${ref} is set for a tenant, but neither the environment variable ${ref}`
    + `${secretsDir ? ` nor the file ${join(secretsDir, ref)}` : ''} holds a key: provide it to the worker`);
}
