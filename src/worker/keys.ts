// API keys: the default key, or a tenant's own key named by reference (regen.set_tenant_key): the
// environment variable of that name, else the secret file of that name in REGEN_SECRETS_DIR. Keys
// never touch the database. SQL decides which reference a row uses, when the job is worked
// (regen.key_refs); this file only reads the key, and re-reads a secret file that was rotated.
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { Db } from '../db.ts';
import type { ApiKey } from './provider.ts';

/**
 * The namespace of tenant key references (sql/0014_tenant_keys.sql checks the same rule and says
 * what to do). Checked here too, as the last guard before the environment is read: whatever a
 * database row says, the worker never reads one of its own settings (DATABASE_URL, OPENAI_API_KEY,
 * PG*, REGEN_*) as a tenant's key. No worker setting may start with this prefix.
 */
export const KEY_REF_PREFIX = 'REGEN_KEY_';
const KEY_REF = /^REGEN_KEY_[A-Za-z0-9_]{1,118}$/;

export class MissingKey extends Error {
  override name = 'MissingKey';
}

export interface KeyRef {
  ref: string;
  /** Why the worker must not use this reference (from SQL), or null. */
  problem: string | null;
}

/** The current key reference of each row of tenants with their own key (others: the default key). */
export async function keyRefs(db: Db, source: string, version: string, rowIds: string[]): Promise<Map<string, KeyRef>> {
  if (rowIds.length === 0) return new Map();
  const { rows } = await db.query<{ row_id: string; api_key_ref: string; problem: string | null }>(
    'select * from regen.key_refs($1::text, $2::text, $3::text[])', [source, version, rowIds]);
  return new Map(rows.map((r) => [r.row_id, { ref: r.api_key_ref, problem: r.problem }]));
}

/**
 * One key reference (null: the default key). An environment variable is read as is; a secret file
 * is read again whenever it changed (inode, size or mtime: a Kubernetes Secret update swaps the
 * file), and on demand after the provider refused the key (401), so a rotation needs no restart.
 */
export class KeySource implements ApiKey {
  private readonly ref: string | null;
  private readonly defaultKey: string;
  private readonly secretsDir: string | undefined;
  private readonly env: NodeJS.ProcessEnv;
  private file: { signature: string; key: string } | undefined;

  constructor(ref: string | null, defaultKey: string, secretsDir: string | undefined, env: NodeJS.ProcessEnv = process.env) {
    this.ref = ref;
    this.defaultKey = defaultKey;
    this.secretsDir = secretsDir;
    this.env = env;
    // The reference itself is not repeated: one stored before the namespace existed may be a key.
    if (ref !== null && !KEY_REF.test(ref)) {
      throw new MissingKey(`a tenant's API key reference is outside the ${KEY_REF_PREFIX} namespace, so the worker does not read it: `
        + `set the tenant's key again with regen.set_tenant_key(tenant, '${KEY_REF_PREFIX}...')`);
    }
  }

  current(): string {
    return this.read(false);
  }

  reread(used: string): string | undefined {
    if (!this.ref || this.env[this.ref]) return undefined;   // the environment cannot change under a running process
    const key = this.read(true);
    return key === used ? undefined : key;
  }

  private read(force: boolean): string {
    if (!this.ref) return this.defaultKey;
    const fromEnv = this.env[this.ref];
    if (fromEnv) return fromEnv;
    if (this.secretsDir) {
      const path = join(this.secretsDir, this.ref);
      try {
        const stat = statSync(path);
        const signature = `${stat.ino}/${stat.size}/${stat.mtimeMs}`;
        if (force || this.file?.signature !== signature) {
          const key = readFileSync(path, 'utf8').trim();
          this.file = key ? { signature, key } : undefined;
        }
      } catch {
        this.file = undefined;
      }
      if (this.file) return this.file.key;
    }
    throw new MissingKey(`API key reference ${this.ref} is set for a tenant, but neither the environment variable ${this.ref}`
      + `${this.secretsDir ? ` nor the file ${join(this.secretsDir, this.ref)}` : ''} holds a key: provide it to the worker`);
  }
}
