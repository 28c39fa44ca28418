-- The rebuild queue: items are enqueued into pg-boss as jobs of up to 64 rows of one source,
-- version and API key, in priority order. Each version has its own pg-boss queue,
-- `regen_embed_v<version id>` (created with the version), so a worker can serve some versions only.
--
-- Job priority (pg-boss serves higher first, then older):
--   fresh edits   1,000,000,000 + weight rank * 1,000       ahead of every backfill
--   backfill      weight rank * 1,000,000 + 999,999 - batch  hot batches first within a source
-- where the weight rank of a source is the number of distinct smaller weights among the sources.
--
-- An item waits in at most one job: regen._items.queue_job names the job it belongs to, and a job
-- works only the items that still name it (regen.prepare_inputs), so an item moved to another job
-- is skipped by the old one. An item is (re)enqueued unless it already waits (created or retry) in a
-- job: a fresh edit also takes items out of a waiting backfill job (they move ahead), and an edit
-- of an item whose job is in flight queues it once more. Items of jobs that ended or vanished are
-- free again. queue_job is cleared when the item is settled (current) or fails.

create function regen._queue(version_id integer)
returns text
language sql immutable parallel safe
as $$ select 'regen_embed_v' || version_id $$;
comment on function regen._queue(integer) is 'Name of the pg-boss queue of a version';

-- Retries with exponential backoff up to five minutes; a worker killed mid-batch gives its jobs
-- back after the 30-second heartbeat; a batch running longer than 15 minutes is retried elsewhere.
create function regen._create_queue(version_id integer)
returns void
language plpgsql volatile
as $$
begin
  if to_regprocedure('pgboss.create_queue(text, jsonb)') is null then
    raise exception 'the pg-boss queue is not installed'
      using errcode = 'RG030', hint = 'run pgregen install, which installs pg-boss';
  end if;
  perform pgboss.create_queue(regen._queue(version_id), jsonb_build_object(
    'policy', 'standard', 'retryLimit', 10, 'retryDelay', 5, 'retryBackoff', true, 'retryDelayMax', 300,
    'expireInSeconds', 900, 'heartbeatSeconds', 30, 'partition', false));
end
$$;
comment on function regen._create_queue(integer) is 'Creates the pg-boss queue of a version (idempotent)';

-- Tenants that bring their own API key: the key itself never enters the database, only the name
-- of the environment variable (or secret file) the worker reads it from.
create table regen._tenant_keys (
  tenant text primary key,
  api_key_ref text not null check (api_key_ref ~ '^[A-Za-z_][A-Za-z0-9_]{0,127}$'),
  updated_at timestamptz not null default now()
);

-- Items settled per minute, for the rate and ETA in regen.rebuild_progress; appended by the
-- settle trigger, pruned by regen.compact_gap().
create table regen._progress (
  source_id integer not null,
  version_id integer not null,
  minute timestamptz not null,
  items bigint not null
);
create index _progress_minute on regen._progress (minute);

create function regen._weight_rank(source_id integer)
returns integer
language sql stable
as $$
  select count(distinct o.weight)::integer from regen._sources o
  where o.weight < (select s.weight from regen._sources s where s.id = _weight_rank.source_id)
$$;
comment on function regen._weight_rank(integer) is 'Number of distinct source weights below this source''s weight (0 = lightest)';

-- Marks items as queued and inserts their jobs; returns how many items were enqueued. Of the given
-- rows only items that need work (missing, stale, outdated; everything with force) and do not wait
-- in a job already are taken (fresh edits: not in a fresh job), locked first. Should two enqueuers
-- still take the same item, it names only the later job and the earlier one skips it. version_id
-- null means every version the source uses.
create function regen._enqueue(
  source_id integer, version_id integer, row_ids text[], fresh boolean, force boolean default false
)
returns bigint
language plpgsql volatile set jit = off
as $$
declare
  v_rank integer := regen._weight_rank(_enqueue.source_id);
  v_count bigint;
  v_salt text := gen_random_uuid()::text;
begin
  with candidates as materialized (
    select it.version_id, it.row_id, it.priority, coalesce(k.api_key_ref, '') as key_ref
    from regen._source_versions sv
    join regen._items it on it.source_id = sv.source_id and it.version_id = sv.version_id
    left join regen._tenant_keys k on k.tenant = it.tenant
    where sv.source_id = _enqueue.source_id
      and (_enqueue.version_id is null or sv.version_id = _enqueue.version_id)
      and it.row_id = any(_enqueue.row_ids)          -- primary-key probes per version
      and (it.queue_job is null
           or not exists (select 1 from pgboss.job j
                          where j.name = regen._queue(it.version_id) and j.id = it.queue_job and j.state in ('created', 'retry')
                            and (j.priority >= 1000000000 or not _enqueue.fresh)))
      and (_enqueue.force or (it.embedded_hash is distinct from it.content_hash
                              and it.failed_hash is distinct from it.content_hash))
    for update of it
  ), batched as (
    -- job ids are derived from (statement salt, version, key, batch): no join needed to assign them
    select n.*, md5(v_salt || '/' || n.version_id || '/' || n.key_ref || '/' || n.batch_no)::uuid as job_id
    from (select c.*, (row_number() over (partition by c.version_id, c.key_ref order by c.priority desc, c.row_id) - 1) / 64 as batch_no
            from candidates c) n
  ), jobs as (
    select b.version_id, b.key_ref, b.batch_no, b.job_id,
           array_agg(b.row_id order by b.priority desc, b.row_id) as rows
    from batched b group by b.version_id, b.key_ref, b.batch_no, b.job_id
  ), marked as (
    -- driven by the assignments, one primary-key lookup each
    update regen._items it set queue_job = a.job_id
      from batched a
     where it.source_id = _enqueue.source_id and it.version_id = a.version_id and it.row_id = a.row_id
    returning 1
  ), inserted as (
    insert into pgboss.job (id, name, data, priority, retry_limit, retry_delay, retry_backoff, retry_delay_max,
                            expire_seconds, deletion_seconds, keep_until, policy, dead_letter, heartbeat_seconds)
    select j.job_id, q.name,
           jsonb_build_object('source', s.name, 'version', v.tag, 'rows', to_jsonb(j.rows),
                              'key', nullif(j.key_ref, ''), 'force', _enqueue.force, 'fresh', _enqueue.fresh),
           case when _enqueue.fresh then 1000000000 + v_rank * 1000
                else v_rank * 1000000 + 999999 - least(j.batch_no, 999999)::integer end,
           q.retry_limit, q.retry_delay, q.retry_backoff, q.retry_delay_max,
           q.expire_seconds, q.deletion_seconds, now() + q.retention_seconds * interval '1 second',
           q.policy, q.dead_letter, q.heartbeat_seconds
    from jobs j
    join pgboss.queue q on q.name = regen._queue(j.version_id)
    join regen._sources s on s.id = _enqueue.source_id
    join regen._versions v on v.id = j.version_id
    returning 1
  )
  select (select count(*) from marked) into v_count;
  return v_count;
end
$$;
comment on function regen._enqueue(integer, integer, text[], boolean, boolean) is
  'Enqueues items that need work and wait in no job into pg-boss, in priority order; returns the number of items';
