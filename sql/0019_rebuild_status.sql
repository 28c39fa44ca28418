-- Rebuild progress computed once, in SQL (issue 13): regen.rebuild_status() gives the open work,
-- the rate and the ETA of any scope (sources and versions, optionally one tenant), and the command
-- line reads it instead of computing its own. It reads the items settled per second and tenant
-- that the settle trigger of sql/0016 counts.
--
-- Error codes of this file: RG041 (reused) invalid window.

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
