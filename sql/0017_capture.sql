-- The change capture, as the independent review and the production-load findings left it
-- (issues 11 and 13). A source's generated trigger function
--   * is executable by its owner only (PostgreSQL grants EXECUTE to PUBLIC on every new function,
--     and the install-time revoke covers only the functions that exist then), so no role can attach
--     this SECURITY DEFINER function to a table of its own;
--   * acts only when fired by the table it was generated for (RG017 otherwise);
--   * evaluates the source's expressions once per statement, without writing, and when one raises
--     on a row, evaluates row by row and records each such row as a failed item with the error: the
--     application's write goes through;
--   * deletes by the source's versions, so a DELETE probes the primary keys instead of scanning the
--     source's items;
--   * no longer enqueues: it marks the items of new rows and changed texts `fresh`, and
--     regen.enqueue_fresh(), which the worker calls every REGEN_ENQUEUE_INTERVAL_MS (250 ms by
--     default), puts them into pg-boss, set-based, outside the application's transaction. A steady
--     stream of edits becomes one job per version and interval (up to 64 rows), not one job per
--     edit; a change of priority or tenant alone enqueues nothing.
--
-- Error codes of this file: RG017 capture function fired by a table it was not generated for,
-- RG003 (reused) invalid max_items.

alter table regen._items add column fresh boolean not null default false;
comment on column regen._items.fresh is 'New row or changed text that regen.enqueue_fresh() has yet to enqueue';
create index _items_fresh on regen._items (source_id, version_id) where fresh;

create function regen.enqueue_fresh(max_items integer default 10000)
returns bigint
language plpgsql volatile set jit = off
as $$
declare
  v_pair record;
  v_rows text[];
  v_left integer := enqueue_fresh.max_items;
  v_enqueued bigint := 0;
begin
  if max_items is null or max_items < 1 then
    raise exception 'max_items must be a positive integer, not %', coalesce(max_items::text, 'NULL') using errcode = 'RG003';
  end if;
  -- One enqueuer at a time (several worker replicas call this); the others have nothing to add.
  if not pg_try_advisory_xact_lock(hashtext('regen.enqueue_fresh')) then
    return 0;
  end if;
  for v_pair in
    select distinct it.source_id, it.version_id from regen._items it where it.fresh order by 1, 2
  loop
    exit when v_left <= 0;
    -- The hottest first, should there be more than max_items. An item whose job is being worked
    -- right now stays marked until that job ends: taking it into a new job would send its text to
    -- the provider a second time while the first is in flight. If the job embedded the edited text,
    -- the item is current and needs nothing; if not, the next round enqueues it.
    with taken as (
      select it.row_id from regen._items it
      where it.source_id = v_pair.source_id and it.version_id = v_pair.version_id and it.fresh
        and not exists (select 1 from pgboss.job j
                        where j.name = regen._queue(it.version_id) and j.id = it.queue_job and j.state = 'active')
      order by it.priority desc, it.row_id
      limit v_left
    ), cleared as (
      update regen._items it set fresh = false
        from taken t
       where it.source_id = v_pair.source_id and it.version_id = v_pair.version_id and it.row_id = t.row_id
      returning it.row_id
    )
    select coalesce(array_agg(c.row_id), '{}') into v_rows from cleared c;
    v_left := v_left - cardinality(v_rows);
    v_enqueued := v_enqueued + regen._enqueue(v_pair.source_id, v_pair.version_id, v_rows, true);
  end loop;
  return v_enqueued;
end
$$;
comment on function regen.enqueue_fresh(integer) is
  'Enqueues the fresh edits (new rows, changed texts) that the capture triggers marked, as fresh jobs ahead of backfill; '
  'returns the items enqueued. The worker calls it every REGEN_ENQUEUE_INTERVAL_MS; safe to call from anywhere.';

-- The generated capture function: set-based, one call per statement, static SQL. It evaluates the
-- source's expressions once, without writing, inside a block; if any row makes them raise, it
-- evaluates row by row and records each such row as a failed item with the error: the
-- application's write goes through. (The block is a subtransaction that writes nothing, so it takes
-- no transaction id of its own.) It acts only when fired by its own table.
create function regen._capture_function(s regen._sources)
returns void
language plpgsql volatile
as $$
declare
  v_fn text := format('regen.%I', 'tg_' || s.name || '__capture');
  v_alias text := (select c.relname from pg_class c where c.oid = s.relation);
  v_old_ids text;
