-- Sources: content types that carry embeddings, and the change-capture triggers on their tables.
--
-- Error codes of this file: RG010 unknown source, RG011 source already registered or bad name,
-- RG013 unknown column, RG014 id column not unique, RG015 expression refused (unsafe text),
-- RG016 expression does not compile or is of the wrong kind.

create function regen._source(name text)
returns regen._sources
language plpgsql stable
as $$
declare
  v regen._sources;
begin
  select * into v from regen._sources s where s.name = _source.name;
  if not found then
    raise exception 'unknown source %', coalesce(quote_literal(name), 'NULL')
      using errcode = 'RG010',
            hint = 'register it with regen.register_source(), or list the sources with: select * from regen.sources';
  end if;
  return v;
end
$$;
comment on function regen._source(text) is 'The source row of a name; raises RG010 when unknown';

-- A user expression is pasted into generated SQL, so it must be exactly one expression: no
-- statement separators, no comments, no dollar quotes, parentheses balanced. Quoted strings and
-- identifiers are skipped with PostgreSQL's own rules ('' and "" escapes, backslashes in E'').
create function regen._check_expression_text(expr text, what text)
returns void
language plpgsql immutable
as $$
declare
  v_len integer := length(expr);
  v_i integer := 1;
  v_c text;
  v_depth integer := 0;
  v_quote text;
  v_escapes boolean;
  v_bad text;
begin
  if expr is null or btrim(expr) = '' then
    raise exception '% is empty', what using errcode = 'RG015';
  end if;
  while v_i <= v_len loop
    v_c := substr(expr, v_i, 1);
    if v_c in ('''', '"') then
      v_quote := v_c;
      -- E'...' (and e'...') strings take backslash escapes, but only when E starts a token
      v_escapes := v_c = '''' and v_i > 1 and lower(substr(expr, v_i - 1, 1)) = 'e'
                   and (v_i = 2 or substr(expr, v_i - 2, 1) !~ '[[:alnum:]_$]');
      v_i := v_i + 1;
      loop
        if v_i > v_len then
          raise exception '% has an unterminated quoted string or identifier', what
            using errcode = 'RG015', detail = format('expression: %s', expr);
        end if;
        v_c := substr(expr, v_i, 1);
        if v_escapes and v_c = '\' then
          v_i := v_i + 2;
          continue;
        end if;
        if v_c = v_quote then
          if substr(expr, v_i + 1, 1) = v_quote then v_i := v_i + 2; continue; end if;
          exit;
        end if;
        v_i := v_i + 1;
      end loop;
    else
      if v_c = ';' then v_bad := 'a semicolon';
      elsif v_c = '$' then v_bad := 'a dollar sign (dollar quotes and parameters are not allowed)';
      elsif v_c = '-' and substr(expr, v_i + 1, 1) = '-' then v_bad := 'a comment (--)';
      elsif v_c = '/' and substr(expr, v_i + 1, 1) = '*' then v_bad := 'a comment (/*)';
      elsif v_c = '\' then v_bad := 'a backslash outside an E''...'' string';
      elsif v_c = '(' then v_depth := v_depth + 1;
      elsif v_c = ')' then
        v_depth := v_depth - 1;
        if v_depth < 0 then v_bad := 'a closing parenthesis without its opening one'; end if;
      end if;
      if v_bad is not null then
        raise exception '% contains %', what, v_bad
          using errcode = 'RG015', detail = format('expression: %s', expr),
                hint = 'give one SQL expression over the table''s columns, e.g. title || E''\n\n'' || body';
      end if;
    end if;
    v_i := v_i + 1;
  end loop;
  if v_depth <> 0 then
    raise exception '% has unbalanced parentheses', what
      using errcode = 'RG015', detail = format('expression: %s', expr);
  end if;
end
$$;
comment on function regen._check_expression_text(text, text) is
  'Refuses (RG015) text that is not exactly one SQL expression: semicolons, comments, dollar quotes, unbalanced parentheses';

-- Compiles `select (expr)::type from relation` without running it, under the search_path the
-- capture trigger will use; refuses aggregates, window and set-returning functions.
create function regen._check_expression(relation regclass, alias text, expr text, type text, what text, search_path text)
returns void
language plpgsql volatile
as $$
declare
  v_old_path text := current_setting('search_path');
  v_plan text;
begin
  perform regen._check_expression_text(expr, what);
  perform set_config('search_path', search_path, true);
  begin
    execute format('explain (format json, costs off) select (%s)::%s from %s as %I', expr, type, relation, alias)
      into v_plan;
  exception when others then
    perform set_config('search_path', v_old_path, true);
    raise exception '% does not compile: %', what, sqlerrm
      using errcode = 'RG016', detail = format('expression: %s; checked as: select (%s)::%s from %s', expr, expr, type, relation),
            hint = format('columns are those of %s; functions outside pg_catalog and the table''s schema must be schema-qualified', relation);
  end;
  perform set_config('search_path', v_old_path, true);
  if v_plan ~ '"Node Type": "(Aggregate|WindowAgg|ProjectSet)"' then
    raise exception '% must be computed from one row: aggregates, window and set-returning functions are not allowed', what
      using errcode = 'RG016', detail = format('expression: %s', expr);
  end if;
end
$$;
comment on function regen._check_expression(regclass, text, text, text, text, text) is
  'Refuses (RG015, RG016) an expression that is unsafe, does not compile as the given type, or is not per-row';

-- The select that turns rows of the source's table (or a trigger's transition table, `rows_from`)
-- into captured items: row id, tenant, priority and the hash of the text to embed.
create function regen._capture_select(s regen._sources, rows_from text)
returns text
language sql stable
as $$
  select format(
    'select (%1$I.%2$I)::text as row_id, %3$s as tenant, coalesce((%4$s)::float8, 0) as priority, '
    'sha256(convert_to((%5$s)::text, ''UTF8'')) as content_hash '
    'from %6$s as %1$I where (%5$s) is not null and coalesce((%7$s)::boolean, false)',
    (select c.relname from pg_class c where c.oid = s.relation),
    s.id_column,
    case when s.tenant_column is null then 'null::text'
         else format('(%I.%I)::text', (select c.relname from pg_class c where c.oid = s.relation), s.tenant_column) end,
    coalesce(s.priority_expression, '0'),
    s.content_expression,
    rows_from,
    coalesce(s.filter_expression, 'true'))
