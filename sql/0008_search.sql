-- Searching inside the tenant: row-level security on the store, the tenant of a transaction, the
-- grants for application and admin roles, and regen.search_scoped().
--
-- Error codes of this file: RG040 no tenant set for this transaction, RG041 invalid search
-- argument (k, dimensions, distance), RG042 no single version to search (sources of different
-- active versions, or a version a source does not use), RG043 a role that cannot be granted.

-- The scope of a search: version, tenant, source. Small scopes are read exactly through it.
create index _embeddings_scope on regen._embeddings (version_id, tenant, source_id);

-- The tenant is a transaction-local setting, and a marker ties it to the transaction that set it.
-- A plain SET (not SET LOCAL) would outlive the transaction and follow the connection back to the
-- pool, into the next request of another tenant; such a value lacks this transaction's marker and
-- is refused, by regen.search_scoped() and by the row-level security policy alike.
-- Parallel restricted: a parallel worker has a pid of its own, so the marker would never match there.
create function regen._transaction_marker()
returns text
language sql stable parallel restricted
as $$ select pg_backend_pid()::text || '/' || extract(epoch from transaction_timestamp())::text $$;
comment on function regen._transaction_marker() is 'Identifies the current transaction of this session (backend pid and start time)';

create function regen.set_tenant(tenant text)
returns text
language plpgsql volatile
as $$
begin
  if tenant is null or tenant = '' then
    raise exception 'tenant must be a non-empty text, not %', coalesce(quote_literal(tenant), 'NULL')
      using errcode = 'RG040';
  end if;
  perform set_config('regen.tenant_id', tenant, true);
  perform set_config('regen.tenant_marker', regen._transaction_marker(), true);
  return tenant;
end
$$;
comment on function regen.set_tenant(text) is
  'Sets the tenant of the current transaction (SET LOCAL regen.tenant_id, with a marker of this transaction); '
  'regen.search_scoped() and the store''s row-level security read it. Gone at commit or rollback.';

create function regen.current_tenant()
returns text
language plpgsql stable
as $$
declare
  v_tenant text := nullif(current_setting('regen.tenant_id', true), '');
begin
  if v_tenant is null then
    raise exception 'no tenant set for this transaction'
      using errcode = 'RG040',
            hint = 'inside the transaction, before searching: select regen.set_tenant(''<tenant>'')';
  end if;
  if current_setting('regen.tenant_marker', true) is distinct from regen._transaction_marker() then
    raise exception 'regen.tenant_id was not set by regen.set_tenant() in this transaction'
      using errcode = 'RG040',
            detail = 'a value set with a plain SET, or left over from an earlier transaction, would follow a pooled connection to the next request',
            hint = 'inside the transaction, before searching: select regen.set_tenant(''<tenant>'')';
  end if;
  return v_tenant;
end
$$;
comment on function regen.current_tenant() is 'The tenant set by regen.set_tenant() in this transaction; RG040 when none is';

-- Row-level security: a role other than the owner sees only the rows of the tenant set for its
-- transaction (none at all without one). Admin roles get a policy of their own (regen.grant_admin).
-- The tenant the policy admits: a SQL function the planner inlines into one expression, evaluated
-- once per scan (an index condition), not a marker comparison per row.
create function regen._policy_tenant()
returns text
language sql stable parallel restricted
as $$
  select case when current_setting('regen.tenant_marker', true) = regen._transaction_marker()
              then nullif(current_setting('regen.tenant_id', true), '') end
$$;
comment on function regen._policy_tenant() is 'The tenant set by regen.set_tenant() in this transaction, else null (row-level security)';

alter table regen._embeddings enable row level security;
create policy tenant_isolation on regen._embeddings for select
  using (tenant = regen._policy_tenant());

-- Thresholds, as settings (SET, ALTER ROLE/DATABASE ... SET):
--   regen.search_exact_max_rows  scopes up to this many vectors are searched exactly (default 10000)
--   regen.search_ef_search       hnsw.ef_search of the approximate path (default 100)
--   regen.search_tenant_index_min_rows, regen.search_tenant_ef_search
--                                the same for a tenant with an HNSW index of its own (default 1000, 400;
--                                see sql/0011_tenant_indexes.sql)
create function regen._search_setting(name text, fallback integer, low integer, high integer)
returns integer
language plpgsql stable
as $$
declare
  v_text text := nullif(current_setting(name, true), '');
  v integer;