begin
  v_old_ids := format('select (%I.%I)::text as row_id from old_rows as %I', v_alias, s.id_column, v_alias);
  execute format($f$
    create or replace function %1$s() returns trigger
    language plpgsql security definer set search_path = %2$s set jit = off
    as $body$
    declare
      v_ids text[] := '{}';
      v_tenants text[] := '{}';
      v_priorities float8[] := '{}';
      v_hashes bytea[] := '{}';
      v_bad_ids text[] := '{}';
      v_bad_tenants text[] := '{}';
      v_bad_errors text[] := '{}';
      v_versions integer[];
      v_gone text[];
      v_row %3$s%%rowtype;
      v_one record;
    begin
      -- Generated for one table: fired by any other (a copy, a temporary table) it refuses to act.
      -- A restore gives the table a new oid; the source row then names it.
      if tg_relid <> %4$s::oid
         and not exists (select 1 from regen._sources s where s.id = %5$s and s.relation = tg_relid) then
        raise exception 'capture function %%.%% belongs to source %%, not to table %%.%%',
          'regen', %6$L, %7$L, tg_table_schema, tg_table_name
          using errcode = 'RG017', hint = 'pgregen installs its own triggers: use regen.register_source()';
      end if;

      if tg_op = 'TRUNCATE' then
        delete from regen._items where source_id = %5$s;
        delete from regen._embeddings where source_id = %5$s;
        return null;
      end if;

      if tg_op in ('INSERT', 'UPDATE') then
        begin
          select coalesce(array_agg(c.row_id), '{}'), coalesce(array_agg(c.tenant), '{}'),
                 coalesce(array_agg(c.priority), '{}'), coalesce(array_agg(c.content_hash), '{}')
            into v_ids, v_tenants, v_priorities, v_hashes
            from (%8$s) c;
        exception when others then
          -- an expression raised on some row: find which, keep the others
          v_ids := '{}'; v_tenants := '{}'; v_priorities := '{}'; v_hashes := '{}';
          for v_row in select * from new_rows loop
            begin
              select c.row_id, c.tenant, c.priority, c.content_hash into v_one from (%9$s) c;
              if found then
                v_ids := v_ids || v_one.row_id; v_tenants := v_tenants || v_one.tenant;
                v_priorities := v_priorities || v_one.priority; v_hashes := v_hashes || v_one.content_hash;
              end if;
            exception when others then
              v_bad_ids := v_bad_ids || (v_row.%10$I)::text;
              v_bad_errors := v_bad_errors || format('an expression of source %%s raised an error on this row: %%s', %7$L, sqlerrm);
              begin
                v_bad_tenants := v_bad_tenants || %11$s;
              exception when others then
                v_bad_tenants := v_bad_tenants || null::text;   -- the tenant itself does not compute
              end;
            end;
          end loop;
        end;
      end if;

      if tg_op = 'DELETE' then
        v_versions := array(select sv.version_id from regen._source_versions sv where sv.source_id = %5$s);
        -- items first, then vectors, in two statements (see UPDATE)
        delete from regen._items it using (%12$s) gone
        where it.source_id = %5$s and it.version_id = any(v_versions) and it.row_id = gone.row_id;
        delete from regen._embeddings e using (%12$s) gone
        where e.version_id = any(v_versions) and e.source_id = %5$s and e.row_id = gone.row_id;
        return null;
      end if;

      if tg_op = 'UPDATE' then
        -- rows that left the source (id changed, filtered out, text now null) lose items and vectors.
        -- Two statements: deleting the items waits for a worker's write_embeddings that holds them,
        -- and only a statement started after that sees (and deletes) the vectors it wrote.
        v_gone := array(select o.row_id from (%12$s) o except select unnest(v_ids || v_bad_ids));
        if cardinality(v_gone) > 0 then
          v_versions := array(select sv.version_id from regen._source_versions sv where sv.source_id = %5$s);
          delete from regen._items it
          where it.source_id = %5$s and it.version_id = any(v_versions) and it.row_id = any(v_gone);
          delete from regen._embeddings e
          where e.version_id = any(v_versions) and e.source_id = %5$s and e.row_id = any(v_gone);
        end if;
      end if;

      -- The upsert, one statement: new rows and rows whose text changed are marked fresh, and
      -- regen.enqueue_fresh() (the worker, every REGEN_ENQUEUE_INTERVAL_MS) puts them into the queue,
      -- set-based, outside this transaction. A change of priority or tenant alone updates the item
      -- and leaves its place in the queue (and its band) as it was.
      if cardinality(v_ids) > 0 then
        insert into regen._items as it (source_id, version_id, row_id, tenant, priority, content_hash, fresh)
        select %5$s, sv.version_id, c.row_id, c.tenant, c.priority, c.content_hash, true
        from unnest(v_ids, v_tenants, v_priorities, v_hashes) as c(row_id, tenant, priority, content_hash)
        cross join regen._source_versions sv
        where sv.source_id = %5$s
        order by sv.version_id, c.row_id   -- the order the worker locks items in: no deadlock between the two
        on conflict (source_id, version_id, row_id) do update
          set tenant = excluded.tenant, priority = excluded.priority,
              content_hash = excluded.content_hash, changed_at = now(),
              fresh = it.fresh or it.content_hash is distinct from excluded.content_hash
          where (it.tenant, it.priority, it.content_hash)
                is distinct from (excluded.tenant, excluded.priority, excluded.content_hash);
      end if;

      -- rows an expression raised on: failed items, with the error (regen.failed_items); a later edit
      -- that the expressions accept makes them ordinary items again
      if cardinality(v_bad_ids) > 0 then
        insert into regen._items as it (source_id, version_id, row_id, tenant, priority, content_hash, failed_hash, last_error, attempts)
        select %5$s, sv.version_id, b.row_id, b.tenant, 0, h.hash, h.hash, b.error, 1
        from unnest(v_bad_ids, v_bad_tenants, v_bad_errors) as b(row_id, tenant, error)
        cross join lateral (select sha256(convert_to('pgregen: expression error: ' || b.error, 'UTF8')) as hash) h
        cross join regen._source_versions sv
        where sv.source_id = %5$s
        order by sv.version_id, b.row_id
        on conflict (source_id, version_id, row_id) do update
          set tenant = excluded.tenant, content_hash = excluded.content_hash, failed_hash = excluded.failed_hash,
              last_error = excluded.last_error, attempts = it.attempts + 1, queue_job = null, changed_at = now()
          where it.content_hash is distinct from excluded.content_hash or it.tenant is distinct from excluded.tenant;
      end if;

      -- a row that moved to another tenant moves its vectors with it
      if tg_op = 'UPDATE' then
        if %13$s then
          v_versions := coalesce(v_versions, array(select sv.version_id from regen._source_versions sv where sv.source_id = %5$s));
          update regen._embeddings e set tenant = it.tenant
          from regen._items it
          where it.source_id = %5$s and it.version_id = any(v_versions) and it.row_id = any(v_ids || v_bad_ids)
            and e.version_id = it.version_id and e.source_id = it.source_id and e.row_id = it.row_id
            and e.tenant is distinct from it.tenant;
        end if;
      end if;
      return null;
    end
    $body$ $f$,
    v_fn,                                                         -- 1
    s.expression_search_path,                                     -- 2
    s.relation::regclass::text,                                   -- 3 (for %rowtype)
    s.relation::oid,                                              -- 4
    s.id,                                                         -- 5
    'tg_' || s.name || '__capture',                               -- 6
    s.name,                                                       -- 7
    regen._capture_select(s, 'new_rows'),                         -- 8
    regen._capture_select(s, '(select (v_row).*)'),               -- 9
    s.id_column,                                                  -- 10
    case when s.tenant_column is null then 'null::text'
         else format('(v_row.%I)::text', s.tenant_column) end,    -- 11
    v_old_ids,                                                    -- 12
    -- whether a row's tenant may have changed (always false without a tenant column): a (row, tenant)
    -- pair that was not there before. EXCEPT hashes both sides; a join of the transition tables,
    -- which have no statistics, was planned as a nested loop, quadratic in the rows of the statement.
    case when s.tenant_column is null then 'false'
         else format('exists (select (n.%1$I)::text, (n.%2$I)::text from new_rows n except select (o.%1$I)::text, (o.%2$I)::text from old_rows o)',
                     s.id_column, s.tenant_column) end);          -- 13
  execute format('comment on function %s() is %L', v_fn,
                 format('pgregen change capture for source %s, table %s (generated by regen.register_source)', s.name, s.relation));
  -- Generated functions are the owner's alone (PostgreSQL grants EXECUTE to PUBLIC on every new
  -- function): nobody else may attach this SECURITY DEFINER function to a table of theirs.
  execute format('revoke all on function %s() from public', v_fn);
