// The generated capture function and the roles pgregen grants: an application role given only
// regen.grant_app cannot borrow the SECURITY DEFINER capture function to move or delete other
// tenants' vectors, no function in schema regen (generated later included) is executable by PUBLIC,
// and grant_app refuses roles that row-level security does not bind, through membership too.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cutover, retire, startMigration } from '../src/migrate.ts';
import { freshDatabase, keepOnFailure, type TestDatabase } from './support/db.ts';
import { allRowIds, applyChanges, DIMS, embedRows, gap, setupArticles } from './support/fixtures.ts';
import { createRole, inTransaction, type TestRole } from './support/search.ts';

const db: TestDatabase = await freshDatabase();
keepOnFailure(db);
const roles: TestRole[] = [];
afterAll(async () => {
  for (const role of roles) await role.drop();
});

/** Functions in schema regen that PUBLIC may execute (explicitly or by PostgreSQL's default). */
async function publicFunctions(): Promise<string[]> {
  const { rows } = await db.query<{ fn: string }>(
    `select p.oid::regprocedure::text as fn from pg_proc p
      where p.pronamespace = 'regen'::regnamespace
        and exists (select 1 from aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
                    where a.grantee = 0 and a.privilege_type = 'EXECUTE')
      order by 1`);
  return rows.map((r) => r.fn);
}

async function vectorsByTenant(): Promise<Record<string, number>> {
  const { rows } = await db.query<{ tenant: string; n: number }>(
    `select tenant, count(*)::int as n from regen._embeddings group by 1 order by 1`);
  return Object.fromEntries(rows.map((r) => [r.tenant, r.n]));
}

describe('the generated capture function', () => {
  let app: TestRole;
  beforeAll(async () => {
    await setupArticles(db);
    await embedRows(db, await allRowIds(db));
    app = await createRole(db, 'attacker', { grant: 'app' });
    roles.push(app);
    // the attack needs a temporary table: every role may create one by default
    await db.query(`grant temporary on database ${db.name} to ${app.name}`);
  });

  it('cannot be attached by an application role to a table of its own', async () => {
    const before = await vectorsByTenant();
    expect(before).toEqual({ tenant_0: 10, tenant_1: 10, tenant_2: 10 });
    await inTransaction(app, async (q) => {
      await q(`create temporary table mine (id bigint, tenant text, title text, body text, views integer, published boolean)`);
      const attach = q(`create trigger steal after update on mine referencing old table as old_rows new table as new_rows
                        for each statement execute function regen.tg_articles__capture()`);
      await expect(attach).rejects.toMatchObject({ code: '42501', message: expect.stringMatching(/^permission denied for function (regen\.)?tg_articles__capture$/) });
    });
    await inTransaction(app, async (q) => {
      await q(`create temporary table mine (id bigint)`);
      await expect(q(`create trigger wipe after truncate on mine for each statement execute function regen.tg_articles__capture()`))
        .rejects.toMatchObject({ code: '42501' });
    });
    expect(await vectorsByTenant()).toEqual(before);
  });

  it('refuses to act when fired by any table but its own, even where EXECUTE was granted by hand', async () => {
    // an install from before the fix left EXECUTE to PUBLIC: grant it as that would have
    await db.query(`grant execute on function regen.tg_articles__capture() to ${app.name}`);
    try {
      const before = await vectorsByTenant();
      await inTransaction(app, async (q) => {
        await q(`create temporary table mine (id bigint, tenant text, title text, body text, views integer, published boolean)`);
        await q(`insert into mine select g, 'tenant_0', 'x', 'y', 0, true from generate_series(1, 30) g`);
        await q(`create trigger steal after update on mine referencing old table as old_rows new table as new_rows
                 for each statement execute function regen.tg_articles__capture()`);
        await expect(q(`update mine set tenant = 'tenant_0'`)).rejects.toMatchObject({
          code: 'RG017',
          message: expect.stringMatching(/^capture function regen\.tg_articles__capture belongs to source articles, not to table pg_temp_\d+\.mine$/),
        });
      });
      await inTransaction(app, async (q) => {
        await q(`create temporary table mine (id bigint)`);
        await q(`create trigger wipe after truncate on mine for each statement execute function regen.tg_articles__capture()`);
        await expect(q(`truncate mine`)).rejects.toMatchObject({ code: 'RG017' });
      });
      expect(await vectorsByTenant()).toEqual(before);
      expect(await gap(db)).toMatchObject({ expected: 30, current: 30 });
    } finally {
      await db.query(`revoke execute on function regen.tg_articles__capture() from ${app.name}`);
    }
  });

  it('still captures the table it was made for', async () => {
    await db.query(`update articles set tenant = 'tenant_0' where id = 1`);
    expect(await applyChanges(db)).toBe(1);
    expect((await vectorsByTenant()).tenant_0).toBe(11);
    await db.query(`update articles set tenant = 'tenant_1' where id = 1`);
  });
});

