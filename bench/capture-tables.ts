// The tables of benchmark F (bench/capture-overhead.ts): a set of four identical document tables,
// each with one way of capturing changes, and what a caught-up worker leaves behind for each.
//
//   docs_plain       no trigger: the application's own cost
//   docs_pgai        the source trigger of pgai Vectorizer, re-created (below), its queue and destination
//   docs_rowtrigger  a no-op row-level AFTER trigger: what any row trigger costs
//   docs_captured    registered with regen.register_source: pgregen's capture
//
// The pgai-style baseline follows pgai's trigger as built by ai._vectorizer_build_trigger_definition
// and ai._vectorizer_create_source_trigger (timescale/pgai, projects/pgai/db/sql/idempotent/
// 011-vectorizer-int.sql, 2025): a row-level AFTER INSERT OR UPDATE OR DELETE trigger function,
// SECURITY DEFINER with search_path pg_catalog, pg_temp; INSERT queues the primary key; UPDATE
// deletes the row's embeddings and queues it when the key changed, else queues it when any column
// but the embedding column changed (compared as jsonb_each(to_jsonb(old)) against new, the embedding
// column read from the vectorizer's configuration); DELETE deletes the row's embeddings; a statement
// trigger truncates both tables on TRUNCATE. The queue table holds the key, queued_at and the two
// loading-retry columns, indexed on the key; the destination table holds embedding_uuid (primary
// key), the key, chunk_seq, chunk and the vector, unique on (key, chunk_seq).
import pg from 'pg';
import { check } from './support.ts';

export const ROLES = ['plain', 'pgai', 'rowtrigger', 'captured'] as const;
export type Role = (typeof ROLES)[number];
export const ROLE_LABEL: Record<Role, string> = { plain: 'plain', pgai: 'pgai-style', rowtrigger: 'plain row trigger', captured: 'pgregen' };

export const TAG = 'bench@1';
export const DIMENSIONS = 64;
export const BODY_CHARS = 512;
export const TENANTS = 100;
export const CONTENT = `title || E'\\n\\n' || body`;
export const GAP = ['expected', 'current', 'stale', 'missing', 'queued'] as const;
export type Gap = Record<(typeof GAP)[number], number>;
/** The counts that must not depend on whether the captured changes were applied yet. */
export const EXACT = ['expected', 'current', 'stale', 'missing'] as const;

/** One vector for every row: what is stored matters here, not what it says. */
/** Vectors stored per statement when settling. */
const STORE_BATCH = 5_000;
const VECTOR = `[${Array.from({ length: DIMENSIONS }, (_, i) => ((i % 7) / 7).toFixed(3)).join(',')}]`;

/** Four tables of the same rows, and the names of what belongs to them. */
export interface DocSet {
  rows: number;
  /** docs_<role><suffix>; also the suffix of the source's name and the pgai-style tables. */
  suffix: string;
  source: string;
  sourceId: number;
  versionId: number;
  queue: string;
  pgaiQueue: string;
  pgaiStore: string;
  /** How long each step of the build took, ms. */
  buildMs: Record<string, number>;
  /** One read of regen.embedding_gap for the source after the build, ms. */
  gapReadMs?: { defaults: number; jitOff: number };
}

export const tableOf = (set: DocSet, role: Role) => `docs_${role}${set.suffix}`;

