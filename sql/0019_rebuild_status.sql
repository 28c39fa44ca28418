-- Rebuild progress computed once, in SQL (issue 13): regen.rebuild_status() gives the open work,
-- the rate and the ETA of any scope (sources and versions, optionally one tenant), and the command
-- line reads it instead of computing its own. Items settled are now counted per second and tenant.
--
-- Error codes of this file: RG041 (reused) invalid window.

alter table regen._progress rename column minute to at;
alter table regen._progress add column tenant text;
alter index regen._progress_minute rename to _progress_at;
comment on table regen._progress is 'Items settled per second, source, version and tenant (pruned after an hour by regen.compact_gap)';

create or replace function regen.compact_gap()
returns bigint
language plpgsql volatile
as $$
declare
  v_folded bigint;
begin
  -- One compactor at a time; a second caller has nothing to do.
  if not pg_try_advisory_xact_lock(hashtext('regen.compact_gap')) then
    return 0;
  end if;
  with moved as (
    delete from regen._gap_deltas returning *
  ), net as (
    select source_id, version_id, tenant, state, queued, sum(n) as n, count(*) as folded
    from moved group by 1, 2, 3, 4, 5
  ), applied as (
    insert into regen._gap_counts as c (source_id, version_id, tenant, state, queued, n)
    select source_id, version_id, tenant, state, queued, n from net
    on conflict (source_id, version_id, tenant, state, queued) do update set n = c.n + excluded.n
  )
  select coalesce(sum(folded), 0) into v_folded from net;
  delete from regen._gap_counts where n = 0;
  delete from regen._progress where at < now() - interval '1 hour';
  return v_folded;
end
$$;
comment on function regen.compact_gap() is
  'Folds appended gap deltas into the gap counts; keeps regen.embedding_gap fast. Returns the number of deltas folded.';

create or replace function regen.tg_embeddings__settle() returns trigger
language plpgsql set jit = off
as $$
begin
  if not exists (select from new_rows) then
    return null;   -- a statement that wrote no vector
  end if;
  perform 1
    from regen._items it
    join (select distinct version_id, source_id, row_id from new_rows) t
      on it.source_id = t.source_id and it.version_id = t.version_id and it.row_id = t.row_id
   order by it.version_id, it.row_id
     for update of it;
  -- rows deleted (or filtered out) while their vectors were being written
  delete from regen._embeddings e
   using (select distinct version_id, source_id, row_id from new_rows) t
   where e.version_id = t.version_id and e.source_id = t.source_id and e.row_id = t.row_id
     and not exists (select 1 from regen._items it
                     where it.source_id = t.source_id and it.version_id = t.version_id and it.row_id = t.row_id);
  -- rows that moved to another tenant meanwhile
  update regen._embeddings e set tenant = it.tenant
    from (select distinct version_id, source_id, row_id from new_rows) t
    join regen._items it on it.source_id = t.source_id and it.version_id = t.version_id and it.row_id = t.row_id
   where e.version_id = t.version_id and e.source_id = t.source_id and e.row_id = t.row_id
     and e.tenant is distinct from it.tenant;
  with touched as (
    select distinct version_id, source_id, row_id from new_rows
  ), done as (
    update regen._items it
       set embedded_hash = it.content_hash, failed_hash = null, last_error = null, queue_job = null, drifts = 0, changed_at = now()
      from touched t
     where it.source_id = t.source_id and it.version_id = t.version_id and it.row_id = t.row_id
       and it.plan_hash = it.content_hash
       and it.embedded_hash is distinct from it.content_hash
       and cardinality(it.chunk_hashes) = (
             select count(*) from regen._embeddings e
             where e.version_id = it.version_id and e.source_id = it.source_id and e.row_id = it.row_id
               and e.content_hash = it.content_hash and e.chunk_no <= cardinality(it.chunk_hashes))
    returning it.version_id, it.source_id, it.row_id, it.tenant, cardinality(it.chunk_hashes) as chunks
  ), extra as (
    delete from regen._embeddings e using done d
    where e.version_id = d.version_id and e.source_id = d.source_id and e.row_id = d.row_id and e.chunk_no > d.chunks
  )
  insert into regen._progress (source_id, version_id, tenant, at, items)
  select d.source_id, d.version_id, d.tenant, date_trunc('second', now()), count(*)
  from done d group by 1, 2, 3;
  return null;
