-- The change log (issue 13): what a source's capture costs the application's writes is now what a
-- plain row trigger costs. The trigger only appends the changed row's key to regen._changes; the
-- work it did before (evaluating the expressions, hashing the text, upserting the items, deleting
-- the vectors of deleted rows, moving vectors with their tenant) happens set-based in
-- regen.apply_changes(), outside the application's transaction: the worker calls it every
-- REGEN_ENQUEUE_INTERVAL_MS together with regen.enqueue_fresh(), and so do regen.rebuild() and
-- regen.prepare_inputs() for the rows they take.
--
-- Meanwhile nothing is claimed that does not hold: regen.embedding_gap judges the rows with a
-- pending change live (regen._pending_gap), so its counts stay exact at every commit.
--
-- The triggers (one function per source, as before):
--   AFTER INSERT, FOR EACH ROW                     logs the new key
--   AFTER UPDATE OF <columns the source reads>     logs the key (and the old key when it changed),
--     FOR EACH ROW WHEN (one of them changed)      the old tenant, and whether the row's vectors must
--                                                  leave search at once (key or tenant changed)
--   AFTER DELETE, FOR EACH ROW                     logs the key, to leave search at once
--   AFTER TRUNCATE, FOR EACH STATEMENT             forgets the source's items, vectors and changes
-- An UPDATE that changes no column the content, priority and filter expressions, the id or the
-- tenant read fires nothing at all: PostgreSQL evaluates the WHEN clause without calling the
-- function.
--
-- Error codes of this file: RG017 (as before) capture function fired by a table it was not
-- generated for; RG003 (reused) invalid max_rows.

create table regen._changes (
  source_id integer not null,
  row_id text not null,
  tenant text,
  hide boolean not null default false,
  at timestamptz not null default now()
);
comment on table regen._changes is
  'Change log of the capture triggers: one row per inserted, updated (in a column the source reads) or deleted source row, '
  'until regen.apply_changes() folds it into regen._items. No foreign key: the trigger''s insert stays one index entry.';
comment on column regen._changes.tenant is 'The row''s tenant before the change (null for an insert)';
comment on column regen._changes.hide is 'The row left its tenant (deleted, key or tenant changed): its vectors leave search results at once';
comment on column regen._changes.at is 'When the change was made (the application''s transaction time)';
create index _changes_row on regen._changes (source_id, row_id);

-- ---------------------------------------------------------------------------------------------
-- The columns a source reads: those its content, priority and filter expressions depend on, its id
-- and its tenant column, found the way PostgreSQL itself finds them (the dependencies of a view over
-- the expressions). Null when an expression reads the whole row (a function of the row type).

create function regen._source_columns(s regen._sources)
returns name[]
language plpgsql volatile
as $$
declare
  v_alias text := (select c.relname from pg_class c where c.oid = s.relation);
  v_view text := 'regen_columns_' || pg_backend_pid();
  v_old_path text := current_setting('search_path');
  v_subids smallint[];
begin
  perform set_config('search_path', s.expression_search_path, true);
  execute format('create temporary view %I as select (%s) as c1, (%s) as c2, (%s) as c3, (%I.%I) as c4, (%s) as c5 from %s as %I',
                 v_view, s.content_expression, coalesce(s.priority_expression, 'null'), coalesce(s.filter_expression, 'null'),
                 v_alias, s.id_column,
                 case when s.tenant_column is null then 'null' else format('%I.%I', v_alias, s.tenant_column) end,
                 s.relation, v_alias);
  select array_agg(distinct d.refobjsubid) into v_subids
  from pg_depend d
  join pg_rewrite r on r.oid = d.objid and d.classid = 'pg_rewrite'::regclass
  where r.ev_class = format('pg_temp.%I', v_view)::regclass
    and d.refclassid = 'pg_class'::regclass and d.refobjid = s.relation;
  execute format('drop view pg_temp.%I', v_view);
  perform set_config('search_path', v_old_path, true);
  if 0 = any(v_subids) then
    return null;
  end if;
  return array(select a.attname from pg_attribute a
               where a.attrelid = s.relation and a.attnum = any(v_subids) order by a.attnum);
end
$$;
comment on function regen._source_columns(regen._sources) is
  'The columns of its table a source reads (expressions, id, tenant), null when an expression reads the whole row';

-- Fired by a table that is not the source's own: a partition of it is, after a restore the source
-- row names the table.
create function regen._capture_relation_ok(source_id integer, relation oid)
returns boolean
language sql stable
as $$
  select exists (
    select 1 from regen._sources s
    where s.id = _capture_relation_ok.source_id
      and (s.relation = _capture_relation_ok.relation
           or s.relation in (select a.relid from pg_partition_ancestors(_capture_relation_ok.relation) a)))