end
$$;
comment on function regen._capture_function(regen._sources) is
  'Generates (or regenerates) a source''s capture trigger function; executable by its owner only';

create or replace function regen._install_capture(s regen._sources)
returns void
language plpgsql volatile
as $$
declare
  v_fn text := format('regen.%I', 'tg_' || s.name || '__capture');
begin
  perform regen._capture_function(s);
  -- One trigger per event: transition tables allow only one event per trigger.
  execute format('create trigger %I after insert on %s referencing new table as new_rows for each statement execute function %s()',
                 'regen_' || s.name || '_insert', s.relation, v_fn);
  execute format('create trigger %I after update on %s referencing old table as old_rows new table as new_rows for each statement execute function %s()',
                 'regen_' || s.name || '_update', s.relation, v_fn);
  execute format('create trigger %I after delete on %s referencing old table as old_rows for each statement execute function %s()',
                 'regen_' || s.name || '_delete', s.relation, v_fn);
  execute format('create trigger %I after truncate on %s for each statement execute function %s()',
                 'regen_' || s.name || '_truncate', s.relation, v_fn);
end
$$;
comment on function regen._install_capture(regen._sources) is 'Generates a source''s capture trigger function and its four triggers';


-- The rebuild button of sql/0007, now reconciling a store that changed behind pgregen's back (a
-- restore without the vectors leaves items that claim them), putting the fresh edits the capture
-- marked into their fresh jobs, and clearing the losses it enqueues again.
create or replace function regen.rebuild(
  source text default null,
  version text default null,
  force boolean default false,
  dry_run boolean default false,
  tenant text default null
)
returns setof regen.rebuild_result
language plpgsql volatile set jit = off
as $$
declare
  v_result regen.rebuild_result;
  v_target record;
  v_items bigint;
  v_tokens bigint;