/** Creates the four tables with `rows` rows each, registers docs_captured<suffix> and settles everything. */
export async function buildSet(client: pg.Client, rows: number, suffix: string, log: (line: string) => void): Promise<DocSet> {
  const buildMs: Record<string, number> = {};
  const step = async (name: string, work: () => Promise<unknown>) => {
    const start = performance.now();
    await work();
    buildMs[name] = performance.now() - start;
    log(`${name}: ${(buildMs[name] / 1000).toFixed(1)} s`);
  };
  const plain = `docs_plain${suffix}`;
  log(`building four tables of ${rows.toLocaleString('en-US')} rows (docs_*${suffix})`);
  await step('plain table', async () => {
    await client.query(`create table ${plain} (id bigint primary key, tenant text not null, title text not null,
                                               body text not null, views int not null, hits int not null default 0)`);
    await client.query(`
      insert into ${plain} (id, tenant, title, body, views)
      select g, 'tenant-' || lpad((g % $2::int)::text, 3, '0'), 'Document ' || g,
             left(repeat(md5(g::text) || ' ', 20), $3::int), ((g::bigint * 7919) % 10000)::int
        from generate_series(1, $1::int) g`, [rows, TENANTS, BODY_CHARS]);
  });
  for (const role of ['pgai', 'rowtrigger', 'captured'] as const) {
    await step(`${role} copy`, async () => {
      await client.query(`create table docs_${role}${suffix} (like ${plain} including all)`);
      await client.query(`insert into docs_${role}${suffix} select * from ${plain}`);
    });
  }
  await step('pgai-style trigger, destination filled', () => buildPgaiStyle(client, suffix));
  await client.query(`create or replace function public.bench_noop_row() returns trigger language plpgsql as $$ begin return null; end $$`);
  await client.query(`create trigger bench_noop after insert or update or delete on docs_rowtrigger${suffix}
                        for each row execute function public.bench_noop_row()`);
  const source = `docs${suffix}`;
  await step('register_source', () => client.query(
    `select regen.register_source($1, $2::regclass, 'id', $3, tenant_column => 'tenant', priority_expression => 'views', version => $4)`,
    [source, `docs_captured${suffix}`, CONTENT, TAG]));
  const { rows: [ids] } = await client.query<{ source_id: number; version_id: number; queue: string }>(
    `select s.id as source_id, v.id as version_id, regen._queue(v.id) as queue from regen._sources s, regen._versions v where s.name = $1 and v.tag = $2`,
    [source, TAG]);
  await dropHnswIndexes(client);
  const set: DocSet = {
    rows, suffix, source, sourceId: ids!.source_id, versionId: ids!.version_id, queue: ids!.queue,
    pgaiQueue: `pgai_q_docs${suffix}`, pgaiStore: `pgai_docs_embedding${suffix}`, buildMs,
  };
  const triggers = await rowTriggers(client, plain);
  check(triggers.length === 0, `${plain} has triggers: it must be the uncaptured baseline`);
  check((await rowTriggers(client, tableOf(set, 'captured'))).length > 0, `${tableOf(set, 'captured')} has no capture trigger`);
  await step('pgregen items current, vectors stored', async () => {
    await applyChanges(client);
    await firstSettle(client, set);
  });
  await step('vacuum', () => vacuum(client, set));
  const read = await gapReadMs(client, set);
  set.gapReadMs = read;
  log(`one read of regen.embedding_gap: ${read.defaults.toFixed(0)} ms (server settings), ${read.jitOff.toFixed(0)} ms with jit = off`);
  return set;
}

/**
 * Drops the HNSW indexes of regen._embeddings (register_source creates the version's): no measured
 * statement writes a vector (a DELETE leaves index entries to VACUUM), while storing 1,000,000
 * vectors through one would take most of the run. The pgai-style destination has no vector index either.
 */
export async function dropHnswIndexes(client: pg.Client): Promise<string[]> {
  const { rows } = await client.query<{ name: string }>(
    `select indexname as name from pg_indexes where schemaname = 'regen' and tablename = '_embeddings' and indexdef like '%USING hnsw%'`);
  for (const { name } of rows) await client.query(`drop index regen.${name}`);
  return rows.map((r) => r.name);
}

/** The triggers on a table, as "name (row|statement: events)". */
export async function rowTriggers(client: pg.Client, table: string): Promise<string[]> {
  const { rows } = await client.query<{ t: string }>(`
    select tgname || ' (' || case when tgtype & 1 = 1 then 'row' else 'statement' end || ': ' ||
           concat_ws(' or ', case when tgtype & 4 = 4 then 'insert' end, case when tgtype & 16 = 16 then 'update' end,
                     case when tgtype & 8 = 8 then 'delete' end, case when tgtype & 32 = 32 then 'truncate' end) ||
           case when tgqual is not null then ', with WHEN' else '' end || ')' as t
      from pg_trigger where tgrelid = $1::regclass and not tgisinternal order by tgname`, [table]);
  return rows.map((r) => r.t);
}