$$;
comment on function regen._capture_select(regen._sources, text) is 'Generated SQL: captured items of a source from its table or a transition table';

-- Generates the source's trigger function: set-based, one call per statement, static SQL.
create function regen._install_capture(s regen._sources)
returns void
language plpgsql volatile
as $$
declare
  v_fn text := format('regen.%I', 'tg_' || s.name || '__capture');
  v_upsert text;
  v_alias text := (select c.relname from pg_class c where c.oid = s.relation);
  v_old_ids text;
begin
  -- the upsert, then fresh edits go to the queue at once (regen._enqueue takes only items that need work)
  v_upsert := format($f$
      with up as (
      insert into regen._items as it (source_id, version_id, row_id, tenant, priority, content_hash)
      select %1$s, sv.version_id, c.row_id, c.tenant, c.priority, c.content_hash
      from (%2$s) c cross join regen._source_versions sv
      where sv.source_id = %1$s
      order by sv.version_id, c.row_id   -- the order the worker locks items in: no deadlock between the two
      on conflict (source_id, version_id, row_id) do update
        set tenant = excluded.tenant, priority = excluded.priority,
            content_hash = excluded.content_hash, changed_at = now()
        where (it.tenant, it.priority, it.content_hash)
              is distinct from (excluded.tenant, excluded.priority, excluded.content_hash)
      returning it.row_id)
      select regen._enqueue(%1$s, null, coalesce(array_agg(distinct up.row_id), '{}'), true) into v_enqueued from up$f$,
    s.id, regen._capture_select(s, 'new_rows'));
  v_old_ids := format('select (%I.%I)::text as row_id from old_rows as %I', v_alias, s.id_column, v_alias);

  execute format($f$
    create function %1$s() returns trigger
    language plpgsql security definer set search_path = %2$s set jit = off
    as $body$
    declare
      v_enqueued bigint;
    begin
      if tg_op = 'INSERT' then
        %3$s;
      elsif tg_op = 'UPDATE' then
        -- rows that left the source (id changed, filtered out, text now null) lose items and vectors.
        -- Two statements: deleting the items waits for a worker's write_embeddings that holds them,
        -- and only a statement started after that sees (and deletes) the vectors it wrote.
        if exists (select o.row_id from (%4$s) o except select c.row_id from (%5$s) c) then
          delete from regen._items it
          using (select o.row_id from (%4$s) o except select c.row_id from (%5$s) c) gone
          where it.source_id = %6$s and it.row_id = gone.row_id;
          delete from regen._embeddings e
          using (select o.row_id from (%4$s) o except select c.row_id from (%5$s) c) gone
          where e.source_id = %6$s and e.row_id = gone.row_id;
        end if;
        %3$s;
        -- a row that moved to another tenant moves its vectors with it
        if %7$s then
          update regen._embeddings e set tenant = it.tenant
          from regen._items it, (select c.row_id from (%5$s) c) n
          where it.source_id = %6$s and it.row_id = n.row_id
            and e.source_id = it.source_id and e.version_id = it.version_id and e.row_id = it.row_id
            and e.tenant is distinct from it.tenant;
        end if;
      elsif tg_op = 'DELETE' then
        -- items first, then vectors, in two statements (see UPDATE)
        delete from regen._items it using (%4$s) gone
        where it.source_id = %6$s and it.row_id = gone.row_id;
        delete from regen._embeddings e using (%4$s) gone
        where e.source_id = %6$s and e.row_id = gone.row_id;
      elsif tg_op = 'TRUNCATE' then
        delete from regen._items where source_id = %6$s;
        delete from regen._embeddings where source_id = %6$s;
      end if;
      return null;
    end
    $body$ $f$,
    v_fn, s.expression_search_path, v_upsert, v_old_ids, regen._capture_select(s, 'new_rows'), s.id,
    -- whether a row's tenant may have changed (always false without a tenant column): a (row, tenant)
    -- pair that was not there before. EXCEPT hashes both sides; a join of the transition tables,
    -- which have no statistics, was planned as a nested loop, quadratic in the rows of the statement.
    case when s.tenant_column is null then 'false'
         else format('exists (select (n.%1$I)::text, (n.%2$I)::text from new_rows n except select (o.%1$I)::text, (o.%2$I)::text from old_rows o)',
                     s.id_column, s.tenant_column) end);
  execute format('comment on function %s() is %L', v_fn,
                 format('pgregen change capture for source %s (generated by regen.register_source)', s.name));

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

