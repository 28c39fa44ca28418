-- The change log (issue 13): what a source's capture costs the application's writes is close to
-- what a plain row trigger costs. The trigger evaluates the source's expressions on the row it fires
-- for (on an INSERT's rows all at once) and appends the result (tenant, priority, hash of the text,
-- or that the row left the source) to regen._changes; the expensive part it did before, in the application's transaction
-- (upserting the items, which moves the gap counters, deleting the vectors of deleted rows, moving
-- vectors with their tenant), happens set-based in regen.apply_changes(): the worker calls it every
-- REGEN_ENQUEUE_INTERVAL_MS together with regen.enqueue_fresh(), and so do regen.rebuild() and
-- regen.prepare_inputs() (sql/0022) for the rows they take.
--
-- Meanwhile nothing is claimed that does not hold: regen.embedding_gap counts the rows with a
-- logged change as the change left them, so its counts stay exact at every commit.
--
-- The triggers (one function per source, as before):
--   AFTER INSERT, FOR EACH STATEMENT               logs the statement's rows (its transition table)
--                                                  as the expressions see them, in one insert
--                                                  (FOR EACH ROW on a partitioned table)
--   AFTER UPDATE OF <columns the source reads>     the same (and the old key as gone, should the
--     FOR EACH ROW WHEN (one of them changed)      key have changed)
--   AFTER DELETE, FOR EACH ROW                     logs the key as gone
--   AFTER TRUNCATE, FOR EACH STATEMENT             forgets the source's items, vectors and changes
-- An UPDATE that changes no column the content, priority and filter expressions, the id or the
-- tenant read fires nothing at all: PostgreSQL evaluates the WHEN clause without calling the
-- function. An expression that raises on the row is logged as the row's error (it becomes a
-- failed item): the application's write goes through.
--
-- Error codes of this file: RG017 (as before) capture function fired by a table it was not
-- generated for; RG003 (reused) invalid max_rows.

create table regen._changes (
  seq bigint generated always as identity,
  source_id integer not null,
  row_id text not null,
  present boolean not null,
  tenant text,
  priority float8,
  content_hash bytea,
  error text,
  old_tenant text,
  at timestamptz not null default now()
);
comment on table regen._changes is
  'Change log of the capture triggers: one row per inserted, updated (in a column the source reads) or deleted source row, '
  'as the source''s expressions saw it, until regen.apply_changes() folds it into regen._items. No foreign key and one '
  'index: the trigger''s insert stays cheap.';
comment on column regen._changes.seq is 'Order of the changes; for one row, the order they committed in (its row lock orders them)';
comment on column regen._changes.present is 'Whether the row is in the source after the change (false: deleted, key changed, filtered out, text null)';
comment on column regen._changes.content_hash is 'sha256 of the text to embed after the change';
comment on column regen._changes.error is 'The error an expression raised on the row, which then becomes a failed item';
comment on column regen._changes.old_tenant is 'The row''s tenant before the change (null for an insert)';
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

-- The generated capture function: static SQL. A row trigger evaluates its one row and logs it
-- (two rows when the key changed); the INSERT statement trigger of an ordinary table logs all the
-- statement's rows in one set-based insert from its transition table (a COPY, an INSERT ... SELECT),
-- falling back to row by row, each in its own exception block, when an expression raises on one of
-- them. It acts only when fired by its own table.
create or replace function regen._capture_function(s regen._sources)
returns void
language plpgsql volatile
as $$
declare
  v_fn text := format('regen.%I', 'tg_' || s.name || '__capture');
  v_old_tenant text := case when s.tenant_column is null then 'null' else format('(old.%I)::text', s.tenant_column) end;
  v_one_row text;