begin
  if rebuild.source is not null then
    perform regen._source(rebuild.source);
  end if;
  if rebuild.version is not null then
    perform regen._version_id(rebuild.version);
  end if;
  if to_regclass('pgboss.job') is null then
    raise exception 'the pg-boss queue is not installed'
      using errcode = 'RG030', hint = 'run pgregen install, which installs pg-boss';
  end if;
  if not regen._store_verified() then
    perform regen.reconcile();
  end if;
  -- edits the capture marked go into their fresh jobs first; the backfill takes the rest
  if not dry_run then
    perform regen.enqueue_fresh(1000000);
  end if;

  for v_target in
    select s.*, sv.version_id, v.tag, v.settings
    from regen._sources s
    join regen._source_versions sv on sv.source_id = s.id
    join regen._versions v on v.id = sv.version_id
    where (rebuild.source is null or s.name = rebuild.source)
      and (case when rebuild.version is null then sv.role = 'active' else v.tag = rebuild.version end)
    order by s.weight desc, s.name
  loop
    if dry_run then
      -- what would be enqueued, with a token estimate from the text itself (4 bytes a token,
      -- the usual rule of thumb; the worker counts exactly)
      execute format($f$
        select count(*), coalesce(sum(ceil(octet_length((%1$s)::text) / 4.0)), 0)::bigint
        from regen._items it
        join %2$s as %3$I on (%3$I.%4$I)::text = it.row_id
        where it.source_id = $1 and it.version_id = $2 and ($3::text is null or it.tenant = $3)
          and (it.queue_job is null or not exists (select 1 from pgboss.job j where j.name = regen._queue(it.version_id)
                                                   and j.id = it.queue_job and j.state in ('created', 'retry')))
          and ($4 or (it.embedded_hash is distinct from it.content_hash and it.failed_hash is distinct from it.content_hash))$f$,
        v_target.content_expression, v_target.relation,
        (select c.relname from pg_class c where c.oid = v_target.relation), v_target.id_column)
      into v_items, v_tokens
      using v_target.id, v_target.version_id, rebuild.tenant, rebuild.force;
    else
      v_items := regen._enqueue(v_target.id, v_target.version_id,
        array(select it.row_id from regen._items it
              where it.source_id = v_target.id and it.version_id = v_target.version_id
                and (rebuild.tenant is null or it.tenant = rebuild.tenant)
                and (rebuild.force or (it.embedded_hash is distinct from it.content_hash
                                       and it.failed_hash is distinct from it.content_hash))),
        false, rebuild.force);
      v_tokens := null;
      if rebuild.tenant is null then
        delete from regen._losses l where l.source_id = v_target.id and l.version_id = v_target.version_id;
      end if;
    end if;
    v_result := (v_target.name, v_target.tag, v_items, v_tokens, ceil(v_items / 64.0));
    return next v_result;
  end loop;
end
$$;
comment on function regen.rebuild(text, text, boolean, boolean, text) is
  'The rebuild button: enqueues the gap (missing, stale, outdated items; everything with force) of one source or all, '
  'for the active version or the given one, into pg-boss in priority order. Reconciles a store that changed behind '
  'pgregen''s back, and enqueues the fresh edits (regen.enqueue_fresh), first. dry_run returns what would be enqueued, with an estimated token count, and enqueues nothing.';

-- Sources registered before this file get the new capture function (same triggers).
do $$
declare
  v regen._sources;
begin
  for v in select * from regen._sources loop
    perform regen._capture_function(v);
  end loop;
end
$$;

select regen._refresh_grants();
