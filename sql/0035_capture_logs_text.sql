-- The capture logs the text and leaves its hash to the set-based work (issue 13, item 1).
--
-- Measured on a single-row statement (pgbench, every variant on its own copy of the table, in the
-- same script, so interleaved statement by statement): sha256() costs about 10 µs per statement
-- that calls it, a fixed cost of OpenSSL's digest set-up that a bulk statement pays only ~2 µs a row
-- for; a quarter to a third of what the pgai-style trigger adds to an INSERT in all. So the capture
-- now logs a short text itself (up to 1,800 bytes, which keeps the log's row under PostgreSQL's
-- TOAST threshold of about 2 kB) and hashes only longer ones. The hash of a logged text is computed
-- where it is read:
--
--   regen._change_log   the table the triggers append to (regen._changes of sql/0020, renamed, with
--                       a column content: the text, when short)
--   regen._changes      a view of it with the columns every reader had: content_hash is the logged
--                       hash or the hash of the logged text, present is derived when the capture
--                       left it out (a row not present has no tenant or priority); the appliers
--                       take their rows through it (it keeps the ctid), set based, and the gap,
--                       search and write-back read the few rows pending
--
-- So the gap stays exact at every commit, as before: what it reads of a pending row is what the
-- capture logged, hashed on the way. The views that read the log (bound to the table by oid) are
-- re-created over the view; the functions, which name regen._changes, read the view unchanged.
--
-- The INSERT statement's capture also loses its lateral subquery (a node of its own in the plan:
-- about 9 µs a statement in one measurement). The content expression is written where it is used
-- instead, up to three times (the value and the two length tests): cheap for columns and
-- concatenations, what sources have; a costly expression pays it three times. Measured as a whole,
-- the single-row INSERT's added time went from 2.3-2.4x the pgai-style trigger's to 1.95-2.0x on
-- the scratch copy. And the generator's two row templates are functions of their own now, so that
-- a later change replaces them and not the whole generator.
--
-- After a restore the generated functions named the old table's oid: every captured write then
-- took the slow check of which table fired it (an INSERT added about 4x what it adds otherwise,
-- measured on the scratch copy). Each source now records the table its function was generated
-- for, and regen.apply_changes(), which the worker runs every REGEN_ENQUEUE_INTERVAL_MS (and
-- regen.rebuild() first), regenerates the functions of the sources whose table is another now.
--
-- Only the generated functions change: no trigger on an application table is touched.
--
-- Error codes of this file: none (RG003 as before, from regen.apply_changes).

alter table regen._changes rename to _change_log;
alter index regen._changes_row rename to _change_log_row;
alter table regen._change_log
  alter column present drop not null,
  add column content text;
comment on table regen._change_log is
  'Change log of the capture triggers: one row per inserted, updated (in a column the source reads) or deleted source row, '
  'as the source''s expressions saw it, until regen.apply_changes() folds it into regen._items. Read it through the view '
  'regen._changes. No foreign key and one index: the trigger''s insert stays cheap.';
comment on column regen._change_log.present is
  'Whether the row is in the source after the change (false: deleted, key changed, filtered out, text null); null when '
  'the capture left it to the logged text (an INSERT statement''s rows): present when content or content_hash is not null';
comment on column regen._change_log.content_hash is 'sha256 of the text to embed after the change, when the capture hashed it (a text longer than 1,800 bytes)';
comment on column regen._change_log.content is 'The text to embed after the change, when up to 1,800 bytes (its hash is then computed where it is read)';

create view regen._changes as
  -- (one relation in FROM, so that deletes go through to the table, and no function of regen:
  -- application roles read it through regen._moved_rows, and execute only what grant_app gives;
  -- hence present spelled out three times)
  select l.ctid as ctid, l.seq, l.source_id, l.row_id,
         coalesce(l.present, l.content is not null or l.content_hash is not null) as present,
         case when coalesce(l.present, l.content is not null or l.content_hash is not null) then l.tenant end as tenant,
         case when coalesce(l.present, l.content is not null or l.content_hash is not null) then l.priority end as priority,
         coalesce(l.content_hash, sha256(convert_to(l.content, 'UTF8'))) as content_hash,
         l.error, l.old_tenant, l.at
  from regen._change_log l;
comment on view regen._changes is
  'The change log as its readers use it: the hash of each row''s text (logged, or computed from the logged text) and '
  'whether the row is in the source after the change. Deletes go through to regen._change_log (by ctid, say).';
