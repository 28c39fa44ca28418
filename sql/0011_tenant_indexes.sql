-- Tenants of their own: a large tenant's vectors get a partial HNSW index of their own, whose graph
-- holds only that tenant's vectors, so an approximate search of it comes close to what an exact scan
-- finds, at the speed of an index. (The version's index mixes every tenant: filtered to one, its iterative
-- scan walks past other tenants' neighbours and misses some of the tenant's own.)
--
-- regen.search_scoped (sql/0008_search.sql) looks for such an index and searches the tenant through it.
-- The indexes are built with CREATE INDEX CONCURRENTLY, which cannot run inside a function, so SQL
-- decides and the client runs the statements: regen.tenant_index_plan() returns them, and
-- `pgregen tenant-indexes` (or tenantIndexes() in TypeScript) executes them. Every partial index
-- adds a little planning work to each query on the store: they are for the few largest tenants.

-- A tenant index's name: short and safe whatever the tenant's text.
create function regen._tenant_index_name(version_id integer, tenant text)
returns name
language sql immutable strict parallel safe
as $$ select ('_embeddings_hnsw_v' || version_id || '_t' || left(md5(tenant), 16))::name $$;
comment on function regen._tenant_index_name(integer, text) is 'Name of the HNSW index of one tenant''s vectors of one version';

-- One step of a plan: what to do, for which version and tenant (of how many vectors), and the statement.
create type regen.tenant_index_step as (action text, version text, tenant text, vectors bigint, index_name text, statement text);
comment on type regen.tenant_index_step is 'One statement of regen.tenant_index_plan(): create or drop one tenant''s HNSW index';

create function regen.tenant_index_plan(min_rows bigint default 10000, version text default null)
returns setof regen.tenant_index_step
language plpgsql stable
as $$
declare
  v_version_id integer := case when tenant_index_plan.version is null then null else regen._version_id(tenant_index_plan.version) end;
begin
  if min_rows is null or min_rows < 1 then
    raise exception 'min_rows must be a positive number of vectors, not %', coalesce(min_rows::text, 'NULL')
      using errcode = 'RG041', hint = 'tenants with at least this many vectors get an index of their own';
  end if;
  return query
  with sizes as (
    select e.version_id, e.tenant, count(*) as n
    from regen._embeddings e
    where e.tenant is not null and (v_version_id is null or e.version_id = v_version_id)
    group by e.version_id, e.tenant
  ), named as (
    select s.version_id, s.tenant, s.n, regen._tenant_index_name(s.version_id, s.tenant) as name from sizes s
  ), wanted as (
    -- a tenant keeps its index until it falls below half the size that earned it (no flapping)
    select n.*, n.n >= min_rows as earns from named n where n.n >= min_rows / 2
  ), existing as (
    select c.relname as name, i.indisvalid and i.indisready as valid
    from pg_class c join pg_index i on i.indexrelid = c.oid
    where c.relnamespace = 'regen'::regnamespace and c.relname ~ '^_embeddings_hnsw_v\d+_t[0-9a-f]{16}$'
      and (v_version_id is null or c.relname ^@ ('_embeddings_hnsw_v' || v_version_id || '_t'))
  )
  -- an index left invalid by a failed concurrent build is dropped and built again
  select 'drop', v.tag, n.tenant, coalesce(n.n, 0), x.name::text, format('drop index concurrently if exists regen.%I', x.name)
  from existing x left join named n on n.name = x.name left join regen._versions v on v.id = n.version_id
  where not x.valid or not exists (select 1 from wanted w where w.name = x.name)
  union all
  select 'create', v.tag, w.tenant, w.n, w.name::text,
         -- built with a wider candidate list than pgvector's default ef_construction (64): a tenant's
         -- graph is small, so a better one is cheap. m stays at its default (16): built with m 24, the
         -- largest tenants' own indexes were passed over by the planner (search benchmark, pgvector 0.8),
         -- whose estimate of an HNSW scan grows with m.
         format('create index concurrently if not exists %I on regen._embeddings using hnsw %s with (ef_construction = 128) '
                'where version_id = %s and tenant = %L',
                w.name, regen._hnsw_expression(w.version_id), w.version_id, w.tenant)
  from wanted w join regen._versions v on v.id = w.version_id
  where w.earns and not exists (select 1 from existing x where x.name = w.name and x.valid)
  order by 1 desc, 4 desc;
end
$$;
comment on function regen.tenant_index_plan(bigint, text) is
  'The statements that give every tenant with at least min_rows vectors (default 10,000) an HNSW index of its own and '
  'drop those of tenants below half that; run them outside a transaction (pgregen tenant-indexes does)';

revoke execute on all functions in schema regen from public;
