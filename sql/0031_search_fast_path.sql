-- The small-scope search in fewer steps (issue 15, item 4: search() within 1.2× of the naive
-- statement for tenants of up to 1,000 vectors).
--
-- Measured with pgbench on one connection (server-side p50, a tenant of 10 vectors of 1,536
-- dimensions, the application role), regen.search_tenant spent about 75 µs more than the naive
-- statement. Two parts of that are gone here:
--   - regen._exact_hits answered chunks and rows in one statement, a UNION ALL of both modes under
--     an outer sort, whichever mode was asked for (about 20 µs). The modes are now two functions,
--     regen._exact_chunks and regen._exact_rows, each one ordered scan; search_tenant calls the one
--     it needs. regen._exact_hits stays (regen._search calls it) as the two together.
--   - search_tenant's scope query counted with DISTINCT and aggregated in order: three sorts for a
--     handful of catalog rows. One version is now min = max, and a source appears once per version.
-- Ties are now broken the same way in both modes (distance, source, row id, chunk number) before
-- the limit, not only after it. What an application role may execute is a table now
-- (regen._app_functions), which regen.grant_app reads.
--
-- Error codes of this file: none new (RG041 as before, from regen._search).

-- The k nearest chunks of a scope, every vector ranked. A SQL function the planner inlines into its
-- caller's statement; rows deleted or moved out of the tenant by a change not yet applied are left
-- out (regen._moved_rows). The distance is taken on the untyped column, so the plan reads the scope
-- through the b-tree, never an HNSW index.
create function regen._exact_chunks(query vector, k integer, version_id integer, source_ids integer[], tenant text,
                                    distance text, max_distance double precision)