end
$$;
comment on function regen.tg_embeddings__settle() is
  'Locks the items of the vectors a statement stored, drops vectors of rows gone meanwhile, moves vectors to their row''s tenant, '
  'and marks items current once all their chunk vectors are stored';

create type regen.rebuild_status_row as (
  open bigint, failed bigint, settled_recently bigint, rate_per_second double precision, eta_seconds double precision,
  queued_items bigint, queued_jobs bigint, active_jobs bigint);
comment on type regen.rebuild_status_row is 'One row of regen.rebuild_status(): the open work, rate and ETA of a scope';

create function regen.rebuild_status(
  sources text[] default null,
  versions text[] default null,
  tenant text default null,
  window_seconds integer default 10
)
returns regen.rebuild_status_row
language plpgsql stable
as $$
declare
  v_status regen.rebuild_status_row;
begin
  if window_seconds is null or window_seconds not between 1 and 3600 then
    raise exception 'window_seconds must be between 1 and 3600, not %', coalesce(window_seconds::text, 'NULL') using errcode = 'RG041';
  end if;
  if cardinality(sources) is distinct from cardinality(versions) and sources is not null and versions is not null then
    raise exception 'sources and versions must be arrays of the same length (pairs), not % and %', cardinality(sources), cardinality(versions)
      using errcode = 'RG041';
  end if;
  -- the scope: (source, version) pairs; a null array means every source, or each source's active version
  with scope as (
    select sv.source_id, sv.version_id, s.name as source, v.tag as version
    from regen._source_versions sv
    join regen._sources s on s.id = sv.source_id
    join regen._versions v on v.id = sv.version_id
    where case
      when rebuild_status.sources is not null and rebuild_status.versions is not null
        then (s.name, v.tag) in (select * from unnest(rebuild_status.sources, rebuild_status.versions))
      when rebuild_status.sources is not null then s.name = any(rebuild_status.sources) and sv.role = 'active'
      when rebuild_status.versions is not null then v.tag = any(rebuild_status.versions)
      else sv.role = 'active' end
  ), gap as (
    select coalesce(sum(t.n) filter (where t.state in ('missing', 'stale', 'outdated')), 0)::bigint as open,
           coalesce(sum(t.n) filter (where t.state = 'failed'), 0)::bigint as failed
    from regen._gap_totals t join scope sc on sc.source_id = t.source_id and sc.version_id = t.version_id
    where rebuild_status.tenant is null or t.tenant = rebuild_status.tenant
  ), settled as (
    select coalesce(sum(p.items), 0)::bigint as n
    from regen._progress p join scope sc on sc.source_id = p.source_id and sc.version_id = p.version_id
    where p.at > now() - make_interval(secs => window_seconds)
      and (rebuild_status.tenant is null or p.tenant = rebuild_status.tenant)
  ), queue as (
    select coalesce(sum(q.items), 0)::bigint as items, coalesce(sum(q.jobs), 0)::bigint as jobs,
           coalesce(sum(q.jobs) filter (where q.state = 'active'), 0)::bigint as active
    from regen.queue_depth() q where q.version in (select sc.version from scope sc)
  )
  select gap.open, gap.failed, settled.n, settled.n::float8 / window_seconds,
         case when gap.open = 0 then 0 when settled.n > 0 then gap.open / (settled.n::float8 / window_seconds) end,
         queue.items, queue.jobs, queue.active
    into v_status
    from gap, settled, queue;
  return v_status;
end
$$;
comment on function regen.rebuild_status(text[], text[], text, integer) is
  'Open (missing, stale, outdated) and failed items of a scope (source and version pairs, sources at their active version, '
  'or everything active; optionally one tenant), the items settled in the last window_seconds, the rate per second and '
  'the ETA at that rate, and the jobs of its versions waiting or in flight';

select regen._refresh_grants();
