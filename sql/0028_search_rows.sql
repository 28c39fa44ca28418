-- Rows, not chunks, in one round trip (issue 15, items 3 and 4).
--
-- regen.search_rows() answers what an application asks: the k nearest distinct rows of the tenant,
-- each at its best chunk (its number and distance), with search_scoped's guarantees: exact up to
-- regen.search_exact_max_rows vectors in scope or while the version has no valid index, an
-- iterative HNSW scan above. regen.search_tenant() sets the tenant and searches in one statement,
-- so that a client needs one round trip for a query it has embedded.
--
-- Both, and search_scoped, are thin SQL wrappers over regen._search (search_scoped's body of
-- sql/0023_pending_moves.sql, plus the per-row mode): the planner inlines them. search_tenant
-- takes a small scope (the common case) in a few statements of its own and hands everything else
-- to regen._search; both rank a small scope with regen._exact_hits. Their plans are kept for the
-- session (plan_cache_mode): a plan per tenant would be made again on every call.
--
-- Error codes of this file: RG041 (reused) invalid search argument.

-- The exact path: every vector of the scope, ranked; the k nearest chunks, or (per_row) the k
-- nearest rows, each at its best chunk (the lowest chunk number among equals). A SQL function the
-- planner inlines into its caller's statement (regen._search, regen.search_tenant), whose plan is
-- kept for the session. The distance is taken on the untyped column, an expression no HNSW index
-- matches, so the plan reads the scope through the b-tree; the version's distance is chosen per
-- row by a CASE. Rows deleted or moved out of the tenant by a change not yet applied are left out
-- (regen._moved_rows).
create function regen._exact_hits(query vector, k integer, version_id integer, source_ids integer[], tenant text,
                                  distance text, max_distance double precision, per_row boolean)