/** docs_pgai<suffix>: the source trigger of pgai Vectorizer (see the header), its queue and destination tables. */
async function buildPgaiStyle(client: pg.Client, suffix: string): Promise<void> {
  const table = `docs_pgai${suffix}`;
  const queue = `pgai_q_docs${suffix}`;
  const store = `pgai_docs_embedding${suffix}`;
  const fn = `public.pgai_docs${suffix}_trigger`;
  await client.query(`create table if not exists pgai_vectorizer (id serial primary key, source_schema name, source_table name, config jsonb)`);
  await client.query(`insert into pgai_vectorizer (source_schema, source_table, config) values ('public', $1, $2)`,
    [table, { destination: { implementation: 'table', target_table: store } }]);
  await client.query(`create table ${queue} (id bigint not null, queued_at timestamptz not null default now(),
                        loading_retries int not null default 0, loading_retry_after timestamptz)`);
  await client.query(`create index on ${queue} (id)`);
  await client.query(`create table ${store} (embedding_uuid uuid not null default gen_random_uuid(),
                        id bigint not null, chunk_seq int not null, chunk text not null, embedding vector(${DIMENSIONS}) not null)`);
  // its worker has embedded every row (filled before the indexes are built: faster for 1,000,000 rows)
  await client.query(`insert into ${store} (id, chunk_seq, chunk, embedding) select id, 0, title || E'\\n\\n' || body, $1::vector from ${table}`, [VECTOR]);
  await client.query(`alter table ${store} add primary key (embedding_uuid), add unique (id, chunk_seq)`);
  await client.query(`create function ${fn}() returns trigger as $$
    begin
      if (tg_level = 'ROW') then
        if (tg_op = 'DELETE') then
          delete from public.${store} where id = old.id;
        elsif (tg_op = 'UPDATE') then
          if old.id is distinct from new.id then
            delete from public.${store} where id = old.id;
            insert into public.${queue} (id) values (new.id);
          elsif exists (
              select 1 from pg_catalog.jsonb_each(to_jsonb(old)) as o(key, value)
              join pg_catalog.jsonb_each(to_jsonb(new)) as n(key, value) on o.key = n.key
              where o.value is distinct from n.value
                and o.key != all(select config -> 'destination' ->> 'embedding_column' from public.pgai_vectorizer
                                  where source_table = '${table}' and source_schema = 'public'
                                    and config -> 'destination' ->> 'implementation' = 'column')) then
            insert into public.${queue} (id) values (new.id);
          end if;
          return new;
        else
          insert into public.${queue} (id) values (new.id);
          return new;
        end if;
      elsif (tg_level = 'STATEMENT') then
        if (tg_op = 'TRUNCATE') then
          truncate table public.${store};
          truncate table public.${queue};
        end if;
        return null;
      end if;
      return null;
    end
    $$ language plpgsql volatile parallel safe security definer set search_path to pg_catalog, pg_temp`);
  await client.query(`revoke all on function ${fn}() from public`);
  await client.query(`create trigger pgai_docs after insert or update or delete on ${table} for each row execute function ${fn}()`);
  await client.query(`create trigger pgai_docs_truncate after truncate on ${table} for each statement execute function ${fn}()`);
}

/** Whether this schema defers the capture's work to regen.apply_changes() (sql/0020). */
export async function hasChangeLog(client: pg.Client): Promise<boolean> {
  return (await client.query<{ ok: boolean }>(`select to_regproc('regen.apply_changes') is not null as ok`)).rows[0]!.ok;
}

/**
 * Whether the capture leaves fresh edits for regen.enqueue_fresh() (sql/0017) to enqueue; before
 * it (the schema issue 13 was filed against) the capture enqueued its jobs in the statement.
 */
export async function hasEnqueueFresh(client: pg.Client): Promise<boolean> {
  return (await client.query<{ ok: boolean }>(`select to_regproc('regen.enqueue_fresh') is not null as ok`)).rows[0]!.ok;
}

/**
 * regen.apply_changes() when the schema has it, called until the log is empty (it takes a bounded
 * number per call): the changes applied and the ms the calls took (undefined without it).
 */
export async function applyChanges(client: pg.Client, changeLog?: boolean): Promise<{ ms: number; rows: number } | undefined> {
  if (!(changeLog ?? await hasChangeLog(client))) return undefined;
  let ms = 0;
  let rows = 0;
  for (;;) {
    const start = performance.now();
    const { rows: [r] } = await client.query<{ n: string | null }>('select regen.apply_changes() as n');
    ms += performance.now() - start;
    rows += Number(r!.n ?? 0);
    if (Number(r!.n ?? 0) === 0) break;
    const { rows: [log] } = await client.query<{ t: string | null }>(`select to_regclass('regen._changes')::text as t`);
    if (log!.t === null || !(await client.query('select from regen._changes limit 1')).rowCount) break;
  }
  return { ms, rows };
}

/**
 * The first settle of a set, the fast way when superuser: every item current and its vector stored
 * in two statements, the store's triggers off meanwhile (through them, 1,000,000 rows take minutes).
 */
