-- The capture without a subtransaction where the source's expressions cannot raise (issue 13,
-- item 1). The generated capture of sql/0020 and sql/0032 evaluates the source's expressions inside
-- an exception block, so that an expression's error never fails the application's write: the row
-- is logged as failed instead. An exception block is a subtransaction, paid on every row an UPDATE
-- changes and on every INSERT statement, and most sources' expressions (columns joined with text,
-- coalesce, a cast to text, a comparison) cannot raise. Now the capture asks PostgreSQL for the
-- expressions' parse tree (the query of a temporary view) and leaves the exception block out only
-- when every node, function and type in it is on a short list that cannot raise on any input:
-- built-in types only, text joined and trimmed, integers and reals widened to float8, equality and
-- order of text, integers and booleans, coalesce, CASE, AND/OR/NOT, IS NULL, casts of built-in types to text. Any
-- other expression (a division, a cast from text, a function of yours, a domain) keeps the block.
-- The one error left is PostgreSQL's own limit: a content over 1 GB cannot be built as one text.
-- The INSERT branch now comes first in the function, since single-row INSERTs pay for every test
-- before theirs. Only the generated functions change: no trigger is touched.

-- Functions that return for any input of their argument types (barring running out of memory).
create function regen._capture_safe_functions()
returns oid[]
language sql stable
as $$
  select array_agg(f::oid)
  from unnest(array[
    to_regprocedure('pg_catalog.textcat(text,text)'), to_regprocedure('pg_catalog.anytextcat(anynonarray,text)'),
    to_regprocedure('pg_catalog.textanycat(text,anynonarray)'), to_regprocedure('pg_catalog.concat("any")'),
    to_regprocedure('pg_catalog.concat_ws(text,"any")'), to_regprocedure('pg_catalog.lower(text)'),
    to_regprocedure('pg_catalog.upper(text)'), to_regprocedure('pg_catalog.btrim(text)'),
    to_regprocedure('pg_catalog.ltrim(text)'), to_regprocedure('pg_catalog.rtrim(text)'), to_regprocedure('pg_catalog.length(text)'),
    to_regprocedure('pg_catalog.text(boolean)'), to_regprocedure('pg_catalog.text(character)'),
    to_regprocedure('pg_catalog.float8(integer)'), to_regprocedure('pg_catalog.float8(bigint)'),
    to_regprocedure('pg_catalog.float8(smallint)'), to_regprocedure('pg_catalog.float8(real)'),
    to_regprocedure('pg_catalog.texteq(text,text)'), to_regprocedure('pg_catalog.textne(text,text)'),
    to_regprocedure('pg_catalog.int4eq(integer,integer)'), to_regprocedure('pg_catalog.int4ne(integer,integer)'),
    to_regprocedure('pg_catalog.int4lt(integer,integer)'), to_regprocedure('pg_catalog.int4le(integer,integer)'),
    to_regprocedure('pg_catalog.int4gt(integer,integer)'), to_regprocedure('pg_catalog.int4ge(integer,integer)'),
    to_regprocedure('pg_catalog.int8eq(bigint,bigint)'), to_regprocedure('pg_catalog.int8ne(bigint,bigint)'),
    to_regprocedure('pg_catalog.int8lt(bigint,bigint)'), to_regprocedure('pg_catalog.int8le(bigint,bigint)'),
    to_regprocedure('pg_catalog.int8gt(bigint,bigint)'), to_regprocedure('pg_catalog.int8ge(bigint,bigint)'),
    to_regprocedure('pg_catalog.booleq(boolean,boolean)'), to_regprocedure('pg_catalog.boolne(boolean,boolean)')
  ]) f
  where f is not null
$$;
comment on function regen._capture_safe_functions() is
  'The functions a capture may call outside an exception block: each returns for any input of its argument types '
  '(see regen._capture_cannot_raise)';

-- Whether none of the source's expressions (content, priority, filter, tenant) can raise on any
-- row: their parse tree, read from a temporary view's query, holds only the nodes, functions and
-- types above; and the database is UTF8, so that the text's conversion for its hash is a copy.
create function regen._capture_cannot_raise(s regen._sources)
returns boolean
language plpgsql volatile
as $$
declare
  v_alias text := (select c.relname from pg_class c where c.oid = s.relation);
  v_view text := 'regen_capture_' || pg_backend_pid();
  v_old_path text := current_setting('search_path');
  v_tree text;
  v_ok boolean;