comment on column regen._changes.ctid is 'The log row''s ctid, for deleting the rows taken';
comment on column regen._changes.present is 'Whether the row is in the source after the change (false: deleted, key changed, filtered out, text null)';
comment on column regen._changes.content_hash is 'sha256 of the text to embed after the change';

-- The views over the log, bound to the table: re-created over the view, with the same text
-- otherwise (as PostgreSQL writes them, with every name qualified).
do $$
declare
  v_view regclass;
  v_def text;
  v_old_path text := current_setting('search_path');
begin
  perform set_config('search_path', 'pg_catalog', true);
  foreach v_view in array array['regen._gap_totals', 'regen._moved_rows', 'regen.freshness']::regclass[] loop
    v_def := pg_get_viewdef(v_view);
    if strpos(v_def, 'regen._change_log') = 0 then
      raise exception 'view % does not read regen._change_log as expected: %', v_view, v_def;
    end if;
    execute format('create or replace view %s as %s', v_view, replace(v_def, 'regen._change_log', 'regen._changes'));
  end loop;
  perform set_config('search_path', v_old_path, true);
  if exists (select 1 from pg_depend d join pg_rewrite r on d.classid = 'pg_rewrite'::regclass and r.oid = d.objid
             where d.refobjid = 'regen._change_log'::regclass and r.ev_class <> 'regen._changes'::regclass) then
    raise exception 'a view other than regen._changes still reads regen._change_log';
  end if;
end
$$;

-- ---------------------------------------------------------------------------------------------
-- The generator. What the capture logs of a row: its text when short, else the text's hash.

alter table regen._sources add column captured_relation oid;
comment on column regen._sources.captured_relation is
  'The table (oid) the source''s capture function was generated for: after a restore, another than relation until '
  'regen.apply_changes() generates the function again';

-- The values (content, content_hash) to log for a text expression: the text itself up to 1,800
-- bytes, else its sha256.
create function regen._capture_text_columns(text_expr text)
returns text[]
language sql immutable
as $$
  select array[format('case when octet_length(%1$s) <= 1800 then %1$s end', text_expr),
               format('case when octet_length(%1$s) > 1800 then sha256(convert_to(%1$s, ''UTF8'')) end', text_expr)]
$$;
comment on function regen._capture_text_columns(text) is
  'The capture''s content and content_hash for a text expression: the text itself up to 1,800 bytes, else its sha256';

-- An INSERT statement's rows (transition table new_rows) into the change log, in one insert. Each
-- expression is written where it is used; present is left to the logged text.
create or replace function regen._capture_insert_statement(s regen._sources)
returns text
language plpgsql volatile
as $$
declare
  v_e text[] := regen._capture_expressions_over(s, 'regen_row');
  v_text text[];
begin
  if v_e is null then
    -- the source's select over each row (a query per row in the plan), which hashes the text
    return format($q$insert into regen._change_log (source_id, row_id, present, tenant, priority, content_hash)
          select %1$s, (n.%2$I)::text, c.content_hash is not null, c.tenant, c.priority, c.content_hash
          from new_rows n left join lateral (%3$s) c on true;$q$,
      s.id, s.id_column, regen._capture_select(s, '(select n.*)'));
  end if;
  v_text := regen._capture_text_columns(format('(case when %s then %s end)', v_e[3], v_e[1]));
  return format($q$insert into regen._change_log (source_id, row_id, tenant, priority, content, content_hash)
          select %1$s, (regen_row.%2$I)::text, case when %3$s then %4$s end, case when %3$s then %5$s end, %6$s, %7$s
          from new_rows as regen_row;$q$,
    s.id, s.id_column, v_e[3], v_e[4], v_e[2], v_text[1], v_text[2]);
end
$$;
comment on function regen._capture_insert_statement(regen._sources) is
  'The set-based insert into regen._change_log of an INSERT statement''s rows, as the capture''s statement trigger runs it';

