-- search_tenant's common case without a second scan (issue 15, item 4: search() within 1.2x of the
-- naive statement for the smallest tenants, that statement sending its vector in binary too).
--
-- Measured on a scratch copy (a node-postgres client, a tenant of one 1,536-d vector, interleaved):
-- of what search_tenant added to a bare search under row-level security, about 0.1x of the naive
-- statement was the bound that keeps the one-statement path to tenants of at most 1,000 vectors
-- (a count of up to 1,001 in the scope index: a second index scan, whose start costs as much as
-- the search's own for a small tenant, in every form tried), about 0.1x the join to regen._sources
-- for the sources' names, and about 0.1x plpgsql's expressions (each is set up once per
-- transaction: eleven of them on the common path).
--
-- Now, for the search most applications make (no sources, no version named):
--   * the bound is read from regen._default_scope: large_tenants lists the tenants of the active
--     version with more than 1,000 vectors in its sources. Written when the scope is (a cutover, a
--     rollback, a source registered), and by a statement trigger on the store whenever a write
--     takes a tenant of the active version past 1,000 (a count of up to 1,001 for each tenant of
--     the statement's rows not listed yet). A tenant is not taken off the list when it shrinks,
--     until the scope is written again: a listed tenant takes the general path, which is right for
--     every size. A tenant past 1,000 that is not listed (triggers disabled, session_replication_role
--     = replica) is ranked exactly, which is right too, only slower for a large one.
--   * the sources' names come from the same row (source_names, in the order of source_ids);
--   * the fast path has seven expressions, not eleven.
-- The answer is the same as before: the exact top k of the tenant's vectors, rows moved out of the
-- tenant by a change not yet applied left out, ordered by distance, then source, row and chunk.
--
-- Error codes of this file: none new.

alter table regen._default_scope
  add column source_names text[] not null default '{}',
  add column large_tenants text[] not null default '{}';
comment on column regen._default_scope.source_names is 'The sources'' names, in the order of source_ids';
comment on column regen._default_scope.large_tenants is
  'Tenants of the active version with more than 1,000 vectors in its sources (searched by the general path); a tenant '
  'is added when a write takes it past 1,000 and taken off only when the row is written again';

-- _refresh_default_scope of sql/0038, with the sources' names and the large tenants
create or replace function regen._refresh_default_scope()
returns void
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp
as $$
begin
  -- one writer at a time, each reading what the others committed (a statement after the lock)
  perform pg_advisory_xact_lock(hashtext('regen._default_scope'));
  delete from regen._default_scope;
  insert into regen._default_scope (version_id, tag, distance, dimensions, source_ids, source_names, large_tenants)
  select sc.id, sc.tag, sc.distance, sc.dimensions, sc.ids, sc.names,
         -- (the scope index, read in tenant order)
         coalesce((select array_agg(l.tenant order by l.tenant)
                     from (select e.tenant from regen._embeddings e
                            where e.version_id = sc.id and e.source_id = any(sc.ids) and e.tenant is not null
                            group by e.tenant having count(*) > 1000) l), '{}')
  from (select v.id, v.tag, coalesce(v.settings->>'distance', 'inner_product') as distance, v.dimensions,
               array_agg(sv.source_id order by sv.source_id) as ids, array_agg(s.name order by sv.source_id) as names
          from regen._source_versions sv
          join regen._versions v on v.id = sv.version_id
          join regen._sources s on s.id = sv.source_id
         where sv.role = 'active'
         group by v.id
        having (select count(distinct a.version_id) from regen._source_versions a where a.role = 'active') = 1) sc;
end
$$;

-- Write-back and loads: a tenant of the active version that a statement takes past 1,000 vectors is
-- listed. Security definer: the writer (the worker's role) may not write the scope row.
create function regen.tg_embeddings__large_tenants() returns trigger
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp
as $$
begin
  update regen._default_scope sc
     set large_tenants = array(select distinct t from unnest(sc.large_tenants || grown.tenants) t order by t)
    from (select array_agg(t.tenant) as tenants
            from regen._default_scope d
            cross join lateral (select distinct n.tenant from new_rows n
                                 where n.version_id = d.version_id and n.source_id = any(d.source_ids)
                                   and n.tenant is not null and n.tenant <> all(d.large_tenants)) t
           where (select count(*) from (select 1 from regen._embeddings e
                                         where e.version_id = d.version_id and e.tenant = t.tenant
                                           and e.source_id = any(d.source_ids)
                                         limit 1001) c) > 1000) grown
   where grown.tenants is not null;
  return null;
end
$$;
comment on function regen.tg_embeddings__large_tenants() is
  'Lists in regen._default_scope the tenants of the active version that a write took past 1,000 vectors';
revoke execute on function regen.tg_embeddings__large_tenants() from public;
create trigger _400_large_tenants_insert after insert on regen._embeddings
  referencing new table as new_rows for each statement execute function regen.tg_embeddings__large_tenants();
create trigger _400_large_tenants_update after update on regen._embeddings
  referencing new table as new_rows for each statement execute function regen.tg_embeddings__large_tenants();

select regen._refresh_default_scope();

-- search_tenant of sql/0038 (and 0039's setting): the default scope's search reads its bound and
-- the sources' names from regen._default_scope; the other paths are as they were.
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
-- and never JIT-compiled (sql/0039)
set jit = off
as $$
declare
  v_old text[] := array[current_setting('regen.tenant_id', true), current_setting('regen.tenant_marker', true)];
  v_hits regen.search_hit[];
  v_tag text;
  v_set text;
begin
  -- The common case in one statement: valid arguments, the default thresholds, and a scope that
  -- the statement accepts (ranked exactly, as regen._search would rank it, whatever indexes exist).
  -- (A NULL per_row fails this test and is refused by the general path.)
  if per_row is not null and tenant <> '' and k between 1 and 1000 and max_distance is distinct from 'NaN'::float8
     and query is not null
     and coalesce(current_setting('regen.search_exact_max_rows', true), '')
         || coalesce(current_setting('regen.search_tenant_index_min_rows', true), '') = '' then
    -- the tenant first: row-level security reads it (the two calls are independent)
    v_set := set_config('regen.tenant_id', tenant, true) || set_config('regen.tenant_marker', regen._transaction_marker(), true);
    -- (four statements, not one with branches: PostgreSQL starts every branch of a plan it runs)
    if sources is null and version is null then
      if per_row then
        return query
          select sc.source_names[array_position(sc.source_ids, b.source_id)], b.row_id, b.chunk_no, b.distance, sc.tag
          from regen._default_scope sc
          cross join lateral (
            select distinct on (e.source_id, e.row_id) e.source_id, e.row_id, e.chunk_no, d.distance
            from regen._embeddings e
            cross join lateral (select (case sc.distance when 'cosine' then e.embedding <=> query when 'l2' then e.embedding <-> query
                                        else e.embedding <#> query end)::float8 as distance) d
            where e.version_id = sc.version_id and e.tenant = search_tenant.tenant and e.source_id = any(sc.source_ids)
              and (max_distance is null or d.distance <= max_distance)
              and not exists (select 1 from regen._moved_rows m where m.source_id = e.source_id and m.row_id = e.row_id)
            order by e.source_id, e.row_id, d.distance, e.chunk_no) b
          where sc.dimensions = vector_dims(query) and search_tenant.tenant <> all(sc.large_tenants)
          order by b.distance, 1, b.row_id
          limit k;
      else
        return query
          select sc.source_names[array_position(sc.source_ids, e.source_id)], e.row_id, e.chunk_no, d.distance, sc.tag
          from regen._default_scope sc
          join regen._embeddings e on e.version_id = sc.version_id and e.tenant = search_tenant.tenant and e.source_id = any(sc.source_ids)
          cross join lateral (select (case sc.distance when 'cosine' then e.embedding <=> query when 'l2' then e.embedding <-> query
                                      else e.embedding <#> query end)::float8 as distance) d
          where sc.dimensions = vector_dims(query) and search_tenant.tenant <> all(sc.large_tenants)
            and (max_distance is null or d.distance <= max_distance)
            and not exists (select 1 from regen._moved_rows m where m.source_id = e.source_id and m.row_id = e.row_id)
          order by d.distance, 1, e.row_id, e.chunk_no
          limit k;
      end if;
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
      v_set := set_config('regen.tenant_id', coalesce(v_old[1], ''), true) || set_config('regen.tenant_marker', coalesce(v_old[2], ''), true);
      return;
    end if;
    -- nothing found: not a small scope, or an empty answer; the general path tells which
  end if;
  if per_row is null then
    raise exception 'per_row must be true (rows) or false (chunks), not NULL' using errcode = 'RG041';
  end if;
  perform regen.set_tenant(tenant);
  perform set_config('regen.searched_version', '', true);
  v_hits := array(select h from regen._search(query, k, sources, version, max_distance, per_row) h);
  v_tag := nullif(current_setting('regen.searched_version', true), '');
  perform set_config('regen.tenant_id', coalesce(v_old[1], ''), true);
  perform set_config('regen.tenant_marker', coalesce(v_old[2], ''), true);
  return query select h.source, h.row_id, h.chunk_no, h.distance, v_tag from unnest(v_hits) h;
end
$$;

-- create or replace restated search_tenant's SET list as written: pgvector's schema again
select regen._pin_search_paths();