$$;
comment on function regen._capture_relation_ok(integer, oid) is
  'Whether a capture function of the source may act for the table that fired it (the source''s table or one of its partitions)';

-- The generated capture function: static SQL, no expression of the source evaluated, one insert per
-- row (two when the key changed). It acts only when fired by its own table.
create or replace function regen._capture_function(s regen._sources)
returns void
language plpgsql volatile
as $$
declare
  v_fn text := format('regen.%I', 'tg_' || s.name || '__capture');
  v_tenant_old text := case when s.tenant_column is null then 'null' else format('(old.%I)::text', s.tenant_column) end;
  v_moved text := case when s.tenant_column is null then 'false' else format('new.%1$I is distinct from old.%1$I', s.tenant_column) end;
begin
  execute format($f$
    create or replace function %1$s() returns trigger
    language plpgsql security definer set search_path = pg_catalog, pg_temp
    as $body$
    begin
      -- Generated for one table: fired by any other (a copy, a temporary table) it refuses to act.
      if tg_relid <> %2$s::oid and not regen._capture_relation_ok(%3$s, tg_relid) then
        raise exception 'capture function %%.%% belongs to source %%, not to table %%.%%',
          'regen', %4$L, %5$L, tg_table_schema, tg_table_name
          using errcode = 'RG017', hint = 'pgregen installs its own triggers: use regen.register_source()';
      end if;
      if tg_op = 'INSERT' then
        insert into regen._changes (source_id, row_id) values (%3$s, (new.%6$I)::text);
      elsif tg_op = 'UPDATE' then
        insert into regen._changes (source_id, row_id, tenant, hide) values (%3$s, (new.%6$I)::text, %7$s, %8$s);
        if new.%6$I is distinct from old.%6$I then
          insert into regen._changes (source_id, row_id, tenant, hide) values (%3$s, (old.%6$I)::text, %7$s, true);
        end if;
      elsif tg_op = 'DELETE' then
        insert into regen._changes (source_id, row_id, tenant, hide) values (%3$s, (old.%6$I)::text, %7$s, true);
      else
        -- TRUNCATE (a statement trigger): the rows are gone, and so is everything derived from them
        delete from regen._changes where source_id = %3$s;
        delete from regen._items where source_id = %3$s;
        delete from regen._embeddings where source_id = %3$s;
      end if;
      return null;
    end
    $body$ $f$,
    v_fn,                                 -- 1
    s.relation::oid,                      -- 2
    s.id,                                 -- 3
    'tg_' || s.name || '__capture',       -- 4
    s.name,                               -- 5
    s.id_column,                          -- 6
    v_tenant_old,                         -- 7
    v_moved);                             -- 8
  execute format('comment on function %s() is %L', v_fn,
                 format('pgregen change capture for source %s, table %s: logs changed keys into regen._changes (generated by regen.register_source)',
                        s.name, s.relation));
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
  v_columns name[] := regen._source_columns(s);
  v_of text := '';
  v_when text := 'old.* is distinct from new.*';
  v_event text;
begin
  perform regen._capture_function(s);
  foreach v_event in array array['insert', 'update', 'delete', 'truncate'] loop
    execute format('drop trigger if exists %I on %s', 'regen_' || s.name || '_' || v_event, s.relation);
  end loop;
  if v_columns is not null then
    v_of := ' of ' || (select string_agg(quote_ident(c), ', ') from unnest(v_columns) c);
    v_when := (select string_agg(format('old.%1$I is distinct from new.%1$I', c), ' or ') from unnest(v_columns) c);
  end if;
  execute format('create trigger %I after insert on %s for each row execute function %s()',
                 'regen_' || s.name || '_insert', s.relation, v_fn);
  begin
    execute format('create trigger %I after update%s on %s for each row when (%s) execute function %s()',
                   'regen_' || s.name || '_update', v_of, s.relation, v_when, v_fn);
  exception when undefined_function then
    -- a column of a type without equality (json, point, ...): compare the text forms
    v_when := (select string_agg(format('(old.%1$I)::text is distinct from (new.%1$I)::text', c), ' or ')
               from unnest(coalesce(v_columns,
                 array(select a.attname from pg_attribute a where a.attrelid = s.relation and a.attnum > 0 and not a.attisdropped))) c);
    execute format('create trigger %I after update%s on %s for each row when (%s) execute function %s()',
                   'regen_' || s.name || '_update', v_of, s.relation, v_when, v_fn);
  end;
  execute format('create trigger %I after delete on %s for each row execute function %s()',
                 'regen_' || s.name || '_delete', s.relation, v_fn);
  execute format('create trigger %I after truncate on %s for each statement execute function %s()',
                 'regen_' || s.name || '_truncate', s.relation, v_fn);