create function regen.register_source(
  name text,
  relation regclass,
  id_column name,
  content_expression text,
  tenant_column name default null,
  priority_expression text default null,
  weight double precision default 1,
  filter_expression text default null,
  version text default null
)
returns text
language plpgsql volatile
as $$
declare
  v_source regen._sources;
  v_version_id integer;
  v_alias text;
  v_id_attnum smallint;
  v_path text;
  v_col name;
  v_captured bigint;
begin
  if name is null or name !~ '^[a-z][a-z0-9_]{0,39}$' then
    raise exception 'source name must be 1 to 40 lowercase letters, digits or underscores, starting with a letter, not %',
      coalesce(quote_literal(name), 'NULL') using errcode = 'RG011';
  end if;
  if relation is null then
    raise exception 'source % needs a table', name using errcode = 'RG013';
  end if;
  if exists (select 1 from regen._sources s where s.name = register_source.name) then
    raise exception 'source % is already registered', name
      using errcode = 'RG011', hint = 'unregister it first with regen.unregister_source(), or pick another name';
  end if;
  if (select c.relkind from pg_class c where c.oid = relation) not in ('r', 'p') then
    raise exception '% is not a table', relation using errcode = 'RG013', hint = 'sources must be ordinary or partitioned tables';
  end if;
  if version is null then
    raise exception 'source % needs a version', name
      using errcode = 'RG001', hint = 'create one with regen.create_version() and pass its tag';
  end if;
  v_version_id := regen._version_id(version);
  if weight is null or weight = 'NaN' or weight in ('Infinity', '-Infinity') then
    raise exception 'weight of source % must be a finite number', name using errcode = 'RG016';
  end if;

  -- No writes may slip between the initial capture and the triggers.
  execute format('lock table %s in share row exclusive mode', relation);

  foreach v_col in array array[id_column, tenant_column] loop
    if v_col is not null and not exists (
      select 1 from pg_attribute a where a.attrelid = relation and a.attname = v_col and a.attnum > 0 and not a.attisdropped) then
      raise exception 'column % does not exist in %', quote_ident(v_col), relation
        using errcode = 'RG013',
              hint = format('columns of %s: %s', relation,
                            (select string_agg(quote_ident(a.attname), ', ' order by a.attnum) from pg_attribute a
                             where a.attrelid = relation and a.attnum > 0 and not a.attisdropped));
    end if;
  end loop;
  select a.attnum into v_id_attnum from pg_attribute a where a.attrelid = relation and a.attname = id_column;
  if not exists (
    select 1 from pg_index i
    where i.indrelid = relation and i.indisunique and i.indisvalid and i.indpred is null and i.indexprs is null
      and i.indnkeyatts = 1 and i.indkey[0] = v_id_attnum) then
    raise exception 'column % of % is not unique', quote_ident(id_column), relation
      using errcode = 'RG014',
            hint = 'the id column needs a primary key or a unique index on that column alone';
  end if;

  v_alias := (select c.relname from pg_class c where c.oid = relation);
  v_path := format('pg_catalog, %I, pg_temp',
                   (select n.nspname from pg_class c join pg_namespace n on n.oid = c.relnamespace where c.oid = relation));
  perform regen._check_expression(relation, v_alias, content_expression, 'text', 'content expression', v_path);
  if priority_expression is not null then
    perform regen._check_expression(relation, v_alias, priority_expression, 'float8', 'priority expression', v_path);
  end if;
  if filter_expression is not null then
    perform regen._check_expression(relation, v_alias, filter_expression, 'boolean', 'filter expression', v_path);
  end if;

  insert into regen._sources (name, relation, id_column, id_type, content_expression, tenant_column,
                              priority_expression, weight, filter_expression, expression_search_path)
  values (name, relation, id_column,
          (select format_type(a.atttypid, a.atttypmod) from pg_attribute a where a.attrelid = relation and a.attnum = v_id_attnum),
          content_expression, tenant_column, priority_expression, weight, filter_expression, v_path)
  returning * into v_source;
  insert into regen._source_versions (source_id, version_id, role) values (v_source.id, v_version_id, 'active');

  perform regen._install_capture(v_source);

  -- Capture the rows already there in one set-based pass, under the same search_path as the trigger.
  perform set_config('search_path', v_path, true);
  execute format($f$
    insert into regen._items (source_id, version_id, row_id, tenant, priority, content_hash)
    select %1$s, %2$s, c.row_id, c.tenant, c.priority, c.content_hash from (%3$s) c$f$,
    v_source.id, v_version_id, regen._capture_select(v_source, relation::text));
  get diagnostics v_captured = row_count;
  -- A bulk capture leaves regen._items without statistics until autovacuum comes by; the planner
  -- would then pick nested loops over thousands of items for the worker's first batches.
  if v_captured >= 1000 then
    analyze regen._items;
  end if;
  return name;