begin
  if v_text is null then
    return fallback;
  end if;
  begin
    v := v_text::integer;
  exception when others then
    v := null;
  end;
  if v is null or v not between low and high then
    raise exception '% must be an integer between % and %, not %', name, low, high, quote_literal(v_text)
      using errcode = 'RG041';
  end if;
  return v;
end
$$;
comment on function regen._search_setting(text, integer, integer, integer) is 'An integer search setting, its default when unset; RG041 when out of range';

-- The version a search reads, and the sources it covers: the given version, or the active version
-- of the sources in scope, which must then be one and the same.
create function regen._search_scope(sources text[], version text, out version_id integer, out source_ids integer[])
language plpgsql stable
as $$
declare
  v_unknown text;
  v_versions text;
begin
  if sources is not null then
    select string_agg(quote_literal(n), ', ') into v_unknown
    from unnest(sources) n where not exists (select 1 from regen._sources s where s.name = n);
    if v_unknown is not null then
      raise exception 'unknown source %', v_unknown
        using errcode = 'RG010', hint = 'list the sources with: select name from regen.sources';
    end if;
  end if;

  if version is not null then
    select v.id into version_id from regen._versions v where v.tag = _search_scope.version;
    if version_id is null then
      raise exception 'unknown version %', quote_literal(version)
        using errcode = 'RG001', hint = 'list the versions with: select tag from regen.versions';
    end if;
    -- an explicit version (a shadow read) reads only sources that use it
    select string_agg(quote_literal(s.name), ', ') into v_unknown
    from regen._sources s
    where s.name = any(_search_scope.sources)
      and not exists (select 1 from regen._source_versions sv where sv.source_id = s.id and sv.version_id = _search_scope.version_id);
    if v_unknown is not null then
      raise exception 'source % does not use version %', v_unknown, quote_literal(version)
        using errcode = 'RG042', hint = 'see regen.embedding_gap for the versions each source uses';
    end if;
    select coalesce(array_agg(sv.source_id order by sv.source_id), '{}') into source_ids
    from regen._source_versions sv join regen._sources s on s.id = sv.source_id
    where sv.version_id = _search_scope.version_id and (_search_scope.sources is null or s.name = any(_search_scope.sources));
    return;
  end if;

  -- the active version of each source in scope: one, or the caller must say which
  select count(distinct sv.version_id), min(sv.version_id),
         string_agg(format('%s: %s', s.name, v.tag), ', ' order by s.name),
         coalesce(array_agg(sv.source_id order by sv.source_id), '{}')
    into strict v_unknown, version_id, v_versions, source_ids
  from regen._source_versions sv
  join regen._sources s on s.id = sv.source_id
  join regen._versions v on v.id = sv.version_id
  where sv.role = 'active' and (_search_scope.sources is null or s.name = any(_search_scope.sources));
  if v_unknown::integer > 1 then
    raise exception 'the sources in scope have different active versions (%), and vectors of two versions are never compared', v_versions
      using errcode = 'RG042', hint = 'search the sources of one version at a time (sources => ...), or name the version';
  end if;
end
$$;
comment on function regen._search_scope(text[], text) is 'Version and source ids a search reads; RG001/RG010/RG042 when there is no single version';

-- One result of a search: a chunk of a source row, and its distance to the query.
create type regen.search_hit as (source text, row_id text, chunk_no integer, distance double precision);
comment on type regen.search_hit is 'A result of regen.search_scoped(): source, row id, chunk number and distance to the query';