begin
  if current_setting('server_encoding') <> 'UTF8' then
    return false;
  end if;
  perform set_config('search_path', s.expression_search_path, true);
  begin
    execute format('create temporary view %I as select (%s)::text as c1, coalesce((%s)::float8, 0) as c2, '
                   'coalesce((%s)::boolean, false) as c3, (%s)::text as c4 from %s as %I',
                   v_view, s.content_expression, coalesce(s.priority_expression, '0'), coalesce(s.filter_expression, 'true'),
                   coalesce(quote_ident(s.tenant_column), 'null'), s.relation, v_alias);
    select r.ev_action::text into v_tree from pg_rewrite r where r.ev_class = format('pg_temp.%I', v_view)::regclass;
    execute format('drop view pg_temp.%I', v_view);
    -- the expressions alone: the query's target list (node names, then the functions and types named)
    v_tree := substring(v_tree from ':targetList \((.*)\) :override ');
    v_ok := v_tree is not null
      and not exists (select from regexp_matches(v_tree, '\{([A-Z_]+)', 'g') m
                      where m[1] <> all (array['TARGETENTRY', 'VAR', 'CONST', 'OPEXPR', 'FUNCEXPR', 'COALESCEEXPR',
                                               'RELABELTYPE', 'COERCEVIAIO', 'BOOLEXPR', 'NULLTEST', 'CASEEXPR',
                                               'CASEWHEN', 'CASETESTEXPR']))
      and not exists (select from regexp_matches(v_tree, ':(?:funcid|opfuncid) (\d+)', 'g') m
                      where m[1]::oid <> all (regen._capture_safe_functions()))
      -- a coercion only to text (an output function, which any built-in type's is, then text)
      and not exists (select from regexp_matches(v_tree, ':resulttype (\d+)', 'g') m where m[1]::oid <> 'text'::regtype)
      -- built-in types only: no domain (a check), no type of yours (its output function), no whole row
      and not exists (select from regexp_matches(v_tree, ':(?:vartype|consttype|funcresulttype|opresulttype|coalescetype|casetype) (\d+)', 'g') m
                      where m[1]::bigint >= 16384);
  exception when others then
    v_ok := false;   -- it does not even build: the exception block stays
  end;
  perform set_config('search_path', v_old_path, true);
  return coalesce(v_ok, false);
end
$$;
comment on function regen._capture_cannot_raise(regen._sources) is
  'Whether none of the source''s expressions can raise on any row (only the nodes, functions and built-in types on '
  'regen._capture_safe_functions'' short list): the capture then evaluates them without an exception block';

create or replace function regen._capture_function(s regen._sources)
returns void
language plpgsql volatile
as $$
declare
  v_fn text := format('regen.%I', 'tg_' || s.name || '__capture');
  v_old_tenant text := case when s.tenant_column is null then 'null' else format('(old.%I)::text', s.tenant_column) end;
  v_one_row text;
  v_direct text[] := regen._capture_row_expressions(s);
  v_safe boolean := regen._capture_cannot_raise(s);
  v_row_template text;
  v_row_safe text;
  v_insert text;
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
  -- The same for a row trigger's row, its expressions evaluated directly (plpgsql expressions over
  -- `new`, no query per row) when regen._capture_row_expressions could write them so: %3$s is the
  -- content, %8$s the filter, %9$s the priority.
  v_row_template := $r$
      v_error := null;
      begin
        v_content := %3$s;
        if v_content is not null and %8$s then
          v_hash := sha256(convert_to(v_content, 'UTF8'));
          v_tenant := %10$s;
          v_priority := %9$s;
        else
          v_hash := null;
          v_tenant := null;
          v_priority := null;
        end if;
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
        values (%6$s, (%1$s.%7$I)::text, v_hash is not null, v_tenant, v_priority, v_hash, %2$s);
      end if;$r$;
  -- The same without the exception block, when no expression can raise (regen._capture_cannot_raise):
  -- %3$s is the content, %8$s the filter, %9$s the priority, %10$s the tenant.
  v_row_safe := $r$
      v_content := %3$s;
      if v_content is not null and %8$s then
        insert into regen._changes (source_id, row_id, present, tenant, priority, content_hash, old_tenant)
        values (%6$s, (%1$s.%7$I)::text, true, %10$s, %9$s, sha256(convert_to(v_content, 'UTF8')), %2$s);
      else
        insert into regen._changes (source_id, row_id, present, old_tenant)
        values (%6$s, (%1$s.%7$I)::text, false, %2$s);
      end if;$r$;
  -- An INSERT statement's rows, in one insert; %1$s: the expressions over one row of the
  -- transition table. Should an expression that can raise raise, row by row (%2$s).
  v_insert := case when v_safe then $r$
        insert into regen._changes (source_id, row_id, present, tenant, priority, content_hash)
        select %3$s, (n.%4$I)::text, c.content_hash is not null, c.tenant, c.priority, c.content_hash
        from new_rows n left join lateral (%1$s) c on true;$r$
    else $r$
        begin
          insert into regen._changes (source_id, row_id, present, tenant, priority, content_hash)
          select %3$s, (n.%4$I)::text, c.content_hash is not null, c.tenant, c.priority, c.content_hash
          from new_rows n left join lateral (%1$s) c on true;
        exception when others then
          -- (a transition table's row has no type a static statement could name: through jsonb,
          -- populated as the table's row type as it is named now)
          for v_row in select to_jsonb(n) as j from new_rows n loop
            execute replace(%5$L, '$row_type$', tg_relid::regclass::text) into v_key using v_row.j;
            %2$s
          end loop;
        end;$r$ end;
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
      v_hash bytea;
      v_priority float8;
    begin
      -- Generated for one table: fired by any other (a copy, a temporary table) it refuses to act.
      if tg_relid <> %3$s::oid and not regen._capture_relation_ok(%4$s, tg_relid) then
        raise exception 'capture function %%.%% belongs to source %%, not to table %%.%%',
          'regen', %5$L, %6$L, tg_table_schema, tg_table_name
          using errcode = 'RG017', hint = 'pgregen installs its own triggers: use regen.register_source()';
      end if;
      if tg_op = 'INSERT' and tg_level = 'STATEMENT' then
        -- the statement's rows, in one insert
        %9$s
        return null;
      elsif tg_op = 'DELETE' then
        insert into regen._changes (source_id, row_id, present, old_tenant) values (%4$s, (old.%7$I)::text, false, %8$s);
        return null;
      elsif tg_op = 'TRUNCATE' then
        -- a statement trigger: the rows are gone, and so is everything derived from them
        delete from regen._changes where source_id = %4$s;
        delete from regen._items where source_id = %4$s;
        delete from regen._embeddings where source_id = %4$s;
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
    -- 9: the INSERT statement's branch
    format(v_insert,
      -- the expressions over one row of the transition table (a row that left the source: no row, present false)
      regen._capture_select(s, '(select n.*)'),
      -- the fallback, one row of the transition table at a time (v_key: its id)
      format(v_one_row, 'v_key', 'null',
             format('execute replace(%L, ''$row_type$'', tg_relid::regclass::text) into v_one using v_row.j;',
                    format('select c.tenant, c.priority, c.content_hash from (%s) c',
                           regen._capture_select(s, '(select (jsonb_populate_record(null::$row_type$, $1)).*)'))),
             s.name,
             case when s.tenant_column is null then 'v_tenant := null;'
                  else format('execute replace(%L, ''$row_type$'', tg_relid::regclass::text) into v_tenant using v_row.j;',
                              format('select (r.%I)::text from jsonb_populate_record(null::$row_type$, $1) r', s.tenant_column)) end,
             s.id, 'id'),
      s.id, s.id_column,
      -- a transition table's row (as jsonb, $1) to its id
      format('select (r.%I)::text as id from jsonb_populate_record(null::$row_type$, $1) r', s.id_column)),
    null,                                                     -- 10 (unused)
    -- 11: a row trigger's row
    case when v_direct is not null and v_safe then
      format(v_row_safe, 'new',
             case when s.tenant_column is null then 'null'
                  else format('case when tg_op = ''UPDATE'' then (old.%I)::text end', s.tenant_column) end,
             v_direct[1], null, null, s.id, s.id_column, v_direct[3], v_direct[2],
             case when s.tenant_column is null then 'null' else format('(new.%I)::text', s.tenant_column) end)
    when v_direct is null then
      format(v_one_row, 'new',
             case when s.tenant_column is null then 'null'
                  else format('case when tg_op = ''UPDATE'' then (old.%I)::text end', s.tenant_column) end,
             format('select c.tenant, c.priority, c.content_hash into v_one from (%s) c;',
                    regen._capture_select(s, '(select (new).*)')),
             s.name,
             case when s.tenant_column is null then 'v_tenant := null;' else format('v_tenant := (new.%I)::text;', s.tenant_column) end,
             s.id, s.id_column)
    else
      format(v_row_template, 'new',
             case when s.tenant_column is null then 'null'
                  else format('case when tg_op = ''UPDATE'' then (old.%I)::text end', s.tenant_column) end,
             v_direct[1],
             s.name,
             case when s.tenant_column is null then 'v_tenant := null;' else format('v_tenant := (new.%I)::text;', s.tenant_column) end,
             s.id, s.id_column, v_direct[3], v_direct[2],
             case when s.tenant_column is null then 'null' else format('(new.%I)::text', s.tenant_column) end)
    end,
    null);                                                    -- 12 (unused)
  execute format('comment on function %s() is %L', v_fn,
                 format('pgregen change capture for source %s, table %s: logs each changed row into regen._changes (generated by regen.register_source)',
                        s.name, s.relation));
  -- Generated functions are the owner's alone (PostgreSQL grants EXECUTE to PUBLIC on every new
  -- function): nobody else may attach this SECURITY DEFINER function to a table of theirs.
  execute format('revoke all on function %s() from public', v_fn);
end
$$;
comment on function regen._capture_function(regen._sources) is
  'Generates (or regenerates) a source''s capture trigger function (without exception blocks when its expressions '
  'cannot raise, see regen._capture_cannot_raise); executable by its owner only';


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