end
$$;
comment on function regen.register_source(text, regclass, name, text, name, text, double precision, text, text) is
  'Registers a table as a source of embeddings: validates every identifier and expression, installs '
  'change-capture triggers and captures the existing rows. All or nothing.';

create function regen.unregister_source(name text)
returns text
language plpgsql volatile
as $$
declare
  v_source regen._sources := regen._source(name);
  v_event text;
begin
  if exists (select 1 from pg_class c where c.oid = v_source.relation) then
    foreach v_event in array array['insert', 'update', 'delete', 'truncate'] loop
      execute format('drop trigger if exists %I on %s', 'regen_' || v_source.name || '_' || v_event, v_source.relation);
    end loop;
  end if;
  execute format('drop function if exists regen.%I()', 'tg_' || v_source.name || '__capture');
  delete from regen._embeddings where source_id = v_source.id;
  delete from regen._items where source_id = v_source.id;
  delete from regen._gap_counts where source_id = v_source.id;
  delete from regen._gap_deltas where source_id = v_source.id;
  delete from regen._sources where id = v_source.id;
  return name;
end
$$;
comment on function regen.unregister_source(text) is
  'Removes a source: its triggers, its item states and its vectors. The user table and its rows are untouched.';

create view regen.sources as
  select s.name, s.relation, s.id_column, s.content_expression, s.tenant_column, s.priority_expression,
         s.weight, s.filter_expression, v.tag as active_version, s.created_at
  from regen._sources s
  join regen._source_versions sv on sv.source_id = s.id and sv.role = 'active'
  join regen._versions v on v.id = sv.version_id;
comment on view regen.sources is 'Registered sources with their expressions and active version';