create function regen.search_scoped(
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

-- What a client needs to embed a query for a search: the version it will read (as search_scoped
-- routes it) with its model, and the query text preprocessed as that version preprocesses content.
create function regen.search_input(query_text text, sources text[] default null, version text default null)
returns table (version text, provider text, model text, dimensions integer, send_dimensions boolean, input text)
language sql stable
as $$
  select v.tag, v.provider, v.model, v.dimensions, (v.settings->>'send_dimensions')::boolean,
         regen.preprocess(search_input.query_text, v.settings)
  from regen._search_scope(search_input.sources, search_input.version) sc
  join regen._versions v on v.id = sc.version_id
$$;
comment on function regen.search_input(text, text[], text) is
  'The version a search of these sources reads (provider, model, dimensions) and the query text preprocessed for it';

create function regen._check_grantee(role regrole)
returns void
language plpgsql stable
as $$
begin
  if role is null then
    raise exception 'role must be given' using errcode = 'RG043';
  end if;
  if exists (select 1 from pg_roles r where r.oid = role and (r.rolsuper or r.rolbypassrls)) then
    raise exception 'role % bypasses row-level security (superuser or BYPASSRLS)', role
      using errcode = 'RG043', hint = 'grant to a role without SUPERUSER and BYPASSRLS: tenant isolation relies on row-level security';
  end if;
  if role = (select c.relowner from pg_class c where c.oid = 'regen._embeddings'::regclass) then
    raise exception 'role % owns the pgregen schema, and owners bypass row-level security', role
      using errcode = 'RG043', hint = 'give the application a role of its own';
  end if;
end
$$;
comment on function regen._check_grantee(regrole) is 'RG043 when a role would bypass row-level security';

create function regen.grant_app(role regrole)
returns void
language plpgsql volatile
as $$
begin
  perform regen._check_grantee(role);
  execute format('grant usage on schema regen to %s', role);
  -- search_scoped runs as the caller: it reads the store (under row-level security) and the catalog
  execute format('grant select on regen._embeddings, regen._sources, regen._versions, regen._source_versions to %s', role);
  execute format('grant select on regen.versions, regen.sources, regen.embedding_gap to %s', role);
  execute format('grant execute on function regen.search_scoped(vector, integer, text[], text, double precision), '
                 'regen.search_input(text, text[], text), regen.set_tenant(text), regen.current_tenant(), '
                 'regen._transaction_marker(), regen._policy_tenant(), regen._search_scope(text[], text), '
                 'regen._search_setting(text, integer, integer, integer), regen.preprocess(text, jsonb) to %s', role);
end
$$;
comment on function regen.grant_app(regrole) is
  'Lets an application role search (regen.search_scoped, regen.set_tenant) and read regen.versions, regen.sources and '
  'regen.embedding_gap; it sees the store only through row-level security, one tenant per transaction';

create function regen.grant_admin(role regrole)
returns void
language plpgsql volatile
as $$
declare
  v_policy text := 'admin_' || role::oid;
begin
  if role is null then
    raise exception 'role must be given' using errcode = 'RG043';
  end if;
  execute format('grant usage on schema regen to %s', role);
  execute format('grant select, insert, update, delete, truncate on all tables in schema regen to %s', role);
  execute format('grant usage, select, update on all sequences in schema regen to %s', role);
  execute format('grant execute on all functions in schema regen to %s', role);
  -- the worker's queue
  if to_regnamespace('pgboss') is not null then
    execute format('grant usage on schema pgboss to %s', role);
    execute format('grant select, insert, update, delete on all tables in schema pgboss to %s', role);
    execute format('grant usage, select, update on all sequences in schema pgboss to %s', role);
    execute format('grant execute on all functions in schema pgboss to %s', role);
  end if;
  -- every tenant's vectors
  if not exists (select 1 from pg_policy p where p.polrelid = 'regen._embeddings'::regclass and p.polname = v_policy) then
    execute format('create policy %I on regen._embeddings for all to %s using (true) with check (true)', v_policy, role);
  end if;
end
$$;
comment on function regen.grant_admin(regrole) is
  'Lets a role run the worker and operate pgregen (rebuild, retry_failed, every view and worker function) and see every '
  'tenant''s vectors; creating versions and registering sources stays with the owner';

create function regen.revoke_app(role regrole)
returns void
language plpgsql volatile
as $$
begin
  execute format('revoke all on all tables in schema regen from %s', role);
  execute format('revoke all on all functions in schema regen from %s', role);
  execute format('revoke usage on schema regen from %s', role);
end
$$;
comment on function regen.revoke_app(regrole) is 'Takes back what regen.grant_app() gave a role';

create function regen.revoke_admin(role regrole)
returns void
language plpgsql volatile
as $$
begin
  execute format('drop policy if exists %I on regen._embeddings', 'admin_' || role::oid);
  execute format('revoke all on all tables in schema regen from %s', role);
  execute format('revoke all on all sequences in schema regen from %s', role);
  execute format('revoke all on all functions in schema regen from %s', role);
  execute format('revoke usage on schema regen from %s', role);
  if to_regnamespace('pgboss') is not null then
    execute format('revoke all on all tables in schema pgboss from %s', role);
    execute format('revoke all on all sequences in schema pgboss from %s', role);
    execute format('revoke all on all functions in schema pgboss from %s', role);
    execute format('revoke usage on schema pgboss from %s', role);
  end if;
end
$$;
comment on function regen.revoke_admin(regrole) is
  'Takes back what regen.grant_admin() gave a role, including its privileges on the pg-boss schema';

-- Functions are not callable by every role: only by the owner and the roles granted above.
-- (pgregen install revokes again after every migration, so functions of later files follow suit.)
revoke execute on all functions in schema regen from public;