describe('no function in schema regen is executable by PUBLIC', () => {
  it('after every operation that creates functions', async () => {
    expect(await publicFunctions()).toEqual([]);
    // sources generate functions: register (done above), register more, migrate, cut over, retire
    await db.query(`create table notes (id int primary key, body text not null)`);
    await db.query(`insert into notes select g, 'note ' || g from generate_series(1, 5) g`);
    await db.query(`select regen.register_source('notes', 'notes', 'id', 'body', version => 'test@1')`);
    await db.query(`select regen.create_version('test@2', 'test-model', $1::int)`, [DIMS]);
    await startMigration(db.pool, 'notes', 'test@2');
    await embedRows(db, ['1', '2', '3', '4', '5'], 'notes', 'test@2');
    await cutover(db.pool, 'notes', 'test@2');
    await retire(db.pool, 'notes', 'test@1', '0 seconds');
    await db.query(`select regen.unregister_source('notes')`);
    await db.query(`select regen.register_source('notes', 'notes', 'id', 'body', version => 'test@2')`);
    const generated = await db.query(`select count(*)::int as n from pg_proc where pronamespace = 'regen'::regnamespace and proname like 'tg\\_%\\_\\_capture'`);
    expect(generated.rows[0].n).toBe(2);
    expect(await publicFunctions()).toEqual([]);
  });
});

describe('grant_app refuses roles that row-level security does not bind', () => {
  it('an admin role, a member of one (directly, through another role, or without INHERIT), refused with RG043', async () => {
    const admin = await createRole(db, 'admin', { grant: 'admin' });
    roles.push(admin);
    const member = await createRole(db, 'member');
    const indirect = await createRole(db, 'indirect');
    const noinherit = await createRole(db, 'noinherit', { attributes: 'noinherit' });
    const group = await createRole(db, 'group');
    roles.push(member, indirect, noinherit, group);
    await db.query(`grant ${admin.name} to ${member.name}`);
    await db.query(`grant ${admin.name} to ${group.name}`);
    await db.query(`grant ${group.name} to ${indirect.name}`);
    await db.query(`grant ${admin.name} to ${noinherit.name}`);

    await expect(db.query('select regen.grant_app($1)', [admin.name])).rejects.toMatchObject({
      code: 'RG043', message: `role ${admin.name} is an admin role (regen.grant_admin) and sees every tenant`,
    });
    for (const role of [member, noinherit]) {
      await expect(db.query('select regen.grant_app($1)', [role.name])).rejects.toMatchObject({
        code: 'RG043',
        message: `role ${role.name} is a member of ${admin.name}, which is an admin role (regen.grant_admin): through it, it could read every tenant's vectors`,
      });
    }
    await expect(db.query('select regen.grant_app($1)', [indirect.name])).rejects.toMatchObject({ code: 'RG043' });
    // nothing was granted by the refused calls
    const granted = await db.query(
      `select count(*)::int as n from pg_proc p, aclexplode(p.proacl) a
        where p.oid = 'regen.set_tenant(text)'::regprocedure and a.grantee = any($1::regrole[])`,
      [[member.name, noinherit.name, indirect.name]]);
    expect(granted.rows[0].n).toBe(0);
  });

  it('a member of a superuser or BYPASSRLS role, or of the owner, refused with RG043', async () => {
    const owner = (await db.query(`select relowner::regrole::text as r from pg_class where oid = 'regen._embeddings'::regclass`)).rows[0].r;
    const bypass = await createRole(db, 'bypass', { attributes: 'bypassrls' });
    const viaBypass = await createRole(db, 'via_bypass');
    const viaOwner = await createRole(db, 'via_owner');
    roles.push(bypass, viaBypass, viaOwner);
    await db.query(`grant ${bypass.name} to ${viaBypass.name}`);
    await db.query(`grant ${owner} to ${viaOwner.name}`);
    await expect(db.query('select regen.grant_app($1)', [viaBypass.name])).rejects.toMatchObject({
      code: 'RG043', message: `role ${viaBypass.name} is a member of ${bypass.name}, which has BYPASSRLS: through it, it could read every tenant's vectors`,
    });
    await expect(db.query('select regen.grant_app($1)', [viaOwner.name])).rejects.toMatchObject({ code: 'RG043' });
  });

  it('grant_admin refuses a role that an application role is (or is a member of)', async () => {
    const app = await createRole(db, 'app_then_admin', { grant: 'app' });
    const group = await createRole(db, 'app_group');
    roles.push(app, group);
    await db.query(`grant ${group.name} to ${app.name}`);
    await expect(db.query('select regen.grant_admin($1)', [app.name])).rejects.toMatchObject({
      code: 'RG043', message: `role ${app.name} is an application role (regen.grant_app), bound to one tenant: an admin role sees every tenant`,
    });
    await expect(db.query('select regen.grant_admin($1)', [group.name])).rejects.toMatchObject({
      code: 'RG043',
      message: `role ${app.name} is an application role (regen.grant_app) and a member of ${group.name}: as an admin role, ${group.name} would let it read every tenant`,
    });
    // the application role still sees one tenant at a time
    const seen = await inTransaction(app, async (q) => {
      await q(`select regen.set_tenant('tenant_2')`);
      return q(`select distinct tenant from regen._embeddings`);
    });
    expect(seen).toEqual([{ tenant: 'tenant_2' }]);
  });
});