returns setof regen.search_hit
language sql stable
as $$
  with scope as (
    select e.source_id, e.row_id, e.chunk_no,
           (case $6 when 'cosine' then e.embedding <=> $1 when 'l2' then e.embedding <-> $1 else e.embedding <#> $1 end)::float8 as distance
    from regen._embeddings e
    where e.version_id = $3 and e.tenant = $5 and e.source_id = any($4)
      and not exists (select 1 from regen._moved_rows m where m.source_id = e.source_id and m.row_id = e.row_id)
  )
  select h.* from (
    (select s.name as source, c.row_id, c.chunk_no, c.distance
       from (select distinct on (sc.source_id, sc.row_id) sc.*
               from scope sc where $8 and ($7 is null or sc.distance <= $7)
              order by sc.source_id, sc.row_id, sc.distance, sc.chunk_no) c
       join regen._sources s on s.id = c.source_id
      order by c.distance, s.name, c.row_id
      limit $2)
    union all
    (select s.name as source, c.row_id, c.chunk_no, c.distance
       from (select sc.* from scope sc where not $8 and ($7 is null or sc.distance <= $7) order by sc.distance limit $2) c
       join regen._sources s on s.id = c.source_id)
  ) h
  order by h.distance, h.source, h.row_id, h.chunk_no
$$;
comment on function regen._exact_hits(vector, integer, integer, integer[], text, text, double precision, boolean) is
  'The exact path of a search: the k nearest chunks (or rows, each at its best chunk) of a scope, every vector ranked';

create function regen._search(
  query vector,
  k integer,
  sources text[],
  version text,
  max_distance double precision,
  best_per_row boolean
)
returns setof regen.search_hit
language plpgsql stable security invoker
set enable_sort = on set enable_seqscan = on set enable_bitmapscan = on
-- its statements' plans are kept: a custom plan per tenant would plan the search again every call
set plan_cache_mode = force_generic_plan
as $$
declare
  v_tenant text := regen.current_tenant();
  v_scope record;
  v_version regen._versions;
  v_exact_max integer := regen._search_setting('regen.search_exact_max_rows', 10000, 0, 100000000);
  v_ef integer := regen._search_setting('regen.search_ef_search', 100, 1, 1000);
  v_op text;
  v_cast text;
  v_in_scope bigint;
  v_hits regen.search_hit[];
  v_rows regen.search_hit[];
  v_fetch integer;
  v_tenant_index boolean;
  v_version_index boolean;
  v_tenant_min integer := regen._search_setting('regen.search_tenant_index_min_rows', 1000, 0, 100000000);
  -- A tenant's own graph holds only its vectors: a wider search there costs less than on the version's
  -- index and buys the recall (0.995 at 400 against 0.91 at 100 on the search benchmark's largest tenant).
  v_tenant_ef integer := regen._search_setting('regen.search_tenant_ef_search', 400, 1, 1000);
  v_threshold integer;
  v_caller_ef text;
  v_caller_iterative text;
  v_moved_sources integer[];
  v_moved_rows text[];
  v_moved text := '';
  v_distance text;
begin
  if k is null or k not between 1 and 1000 then
    raise exception 'k must be between 1 and 1000, not %', coalesce(k::text, 'NULL') using errcode = 'RG041';
  end if;
  if max_distance = 'NaN'::float8 then
    raise exception 'max_distance must be a number, not NaN' using errcode = 'RG041';
  end if;
  select * into v_scope from regen._search_scope(sources, version);
  if v_scope.version_id is null or cardinality(v_scope.source_ids) = 0 then
    return;   -- no source in scope
  end if;
  select * into v_version from regen._versions v where v.id = v_scope.version_id;
  -- the version searched, for regen.search_tenant's answer (transaction-local, like the tenant)
  perform set_config('regen.searched_version', v_version.tag, true);
  -- vector_dims() is pgvector's: from here on its library is loaded, and hnsw.* are known settings
  if query is null or vector_dims(query) <> v_version.dimensions then
    raise exception 'the query has % dimensions, version % has %',
                    coalesce(vector_dims(query)::text, 'no'), v_version.tag, v_version.dimensions
      using errcode = 'RG041', hint = 'embed the query with the version''s own model (see regen.versions)';
  end if;

  v_distance := coalesce(v_version.settings->>'distance', 'inner_product');

  -- How many vectors are in scope, counted up to the exact path's threshold (an index-only scan of
  -- the scope index). A scope no larger than the lower threshold of a tenant with an index of its
  -- own is ranked exactly whatever indexes exist: the common case, without looking them up.
  select count(*) into v_in_scope from (
    select 1 from regen._embeddings e
    where e.version_id = v_scope.version_id and e.tenant = v_tenant and e.source_id = any(v_scope.source_ids)
    limit v_exact_max + 1) s;
  if v_in_scope > least(v_tenant_min, v_exact_max) then
    -- Rows deleted, or moved out of this tenant, whose change the worker has yet to apply (a moment,
    -- REGEN_ENQUEUE_INTERVAL_MS): their vectors are left out of the answer now. Usually none. (The exact
    -- path, regen._exact_hits, leaves them out by itself.)
    select coalesce(array_agg(m.source_id), '{}'), coalesce(array_agg(m.row_id), '{}')
      into v_moved_sources, v_moved_rows
    from regen._moved_rows m where m.source_id = any(v_scope.source_ids);
    if cardinality(v_moved_rows) > 0 then
      v_moved := ' and not exists (select 1 from unnest($6::integer[], $7::text[]) m(source_id, row_id)'
                 ' where m.source_id = e.source_id and m.row_id = e.row_id)';
    end if;

    -- The version's distance, spelled with pgvector's operator wherever pgvector lives.
    select format('operator(%I.%s)', n.nspname,
                  case v_distance when 'cosine' then '<=>' when 'l2' then '<->' else '<#>' end)
      into v_op
    from pg_extension e join pg_namespace n on n.oid = e.extnamespace where e.extname = 'vector';

    -- A tenant of its own HNSW index (see regen.tenant_index_plan) is searched through it above a lower
    -- threshold: its graph holds the tenant's vectors only, so it finds them as well as an exact scan.
    -- The names are regen._tenant_index_name() and regen._version_indexes' index_name, spelled out: an
    -- application role executes and reads only what regen.grant_app() granted it.
    select exists (
      select 1 from pg_class c join pg_index i on i.indexrelid = c.oid
      where c.relnamespace = 'regen'::regnamespace
        and c.relname = '_embeddings_hnsw_v' || v_scope.version_id || '_t' || left(md5(v_tenant), 16)
        and i.indisvalid and i.indisready) into v_tenant_index;
    -- Without a valid index of the version (being built, or dropped for a large load) the scan below
    -- would read and sort the scope anyway, by the index's cast: the exact path answers instead.
    select exists (
      select 1 from pg_class c join pg_index i on i.indexrelid = c.oid
      where c.relnamespace = 'regen'::regnamespace
        and c.relname = ('_embeddings_hnsw_v' || v_scope.version_id)::name
        and i.indisvalid and i.indisready) into v_version_index;
    v_threshold := case when v_tenant_index then least(v_tenant_min, v_exact_max) else v_exact_max end;

    if (v_tenant_index or v_version_index) and v_in_scope > v_threshold then
      -- Large scope: the tenant's own HNSW index when it has one, else the version's, scanned
      -- iteratively (pgvector 0.8) with the scope as its filter until k rows of the scope are found.
      -- The tenant is a literal in the query, so the planner can prove a tenant index's predicate. Sorts are switched off so that the planner cannot
      -- trade the index for a full read of the scope. The index ranks by the cast (vector(n), or
      -- halfvec(n) above 2,000 dimensions); the distance returned is that of the full vectors.
      -- Per row, the scan asks for more chunks (4 times as many each round) until they hold k
      -- distinct rows, each at its best chunk found.
      v_cast := case when v_version.dimensions > 2000 then format('halfvec(%s)', v_version.dimensions)
                     else format('vector(%s)', v_version.dimensions) end;
      v_caller_iterative := current_setting('hnsw.iterative_scan');
      v_caller_ef := current_setting('hnsw.ef_search');
      perform set_config('hnsw.iterative_scan', 'relaxed_order', true);
      perform set_config('enable_sort', 'off', true);
      perform set_config('enable_seqscan', 'off', true);
      perform set_config('enable_bitmapscan', 'off', true);
      v_fetch := case when best_per_row then 2 * k else k end;
      loop
        perform set_config('hnsw.ef_search', least(1000, greatest(case when v_tenant_index then v_tenant_ef else v_ef end, v_fetch))::text, true);
        execute format($f$
          select array_agg(row(s.name, c.row_id, c.chunk_no, c.distance)::regen.search_hit)
          from (select e.source_id, e.row_id, e.chunk_no, (e.embedding %2$s $1)::float8 as distance
                  from regen._embeddings e
                 where e.version_id = %1$s and e.tenant = %4$L and e.source_id = any($3)%5$s
                 order by e.embedding::%3$s %2$s $1::%3$s
                 limit $4) c
          join regen._sources s on s.id = c.source_id$f$,
          v_scope.version_id, v_op, v_cast, v_tenant, v_moved)
          into v_hits
          using query, v_tenant, v_scope.source_ids, v_fetch, null::float8, v_moved_sources, v_moved_rows;
        exit when not best_per_row;
        v_rows := array(select (h.source, h.row_id, h.chunk_no, h.distance)::regen.search_hit
                        from (select distinct on (h.source, h.row_id) h.*
                                from unnest(v_hits) h order by h.source, h.row_id, h.distance, h.chunk_no) h
                        order by h.distance, h.source, h.row_id
                        limit k);
        -- enough rows; or the scan gave up short of the chunks asked for (the exact path answers)
        -- (beyond the larger of the exact path's threshold and 64 chunks a row, the exact path too)
        exit when cardinality(v_rows) >= k or coalesce(cardinality(v_hits), 0) < v_fetch
               or v_fetch >= greatest(v_threshold, 64 * k);
        v_fetch := least(v_fetch * 4, greatest(v_threshold, 64 * k));
      end loop;
      perform set_config('enable_sort', 'on', true);
      perform set_config('enable_seqscan', 'on', true);
      perform set_config('enable_bitmapscan', 'on', true);
      -- the caller's values again (an error in between rolls them back with its (sub)transaction)
      perform set_config('hnsw.iterative_scan', v_caller_iterative, true);
      perform set_config('hnsw.ef_search', v_caller_ef, true);
      if best_per_row then
        v_hits := v_rows;
      end if;
      -- The iterative scan gives up at hnsw.max_scan_tuples; short of k rows, the exact path answers.
      if cardinality(v_hits) >= k then
        return query
          select h.* from unnest(v_hits) h
          where max_distance is null or h.distance <= max_distance
          order by h.distance, h.source, h.row_id, h.chunk_no;
        return;
      end if;
    end if;
  end if;

  -- Small scope, or no index to scan: every vector of the scope, exactly.
  return query select * from regen._exact_hits(query, k, v_scope.version_id, v_scope.source_ids, v_tenant, v_distance,
                                               max_distance, best_per_row);
end
$$;
comment on function regen._search(vector, integer, text[], text, double precision, boolean) is
  'The body of regen.search_scoped (best_per_row false: chunks) and regen.search_rows (true: each row once, at its best chunk)';

create or replace function regen.search_scoped(
  query vector,
  k integer default 10,
  sources text[] default null,
  version text default null,
  max_distance double precision default null
)
returns setof regen.search_hit
language sql stable security invoker
as $$ select * from regen._search(query, k, sources, version, max_distance, false) $$;
comment on function regen.search_scoped(vector, integer, text[], text, double precision) is
  'The k nearest chunks of the current tenant (regen.set_tenant) in the given sources, in one version: the active one, '
  'or the one named. Filters by tenant, source and version before ranking: exact up to regen.search_exact_max_rows '
  'vectors in scope (regen.search_tenant_index_min_rows for a tenant with its own index), an iterative HNSW scan '
  'above, through the tenant''s own index when it has one; exact at any size while the version has no valid index. '
  'Runs as the caller, under row-level security. Rows deleted or moved out of the tenant are left out from their commit on, before the worker applies the change.';

create function regen.search_rows(
  query vector,
  k integer default 10,
  sources text[] default null,
  version text default null,
  max_distance double precision default null
)
returns setof regen.search_hit
language sql stable security invoker
as $$ select * from regen._search(query, k, sources, version, max_distance, true) $$;
comment on function regen.search_rows(vector, integer, text[], text, double precision) is
  'The k nearest distinct rows of the current tenant (regen.set_tenant), each once, at its best chunk (chunk_no and '
  'distance of that chunk), nearest first; otherwise as regen.search_scoped (same scope, versions, exactness and '
  'row-level security). Join row_id back to the source table with ORDER BY distance to keep the order.';

-- One statement: the tenant is set for the search, and the caller's setting (if any) restored after.
create function regen.search_tenant(
  tenant text,
  query vector,
  k integer default 10,
  sources text[] default null,
  version text default null,
  max_distance double precision default null,
  per_row boolean default false
)
returns table (source text, row_id text, chunk_no integer, distance double precision, version_searched text)
language plpgsql volatile security invoker
-- its statements' plans are kept: a custom plan per tenant would plan the search again every call
set plan_cache_mode = force_generic_plan
as $$
declare
  v_old_tenant text := current_setting('regen.tenant_id', true);
  v_old_marker text := current_setting('regen.tenant_marker', true);
  v_hits regen.search_hit[];
  v_tag text;
  v_scope record;
begin
  if per_row is null then
    raise exception 'per_row must be true (rows) or false (chunks), not NULL' using errcode = 'RG041';
  end if;
  -- The common case in a few statements: valid arguments, the default thresholds, one version in
  -- scope whose every named source exists and uses it, and a scope of at most 1,000 vectors (ranked
  -- exactly by regen._search too, whatever indexes exist). Anything else takes regen._search, which
  -- also raises the errors.
  if tenant <> '' and k between 1 and 1000 and (max_distance is null or max_distance <> 'NaN'::float8)
     and coalesce(current_setting('regen.search_exact_max_rows', true), '') = ''
     and coalesce(current_setting('regen.search_tenant_index_min_rows', true), '') = '' then
    -- the tenant first: row-level security reads it when the scope is counted
    perform set_config('regen.tenant_id', tenant, true), set_config('regen.tenant_marker', regen._transaction_marker(), true);
    select v.id, v.tag, v.dimensions, coalesce(v.settings->>'distance', 'inner_product') as distance, x.ids,
           x.versions = 1 and (sources is null or x.named = (select count(distinct n) from unnest(sources) n)) as ok,
           (select count(*) from (select 1 from regen._embeddings e
                                   where e.version_id = v.id and e.tenant = search_tenant.tenant and e.source_id = any(x.ids)
                                   limit 1001) c) as in_scope
      into v_scope
    from (select min(sv.version_id) as version_id, count(distinct sv.version_id) as versions,
                 array_agg(sv.source_id order by sv.source_id) as ids, count(distinct s.name) as named
            from regen._source_versions sv join regen._sources s on s.id = sv.source_id
           where case when search_tenant.version is null then sv.role = 'active'
                      else sv.version_id = (select v.id from regen._versions v where v.tag = search_tenant.version) end
             and (sources is null or s.name = any(sources))) x
    join regen._versions v on v.id = x.version_id;
    if v_scope.ok and v_scope.in_scope <= 1000 and query is not null and vector_dims(query) = v_scope.dimensions then
      return query select h.source, h.row_id, h.chunk_no, h.distance, v_scope.tag
                   from regen._exact_hits(query, k, v_scope.id, v_scope.ids, tenant, v_scope.distance, max_distance, per_row) h;
      perform set_config('regen.tenant_id', coalesce(v_old_tenant, ''), true),
              set_config('regen.tenant_marker', coalesce(v_old_marker, ''), true);
      return;
    end if;
  end if;
  perform regen.set_tenant(tenant);
  perform set_config('regen.searched_version', '', true);
  v_hits := array(select h from regen._search(query, k, sources, version, max_distance, per_row) h);
  v_tag := nullif(current_setting('regen.searched_version', true), '');
  perform set_config('regen.tenant_id', coalesce(v_old_tenant, ''), true);
  perform set_config('regen.tenant_marker', coalesce(v_old_marker, ''), true);
  return query select h.source, h.row_id, h.chunk_no, h.distance, v_tag from unnest(v_hits) h;
end
$$;
comment on function regen.search_tenant(text, vector, integer, text[], text, double precision, boolean) is
  'regen.set_tenant(tenant) and regen.search_scoped (per_row false) or regen.search_rows (per_row true) in one statement, '
  'one round trip, with the version searched; the transaction''s tenant setting is what it was before';

-- As in sql/0023_pending_moves.sql, with the search functions of this file.
create or replace function regen.grant_app(role regrole)
returns void
language plpgsql volatile
as $$
declare
  v_search text := (select string_agg(p.oid::regprocedure::text, ', ') from pg_proc p
                    where p.pronamespace = 'regen'::regnamespace
                      and p.proname in ('search_scoped', 'search_rows', 'search_tenant', '_search', '_exact_hits'));
begin
  perform regen._check_grantee(role);
  perform regen._grant_vector_usage(role);
  execute format('grant usage on schema regen to %s', role);
  -- search_scoped runs as the caller: it reads the store (under row-level security) and the catalog
  execute format('grant select on regen._embeddings, regen._sources, regen._versions, regen._source_versions to %s', role);
  execute format('grant select on regen.versions, regen.sources, regen.embedding_gap, regen._moved_rows to %s', role);
  execute format('grant execute on function %s, '
                 'regen.search_input(text, text[], text), regen.set_tenant(text), regen.current_tenant(), '
                 'regen._transaction_marker(), regen._policy_tenant(), regen._search_scope(text[], text), '
                 'regen._search_setting(text, integer, integer, integer), regen.preprocess(text, jsonb) to %s', v_search, role);
end
$$;
comment on function regen.grant_app(regrole) is
  'Lets an application role search (regen.search_scoped, regen.search_rows, regen.search_tenant, regen.set_tenant) and '
  'read regen.versions, regen.sources and regen.embedding_gap; it sees the store only through row-level security, one '
  'tenant per transaction. Grants USAGE on pgvector''s schema when the role lacks it (RG044 when the owner cannot)';

do $$
declare
  v_role regrole;
begin
  for v_role in select a.role_oid::regrole from regen._app_roles() a loop
    perform regen.grant_app(v_role);
  end loop;
end
$$;

select regen._refresh_grants();

-- The functions whose bodies name pgvector's objects, as data: a migration that adds one inserts
-- its name here instead of redefining regen._pin_search_paths (sql/0015_managed_postgres.sql, which
-- kept them in its body). regen._search (search_scoped's body) takes search_scoped's place, which is
-- now a SQL wrapper the planner inlines; search_tenant keeps _search_scope's plans on one
-- search_path.
create table regen._pinned_functions (
  name name primary key
);
comment on table regen._pinned_functions is
  'Functions of schema regen that name pgvector''s objects: regen._pin_search_paths() gives them pgvector''s schema in their search_path';
insert into regen._pinned_functions (name) values ('create_version'), ('write_embeddings'), ('_search'), ('search_tenant');

create or replace function regen._pin_search_paths()
returns setof regprocedure
language plpgsql volatile
as $$
declare
  v_schema name := regen._vector_schema();
  v_path text;
  v_fn regprocedure;
begin
  if v_schema is null then
    raise exception 'extension vector is not created in this database'
      using errcode = 'RG070', hint = 'a superuser must run: create extension vector; then run pgregen install again';
  end if;
  v_path := case when v_schema = 'regen' then 'pg_catalog, regen, pg_temp'
                 else format('pg_catalog, regen, %s, pg_temp', quote_ident(v_schema)) end;
  for v_fn in
    select p.oid::regprocedure from pg_proc p
    where p.pronamespace = 'regen'::regnamespace
      and p.proname in (select f.name from regen._pinned_functions f)
      and not coalesce(('search_path=' || v_path) = any(p.proconfig), false)
    order by p.oid
  loop
    execute format('alter function %s set search_path = %s', v_fn, v_path);
    return next v_fn;
  end loop;
end
$$;
comment on function regen._pin_search_paths() is
  'Gives the functions that name pgvector''s objects the search_path pg_catalog, regen, <pgvector''s schema>, pg_temp; '
  'returns the functions changed. The installer calls it after every run (also after alter extension vector set schema).';

revoke execute on all functions in schema regen from public;
select regen._pin_search_paths();
