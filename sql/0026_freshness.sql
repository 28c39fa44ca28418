-- Freshness as a number (issue 14, item 3): how long an edit takes to become searchable, in a view
-- an operator can alert on ("edits older than 5 minutes are not yet searchable"), in `pgregen
-- status` and in the worker's Prometheus metrics.
--
-- * An item's changed_at is now when its text was last edited: the applier copies the logged
--   change's time (its transaction's start) instead of the time it applied it, and a change of
--   priority or tenant alone leaves it.
-- * The settle trigger, which counts the items it makes current per second in regen._progress,
--   also records for those of fresh-edit jobs the seconds from their edit to their vector.
-- * regen.freshness: per source and version, the edits waiting (and the age of the oldest), the
--   backfill waiting (and how long the oldest job has been queued), and the edit-to-vector delay of
--   the last five minutes (p50, p99, max).
--
-- Error codes of this file: none.

alter table regen._progress add column edit_delays real[];
comment on column regen._progress.edit_delays is
  'For the items of fresh-edit jobs among them: the seconds from each one''s edit to its vector (regen.freshness)';

-- ---------------------------------------------------------------------------------------------
-- _apply_source of sql/0020_change_log.sql: an item's changed_at is when its text was edited.
create or replace function regen._apply_source(source integer, only_rows text[] default null,
                                    max_rows integer default 100000, wait boolean default true)
returns bigint
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp set jit = off
as $$
declare
  v_taken bigint;
  v_rows text[];
  v_present boolean[];
  v_tenants text[];
  v_priorities float8[];
  v_hashes bytea[];
  v_errors text[];
  v_ats timestamptz[];
  v_versions integer[];
  v_gone text[];