end
$$;
comment on function regen._install_capture(regen._sources) is
  'Generates a source''s capture trigger function and its four triggers (row-level insert, update of the columns the source '
  'reads, delete; statement-level truncate)';

-- ---------------------------------------------------------------------------------------------
-- Applying the log: what the statement-level capture of sql/0017 did inside the application's
-- transaction, now done here, for the rows whose changes it takes.
--
-- Order: appliers of a source run one at a time (a transaction-level advisory lock), and each reads
-- the rows after taking the lock, so a later apply always sees a later state of a row than the one
-- before it. The application never waits on this: it reads the source rows without locking them.

create function regen._apply_source(source integer, only_rows text[] default null,
                                    max_rows integer default 100000, wait boolean default true)
returns bigint
language plpgsql volatile set jit = off
as $$
declare
  s regen._sources;
  v_alias text;
  v_taken bigint;
  v_rows text[];
  v_old_path text := current_setting('search_path');
  v_ids text[] := '{}';
  v_tenants text[] := '{}';
  v_priorities float8[] := '{}';
  v_hashes bytea[] := '{}';
  v_bad_ids text[] := '{}';
  v_bad_tenants text[] := '{}';
  v_bad_errors text[] := '{}';
  v_one record;
  v_id text;
  v_tenant text;
  v_gone text[];
  v_versions integer[];
  v_current text;
