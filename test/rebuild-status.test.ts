// regen.rebuild_status(): the open work, rate and ETA of a rebuild's scope, computed once in SQL
// (the command line reads it), for source and version pairs, a source's active version, or one tenant.
import { beforeAll, describe, expect, it } from 'vitest';
import { freshDatabase, keepOnFailure, type TestDatabase } from './support/db.ts';
import { allRowIds, embedRows, setupArticles } from './support/fixtures.ts';

const db: TestDatabase = await freshDatabase();
keepOnFailure(db);

type Status = { open: number; failed: number; settled_recently: number; rate_per_second: number; eta_seconds: number | null;
  queued_items: number; queued_jobs: number; active_jobs: number };

async function status(sql: string, values: unknown[] = []): Promise<Status> {
  const { rows: [r] } = await db.query<Record<string, string | number | null>>(`select * from ${sql}`, values);
  return Object.fromEntries(Object.entries(r!).map(([k, v]) => [k, v === null ? null : Number(v)])) as unknown as Status;
}

describe('regen.rebuild_status', () => {
  beforeAll(async () => {
    await setupArticles(db, { rows: 30 });   // three tenants of ten rows
    await db.query('select * from regen.rebuild()');
  });

  it('counts the open work and the queue before anything is embedded: no rate, no ETA', async () => {
    expect(await status(`regen.rebuild_status()`)).toEqual({
      open: 30, failed: 0, settled_recently: 0, rate_per_second: 0, eta_seconds: null, queued_items: 30, queued_jobs: 1, active_jobs: 0 });
  });

  it('derives the rate from the items settled in the window, and the ETA from the rate', async () => {
    const ids = await allRowIds(db);
    await embedRows(db, ids.slice(0, 12));
    const all = await status(`regen.rebuild_status(window_seconds => 10)`);
    expect(all).toMatchObject({ open: 18, settled_recently: 12, rate_per_second: 1.2 });
    expect(all.eta_seconds).toBeCloseTo(15, 6);
    const pair = await status(`regen.rebuild_status(array['articles'], array['test@1'], window_seconds => 60)`);
    expect(pair).toMatchObject({ open: 18, settled_recently: 12, rate_per_second: 0.2 });
    // one tenant: its own open rows and its own settled ones
    const tenant = await db.query<{ n: number }>(`select count(*)::int as n from articles where tenant = 'tenant_1' and id::text = any($1)`, [ids.slice(0, 12)]);
    const one = await status(`regen.rebuild_status(tenant => 'tenant_1')`);
    expect(one).toMatchObject({ open: 10 - tenant.rows[0]!.n, settled_recently: tenant.rows[0]!.n });
  });

  it('refuses a bad window or sources and versions that do not pair up (RG041)', async () => {
    await expect(db.query(`select regen.rebuild_status(window_seconds => 0)`)).rejects.toMatchObject({
      code: 'RG041', message: 'window_seconds must be between 1 and 3600, not 0' });
    await expect(db.query(`select regen.rebuild_status(array['articles'], array['test@1', 'other@1'])`)).rejects.toMatchObject({
      code: 'RG041', message: 'sources and versions must be arrays of the same length (pairs), not 1 and 2' });
  });
});