begin
  if not exists (select 1 from regen._sources x where x.id = _apply_source.source) then
    -- the source was unregistered: its changes have nothing to apply to
    delete from regen._changes c where c.source_id = _apply_source.source;
    return 0;
  end if;
  -- Nothing logged for these rows: no lock taken (an applier holds it until its transaction ends,
  -- and write_embeddings' is a whole HNSW insert long).
  if not exists (select 1 from regen._changes c
                 where c.source_id = _apply_source.source and (only_rows is null or c.row_id = any(only_rows))) then
    return 0;
  end if;
  if wait then
    perform pg_advisory_xact_lock(hashtext('regen.apply_changes'), _apply_source.source);
  elsif not pg_try_advisory_xact_lock(hashtext('regen.apply_changes'), _apply_source.source) then
    return 0;   -- another applier is at it
  end if;

  -- The changes taken, the last one of each row winning (for one row, the order of seq is the order
  -- its changes committed in).
  with taken as (
    delete from regen._changes c
     where c.ctid = any(array(select c2.ctid from regen._changes c2
                              where c2.source_id = _apply_source.source
                                and (only_rows is null or c2.row_id = any(only_rows))
                              order by c2.seq
                              limit max_rows))
    returning c.*
  ), latest as (
    select distinct on (t.row_id) t.* from taken t order by t.row_id, t.seq desc
  )
  select (select count(*) from taken),
         coalesce(array_agg(l.row_id order by l.row_id), '{}'), coalesce(array_agg(l.present order by l.row_id), '{}'),
         coalesce(array_agg(l.tenant order by l.row_id), '{}'), coalesce(array_agg(l.priority order by l.row_id), '{}'),
         coalesce(array_agg(l.content_hash order by l.row_id), '{}'), coalesce(array_agg(l.error order by l.row_id), '{}'),
         coalesce(array_agg(l.at order by l.row_id), '{}')
    into v_taken, v_rows, v_present, v_tenants, v_priorities, v_hashes, v_errors, v_ats
    from latest l;
  if v_taken = 0 then
    return 0;
  end if;

  v_versions := array(select sv.version_id from regen._source_versions sv
                      where sv.source_id = _apply_source.source order by sv.version_id);

  -- Rows that left the source (deleted, key changed, filtered out, text now null) lose items and
  -- vectors. Two statements: deleting the items waits for a worker's settle step that holds them,
  -- and only a statement started after that sees (and deletes) the vectors it wrote.
  v_gone := array(select a.row_id from unnest(v_rows, v_present) a(row_id, present) where not a.present);
  if cardinality(v_gone) > 0 then
    delete from regen._items it
     where it.source_id = _apply_source.source and it.version_id = any(v_versions) and it.row_id = any(v_gone);
    delete from regen._embeddings e
     where e.version_id = any(v_versions) and e.source_id = _apply_source.source and e.row_id = any(v_gone);
  end if;

  -- New rows and rows whose text changed are marked fresh (regen.enqueue_fresh puts them into their
  -- jobs); a change of priority or tenant alone updates the item and leaves its place in the queue.
  -- changed_at: when the change was made (its transaction began), so freshness counts from the edit
  insert into regen._items as it (source_id, version_id, row_id, tenant, priority, content_hash, fresh, changed_at)
  select _apply_source.source, v.version_id, a.row_id, a.tenant, a.priority, a.content_hash, true, a.at
  from unnest(v_rows, v_present, v_tenants, v_priorities, v_hashes, v_errors, v_ats) as a(row_id, present, tenant, priority, content_hash, error, at)
  cross join unnest(v_versions) as v(version_id)
  where a.present and a.error is null
  order by v.version_id, a.row_id   -- the order the worker locks items in: no deadlock between the two
  on conflict (source_id, version_id, row_id) do update
    set tenant = excluded.tenant, priority = excluded.priority,
        content_hash = excluded.content_hash,
        changed_at = case when it.content_hash is distinct from excluded.content_hash then excluded.changed_at else it.changed_at end,
        fresh = it.fresh or it.content_hash is distinct from excluded.content_hash
    where (it.tenant, it.priority, it.content_hash)
          is distinct from (excluded.tenant, excluded.priority, excluded.content_hash);

  -- Rows an expression raised on: failed items, with the error (regen.failed_items); a later edit
  -- that the expressions accept makes them ordinary items again.
  insert into regen._items as it (source_id, version_id, row_id, tenant, priority, content_hash, failed_hash, last_error, attempts)
  select _apply_source.source, v.version_id, a.row_id, a.tenant, 0, h.hash, h.hash, a.error, 1
  from unnest(v_rows, v_present, v_tenants, v_priorities, v_hashes, v_errors) as a(row_id, present, tenant, priority, content_hash, error)
  cross join lateral (select sha256(convert_to('pgregen: expression error: ' || a.error, 'UTF8')) as hash) h
  cross join unnest(v_versions) as v(version_id)
  where a.present and a.error is not null
  order by v.version_id, a.row_id
  on conflict (source_id, version_id, row_id) do update
    set tenant = excluded.tenant, content_hash = excluded.content_hash, failed_hash = excluded.failed_hash,
        last_error = excluded.last_error, attempts = it.attempts + 1, queue_job = null, changed_at = now()
    where it.content_hash is distinct from excluded.content_hash or it.tenant is distinct from excluded.tenant;

  -- A row that moved to another tenant moves its vectors with it.
  update regen._embeddings e set tenant = a.tenant
    from unnest(v_rows, v_present, v_tenants, v_priorities, v_hashes, v_errors) as a(row_id, present, tenant, priority, content_hash, error)
   where a.present and e.version_id = any(v_versions) and e.source_id = _apply_source.source and e.row_id = a.row_id
     and e.tenant is distinct from a.tenant;
  return v_taken;
end
$$;
comment on function regen._apply_source(integer, text[], integer, boolean) is
  'Applies up to max_rows logged changes of one source (of the given rows only, if only_rows), the last of each row '
  'winning: items upserted (new and changed texts marked fresh), rows gone removed with their vectors, vectors moved '
  'with their tenant; returns the changes taken. One applier per source at a time (wait: queue behind it, else return 0).';


-- ---------------------------------------------------------------------------------------------
-- The settle trigger of sql/0020_change_log.sql, recording the edit-to-vector delays.
create or replace function regen.tg_embeddings__settle() returns trigger
language plpgsql set jit = off
as $$
declare
  v_source integer;
  v_rows text[];
begin
  if not exists (select from new_rows) then
    return null;   -- a statement that wrote no vector
  end if;
  -- an edit logged while the vectors were being inserted: applied now, before the items are locked
  -- (in the order every applier takes them), so what is settled is judged against the text now
  for v_source, v_rows in
    select n.source_id, array_agg(distinct n.row_id) from new_rows n
    where exists (select 1 from regen._changes c where c.source_id = n.source_id and c.row_id = n.row_id)
    group by n.source_id
  loop
    perform regen._apply_source(v_source, v_rows, wait => false);   -- else the applier at it does
  end loop;
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
    -- o: the item as it was (its job, and when its text was last edited)
    update regen._items it
       set embedded_hash = it.content_hash, failed_hash = null, last_error = null, queue_job = null, drifts = 0, changed_at = now()
      from touched t
      join regen._items o on o.source_id = t.source_id and o.version_id = t.version_id and o.row_id = t.row_id
     where it.source_id = t.source_id and it.version_id = t.version_id and it.row_id = t.row_id
       and it.plan_hash = it.content_hash
       and it.embedded_hash is distinct from it.content_hash
       and cardinality(it.chunk_hashes) = (
             select count(*) from regen._embeddings e
             where e.version_id = it.version_id and e.source_id = it.source_id and e.row_id = it.row_id
               and e.content_hash = it.content_hash and e.chunk_no <= cardinality(it.chunk_hashes))
    returning it.version_id, it.source_id, it.row_id, it.tenant, cardinality(it.chunk_hashes) as chunks,
              o.queue_job as job, o.changed_at as edited_at
  ), extra as (
    delete from regen._embeddings e using done d
    where e.version_id = d.version_id and e.source_id = d.source_id and e.row_id = d.row_id and e.chunk_no > d.chunks
  )
  -- the items settled, and for those of fresh-edit jobs the seconds from their edit to now (regen.freshness)
  insert into regen._progress (source_id, version_id, tenant, at, items, edit_delays)
  select d.source_id, d.version_id, d.tenant, date_trunc('second', now()), count(*),
         array_agg(greatest(0, extract(epoch from now() - d.edited_at))::real) filter (where d.fresh)
  from (select d.*, exists (select 1 from pgboss.job j
                            where j.name = regen._queue(d.version_id) and j.id = d.job
                              and j.priority >= regen.fresh_priority()) as fresh
          from done d) d
  group by 1, 2, 3;
  return null;