-- What a row trigger (or the fallback over a transition table's rows) does with one row whose
-- expressions it evaluates in an exception block: %1$s is the record, %2$s its old tenant, %3$s the
-- evaluation, %4$s the source's name, %5$s the statement that reads the tenant alone, %6$s the
-- source's id, %7$I the key column, %8$s the insert of the evaluated row.
create function regen._capture_row_template()
returns text
language sql immutable
as $$
  select $r$
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
        insert into regen._change_log (source_id, row_id, present, tenant, error, old_tenant)
        values (%6$s, (%1$s.%7$I)::text, true, v_tenant, v_error, %2$s);
      else
        %8$s
      end if;$r$
$$;
comment on function regen._capture_row_template() is
  'The generated capture''s code for one row: its expressions evaluated in an exception block, the row logged (or its error)';

-- One row's code, its expressions evaluated by a query (v_one): for the fallback over a transition
-- table and for sources whose expressions cannot be written over `new`.
create function regen._capture_row_by_query(s regen._sources, rec text, old_tenant text, evaluate text, read_tenant text, key_column name)
returns text
language sql stable
as $$
  select format(regen._capture_row_template(), rec, old_tenant, evaluate, s.name, read_tenant, s.id, key_column,
                format('insert into regen._change_log (source_id, row_id, present, tenant, priority, content_hash, old_tenant)
        values (%s, (%s.%I)::text, v_one.content_hash is not null, v_one.tenant, v_one.priority, v_one.content_hash, %s);',
                       s.id, rec, key_column, old_tenant))
$$;
comment on function regen._capture_row_by_query(regen._sources, text, text, text, text, name) is
  'The generated capture''s code for one row evaluated by a query into v_one (which hashes the text)';

-- A row trigger's row, its expressions (regen._capture_row_expressions: content, priority, filter)
-- evaluated as plpgsql expressions over `new`, no query per row; the text logged when short.
create function regen._capture_row_direct(s regen._sources, direct text[])
returns text
language sql stable
as $$
  select format(regen._capture_row_template(), 'new', o.old_tenant,
                format($e$v_content := %s;
        if v_content is not null and %s then
          v_tenant := %s;
          v_priority := %s;
        else
          v_content := null;
          v_tenant := null;
          v_priority := null;
        end if;$e$, direct[1], direct[3], t.tenant, direct[2]),
                s.name,
                case when s.tenant_column is null then 'v_tenant := null;' else format('v_tenant := %s;', t.tenant) end,
                s.id, s.id_column,
                format('insert into regen._change_log (source_id, row_id, present, tenant, priority, content, content_hash, old_tenant)
        values (%s, (new.%I)::text, v_content is not null, v_tenant, v_priority, %s, %s, %s);',
                       s.id, s.id_column, c.cols[1], c.cols[2], o.old_tenant))
  from (select case when s.tenant_column is null then 'null' else format('(new.%I)::text', s.tenant_column) end as tenant) t,
       (select case when s.tenant_column is null then 'null'
                    else format('case when tg_op = ''UPDATE'' then (old.%I)::text end', s.tenant_column) end as old_tenant) o,
       (select regen._capture_text_columns('v_content') as cols) c
$$;
comment on function regen._capture_row_direct(regen._sources, text[]) is
  'The generated capture''s code for a row trigger''s row, its expressions evaluated directly over new';

create or replace function regen._capture_function(s regen._sources)
returns void
language plpgsql volatile
as $$
declare
  v_fn text := format('regen.%I', 'tg_' || s.name || '__capture');
  v_old_tenant text := case when s.tenant_column is null then 'null' else format('(old.%I)::text', s.tenant_column) end;
  v_direct text[] := regen._capture_row_expressions(s);
  v_read_tenant text := case when s.tenant_column is null then 'v_tenant := null;' else format('v_tenant := (new.%I)::text;', s.tenant_column) end;
begin
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
      v_content text;
      v_priority float8;
    begin
      -- Generated for one table: fired by any other (a copy, a temporary table) it refuses to act.
      if tg_relid <> %3$s::oid and not regen._capture_relation_ok(%4$s, tg_relid) then
        raise exception 'capture function %%.%% belongs to source %%, not to table %%.%%',
          'regen', %5$L, %6$L, tg_table_schema, tg_table_name
          using errcode = 'RG017', hint = 'pgregen installs its own triggers: use regen.register_source()';
      end if;
      if tg_op = 'INSERT' and tg_level = 'STATEMENT' then
        -- the statement's rows, in one insert; should an expression raise, row by row
        begin
          %9$s
        exception when others then
          -- (a transition table's row has no type a static statement could name: through jsonb,
          -- populated as the table's row type as it is named now)
          for v_row in select to_jsonb(n) as j from new_rows n loop
            execute replace(%12$L, '$row_type$', tg_relid::regclass::text) into v_key using v_row.j;
            %10$s
          end loop;
        end;
        return null;
      elsif tg_op = 'DELETE' then
        insert into regen._change_log (source_id, row_id, present, old_tenant) values (%4$s, (old.%7$I)::text, false, %8$s);
        return null;
      elsif tg_op = 'TRUNCATE' then
        -- a statement trigger: the rows are gone, and so is everything derived from them
        delete from regen._change_log where source_id = %4$s;
        delete from regen._items where source_id = %4$s;
        delete from regen._embeddings where source_id = %4$s;
        return null;
      elsif tg_op = 'UPDATE' and new.%7$I is distinct from old.%7$I then
        insert into regen._change_log (source_id, row_id, present, old_tenant) values (%4$s, (old.%7$I)::text, false, %8$s);
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
    -- 9: the statement's rows into the change log, in one insert
    regen._capture_insert_statement(s),
    -- 10: the fallback, one row of the transition table at a time (v_key: its id)
    regen._capture_row_by_query(s, 'v_key', 'null',
      format('execute replace(%L, ''$row_type$'', tg_relid::regclass::text) into v_one using v_row.j;',
             format('select c.tenant, c.priority, c.content_hash from (%s) c',
                    regen._capture_select(s, '(select (jsonb_populate_record(null::$row_type$, $1)).*)'))),
      case when s.tenant_column is null then 'v_tenant := null;'
           else format('execute replace(%L, ''$row_type$'', tg_relid::regclass::text) into v_tenant using v_row.j;',
                       format('select (r.%I)::text from jsonb_populate_record(null::$row_type$, $1) r', s.tenant_column)) end,
      'id'),
    -- 11: a row trigger's row
    case when v_direct is null then
      regen._capture_row_by_query(s, 'new',
        case when s.tenant_column is null then 'null'
             else format('case when tg_op = ''UPDATE'' then (old.%I)::text end', s.tenant_column) end,
        format('select c.tenant, c.priority, c.content_hash into v_one from (%s) c;', regen._capture_select(s, '(select (new).*)')),
        v_read_tenant, s.id_column)
    else
      regen._capture_row_direct(s, v_direct)
    end,
    -- 12: a transition table's row (as jsonb, $1) to its id
    format('select (r.%I)::text as id from jsonb_populate_record(null::$row_type$, $1) r', s.id_column));
  execute format('comment on function %s() is %L', v_fn,
                 format('pgregen change capture for source %s, table %s: logs each changed row into regen._change_log (generated by regen.register_source)',
                        s.name, s.relation));
  -- Generated functions are the owner's alone (PostgreSQL grants EXECUTE to PUBLIC on every new
  -- function): nobody else may attach this SECURITY DEFINER function to a table of theirs.
  execute format('revoke all on function %s() from public', v_fn);
  update regen._sources x set captured_relation = s.relation::oid where x.id = s.id;
