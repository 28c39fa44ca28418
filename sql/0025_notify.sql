-- Workers learn of new versions and new work at once (issue 14, item 4), with LISTEN/NOTIFY
-- instead of their polling: a new version's queue was served only at the worker's next 10-second
-- look for versions, and new jobs were fetched at its next poll (REGEN_POLL_INTERVAL_SECONDS).
--
-- Channels (payload empty; PostgreSQL folds identical notifications of a transaction into one):
--   regen_versions  a version was created (regen.create_version)
--   regen_work      jobs were enqueued (regen._enqueue: rebuilds, fresh edits, migrations, recovery)
-- Nothing on the application's write path notifies: a NOTIFY serializes the commits that send one.
-- A notification only wakes a worker; what there is to do is still read from the tables, so a
-- missed one (a worker reconnecting, a pooler in transaction mode that cannot LISTEN) costs the
-- polling delay and nothing else.
--
-- Error codes of this file: none.

create function regen.tg_versions__notify() returns trigger
language plpgsql
as $$
begin
  perform pg_notify('regen_versions', '');
  return null;
end
$$;
comment on function regen.tg_versions__notify() is 'Notifies channel regen_versions: a version was created (workers serve its queue at once)';

create trigger versions_notify after insert on regen._versions
  for each statement execute function regen.tg_versions__notify();

-- _enqueue of sql/0018_hot_first.sql, notifying regen_work when it enqueued anything.
create or replace function regen._enqueue(
  source_id integer, version_id integer, row_ids text[], fresh boolean, force boolean default false
)
returns bigint
language plpgsql volatile set jit = off
as $$
declare
  v_rank integer := regen._weight_rank(_enqueue.source_id);
  -- without a priority expression every row of the source is hot
  v_ranked boolean := (select s.priority_expression is not null from regen._sources s where s.id = _enqueue.source_id);
  v_count bigint;
  v_salt text := gen_random_uuid()::text;
begin
  with candidates as materialized (
    select it.version_id, it.row_id, it.priority, coalesce(k.api_key_ref, '') as key_ref,
           _enqueue.fresh or not v_ranked or it.priority > 0 as hot   -- fresh edits are one band: not split
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
    select n.*, md5(v_salt || '/' || n.version_id || '/' || n.key_ref || '/' || n.hot || '/' || n.batch_no)::uuid as job_id
    from (select c.*, (row_number() over (partition by c.version_id, c.key_ref, c.hot order by c.priority desc, c.row_id) - 1) / 64 as batch_no
            from candidates c) n
  ), jobs as (
    select b.version_id, b.key_ref, b.hot, b.batch_no, b.job_id,
           array_agg(b.row_id order by b.priority desc, b.row_id) as rows
    from batched b group by b.version_id, b.key_ref, b.hot, b.batch_no, b.job_id
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
                else (case when j.hot then 500000000 else 0 end) + v_rank * 1000000 + 999999 - least(j.batch_no, 999999)::integer end,
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
  if v_count > 0 then
    -- workers that LISTEN fetch at once instead of at their next poll (sent when this commits;
    -- one notification per transaction however many calls)
    perform pg_notify('regen_work', '');
  end if;
  return v_count;
end
$$;
comment on function regen._enqueue(integer, integer, text[], boolean, boolean) is
  'Enqueues items that need work and wait in no job into pg-boss: fresh edits first, then hot rows of every source (heavier '
  'source first), then cold ones (priority 0 or less); hotter rows first within; returns the number of items and, if any, notifies channel regen_work';


select regen._refresh_grants();
