-- search_tenant's common case in one statement (issue 15, item 4: search() within 1.2x of the
-- naive statement for the smallest tenants).
--
-- The fast path of sql/0031 ran two statements of its own after setting the tenant: the scope (the
-- version, its sources, the checks, and a count of the tenant's vectors up to 1,001), then the
-- exact search. For a tenant of one vector most of a call is starting and ending those statements'
-- plans, not reading rows: each statement of a plpgsql function is an executor start and end.
-- Now the scope is a SQL function the planner inlines into the search (regen._small_scope), so the
-- common case is one statement, of the mode asked for (chunks or rows), and the tenant is set and
-- restored by plain assignments (a `perform` of two calls is a statement of its own).
--
-- The scope of the search most applications make, naming neither sources nor a version, is kept
-- in a table of at most one row (regen._default_scope), written by triggers whenever the sources'
-- versions change: read in place of the catalog query, it saves most of what is left (measured
-- with a node-postgres client, a tenant of one 1,536-d vector: the catalog query was about 90 µs of
-- a 600 µs search on a busy machine, the row about 10 µs).
--
-- The scope gives no row when the fast path does not apply (another version in scope, a source
-- unknown, the query of another size, more than 1,000 vectors); the search then finds nothing, and
-- search_tenant takes the general path (regen._search, which raises the errors), as it did. A search
-- that rightly finds nothing (an empty tenant, a max_distance nothing is within) takes the general
-- path as well, and gives the same empty answer.
--
-- Error codes of this file: none new (RG041 as before).

-- One row when the tenant has at most 1,000 vectors in these sources of this version (counted up to
-- 1,001, in the scope index), else none. A set-returning SQL function, which the planner inlines
-- into its callers' FROM lists (a scalar one holding a subquery would be called, and planned, each time).
create function regen._small_tenant(tenant text, version_id integer, source_ids integer[])
returns setof boolean
language sql stable
as $$
  select true
  where (select count(*) from (select 1 from regen._embeddings e
                                where e.version_id = $2 and e.tenant = $1 and e.source_id = any($3)
                                limit 1001) c) <= 1000
$$;
comment on function regen._small_tenant(text, integer, integer[]) is
  'One row when the tenant has at most 1,000 vectors of this version in these sources (as many as the search may rank '
  'exactly in one statement), else none; inlined into regen.search_tenant';

-- The scope of a small search: one version, every named source using it, a query of its size, and
-- at most 1,000 of the tenant's vectors in it (ranked exactly, as regen._search would). A SQL
-- function without a SET clause, so that the planner inlines it into search_tenant's statement
-- (whose search_path is pinned); the query's size comes as a number, so no pgvector name is read here.
create function regen._small_scope(tenant text, dimensions integer, sources text[], version text)
returns table (version_id integer, tag text, distance text, source_ids integer[])
language sql stable
as $$
  select v.id, v.tag, coalesce(v.settings->>'distance', 'inner_product'), x.ids
  from (select min(sv.version_id) as first, max(sv.version_id) as last, array_agg(sv.source_id) as ids, count(*) as named
          from regen._source_versions sv join regen._sources s on s.id = sv.source_id
         where case when $4 is null then sv.role = 'active'
                    else sv.version_id = (select v.id from regen._versions v where v.tag = $4) end
           and ($3 is null or s.name = any($3))) x
  join regen._versions v on v.id = x.first
  -- (a source uses a version once, so with one version in scope its rows count its sources)
  where x.first = x.last and ($3 is null or x.named = (select count(distinct n) from unnest($3) n))
    and v.dimensions = $2
    and exists (select from regen._small_tenant($1, v.id, x.ids))
$$;
comment on function regen._small_scope(text, integer, text[], text) is
  'The version and sources a search of this tenant reads when it can be ranked exactly in one statement (one version, '
  'the named sources all using it, a query of its size, at most 1,000 of the tenant''s vectors); else no row. '
  'Inlined into regen.search_tenant';

-- The scope of a search that names neither sources nor a version: the active version, when every
-- source's active version is that one (else no row; the search then routes and refuses as before).
create table regen._default_scope (
  one boolean primary key default true check (one),
  version_id integer not null,
  tag text not null,
  distance text not null,
  dimensions integer not null,
  source_ids integer[] not null
);
comment on table regen._default_scope is
  'At most one row: the active version (its tag, distance and size) and the sources that use it, when every source''s '
  'active version is that one; written by triggers on regen._source_versions and regen._versions, read by regen.search_tenant';

create function regen._refresh_default_scope()
returns void
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp
as $$
begin
  -- one writer at a time, each reading what the others committed (a statement after the lock)
  perform pg_advisory_xact_lock(hashtext('regen._default_scope'));
  delete from regen._default_scope;
  insert into regen._default_scope (version_id, tag, distance, dimensions, source_ids)
  select v.id, v.tag, coalesce(v.settings->>'distance', 'inner_product'), v.dimensions, array_agg(sv.source_id order by sv.source_id)
  from regen._source_versions sv
  join regen._versions v on v.id = sv.version_id
  where sv.role = 'active'
  group by v.id
  having (select count(distinct a.version_id) from regen._source_versions a where a.role = 'active') = 1;
end
$$;
comment on function regen._refresh_default_scope() is
  'Writes regen._default_scope again from regen._source_versions and regen._versions (their triggers call it)';

create function regen.tg_default_scope() returns trigger
language plpgsql volatile
as $$
begin
  perform regen._refresh_default_scope();
  return null;
end
$$;
comment on function regen.tg_default_scope() is
  'After any change of the sources'' versions or of a version: regen._default_scope written again';

create trigger _100_default_scope after insert or update or delete or truncate on regen._source_versions
  for each statement execute function regen.tg_default_scope();
create trigger _100_default_scope after insert or update or delete or truncate on regen._versions
  for each statement execute function regen.tg_default_scope();
select regen._refresh_default_scope();

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
  v_set text;
begin
  if per_row is null then
    raise exception 'per_row must be true (rows) or false (chunks), not NULL' using errcode = 'RG041';
  end if;
  -- The common case in one statement: valid arguments, the default thresholds, and a scope that
  -- regen._small_scope accepts (ranked exactly by regen._search too, whatever indexes exist).
  if tenant <> '' and k between 1 and 1000 and (max_distance is null or max_distance <> 'NaN'::float8)
     and query is not null
     and coalesce(current_setting('regen.search_exact_max_rows', true), '') = ''
     and coalesce(current_setting('regen.search_tenant_index_min_rows', true), '') = '' then
    -- the tenant first: row-level security reads it (assignments: no statement of their own)
    v_set := set_config('regen.tenant_id', tenant, true);
    v_set := set_config('regen.tenant_marker', regen._transaction_marker(), true);
    -- (four statements, not one with branches: PostgreSQL starts every branch of a plan it runs)
    if sources is null and version is null and per_row then
      return query
        select h.source, h.row_id, h.chunk_no, h.distance, sc.tag
        from regen._default_scope sc
        cross join lateral regen._small_tenant(search_tenant.tenant, sc.version_id, sc.source_ids) small
        cross join lateral regen._exact_rows(query, k, sc.version_id, sc.source_ids, search_tenant.tenant, sc.distance, max_distance) h
        where sc.dimensions = vector_dims(query);
    elsif sources is null and version is null then
      return query
        select h.source, h.row_id, h.chunk_no, h.distance, sc.tag
        from regen._default_scope sc
        cross join lateral regen._small_tenant(search_tenant.tenant, sc.version_id, sc.source_ids) small
        cross join lateral regen._exact_chunks(query, k, sc.version_id, sc.source_ids, search_tenant.tenant, sc.distance, max_distance) h
        where sc.dimensions = vector_dims(query);
    elsif per_row then
      return query
        select h.source, h.row_id, h.chunk_no, h.distance, sc.tag
        from regen._small_scope(search_tenant.tenant, vector_dims(query), sources, version) sc
        cross join lateral regen._exact_rows(query, k, sc.version_id, sc.source_ids, search_tenant.tenant, sc.distance, max_distance) h;
    else
      return query
        select h.source, h.row_id, h.chunk_no, h.distance, sc.tag
        from regen._small_scope(search_tenant.tenant, vector_dims(query), sources, version) sc
        cross join lateral regen._exact_chunks(query, k, sc.version_id, sc.source_ids, search_tenant.tenant, sc.distance, max_distance) h;
    end if;
    if found then
      v_set := set_config('regen.tenant_id', coalesce(v_old_tenant, ''), true);
      v_set := set_config('regen.tenant_marker', coalesce(v_old_marker, ''), true);
      return;
    end if;
    -- nothing found: not a small scope, or an empty answer; the general path tells which
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

-- the application roles execute the scope too: PostgreSQL inlines a SQL function only for a caller
-- that may execute it
insert into regen._app_functions (name) values ('_small_scope'), ('_small_tenant');

-- grant_app of sql/0031, with the default scope's table among what the search reads
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
  execute format('grant select on regen._embeddings, regen._sources, regen._versions, regen._source_versions, '
                 'regen._default_scope to %s', role);
  execute format('grant select on regen.versions, regen.sources, regen.embedding_gap, regen._moved_rows to %s', role);
  execute format('grant execute on function %s to %s', v_functions, role);
end
$$;

select regen._refresh_grants();
-- create or replace restated search_tenant's SET list as written: pgvector's schema again
select regen._pin_search_paths();
