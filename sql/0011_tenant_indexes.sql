-- Tenants of their own: a large tenant's vectors get a partial HNSW index of their own, whose graph
-- holds only that tenant's vectors, so an approximate search of it finds what an exact scan would,
-- at the speed of an index. (The version's index mixes every tenant: filtered to one, its iterative
-- scan walks past other tenants' neighbours and misses some of the tenant's own.)
--
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

-- The indexed expression and operator class of a version's HNSW indexes (as regen.create_version).
create function regen._hnsw_expression(version_id integer)
returns text
language sql stable strict
as $$
  select format('((embedding::%1$s(%2$s)) %1$s%3$s)',
                case when v.dimensions > 2000 then 'halfvec' else 'vector' end, v.dimensions,
                case v.settings->>'distance' when 'cosine' then '_cosine_ops' when 'l2' then '_l2_ops' else '_ip_ops' end)
  from regen._versions v where v.id = _hnsw_expression.version_id
$$;
comment on function regen._hnsw_expression(integer) is 'The HNSW index expression and operator class of a version';

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

create or replace function regen.search_scoped(
  query vector,
  k integer default 10,
  sources text[] default null,
  version text default null,
  max_distance double precision default null
)
returns setof regen.search_hit
language plpgsql stable security invoker
set enable_sort = on set enable_seqscan = on set enable_bitmapscan = on
set hnsw.ef_search = 40 set hnsw.iterative_scan = off
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
  v_tenant_index boolean;
  v_tenant_min integer := regen._search_setting('regen.search_tenant_index_min_rows', 1000, 0, 100000000);
  -- A tenant's own graph holds only its vectors: a wider search there costs less than on the version's
  -- index and buys the recall (0.995 at 400 against 0.91 at 100 on the search benchmark's largest tenant).
  v_tenant_ef integer := regen._search_setting('regen.search_tenant_ef_search', 400, 1, 1000);
  v_threshold integer;
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
  if query is null or vector_dims(query) <> v_version.dimensions then
    raise exception 'the query has % dimensions, version % has %',
                    coalesce(vector_dims(query)::text, 'no'), v_version.tag, v_version.dimensions
      using errcode = 'RG041', hint = 'embed the query with the version''s own model (see regen.versions)';
  end if;

  -- The version's distance, spelled with pgvector's operator wherever pgvector lives.
  select format('operator(%I.%s)', n.nspname,
                case v_version.settings->>'distance' when 'cosine' then '<=>' when 'l2' then '<->' else '<#>' end)
    into v_op
  from pg_extension e join pg_namespace n on n.oid = e.extnamespace where e.extname = 'vector';

  -- A tenant of its own HNSW index (see regen.tenant_index_plan) is searched through it above a lower
  -- threshold: its graph holds the tenant's vectors only, so it finds them as well as an exact scan.
  -- The name is regen._tenant_index_name(), spelled out: an application role executes only what
  -- regen.grant_app() granted it.
  select exists (
    select 1 from pg_class c join pg_index i on i.indexrelid = c.oid
    where c.relnamespace = 'regen'::regnamespace
      and c.relname = '_embeddings_hnsw_v' || v_scope.version_id || '_t' || left(md5(v_tenant), 16)
      and i.indisvalid and i.indisready) into v_tenant_index;
  v_threshold := case when v_tenant_index then least(v_tenant_min, v_exact_max) else v_exact_max end;

  -- How many vectors are in scope, counted up to the threshold (an index-only scan of the scope index).
  select count(*) into v_in_scope from (
    select 1 from regen._embeddings e
    where e.version_id = v_scope.version_id and e.tenant = v_tenant and e.source_id = any(v_scope.source_ids)
    limit v_threshold + 1) s;

  if v_in_scope > v_threshold then
    -- Large scope: the tenant's own HNSW index when it has one, else the version's, scanned
    -- iteratively (pgvector 0.8) with the scope as its filter until k rows of the scope are found.
    -- The tenant is a literal in the query, so the planner can prove a tenant index's predicate. Sorts are switched off so that the planner cannot
    -- trade the index for a full read of the scope. The index ranks by the cast (vector(n), or
    -- halfvec(n) above 2,000 dimensions); the distance returned is that of the full vectors.
    v_cast := case when v_version.dimensions > 2000 then format('halfvec(%s)', v_version.dimensions)
                   else format('vector(%s)', v_version.dimensions) end;
    perform set_config('hnsw.iterative_scan', 'relaxed_order', true);
    perform set_config('hnsw.ef_search', greatest(case when v_tenant_index then v_tenant_ef else v_ef end, k)::text, true);
    perform set_config('enable_sort', 'off', true);
    perform set_config('enable_seqscan', 'off', true);
    perform set_config('enable_bitmapscan', 'off', true);
    execute format($f$
      select array_agg(row(s.name, c.row_id, c.chunk_no, c.distance)::regen.search_hit)
      from (select e.source_id, e.row_id, e.chunk_no, (e.embedding %2$s $1)::float8 as distance
              from regen._embeddings e
             where e.version_id = %1$s and e.tenant = %4$L and e.source_id = any($3)
             order by e.embedding::%3$s %2$s $1::%3$s
             limit $4) c
      join regen._sources s on s.id = c.source_id$f$,
      v_scope.version_id, v_op, v_cast, v_tenant)
      into v_hits
      using query, v_tenant, v_scope.source_ids, k;
    perform set_config('enable_sort', 'on', true);
    perform set_config('enable_seqscan', 'on', true);
    perform set_config('enable_bitmapscan', 'on', true);
    -- The iterative scan gives up at hnsw.max_scan_tuples; short of k rows, the exact path answers.
    if cardinality(v_hits) >= k then
      return query
        select h.* from unnest(v_hits) h
        where max_distance is null or h.distance <= max_distance
        order by h.distance, h.source, h.row_id, h.chunk_no;
      return;
    end if;
  end if;

  -- Small scope: every vector of the scope, exactly. The distance is taken on the untyped column,
  -- an expression no HNSW index matches, so the plan reads the scope through the b-tree and ranks it.
  return query execute format($f$
    select s.name, c.row_id, c.chunk_no, c.distance
    from (select e.source_id, e.row_id, e.chunk_no, (e.embedding %2$s $1)::float8 as distance
            from regen._embeddings e
           where e.version_id = %1$s and e.tenant = $2 and e.source_id = any($3)
             and ($5::float8 is null or (e.embedding %2$s $1) <= $5)
           order by distance
           limit $4) c
    join regen._sources s on s.id = c.source_id
    order by c.distance, s.name, c.row_id, c.chunk_no$f$,
    v_scope.version_id, v_op)
    using query, v_tenant, v_scope.source_ids, k, max_distance;
end
$$;
comment on function regen.search_scoped(vector, integer, text[], text, double precision) is
  'The k nearest chunks of the current tenant (regen.set_tenant) in the given sources, in one version: the active one, '
  'or the one named. Filters by tenant, source and version before ranking: exact up to regen.search_exact_max_rows '
  'vectors in scope (regen.search_tenant_index_min_rows for a tenant with its own index), an iterative HNSW scan '
  'above, through the tenant''s own index when it has one. Runs as the caller, under row-level security.';

revoke execute on all functions in schema regen from public;
