-- No edit is lost when a row's text changes and comes back while a batch works on it (issue 13:
-- "the gap stays exact"; found by test/chaos.test.ts).
--
-- A batch leaves to the applier what the change log says is changing: its prepare skips a row with
-- a logged new text or delete not yet applied, and its write refuses a vector that such a change
-- makes stale (sql/0024). The applier then marks the row fresh, and regen.enqueue_fresh gives it a
-- fresh job once the batch's job is done. But when the row's text came back before the apply (an
-- edit reverted, a row deleted and inserted again with the same text), the last change equals what
-- the item records and the applier did nothing: the item kept naming a job that had passed it by,
-- and stayed missing or stale, with no job to embed it. A chaos run left one row so.
--
-- Now the applier also marks fresh the rows whose text moved and came back among the changes it
-- takes, when they are not current and not waiting in a job that is yet to be taken (that job reads
-- them as they are now: their place in the queue is kept).
--
-- Error codes of this file: none.

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
  v_moved text[];
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
  ), moved as (
    -- rows whose text went somewhere and came back among these changes (edited, then reverted;
    -- deleted, then inserted again; an expression error, then fixed): the last change may equal what
    -- the item records, yet a batch may have left the row to this apply meanwhile (see below)
    select t.row_id from taken t
    group by t.row_id
    having count(*) > 1
       and count(distinct t.content_hash) + bool_or(not t.present)::integer + bool_or(t.error is not null)::integer > 1
  )
  select (select count(*) from taken),
         (select coalesce(array_agg(m.row_id), '{}') from moved m),
         coalesce(array_agg(l.row_id order by l.row_id), '{}'), coalesce(array_agg(l.present order by l.row_id), '{}'),
         coalesce(array_agg(l.tenant order by l.row_id), '{}'), coalesce(array_agg(l.priority order by l.row_id), '{}'),
         coalesce(array_agg(l.content_hash order by l.row_id), '{}'), coalesce(array_agg(l.error order by l.row_id), '{}'),
         coalesce(array_agg(l.at order by l.row_id), '{}')
    into v_taken, v_moved, v_rows, v_present, v_tenants, v_priorities, v_hashes, v_errors, v_ats
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

  -- A row whose text came back to what its item records (edited and reverted, deleted and inserted
  -- again) is not a change above, but its job may have passed it by meanwhile: its prepare left a
  -- row with a logged new text or delete to this apply, and its write refused a vector the log
  -- called stale. Marked fresh, it is enqueued once that job ends (regen.enqueue_fresh), unless it
  -- waits in a job not yet taken, which will read it as it is now.
  if cardinality(v_moved) > 0 then
    update regen._items it set fresh = true
     where it.source_id = _apply_source.source and it.version_id = any(v_versions) and it.row_id = any(v_moved)
       and not it.fresh
       and it.embedded_hash is distinct from it.content_hash and it.failed_hash is distinct from it.content_hash
       and not exists (select 1 from pgboss.job j
                       where j.name = regen._queue(it.version_id) and j.id = it.queue_job and j.state in ('created', 'retry'));
  end if;

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
  'winning: items upserted (new and changed texts marked fresh, and texts that changed and came back, when not current '
  'and not waiting in a job yet to be taken), rows gone removed with their vectors, vectors moved '
  'with their tenant; returns the changes taken. One applier per source at a time (wait: queue behind it, else return 0).';

-- create or replace keeps the function's grants; its SET list is restated as it was written
select regen._pin_search_paths();