async function firstSettle(client: pg.Client, set: DocSet): Promise<void> {
  const { rows: [me] } = await client.query<{ ok: boolean }>('select rolsuper as ok from pg_roles where rolname = current_user');
  if (!me!.ok) return settle(client, set, true);
  await client.query(`update regen._items set plan_hash = content_hash, chunk_hashes = array[content_hash], embedded_hash = content_hash,
                                              queue_job = null where source_id = $1`, [set.sourceId]);
  await client.query('alter table regen._embeddings disable trigger user');
  try {
    await client.query(`
      insert into regen._embeddings (version_id, source_id, row_id, chunk_no, tenant, content_hash, text_hash, embedding)
      select it.version_id, it.source_id, it.row_id, 1, it.tenant, it.content_hash, it.content_hash, $2::vector
        from regen._items it where it.source_id = $1`, [set.sourceId, VECTOR]);
  } finally {
    await client.query('alter table regen._embeddings enable trigger user');
  }
  await client.query('delete from pgboss.job where name = $1', [set.queue]);
}

/**
 * As if both workers had caught up: every pgregen item current with its one chunk's vector stored
 * under its content hash, no pg-boss job left; every row the pgai-style trigger queued embedded into
 * its destination and its queue emptied. Call applyChanges first.
 */
export async function settle(client: pg.Client, set: DocSet, all = false): Promise<void> {
  const pending = all ? 'true' : 'it.embedded_hash is distinct from it.content_hash or it.queue_job is not null';
  await client.query(`update regen._items it set plan_hash = content_hash, chunk_hashes = array[content_hash], queue_job = null
                       where it.source_id = $1 and (${pending})`, [set.sourceId]);
  // The store's settle trigger marks the items current (the update below is for any it left), in
  // batches of STORE_BATCH rows, about what a worker writes at a time, so the trigger's work stays small.
  for (let after = ''; ;) {
    const { rows } = await client.query<{ last: string | null }>(`
      with batch as (
        select it.version_id, it.source_id, it.row_id, it.tenant, it.content_hash from regen._items it
         where it.source_id = $1 and it.version_id = $4 and it.row_id > $3 and it.embedded_hash is distinct from it.content_hash
         order by it.row_id limit ${STORE_BATCH}
      ), stored as (
        insert into regen._embeddings as e (version_id, source_id, row_id, chunk_no, tenant, content_hash, text_hash, embedding)
        select b.version_id, b.source_id, b.row_id, 1, b.tenant, b.content_hash, b.content_hash, $2::vector from batch b
        on conflict (version_id, source_id, row_id, chunk_no) do update
          set tenant = excluded.tenant, content_hash = excluded.content_hash, text_hash = excluded.text_hash, embedding = excluded.embedding
      )
      select max(row_id) as last from batch`, [set.sourceId, VECTOR, after, set.versionId]);
    if (rows[0]!.last === null) break;
    after = rows[0]!.last;
  }
  await client.query(`update regen._items it set embedded_hash = content_hash
                       where it.source_id = $1 and it.embedded_hash is distinct from it.content_hash`, [set.sourceId]);
  await client.query('delete from pgboss.job where name = $1', [set.queue]);
  await client.query(`
    insert into ${set.pgaiStore} (id, chunk_seq, chunk, embedding)
    select d.id, 0, d.title || E'\\n\\n' || d.body, $1::vector
      from docs_pgai${set.suffix} d where d.id in (select q.id from ${set.pgaiQueue} q)
    on conflict (id, chunk_seq) do update set chunk = excluded.chunk, embedding = excluded.embedding`, [VECTOR]);
  await client.query(`truncate ${set.pgaiQueue}`);
}

export async function vacuum(client: pg.Client, set: DocSet): Promise<void> {
  const tables = ['plain', 'pgai', 'rowtrigger', 'captured'].map((r) => `docs_${r}${set.suffix}`);
  await client.query(`vacuum (analyze) ${tables.join(', ')}, ${set.pgaiQueue}, ${set.pgaiStore}`);
  await client.query('vacuum (analyze) regen._items, regen._embeddings, pgboss.job');
  // the change log: the table regen._change_log since sql/0035 (regen._changes, a view of it, before
  // that the table itself since sql/0020)
  const { rows: [log] } = await client.query<{ t: string | null }>(
    `select coalesce(to_regclass('regen._change_log'), to_regclass('regen._changes'))::text as t`);
  if (log!.t !== null) await client.query(`vacuum (analyze) ${log!.t}`);
}