end
$$;
comment on function regen.tg_embeddings__settle() is
  'Locks the items of the vectors a statement stored, drops vectors of rows gone meanwhile, moves vectors to their row''s tenant, '
  'and marks items current once all their chunk vectors are stored, counting them (and the delay from edit to vector of '
  'fresh edits) in regen._progress; applies the rows'' logged changes first';


-- ---------------------------------------------------------------------------------------------
create view regen.freshness as
  with scope as (
    select sv.source_id, sv.version_id, s.name as source, v.tag as version, sv.role
    from regen._source_versions sv
    join regen._sources s on s.id = sv.source_id
    join regen._versions v on v.id = sv.version_id
  ), jobs as (
    -- the jobs waiting or in flight, per source and version (each version has a queue of its own)
    select sc.source_id, sc.version_id, j.id, j.created_on, j.data->'rows' as rows, j.priority >= regen.fresh_priority() as fresh
    from scope sc
    join pgboss.job j on j.name = regen._queue(sc.version_id) and j.data->>'source' = sc.source
    where j.state in ('created', 'retry', 'active')
  ), edits as (
    -- an edit waits until its vector is stored: logged and not applied yet (a new text or a new row;
    -- a delete leaves search at once), applied and marked fresh, or in a fresh-edit job
    select sc.source_id, sc.version_id, c.row_id, c.at as edited_at
    from scope sc
    join regen._changes c on c.source_id = sc.source_id
    left join regen._items it on it.source_id = c.source_id and it.version_id = sc.version_id and it.row_id = c.row_id
    where c.present and c.error is null and c.content_hash is distinct from it.embedded_hash
    union all
    select it.source_id, it.version_id, it.row_id, it.changed_at
    from regen._items it
    where it.fresh and it.embedded_hash is distinct from it.content_hash and it.failed_hash is distinct from it.content_hash
    union all
    select it.source_id, it.version_id, it.row_id, it.changed_at
    from jobs j
    cross join lateral jsonb_array_elements_text(j.rows) r(row_id)
    join regen._items it on it.source_id = j.source_id and it.version_id = j.version_id and it.row_id = r.row_id
    where j.fresh and it.queue_job = j.id and not it.fresh and it.embedded_hash is distinct from it.content_hash
  ), delays as (
    select p.source_id, p.version_id, d.seconds
    from regen._progress p
    cross join unnest(p.edit_delays) d(seconds)
    where p.at > now() - interval '5 minutes' and p.edit_delays is not null
  )
  select sc.source, sc.version, sc.role,
         e.waiting as edits_waiting,
         extract(epoch from now() - e.oldest)::float8 as oldest_edit_seconds,
         b.waiting as backfill_waiting,
         extract(epoch from now() - b.oldest)::float8 as oldest_backfill_seconds,
         d.settled as edits_settled_5m,
         d.p50 as edit_delay_p50_seconds,
         d.p99 as edit_delay_p99_seconds,
         d.max as edit_delay_max_seconds
  from scope sc
  cross join lateral (select count(distinct x.row_id) as waiting, min(x.edited_at) as oldest from edits x
                      where x.source_id = sc.source_id and x.version_id = sc.version_id) e
  cross join lateral (select coalesce(sum(jsonb_array_length(j.rows)), 0)::bigint as waiting, min(j.created_on) as oldest
                      from jobs j where j.source_id = sc.source_id and j.version_id = sc.version_id and not j.fresh) b
  cross join lateral (select count(*) as settled,
                             percentile_cont(0.5) within group (order by x.seconds) as p50,
                             percentile_cont(0.99) within group (order by x.seconds) as p99,
                             max(x.seconds)::float8 as max
                      from delays x where x.source_id = sc.source_id and x.version_id = sc.version_id) d;
comment on view regen.freshness is
  'Per source and version: the rows with an edit not yet searchable in that version (logged, marked fresh or in a fresh-edit job) and '
  'the age of the oldest in seconds (null: none); the rows in backfill jobs and how long the oldest such job has been '
  'queued; the fresh edits settled in the last 5 minutes and their delay from edit to vector (p50, p99, max, in seconds). '
  'Alert on oldest_edit_seconds of the active versions.';

select regen._refresh_grants();