begin
  select * into s from regen._sources x where x.id = _apply_source.source;
  if not found then
    -- the source was unregistered: its changes have nothing to apply to
    delete from regen._changes c where c.source_id = _apply_source.source;
    return 0;
  end if;
  if wait then
    perform pg_advisory_xact_lock(hashtext('regen.apply_changes'), s.id);
  elsif not pg_try_advisory_xact_lock(hashtext('regen.apply_changes'), s.id) then
    return 0;   -- another applier is at it
  end if;

  with taken as (
    delete from regen._changes c
     where c.ctid = any(array(select c2.ctid from regen._changes c2
                              where c2.source_id = s.id and (only_rows is null or c2.row_id = any(only_rows))
                              limit max_rows))
    returning c.row_id
  )
  select count(*), coalesce(array_agg(distinct t.row_id), '{}') into v_taken, v_rows from taken t;
  if v_taken = 0 then
    return 0;
  end if;

  -- The rows as they are now (this statement's snapshot, taken after the lock): those still in the
  -- source with their tenant, priority and hash.
  v_alias := (select c.relname from pg_class c where c.oid = s.relation);
  v_current := format('(select * from %s as %I where %I.%I = any(%L::%s[]))',
                      s.relation, v_alias, v_alias, s.id_column, v_rows, s.id_type);
  perform set_config('search_path', s.expression_search_path, true);
  begin
    execute format('select coalesce(array_agg(c.row_id), ''{}''), coalesce(array_agg(c.tenant), ''{}''), '
                   'coalesce(array_agg(c.priority), ''{}''), coalesce(array_agg(c.content_hash), ''{}'') from (%s) c',
                   regen._capture_select(s, v_current))
      into v_ids, v_tenants, v_priorities, v_hashes;
  exception when others then
    -- an expression raises on some row: find which, keep the others
    v_ids := '{}'; v_tenants := '{}'; v_priorities := '{}'; v_hashes := '{}';
    foreach v_id in array v_rows loop
      begin
        execute format('select c.row_id, c.tenant, c.priority, c.content_hash from (%s) c',
                       regen._capture_select(s, format('(select * from %s as %I where (%I.%I)::text = %L)',
                                                       s.relation, v_alias, v_alias, s.id_column, v_id)))
          into v_one;
        if v_one.row_id is not null then
          v_ids := v_ids || v_one.row_id; v_tenants := v_tenants || v_one.tenant;
          v_priorities := v_priorities || v_one.priority; v_hashes := v_hashes || v_one.content_hash;
        end if;
      exception when others then
        v_bad_ids := v_bad_ids || v_id;
        v_bad_errors := v_bad_errors || format('an expression of source %s raised an error on this row: %s', s.name, sqlerrm);
        v_tenant := null;
        if s.tenant_column is not null then
          begin
            execute format('select (%I.%I)::text from %s as %I where (%I.%I)::text = $1',
                           v_alias, s.tenant_column, s.relation, v_alias, v_alias, s.id_column)
              into v_tenant using v_id;
          exception when others then
            v_tenant := null;   -- the tenant itself does not compute
          end;
        end if;
        v_bad_tenants := v_bad_tenants || v_tenant;
      end;
    end loop;
  end;
  perform set_config('search_path', v_old_path, true);

  v_versions := array(select sv.version_id from regen._source_versions sv where sv.source_id = s.id order by sv.version_id);

  -- Rows that left the source (deleted, key changed, filtered out, text now null) lose items and
  -- vectors. Two statements: deleting the items waits for a worker's settle step that holds them,
  -- and only a statement started after that sees (and deletes) the vectors it wrote.
  v_gone := array(select r from unnest(v_rows) r except select unnest(v_ids || v_bad_ids));
  if cardinality(v_gone) > 0 then
    delete from regen._items it
     where it.source_id = s.id and it.version_id = any(v_versions) and it.row_id = any(v_gone);
    delete from regen._embeddings e
     where e.version_id = any(v_versions) and e.source_id = s.id and e.row_id = any(v_gone);
  end if;

  -- New rows and rows whose text changed are marked fresh (regen.enqueue_fresh puts them into their
  -- jobs); a change of priority or tenant alone updates the item and leaves its place in the queue.
  if cardinality(v_ids) > 0 then
    insert into regen._items as it (source_id, version_id, row_id, tenant, priority, content_hash, fresh)
    select s.id, v.version_id, c.row_id, c.tenant, c.priority, c.content_hash, true
    from unnest(v_ids, v_tenants, v_priorities, v_hashes) as c(row_id, tenant, priority, content_hash)
    cross join unnest(v_versions) as v(version_id)
    order by v.version_id, c.row_id   -- the order the worker locks items in: no deadlock between the two
    on conflict (source_id, version_id, row_id) do update
      set tenant = excluded.tenant, priority = excluded.priority,
          content_hash = excluded.content_hash, changed_at = now(),
          fresh = it.fresh or it.content_hash is distinct from excluded.content_hash
      where (it.tenant, it.priority, it.content_hash)
            is distinct from (excluded.tenant, excluded.priority, excluded.content_hash);
  end if;

  -- Rows an expression raised on: failed items, with the error (regen.failed_items); a later edit
  -- that the expressions accept makes them ordinary items again.
  if cardinality(v_bad_ids) > 0 then
    insert into regen._items as it (source_id, version_id, row_id, tenant, priority, content_hash, failed_hash, last_error, attempts)
    select s.id, v.version_id, b.row_id, b.tenant, 0, h.hash, h.hash, b.error, 1
    from unnest(v_bad_ids, v_bad_tenants, v_bad_errors) as b(row_id, tenant, error)
    cross join lateral (select sha256(convert_to('pgregen: expression error: ' || b.error, 'UTF8')) as hash) h
    cross join unnest(v_versions) as v(version_id)
    order by v.version_id, b.row_id
    on conflict (source_id, version_id, row_id) do update
      set tenant = excluded.tenant, content_hash = excluded.content_hash, failed_hash = excluded.failed_hash,
          last_error = excluded.last_error, attempts = it.attempts + 1, queue_job = null, changed_at = now()
      where it.content_hash is distinct from excluded.content_hash or it.tenant is distinct from excluded.tenant;
  end if;

  -- A row that moved to another tenant moves its vectors with it.
  if s.tenant_column is not null then
    update regen._embeddings e set tenant = it.tenant
      from regen._items it
     where it.source_id = s.id and it.version_id = any(v_versions) and it.row_id = any(v_ids || v_bad_ids)
       and e.version_id = it.version_id and e.source_id = it.source_id and e.row_id = it.row_id
       and e.tenant is distinct from it.tenant;
  end if;
  return v_taken;
end
$$;
comment on function regen._apply_source(integer, text[], integer, boolean) is
  'Applies up to max_rows logged changes of one source (of the given rows only, if only_rows): items upserted (new '
  'and changed texts marked fresh), rows gone removed with their vectors, vectors moved with their tenant; returns '
  'the changes taken. One applier per source at a time (wait: queue behind it, else return 0).';

create function regen.apply_changes(max_rows integer default 100000)
returns bigint
language plpgsql volatile set jit = off
as $$
declare
  v_source integer;
  v_applied bigint := 0;
begin
  if max_rows is null or max_rows < 1 then
    raise exception 'max_rows must be a positive integer, not %', coalesce(max_rows::text, 'NULL') using errcode = 'RG003';
  end if;
  for v_source in select distinct c.source_id from regen._changes c order by 1 loop
    exit when v_applied >= max_rows;
    -- a source another applier is working on is skipped: its changes are taken care of
    v_applied := v_applied + regen._apply_source(v_source, null, (max_rows - v_applied)::integer, false);
  end loop;
  return v_applied;
end
$$;
comment on function regen.apply_changes(integer) is
  'Folds up to max_rows changes the capture triggers logged into the item states (regen._apply_source), outside the '
  'application''s transactions; returns the changes applied. The worker calls it every REGEN_ENQUEUE_INTERVAL_MS '
  '(through regen.enqueue_fresh); safe to call from anywhere, any time.';

-- The worker's periodic call applies the log first, then enqueues what it marked fresh.
create or replace function regen.enqueue_fresh(max_items integer default 10000)
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
  perform regen.apply_changes();
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
    -- the provider a second time while the first is in flight.
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
  'Applies the logged changes (regen.apply_changes), then enqueues the fresh edits (new rows, changed texts) as fresh jobs '
  'ahead of backfill; returns the items enqueued. The worker calls it every REGEN_ENQUEUE_INTERVAL_MS; safe to call from anywhere.';

-- ---------------------------------------------------------------------------------------------
-- prepare_inputs of sql/0012, applying the logged changes of its rows first: an edit not yet
-- applied is not a drift, and the inputs are prepared for the text the items then record.

create or replace function regen.prepare_inputs(source text, version text, row_ids text[], job_id uuid default null, force boolean default false)
returns table (row_id text, chunk_no integer, content_hash bytea, text_hash bytea, input text)
language plpgsql volatile set jit = off
as $$
declare
  v_source regen._sources := regen._source(source);
  v_version regen._versions;
  v_old_path text := current_setting('search_path');
  v_rows text[] := prepare_inputs.row_ids;
  v_alias text;
  v_live text;
  v_drifted text[];
  v_requeue text[];
  v_broken text[] := '{}';
  v_id text;
begin
  select * into v_version from regen._versions v where v.id = regen._version_id(version);
  if not exists (select 1 from regen._source_versions sv where sv.source_id = v_source.id and sv.version_id = v_version.id) then
    raise exception 'source % does not use version %', v_source.name, v_version.tag
      using errcode = 'RG001', hint = 'see regen.embedding_gap for the versions each source uses';
  end if;
  v_alias := (select c.relname from pg_class c where c.oid = v_source.relation);

  -- A job works only the items that still name it: an item moved to a later job is that job's.
  if job_id is not null then
    v_rows := array(select it.row_id from regen._items it
                    where it.source_id = v_source.id and it.version_id = v_version.id
                      and it.row_id = any(prepare_inputs.row_ids) and it.queue_job = prepare_inputs.job_id);
  end if;

  -- Changes logged for these rows and not yet applied: apply them now (before taking any item lock,
  -- in the order every applier takes them), so the items record the text the inputs are read from.
  if exists (select 1 from regen._changes c where c.source_id = v_source.id and c.row_id = any(v_rows)) then
    perform regen._apply_source(v_source.id, v_rows);
  end if;

  -- Lock the items in the order write_embeddings and the appliers take them (so they never
  -- deadlock); the statements below see the latest text the items record.
  perform 1 from regen._items it
   where it.source_id = v_source.id and it.version_id = v_version.id and it.row_id = any(v_rows)
   order by it.row_id
   for update;

  perform set_config('search_path', v_source.expression_search_path, true);
  v_live := format('select (%1$I.%2$I)::text as row_id, sha256(convert_to((%3$s)::text, ''UTF8'')) as hash from %4$s as %1$I',
                   v_alias, v_source.id_column, v_source.content_expression, v_source.relation);
  begin
    execute format($f$
      with live as materialized (%1$s where %2$I.%3$I = any($1::%4$s[])),   -- evaluated once per row
      drifted as (
        update regen._items it
           set content_hash = l.hash, drifts = it.drifts + 1, changed_at = now(), queue_job = null,
               failed_hash = case when it.drifts >= 1 then l.hash end,
               last_error = case when it.drifts >= 1
                 then 'the text changed again without an edit between two reads: the content expression does not give '
                      'the same text for the same row (a volatile function, or one marked IMMUTABLE that is not)'
                 else it.last_error end,
               attempts = it.attempts + (it.drifts >= 1)::integer
          from live l
         where it.source_id = $2 and it.version_id = $3 and it.row_id = l.row_id
           and l.hash is not null and l.hash <> it.content_hash
        returning it.row_id, it.failed_hash is null as requeue)
      select coalesce(array_agg(d.row_id), '{}'), coalesce(array_agg(d.row_id) filter (where d.requeue), '{}') from drifted d$f$,
      v_live, v_alias, v_source.id_column, v_source.id_type)
    into v_drifted, v_requeue
    using v_rows, v_source.id, v_version.id;
  exception when others then
    -- some row's expression raises: those rows fail alone, with the error
    v_drifted := '{}'; v_requeue := '{}';
    foreach v_id in array v_rows loop
      begin
        execute format('%s where (%I.%I)::text = $1', v_live, v_alias, v_source.id_column) using v_id;
      exception when others then
        v_broken := v_broken || v_id;
        update regen._items it
           set failed_hash = it.content_hash, queue_job = null, attempts = it.attempts + 1, changed_at = now(),
               last_error = format('an expression of source %s raised an error on this row: %s', v_source.name, sqlerrm)
         where it.source_id = v_source.id and it.version_id = v_version.id and it.row_id = v_id;
      end;
    end loop;
  end;
  v_rows := array(select r from unnest(v_rows) r where r <> all(v_drifted) and r <> all(v_broken));

  -- One statement, so the settle trigger of the cache-hit insert sees the recorded plan.
  return query execute format($f$
    with texts as (
      select (%1$I.%2$I)::text as row_id, (%3$s)::text as content
      from %4$s as %1$I where %1$I.%2$I = any($1::%5$s[])
    ), plan as (
      select r.row_id, ch.chunk_no, sha256(convert_to(r.content, 'UTF8')) as content_hash,
             sha256(convert_to(ch.chunk, 'UTF8')) as text_hash, ch.chunk as input, it.tenant
      from texts r
      join regen._items it on it.source_id = $2 and it.version_id = $3 and it.row_id = r.row_id
      cross join lateral regen.chunk_text(regen.preprocess(r.content, $4), $5, $6) ch
      where $7 or it.embedded_hash is distinct from sha256(convert_to(r.content, 'UTF8'))
    ), recorded as (
      -- the chunks that make up the current text (written only where it changed). Only while the
      -- item still records that text: an edit that commits meanwhile has set a newer content_hash,
      -- which must stay (the apply that recorded it marked the edit fresh).
      update regen._items it
         set plan_hash = p.content_hash, chunk_hashes = p.hashes
        from (select p.row_id, p.content_hash, array_agg(p.text_hash order by p.chunk_no) as hashes
                from plan p group by p.row_id, p.content_hash) p
       where it.source_id = $2 and it.version_id = $3 and it.row_id = p.row_id
         and it.content_hash = p.content_hash
         and (it.plan_hash, it.chunk_hashes) is distinct from (p.content_hash, p.hashes)
      returning 1
    ), pending as (
      -- chunks not already stored under the current text
      select p.* from plan p
      where $7 or not exists (select 1 from regen._embeddings e
                        where e.version_id = $3 and e.source_id = $2 and e.row_id = p.row_id and e.chunk_no = p.chunk_no
                          and e.text_hash = p.text_hash and e.content_hash = p.content_hash)
    ), known as (
      -- the cache: any vector of the same text in the store, else one that left the store
      select t.*, case when not $7 then coalesce(
               (select e.embedding from regen._embeddings e where e.version_id = $3 and e.text_hash = t.text_hash limit 1),
               (select c.embedding from regen._cache c where c.version_id = $3 and c.text_hash = t.text_hash)) end as embedding
      from pending t
    ), stored as (
      insert into regen._embeddings as e (version_id, source_id, row_id, chunk_no, tenant, content_hash, text_hash, embedding)
      select $3, $2, k.row_id, k.chunk_no, k.tenant, k.content_hash, k.text_hash, k.embedding
      from known k where k.embedding is not null
      on conflict (version_id, source_id, row_id, chunk_no) do update
        set tenant = excluded.tenant, content_hash = excluded.content_hash, text_hash = excluded.text_hash,
            embedding = excluded.embedding, embedded_at = now()
      returning 1
    )
    -- what is left for the provider; a text shared by several rows is sent once
    select k.row_id, k.chunk_no, k.content_hash, k.text_hash,
           case when row_number() over (partition by k.text_hash order by k.row_id, k.chunk_no) = 1 then k.input end
    from known k
    where k.embedding is null
    order by k.row_id, k.chunk_no$f$,
    v_alias, v_source.id_column, v_source.content_expression, v_source.relation, v_source.id_type)
  using v_rows, v_source.id, v_version.id, v_version.settings,
        (v_version.settings->>'chunk_chars')::integer, (v_version.settings->>'chunk_overlap')::integer, force;
  perform set_config('search_path', v_old_path, true);

  -- drifted items go back to the queue as backfill, with the hash of what was read
  if cardinality(v_requeue) > 0 then
    perform regen._enqueue(v_source.id, v_version.id, v_requeue, false);
  end if;
end
$$;
comment on function regen.prepare_inputs(text, text, text[], uuid, boolean) is
  'Worker-facing: turns row ids into provider inputs for a version, settling cache hits without a provider call; '
  'job_id (the pg-boss job being worked) takes the items out of the queue; force re-embeds current rows and skips the cache. '
  'A row whose text no longer matches its captured hash is re-queued once, then failed; a row whose expression raises fails.';

-- ---------------------------------------------------------------------------------------------
-- register_source of sql/0003: expressions must be immutable (the filter boolean), the version's
-- index is made sure of, and rows an expression raises on become failed items instead of failing
-- the registration.

-- ---------------------------------------------------------------------------------------------
-- The gap stays exact while changes wait in the log: for every row with a pending change, the
-- counters' view of its items (as last applied) is taken out and the row as it is now is put in,
-- judged the way regen._state() judges an item. Nothing is written. With an empty log this is one
-- probe of an empty index.

create function regen._pending_gap()
returns table (source_id integer, version_id integer, tenant text, state text, queued boolean, n bigint)
language plpgsql stable security definer set search_path = pg_catalog, pg_temp set jit = off
as $$
declare
  s regen._sources;
  v_alias text;
  v_rows text[];
  v_ids text[];
  v_tenants text[];
  v_hashes bytea[];
  v_failed boolean[];
  v_id text;
  v_one record;
  v_tenant text;
begin
  for s in
    select x.* from regen._sources x
    where exists (select 1 from regen._changes c where c.source_id = x.id)
    order by x.id
  loop
    v_rows := array(select distinct c.row_id from regen._changes c where c.source_id = s.id);
    v_alias := (select c.relname from pg_class c where c.oid = s.relation);
    perform set_config('search_path', s.expression_search_path, true);
    begin
      execute format('select coalesce(array_agg(c.row_id), ''{}''), coalesce(array_agg(c.tenant), ''{}''), '
                     'coalesce(array_agg(c.content_hash), ''{}''), coalesce(array_agg(false), ''{}'') from (%s) c',
                     regen._capture_select(s, format('(select * from %s as %I where %I.%I = any(%L::%s[]))',
                                                     s.relation, v_alias, v_alias, s.id_column, v_rows, s.id_type)))
        into v_ids, v_tenants, v_hashes, v_failed;
    exception when others then
      v_ids := '{}'; v_tenants := '{}'; v_hashes := '{}'; v_failed := '{}';
      foreach v_id in array v_rows loop
        begin
          execute format('select c.row_id, c.tenant, c.content_hash from (%s) c',
                         regen._capture_select(s, format('(select * from %s as %I where (%I.%I)::text = %L)',
                                                         s.relation, v_alias, v_alias, s.id_column, v_id)))
            into v_one;
          if v_one.row_id is not null then
            v_ids := v_ids || v_one.row_id; v_tenants := v_tenants || v_one.tenant;
            v_hashes := v_hashes || v_one.content_hash; v_failed := v_failed || false;
          end if;
        exception when others then
          -- an expression raises on the row: it will be a failed item, under its tenant if that computes
          v_tenant := null;
          if s.tenant_column is not null then
            begin
              execute format('select (%I.%I)::text from %s as %I where (%I.%I)::text = $1',
                             v_alias, s.tenant_column, s.relation, v_alias, v_alias, s.id_column)
                into v_tenant using v_id;
            exception when others then
              v_tenant := null;
            end;
          end if;
          v_ids := v_ids || v_id; v_tenants := v_tenants || v_tenant;
          v_hashes := v_hashes || null::bytea; v_failed := v_failed || true;
        end;
      end loop;
    end;
    perform set_config('search_path', 'pg_catalog, pg_temp', true);
    return query
      select it.source_id, it.version_id, it.tenant,
             regen._state(it.content_hash, it.embedded_hash, it.failed_hash, it.has_legacy), it.queue_job is not null, -1::bigint
      from regen._items it
      where it.source_id = s.id and it.row_id = any(v_rows)
      union all
      select s.id, sv.version_id, case when l.failed then it.tenant else l.tenant end,
             case when l.failed then 'failed'
                  else regen._state(l.content_hash, it.embedded_hash, it.failed_hash, coalesce(it.has_legacy, false)) end,
             coalesce(it.queue_job is not null, false), 1::bigint
      from unnest(v_ids, v_tenants, v_hashes, v_failed) as l(row_id, tenant, content_hash, failed)
      cross join regen._source_versions sv
      left join regen._items it on it.source_id = s.id and it.version_id = sv.version_id and it.row_id = l.row_id
      where sv.source_id = s.id;
  end loop;
end
$$;
comment on function regen._pending_gap() is
  'Corrections to the gap counters for rows whose changes wait in regen._changes: their items as counted (-1) and the rows '
  'as they are now (+1). Read by regen.embedding_gap; writes nothing.';

-- The counts of sql/0012, with the corrections for the rows whose changes wait in the log.
create or replace view regen._gap_totals as
  select source_id, version_id, tenant, state, queued, sum(n)::bigint as n
  from (
    select c.source_id, c.version_id, c.tenant, c.state, c.queued, c.n from regen._gap_counts c
    where (select s.verified from regen._store_state s)
    union all
    select d.source_id, d.version_id, d.tenant, d.state, d.queued, d.n from regen._gap_deltas d
    where (select s.verified from regen._store_state s)
    union all
    select p.source_id, p.version_id, p.tenant, p.state, p.queued, p.n from regen._pending_gap() p
    where (select s.verified from regen._store_state s)
    union all
    select it.source_id, it.version_id, it.tenant,
           case
             when held.embedded and it.embedded_hash = it.content_hash then 'current'
             when it.failed_hash = it.content_hash then 'failed'
             when held.embedded then 'stale'
             when it.has_legacy and held.legacy then 'outdated'
             else 'missing'
           end,
           it.queue_job is not null, 1::bigint
    from regen._items it
    cross join lateral (
      select it.embedded_hash is not null and (
               select count(*) from regen._embeddings e
               where e.version_id = it.version_id and e.source_id = it.source_id and e.row_id = it.row_id
                 and e.content_hash = it.embedded_hash
                 and (it.plan_hash is distinct from it.embedded_hash or e.chunk_no <= cardinality(it.chunk_hashes))
             ) >= case when it.plan_hash = it.embedded_hash then cardinality(it.chunk_hashes) else 1 end as embedded,
             it.has_legacy and exists (
               select 1 from regen._source_versions o
               join regen._embeddings e on e.version_id = o.version_id and e.source_id = o.source_id and e.row_id = it.row_id
               where o.source_id = it.source_id and o.version_id <> it.version_id) as legacy
    ) held
    where not (select s.verified from regen._store_state s)
  ) c
  group by 1, 2, 3, 4, 5;
comment on view regen._gap_totals is
  'Item counts per source, version, tenant, state and queued flag: from the counters while the store is verified '
  '(corrected for the rows whose changes wait in regen._changes), else judged item by item against the store';

-- ---------------------------------------------------------------------------------------------
-- Grants: application roles read the gap, which now calls regen._pending_gap() (SECURITY DEFINER:
-- it evaluates the source's expressions as their owner). As in sql/0015 otherwise.
create or replace function regen.grant_app(role regrole)
returns void
language plpgsql volatile
as $$
declare
  v_search text := (select string_agg(p.oid::regprocedure::text, ', ') from pg_proc p
                    where p.pronamespace = 'regen'::regnamespace and p.proname = 'search_scoped');
begin
  perform regen._check_grantee(role);
  perform regen._grant_vector_usage(role);
  execute format('grant usage on schema regen to %s', role);
  -- search_scoped runs as the caller: it reads the store (under row-level security) and the catalog
  execute format('grant select on regen._embeddings, regen._sources, regen._versions, regen._source_versions to %s', role);
  execute format('grant select on regen.versions, regen.sources, regen.embedding_gap to %s', role);
  execute format('grant execute on function %s, '
                 'regen.search_input(text, text[], text), regen.set_tenant(text), regen.current_tenant(), '
                 'regen._transaction_marker(), regen._policy_tenant(), regen._search_scope(text[], text), '
                 'regen._search_setting(text, integer, integer, integer), regen.preprocess(text, jsonb), '
                 'regen._pending_gap() to %s', v_search, role);
end
$$;
comment on function regen.grant_app(regrole) is
  'Lets an application role search (regen.search_scoped, regen.set_tenant) and read regen.versions, regen.sources and '
  'regen.embedding_gap; it sees the store only through row-level security, one tenant per transaction. Grants USAGE on '
  'pgvector''s schema when the role lacks it (RG044 when the owner cannot)';

-- Sources registered before this file: the row-level capture replaces the statement-level one,
-- under the same trigger and function names.
do $$
declare
  v regen._sources;
  v_role regrole;
begin
  for v in select * from regen._sources loop
    if exists (select 1 from pg_class c where c.oid = v.relation) then
      perform regen._install_capture(v);
    end if;
  end loop;
  for v_role in select a.role_oid::regrole from regen._app_roles() a loop
    execute format('grant execute on function regen._pending_gap() to %s', v_role);
  end loop;
end
$$;

select regen._refresh_grants();
