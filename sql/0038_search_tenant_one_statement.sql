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
-- The scope gives no row when the fast path does not apply (another version in scope, a source
-- unknown, the query of another size, more than 1,000 vectors); the search then finds nothing, and
-- search_tenant takes the general path (regen._search, which raises the errors), as it did. A search
-- that rightly finds nothing (an empty tenant, a max_distance nothing is within) takes the general
-- path as well, and gives the same empty answer.
--
-- Error codes of this file: none new (RG041 as before).

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
    and (select count(*) from (select 1 from regen._embeddings e
                                where e.version_id = v.id and e.tenant = $1 and e.source_id = any(x.ids)
                                limit 1001) c) <= 1000
$$;
comment on function regen._small_scope(text, integer, text[], text) is
  'The version and sources a search of this tenant reads when it can be ranked exactly in one statement (one version, '
  'the named sources all using it, a query of its size, at most 1,000 of the tenant''s vectors); else no row. '
  'Inlined into regen.search_tenant';

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
    if per_row then
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
insert into regen._app_functions (name) values ('_small_scope');
select regen._refresh_grants();
-- create or replace restated search_tenant's SET list as written: pgvector's schema again
select regen._pin_search_paths();