end
$$;
comment on function regen._capture_function(regen._sources) is
  'Generates (or regenerates) a source''s capture trigger function; executable by its owner only';

-- The sources registered before this file: their functions regenerated (their triggers stay).
do $$
declare
  v regen._sources;
begin
  for v in select * from regen._sources loop
    if exists (select 1 from pg_class c where c.oid = v.relation) then
      perform regen._capture_function(v);
    end if;
  end loop;
end
$$;

-- ---------------------------------------------------------------------------------------------
-- After a restore: the capture functions generated again for the tables as they are now.

create function regen._refresh_capture()
returns integer
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp
as $$
declare
  v regen._sources;
  v_n integer := 0;
begin
  if not exists (select 1 from regen._sources s where s.captured_relation is distinct from s.relation::oid
                                               and exists (select 1 from pg_class c where c.oid = s.relation)) then
    return 0;   -- the common case: nothing restored, no lock taken
  end if;
  -- one at a time (two replacing the same function at once would fail): the second finds it done
  perform pg_advisory_xact_lock(hashtext('regen._refresh_capture'));
  for v in select * from regen._sources s
           where s.captured_relation is distinct from s.relation::oid
             and exists (select 1 from pg_class c where c.oid = s.relation)
           order by s.id loop
    perform regen._capture_function(v);
    v_n := v_n + 1;
  end loop;
  return v_n;
end
$$;
comment on function regen._refresh_capture() is
  'Generates the capture function again of every source whose table is not the one it was generated for (after a '
  'restore, which gives every table a new oid); returns how many. regen.apply_changes() calls it first';

-- apply_changes of sql/0020_change_log.sql, refreshing the capture functions first when a restore
-- left them naming the old tables.
create or replace function regen.apply_changes(max_rows integer default 100000)
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
  perform regen._refresh_capture();
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
  'application''s transactions; returns the changes applied. First generates the capture functions again where a '
  'restore left them naming old tables (regen._refresh_capture). The worker calls it every REGEN_ENQUEUE_INTERVAL_MS '
  '(through regen.enqueue_fresh); safe to call from anywhere, any time.';

-- admin roles get the functions this file adds
select regen._refresh_grants();