returns setof regen.search_hit
language sql stable
as $$
  select s.name as source, e.row_id, e.chunk_no, d.distance
  from regen._embeddings e
  cross join lateral (select (case $6 when 'cosine' then e.embedding <=> $1 when 'l2' then e.embedding <-> $1
                                      else e.embedding <#> $1 end)::float8 as distance) d
  join regen._sources s on s.id = e.source_id
  where e.version_id = $3 and e.tenant = $5 and e.source_id = any($4) and ($7 is null or d.distance <= $7)
    and not exists (select 1 from regen._moved_rows m where m.source_id = e.source_id and m.row_id = e.row_id)
  order by d.distance, s.name, e.row_id, e.chunk_no
  limit $2
$$;
comment on function regen._exact_chunks(vector, integer, integer, integer[], text, text, double precision) is
  'The exact path of a search in chunks: the k nearest chunks of a scope, every vector ranked';

-- The k nearest rows of a scope, each at its best chunk (the lowest chunk number among equals).
create function regen._exact_rows(query vector, k integer, version_id integer, source_ids integer[], tenant text,
                                  distance text, max_distance double precision)
returns setof regen.search_hit
language sql stable
as $$
  select s.name as source, b.row_id, b.chunk_no, b.distance
  from (select distinct on (e.source_id, e.row_id) e.source_id, e.row_id, e.chunk_no, d.distance
          from regen._embeddings e
          cross join lateral (select (case $6 when 'cosine' then e.embedding <=> $1 when 'l2' then e.embedding <-> $1
                                              else e.embedding <#> $1 end)::float8 as distance) d
         where e.version_id = $3 and e.tenant = $5 and e.source_id = any($4) and ($7 is null or d.distance <= $7)
           and not exists (select 1 from regen._moved_rows m where m.source_id = e.source_id and m.row_id = e.row_id)
         order by e.source_id, e.row_id, d.distance, e.chunk_no) b
  join regen._sources s on s.id = b.source_id
  order by b.distance, s.name, b.row_id
  limit $2
$$;
comment on function regen._exact_rows(vector, integer, integer, integer[], text, text, double precision) is
  'The exact path of a search in rows: the k nearest rows of a scope, each once at its best chunk, every vector ranked';

-- regen._search's exact path: either mode, by its last argument (a one-time filter runs only one).
create or replace function regen._exact_hits(query vector, k integer, version_id integer, source_ids integer[], tenant text,
                                             distance text, max_distance double precision, per_row boolean)
returns setof regen.search_hit
language sql stable
as $$
  select h.* from (
    select * from regen._exact_chunks($1, $2, $3, $4, $5, $6, $7) where not $8
    union all
    select * from regen._exact_rows($1, $2, $3, $4, $5, $6, $7) where $8
  ) h
  order by h.distance, h.source, h.row_id, h.chunk_no
$$;

create or replace function regen.search_tenant(
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
    -- (a source uses a version once, so with one version in scope its rows count its sources)
    select v.id, v.tag, v.dimensions, coalesce(v.settings->>'distance', 'inner_product') as distance, x.ids,
           x.first = x.last and (sources is null or x.named = (select count(distinct n) from unnest(sources) n)) as ok,
           (select count(*) from (select 1 from regen._embeddings e
                                   where e.version_id = v.id and e.tenant = search_tenant.tenant and e.source_id = any(x.ids)
                                   limit 1001) c) as in_scope
      into v_scope
    from (select min(sv.version_id) as first, max(sv.version_id) as last, array_agg(sv.source_id) as ids, count(*) as named
            from regen._source_versions sv join regen._sources s on s.id = sv.source_id
           where case when search_tenant.version is null then sv.role = 'active'
                      else sv.version_id = (select v.id from regen._versions v where v.tag = search_tenant.version) end
             and (sources is null or s.name = any(sources))) x
    join regen._versions v on v.id = x.first;
    if v_scope.ok and v_scope.in_scope <= 1000 and query is not null and vector_dims(query) = v_scope.dimensions then
      if per_row then
        return query select h.source, h.row_id, h.chunk_no, h.distance, v_scope.tag
                     from regen._exact_rows(query, k, v_scope.id, v_scope.ids, tenant, v_scope.distance, max_distance) h;
      else
        return query select h.source, h.row_id, h.chunk_no, h.distance, v_scope.tag
                     from regen._exact_chunks(query, k, v_scope.id, v_scope.ids, tenant, v_scope.distance, max_distance) h;
      end if;
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

-- What an application role may execute, as data: a migration that adds a function to the search
-- inserts its name here instead of redefining regen.grant_app (sql/0028_search_rows.sql kept the
-- list in its body), and regen._refresh_grants (below) gives it to the existing roles. The role executes the SQL functions its search inlines too: PostgreSQL inlines
-- a SQL function only for a caller that may execute it.
create table regen._app_functions (
  name name primary key
);
comment on table regen._app_functions is
  'Functions of schema regen (every signature of each name) that regen.grant_app lets an application role execute';
insert into regen._app_functions (name) values
  ('search_scoped'), ('search_rows'), ('search_tenant'), ('search_input'), ('set_tenant'), ('current_tenant'),
  ('_search'), ('_exact_hits'), ('_exact_chunks'), ('_exact_rows'), ('_search_scope'), ('_search_setting'),
  ('_transaction_marker'), ('_policy_tenant'), ('preprocess');

create or replace function regen.grant_app(role regrole)
returns void
language plpgsql volatile
as $$
declare
  v_functions text := (select string_agg(p.oid::regprocedure::text, ', ' order by p.oid) from pg_proc p
                       where p.pronamespace = 'regen'::regnamespace
                         and p.proname in (select f.name from regen._app_functions f));
begin
  perform regen._check_grantee(role);
  perform regen._grant_vector_usage(role);
  execute format('grant usage on schema regen to %s', role);
  -- the search runs as the caller: it reads the store (under row-level security) and the catalog
  execute format('grant select on regen._embeddings, regen._sources, regen._versions, regen._source_versions to %s', role);
  execute format('grant select on regen.versions, regen.sources, regen.embedding_gap, regen._moved_rows to %s', role);
  execute format('grant execute on function %s to %s', v_functions, role);
end
$$;

-- As in sql/0015_managed_postgres.sql, but application roles get all of grant_app again (it was
-- their USAGE on pgvector's schema only): a function added to regen._app_functions reaches them at
-- the next install, without a migration of its own granting it (the installer calls this after
-- every run).
create or replace function regen._refresh_grants()
returns void
language plpgsql volatile
as $$
declare
  v_role regrole;
  v_hint text;
begin
  for v_role in
    select distinct p.oid::regrole from pg_policy pol, unnest(pol.polroles) as p(oid)
    where pol.polrelid = 'regen._embeddings'::regclass and pol.polname like 'admin\_%'
      and exists (select 1 from pg_roles r where r.oid = p.oid)
  loop
    begin
      perform regen.grant_admin(v_role);
    exception when sqlstate 'RG044' then
      get stacked diagnostics v_hint = pg_exception_hint;
      raise warning 'admin role %: %', v_role, sqlerrm using hint = v_hint;
    end;
  end loop;
  for v_role in select a.role_oid::regrole from regen._app_roles() a loop
    begin
      perform regen.grant_app(v_role);
    exception when sqlstate 'RG043' or sqlstate 'RG044' then
      get stacked diagnostics v_hint = pg_exception_hint;
      raise warning 'application role %: %', v_role, sqlerrm using hint = v_hint;
    end;
  end loop;
  revoke execute on all functions in schema regen from public;
end
$$;
comment on function regen._refresh_grants() is
  'Grants admin roles what later migrations added, application roles all of regen.grant_app again, '
  'and keeps every function from PUBLIC';

select regen._refresh_grants();
-- create or replace dropped search_tenant's search_path: pgvector's schema again
select regen._pin_search_paths();