/**
 * The source's row of regen.embedding_gap. Read with JIT off: with the server's default (jit = on)
 * every read of the view compiles its plan, which costs more the larger the source (see gapReadMs).
 */
export async function gap(client: pg.Client, set: DocSet, jit = false): Promise<Gap> {
  await client.query('begin');
  try {
    if (!jit) await client.query('set local jit = off');
    const { rows: [g] } = await client.query(`select ${GAP.join(', ')} from regen.embedding_gap where source = $1`, [set.source]);
    check(g !== undefined, `regen.embedding_gap has no row for source ${set.source}`);
    return Object.fromEntries(GAP.map((c) => [c, Number(g[c])])) as Gap;
  } finally {
    await client.query('commit');
  }
}

/** ms of one read of the source's row of regen.embedding_gap with the server's settings, and with JIT off. */
export async function gapReadMs(client: pg.Client, set: DocSet): Promise<{ defaults: number; jitOff: number }> {
  const ms = async (jit: boolean) => {
    const start = performance.now();
    await gap(client, set, jit);
    return performance.now() - start;
  };
  await ms(false);   // warm the caches
  return { defaults: await ms(true), jitOff: await ms(false) };
}

export async function jobs(client: pg.Client, set: DocSet): Promise<number> {
  return (await client.query<{ n: number }>('select count(*)::int as n from pgboss.job where name = $1', [set.queue])).rows[0]!.n;
}

export async function count(client: pg.Client, table: string): Promise<number> {
  return (await client.query<{ n: number }>(`select count(*)::int as n from ${table}`)).rows[0]!.n;
}

/**
 * Run after applyChanges: the items against docs_captured, the vectors against the rows, the gap
 * view against a brute-force count, the queue against the items; and the pgai-style destination
 * against its table. Throws on any difference.
 */
export async function verifyCapture(client: pg.Client, set: DocSet, label: string): Promise<void> {
  const captured = tableOf(set, 'captured');
  const { rows: [c] } = await client.query<Record<string, number>>(`
    select count(*) filter (where it.row_id is null)::int as uncaptured,
           count(*) filter (where d.id is null)::int as orphaned,
           count(*) filter (where it.content_hash <> sha256(convert_to(d.title || E'\\n\\n' || d.body, 'UTF8')))::int as wrong_hash,
           count(*) filter (where it.priority <> d.views::float8)::int as wrong_priority,
           count(*) filter (where it.tenant is distinct from d.tenant and it.row_id is not null and d.id is not null)::int as wrong_tenant
      from ${captured} d
      full join (select * from regen._items where source_id = $1) it on it.row_id = d.id::text`, [set.sourceId]);
  for (const [what, n] of Object.entries(c!)) check(n === 0, `${label}: ${what.replace('_', ' ')} items or rows of ${captured}: ${n}`);

  const { rows: [v] } = await client.query<Record<string, number>>(`
    select (select count(*) from regen._embeddings e where e.source_id = $1
              and not exists (select 1 from ${captured} d where d.id::text = e.row_id))::int as pgregen,
           (select count(*) from ${set.pgaiStore} e
              where not exists (select 1 from docs_pgai${set.suffix} d where d.id = e.id))::int as pgai`, [set.sourceId]);
  check(v!.pgregen === 0, `${label}: ${v!.pgregen} vectors in regen._embeddings of rows that left ${captured}`);
  check(v!.pgai === 0, `${label}: ${v!.pgai} vectors in ${set.pgaiStore} of rows that left docs_pgai${set.suffix}`);

  const { rows: [brute] } = await client.query<Record<string, string>>(`
    select count(*) as expected, count(*) filter (where st = 'current') as current, count(*) filter (where st = 'stale') as stale,
           count(*) filter (where st = 'missing') as missing, count(*) filter (where queue_job is not null and st <> 'current') as queued,
           count(*) filter (where st <> 'current' and not exists (
             select 1 from pgboss.job j where j.name = $2 and j.id = i.queue_job and j.state = 'created'))::int as unqueued
      from (select *, regen._state(content_hash, embedded_hash, failed_hash, has_legacy) as st
              from regen._items where source_id = $1) i`, [set.sourceId, set.queue]);
  const view = await gap(client, set);
  for (const col of GAP) check(view[col] === Number(brute![col]), `${label}: regen.embedding_gap ${col} = ${view[col]}, brute force ${brute![col]}`);
  check(Number(brute!.unqueued) === 0, `${label}: ${brute!.unqueued} items need work but wait in no created pg-boss job`);
}