begin
  -- Logs the row in record variable %1$s (the trigger's new, or a transition table's row) as the
  -- source's expressions see it: no row when it left the source; %2$s is its old tenant, %3$s
  -- the statement that evaluates the row into v_one, %5$s the one that reads its tenant alone.
  v_one_row := $r$
      v_error := null;
      begin
        %3$s
      exception when others then
        v_error := format('an expression of source %%s raised an error on this row: %%s', %4$L, sqlerrm);
        begin
          %5$s
        exception when others then
          v_tenant := null;   -- the tenant itself does not compute
        end;
      end;
      if v_error is not null then
        insert into regen._changes (source_id, row_id, present, tenant, error, old_tenant)
        values (%6$s, (%1$s.%7$I)::text, true, v_tenant, v_error, %2$s);
      else
        insert into regen._changes (source_id, row_id, present, tenant, priority, content_hash, old_tenant)
        values (%6$s, (%1$s.%7$I)::text, v_one.content_hash is not null, v_one.tenant, v_one.priority, v_one.content_hash, %2$s);
      end if;$r$;
  execute format($f$
    create or replace function %1$s() returns trigger
    language plpgsql security definer set search_path = %2$s
    as $body$
    declare
      v_one record;
      v_row record;
      v_key record;
      v_error text;
      v_tenant text;
    begin
      -- Generated for one table: fired by any other (a copy, a temporary table) it refuses to act.
      if tg_relid <> %3$s::oid and not regen._capture_relation_ok(%4$s, tg_relid) then
        raise exception 'capture function %%.%% belongs to source %%, not to table %%.%%',
          'regen', %5$L, %6$L, tg_table_schema, tg_table_name
          using errcode = 'RG017', hint = 'pgregen installs its own triggers: use regen.register_source()';
      end if;
      if tg_op = 'DELETE' then
        insert into regen._changes (source_id, row_id, present, old_tenant) values (%4$s, (old.%7$I)::text, false, %8$s);
        return null;
      elsif tg_op = 'TRUNCATE' then
        -- a statement trigger: the rows are gone, and so is everything derived from them
        delete from regen._changes where source_id = %4$s;
        delete from regen._items where source_id = %4$s;
        delete from regen._embeddings where source_id = %4$s;
        return null;
      elsif tg_op = 'INSERT' and tg_level = 'STATEMENT' then
        -- the statement's rows, in one insert; should an expression raise, row by row
        begin
          insert into regen._changes (source_id, row_id, present, tenant, priority, content_hash)
          select %4$s, (n.%7$I)::text, c.content_hash is not null, c.tenant, c.priority, c.content_hash
          from new_rows n left join lateral (%9$s) c on true;
        exception when others then
          -- (a transition table's row has no type a static statement could name: through jsonb,
          -- populated as the table's row type as it is named now)
          for v_row in select to_jsonb(n) as j from new_rows n loop
            execute replace(%12$L, '$row_type$', tg_relid::regclass::text) into v_key using v_row.j;
            %10$s
          end loop;
        end;
        return null;
      elsif tg_op = 'UPDATE' and new.%7$I is distinct from old.%7$I then
        insert into regen._changes (source_id, row_id, present, old_tenant) values (%4$s, (old.%7$I)::text, false, %8$s);
      end if;
      %11$s
      return null;
    end
    $body$ $f$,
    v_fn,                                                     -- 1
    s.expression_search_path,                                 -- 2
    s.relation::oid,                                          -- 3
    s.id,                                                     -- 4
    'tg_' || s.name || '__capture',                           -- 5
    s.name,                                                   -- 6
    s.id_column,                                              -- 7
    v_old_tenant,                                             -- 8
    -- 9: the expressions over one row of the transition table (a row that left the source: no row, present false)
    regen._capture_select(s, '(select n.*)'),
    -- 10: the fallback, one row of the transition table at a time (v_key: its id)
    format(v_one_row, 'v_key', 'null',
           format('execute replace(%L, ''$row_type$'', tg_relid::regclass::text) into v_one using v_row.j;',
                  format('select c.tenant, c.priority, c.content_hash from (%s) c',
                         regen._capture_select(s, '(select (jsonb_populate_record(null::$row_type$, $1)).*)'))),
           s.name,
           case when s.tenant_column is null then 'v_tenant := null;'
                else format('execute replace(%L, ''$row_type$'', tg_relid::regclass::text) into v_tenant using v_row.j;',
                            format('select (r.%I)::text from jsonb_populate_record(null::$row_type$, $1) r', s.tenant_column)) end,
           s.id, 'id'),
    -- 11: a row trigger's row
    format(v_one_row, 'new',
           case when s.tenant_column is null then 'null'
                else format('case when tg_op = ''UPDATE'' then (old.%I)::text end', s.tenant_column) end,
           format('select c.tenant, c.priority, c.content_hash into v_one from (%s) c;',
                  regen._capture_select(s, '(select (new).*)')),
           s.name,
           case when s.tenant_column is null then 'v_tenant := null;' else format('v_tenant := (new.%I)::text;', s.tenant_column) end,
           s.id, s.id_column),
    -- 12: a transition table's row (as jsonb, $1) to its id
    format('select (r.%I)::text as id from jsonb_populate_record(null::$row_type$, $1) r', s.id_column));
  execute format('comment on function %s() is %L', v_fn,
                 format('pgregen change capture for source %s, table %s: logs each changed row into regen._changes (generated by regen.register_source)',
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
language plpgsql volatile set client_min_messages = warning   -- no notice for each trigger not there yet
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
  -- An ordinary table logs an INSERT's rows at the end of the statement, all at once; a partitioned
  -- one row by row (its row triggers are its partitions' too, so an insert straight into a
  -- partition is captured; statement triggers are not inherited).
  if (select c.relkind from pg_class c where c.oid = s.relation) = 'p' then
    execute format('create trigger %I after insert on %s for each row execute function %s()',
                   'regen_' || s.name || '_insert', s.relation, v_fn);
  else
    execute format('create trigger %I after insert on %s referencing new table as new_rows for each statement execute function %s()',
                   'regen_' || s.name || '_insert', s.relation, v_fn);
  end if;
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
         coalesce(array_agg(l.content_hash order by l.row_id), '{}'), coalesce(array_agg(l.error order by l.row_id), '{}')
    into v_taken, v_rows, v_present, v_tenants, v_priorities, v_hashes, v_errors
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
  insert into regen._items as it (source_id, version_id, row_id, tenant, priority, content_hash, fresh)
  select _apply_source.source, v.version_id, a.row_id, a.tenant, a.priority, a.content_hash, true
  from unnest(v_rows, v_present, v_tenants, v_priorities, v_hashes, v_errors) as a(row_id, present, tenant, priority, content_hash, error)
  cross join unnest(v_versions) as v(version_id)
  where a.present and a.error is null
  order by v.version_id, a.row_id   -- the order the worker locks items in: no deadlock between the two
  on conflict (source_id, version_id, row_id) do update
    set tenant = excluded.tenant, priority = excluded.priority,
        content_hash = excluded.content_hash, changed_at = now(),
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
-- register_source of sql/0003: expressions must be immutable (the filter boolean), the version's
-- index is made sure of, and rows an expression raises on become failed items instead of failing
-- the registration.

-- ---------------------------------------------------------------------------------------------
-- The gap stays exact while changes wait in the log: for every row with a logged change, its items
-- as the counters have them are taken out, and the row as its last change left it is put in, judged
-- as regen._state() judges an item (spelled out: application roles read the gap and execute only
-- what grant_app gives). With an empty log this is two probes of an empty index.

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
    select it.source_id, it.version_id, it.tenant,
           case when it.embedded_hash = it.content_hash then 'current'
                when it.failed_hash = it.content_hash then 'failed'
                when it.embedded_hash is not null then 'stale'
                when it.has_legacy then 'outdated'
                else 'missing' end,
           it.queue_job is not null, -1::bigint
    from (select distinct c.source_id, c.row_id from regen._changes c) p
    join regen._source_versions sv on sv.source_id = p.source_id
    join regen._items it on it.source_id = sv.source_id and it.version_id = sv.version_id and it.row_id = p.row_id
    where (select s.verified from regen._store_state s)
    union all
    select l.source_id, sv.version_id, l.tenant,
           case when l.error is not null then 'failed'
                when it.embedded_hash = l.content_hash then 'current'
                when it.failed_hash = l.content_hash then 'failed'
                when it.embedded_hash is not null then 'stale'
                when it.has_legacy then 'outdated'
                else 'missing' end,
           l.error is null and it.queue_job is not null, 1::bigint
    from (select distinct on (c.source_id, c.row_id) c.* from regen._changes c order by c.source_id, c.row_id, c.seq desc) l
    join regen._source_versions sv on sv.source_id = l.source_id
    left join regen._items it on it.source_id = l.source_id and it.version_id = sv.version_id and it.row_id = l.row_id
    where l.present and (select s.verified from regen._store_state s)
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
    -- Only while the store is not verified. The join on an expression the planner cannot estimate
    -- keeps this branch's estimated cost small: judged by its true size, every read of the gap would
    -- be compiled by JIT (1.9 s at 50,000 items with PostgreSQL's default settings), verified or not.
    join (select 1 as one from regen._store_state s where not s.verified) unverified
      on unverified.one = it.version_id - it.version_id + 1
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
  ) c
  group by 1, 2, 3, 4, 5;
comment on view regen._gap_totals is
  'Item counts per source, version, tenant, state and queued flag: from the counters while the store is verified '
  '(corrected for the rows whose changes wait in regen._changes), else judged item by item against the store';

-- Sources registered before this file: the row-level capture replaces the statement-level one,
-- under the same trigger and function names.
do $$
declare
  v regen._sources;
begin
  for v in select * from regen._sources loop
    if exists (select 1 from pg_class c where c.oid = v.relation) then
      perform regen._install_capture(v);
    end if;
  end loop;
end
$$;


-- ---------------------------------------------------------------------------------------------
-- write_embeddings of sql/0016, reading the logged changes of its rows not yet applied: a vector for
-- a text the row no longer has is refused as stale, as when the capture updated the items at once.
-- It applies nothing itself (an applier's lock lasts until its transaction ends: through the whole
-- insert, while every other batch of the source waited); the settle trigger applies them, at the end.
create or replace function regen.write_embeddings(
  source text,
  version text,
  row_ids text[],
  chunk_nos integer[],
  content_hashes bytea[],
  embeddings vector[]
)
returns table (row_id text, chunk_no integer, stored boolean, kind text, reason text)
language sql volatile set jit = off
as $$
  -- No lock on the items while the vectors go into the store (and its HNSW index, the slow part):
  -- an edit of these rows commits meanwhile. The settle trigger then locks the items the statement
  -- touched, briefly, and keeps only what still matches: see regen.tg_embeddings__settle.
  with args as (
    select s.id as source_id, v.id as version_id, v.dimensions
    from (select 1) one
    left join regen._sources s on s.name = write_embeddings.source
    left join regen._versions v on v.tag = write_embeddings.version
  ), input as (
    -- the vectors themselves stay in the array: judged is materialized, and 6 kB a row would spill
    select u.ord, u.row_id, u.chunk_no, u.content_hash, vector_dims(u.vec) as dims,
           row_number() over (partition by u.row_id, u.chunk_no order by u.ord) > 1 as duplicate
    from unnest(write_embeddings.row_ids, write_embeddings.chunk_nos, write_embeddings.content_hashes,
                write_embeddings.embeddings) with ordinality as u(row_id, chunk_no, content_hash, vec, ord)
  ), judged as (
    select i.ord, i.row_id, i.chunk_no, i.content_hash, a.source_id, a.version_id, it.tenant,
           it.chunk_hashes[i.chunk_no] as text_hash, r.kind, r.reason
    from input i
    cross join args a
    left join regen._items it on it.source_id = a.source_id and it.version_id = a.version_id and it.row_id = i.row_id
    left join lateral (
      select c.present, c.content_hash from regen._changes c
      where c.source_id = a.source_id and c.row_id = i.row_id
      order by c.seq desc limit 1
    ) pending on true
    left join lateral (
      select c.kind, c.reason from (values
        (cardinality(write_embeddings.row_ids) is distinct from cardinality(write_embeddings.chunk_nos)
           or cardinality(write_embeddings.row_ids) is distinct from cardinality(write_embeddings.content_hashes)
           or cardinality(write_embeddings.row_ids) is distinct from cardinality(write_embeddings.embeddings),
         1, 'malformed', 'malformed call: row_ids, chunk_nos, content_hashes and embeddings must have the same length'),
        (a.source_id is null, 2, 'unknown_source', format('unknown source %L', write_embeddings.source)),
        (a.version_id is null, 3, 'unknown_version', format('unknown version %L', write_embeddings.version)),
        (i.duplicate, 4, 'duplicate', 'duplicate item: this row and chunk already appear earlier in the batch'),
        (i.dims is null, 5, 'nan', 'NaN or infinity not allowed in vector'),
        (i.dims <> a.dimensions, 6, 'dimensions', format('expected %s dimensions, not %s', a.dimensions, i.dims)),
        (it.row_id is null, 7, 'untracked', 'row is not tracked for this version: deleted, filtered out, or not registered'),
        (i.content_hash is distinct from it.content_hash, 8, 'stale', 'stale: the source text changed after the input was prepared'),
        -- a change logged for the row and not applied yet says what it is now (no applier's lock
        -- is taken here: that would be held through the whole insert below)
        (pending.present is false, 7, 'untracked', 'row is not tracked for this version: deleted, filtered out, or not registered'),
        (pending.present and pending.content_hash is distinct from i.content_hash, 8, 'stale',
         'stale: the source text changed after the input was prepared'),
        (it.plan_hash is distinct from it.content_hash or i.chunk_no is null or i.chunk_no not between 1 and cardinality(it.chunk_hashes),
         9, 'unplanned', format('chunk %s is not among the prepared inputs of this text', i.chunk_no))
      ) c(hit, rank, kind, reason)
      where c.hit
      order by c.rank
      limit 1
    ) r on true
  ), stored as (
    insert into regen._embeddings as e (version_id, source_id, row_id, chunk_no, tenant, content_hash, text_hash, embedding)
    select j.version_id, j.source_id, j.row_id, j.chunk_no, j.tenant, j.content_hash, j.text_hash, v.vec
    from judged j
    -- a second pass over the array, joined on position: embeddings[j.ord] would walk the array
    -- from its start for every item (elements of varying size), quadratic in the batch
    join unnest(write_embeddings.embeddings) with ordinality as v(vec, ord) on v.ord = j.ord
    where j.reason is null
    on conflict (version_id, source_id, row_id, chunk_no) do update
      set tenant = excluded.tenant, content_hash = excluded.content_hash, text_hash = excluded.text_hash,
          embedding = excluded.embedding, embedded_at = now()
    returning 1
  ), poisoned as (
    -- a vector the provider got wrong fails its item for this text; a new text gets a new chance
    update regen._items it
       set failed_hash = it.content_hash, last_error = j.reason, attempts = it.attempts + 1, queue_job = null, changed_at = now()
      from (select distinct on (j.row_id) j.source_id, j.version_id, j.row_id, j.content_hash, j.reason
              from judged j
             where j.kind in ('dimensions', 'nan')
             order by j.row_id, j.ord) j
     where it.source_id = j.source_id and it.version_id = j.version_id and it.row_id = j.row_id
       and it.content_hash = j.content_hash
    returning 1
  ), logged as (
    insert into regen._rejections (source, version, row_id, chunk_no, kind, reason)
    select write_embeddings.source, write_embeddings.version, j.row_id, j.chunk_no, j.kind, j.reason
    from judged j where j.reason is not null
    returning 1
  ), requeued as (
    -- a row edited while its batch was in flight goes back to the queue, as a fresh edit
    select regen._enqueue(a.source_id, a.version_id,
                          coalesce((select array_agg(distinct j.row_id) from judged j where j.kind = 'stale'), '{}'),
                          true) as n
    from args a where a.source_id is not null and a.version_id is not null
  )
  select j.row_id, j.chunk_no, j.reason is null, j.kind, j.reason
  from judged j
  left join requeued on true
  order by j.ord;
$$;
comment on function regen.write_embeddings(text, text, text[], integer[], bytea[], vector[]) is
  'Worker-facing: stores vectors whose content hash still matches the source, whose dimensions match the version '
  'and that hold no NaN/Inf; refuses the rest per item with a kind (malformed, unknown_source, unknown_version, duplicate, '
  'nan, dimensions, untracked, stale, unplanned) and a reason (see regen.rejected_writes). Holds no item lock while the '
  'vectors are inserted; the settle trigger keeps only what still matches. A row with a logged change not yet applied is '
  'judged by that change.';

-- The settle trigger of sql/0016, applying the logged changes of the rows it settles first: an edit
-- that committed while the vectors were being inserted leaves its item stale, at once.
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
  'and marks items current once all their chunk vectors are stored; applies the rows'' logged changes first';

select regen._refresh_grants();
