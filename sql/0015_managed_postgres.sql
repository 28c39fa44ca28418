-- Managed PostgreSQL and pgvector in any schema (issue 12, parts 2 and 3).
--
-- * Installed and run by a role that owns the database (or has CREATE on it) but is not a superuser,
--   with pgvector created by an administrator. On PostgreSQL 15 such a role may name
--   an extension's parameter in a function's SET clause only once the extension's library is loaded
--   in its session: sql/0008's `set hnsw.ef_search = 40 set hnsw.iterative_scan = off` on
--   regen.search_scoped failed there ("permission denied to set parameter"), and would fail again in
--   a pg_restore run by such a role. The installer loads the library before it runs the migrations;
--   regen.search_scoped no longer carries the two settings in its SET clause: it sets them with
--   set_config() after pgvector's library is surely loaded (vector_dims() of the query has run) and
--   gives the caller's values back when its approximate scan is done.
-- * pgvector in any schema (Supabase: `extensions`). plpgsql bodies and dynamic SQL resolve names at
--   call time, through the caller's search_path: `vector_dims`, `::vector(n)`, `halfvec`, the operator
--   classes. The functions that name pgvector's objects carry a search_path of their own,
--   `pg_catalog, regen, <pgvector's schema>, pg_temp`, set by regen._pin_search_paths(), which this file
--   and the installer after every run call (so `alter extension vector set schema ...` followed by
--   `pgregen install` is covered). Only those functions: a SET clause costs about a microsecond a call
--   and keeps the planner from inlining a SQL function, so the store's triggers, regen._state() and the
--   small SQL functions of row-level security stay as they are (they name no pgvector object; the
--   generated capture functions carry a search_path of their own already).
--   regen._hnsw_expression() spells the type and operator class as PostgreSQL prints them
--   (format_type): schema-qualified when the caller's search_path does not find them, so the
--   statements of regen.tenant_index_plan() run in the caller's session as they are.
--   regen.grant_app() grants regen.search_scoped by its oid instead of spelling `vector`.
-- * Every role that uses pgregen needs USAGE on pgvector's schema (the type and its functions are
--   looked up with the caller's privileges). regen.grant_app() and regen.grant_admin() grant it when
--   the owner holds it with the grant option, and otherwise say what the administrator must run.
--
-- Error codes of this file: RG044 a role cannot use pgvector's schema and the owner cannot grant it.
-- (RG070 is the installer's: a privilege only an administrator can give.)

-- ---------------------------------------------------------------------------------------------
-- Where pgvector lives

create function regen._vector_schema()
returns name
language sql stable
as $$
  select n.nspname from pg_extension e join pg_namespace n on n.oid = e.extnamespace where e.extname = 'vector'
$$;
comment on function regen._vector_schema() is 'The schema of the vector extension (pgvector), or null when it is not created';

-- The functions that resolve pgvector's names when they run, given pgvector's schema in a search_path
-- of their own. A new function that names a pgvector type, function, operator or operator class in
-- its body belongs in this list (test/managed-postgres.test.ts checks that none is missing).
create function regen._pin_search_paths()
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
      and p.proname in ('create_version', 'search_scoped', 'write_embeddings')
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

-- ---------------------------------------------------------------------------------------------
-- Index expressions, spelled for the caller's session

create or replace function regen._hnsw_expression(version_id integer)
returns text
language sql stable strict
as $$
  select format('((embedding::%s) %s)',
                format_type(t.oid, v.dimensions),
                case when pg_opclass_is_visible(oc.oid) then quote_ident(oc.opcname)
                     else format('%I.%I', n.nspname, oc.opcname) end)
  from regen._versions v
  join pg_extension e on e.extname = 'vector'
  join pg_namespace n on n.oid = e.extnamespace
  join pg_type t on t.typnamespace = e.extnamespace
                and t.typname = case when v.dimensions > 2000 then 'halfvec' else 'vector' end
  join pg_opclass oc on oc.opcnamespace = e.extnamespace
                    and oc.opcmethod = (select am.oid from pg_am am where am.amname = 'hnsw')
                    and oc.opcname = t.typname || case v.settings->>'distance' when 'cosine' then '_cosine_ops'
                                                                                when 'l2' then '_l2_ops' else '_ip_ops' end
  where v.id = _hnsw_expression.version_id
$$;
comment on function regen._hnsw_expression(integer) is
  'The HNSW index expression and operator class of a version, with pgvector''s names qualified when the caller''s '
  'search_path does not find them';

-- ---------------------------------------------------------------------------------------------
-- Searching: as in sql/0008_search.sql, without pgvector's parameters in the SET clause. The
-- approximate path sets them once pgvector's library is loaded and gives the caller's values back.

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
  v_caller_ef text;
  v_caller_iterative text;
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
  -- vector_dims() is pgvector's: from here on its library is loaded, and hnsw.* are known settings
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
    v_caller_iterative := current_setting('hnsw.iterative_scan');
    v_caller_ef := current_setting('hnsw.ef_search');
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
    -- the caller's values again (an error in between rolls them back with its (sub)transaction)
    perform set_config('hnsw.iterative_scan', v_caller_iterative, true);
    perform set_config('hnsw.ef_search', v_caller_ef, true);
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

-- ---------------------------------------------------------------------------------------------
-- Grants: pgvector's schema too

create function regen._grant_vector_usage(role regrole)
returns void
language plpgsql volatile
as $$
declare
  v_schema name := regen._vector_schema();
begin
  if v_schema is null or has_schema_privilege(role, v_schema, 'USAGE') then
    return;
  end if;
  if not has_schema_privilege(v_schema, 'USAGE WITH GRANT OPTION') then
    raise exception 'role % cannot use schema %, where pgvector is installed, and role % cannot grant it', role, quote_ident(v_schema), current_user
      using errcode = 'RG044',
            detail = 'searching and writing vectors look up pgvector''s type and functions with the privileges of the role that runs them',
            hint = format('a superuser (on managed PostgreSQL: the administrator role) must run: grant usage on schema %I to %s; '
                          '(or grant usage on schema %I to %I with grant option, so that pgregen grants it), then grant again',
                          v_schema, role, v_schema, current_user);
  end if;
  execute format('grant usage on schema %I to %s', v_schema, role);
end
$$;
comment on function regen._grant_vector_usage(regrole) is
  'Grants a role USAGE on pgvector''s schema when it lacks it and the caller may grant it; RG044 otherwise';

-- What regen._grant_vector_usage() gave (a grant of the current role), taken back.
create function regen._revoke_vector_usage(role regrole)
returns void
language plpgsql volatile
as $$
declare
  v_schema name := regen._vector_schema();
begin
  if exists (select 1 from pg_namespace n, aclexplode(n.nspacl) a
             where n.nspname = v_schema and a.grantee = role and a.grantor = current_user::regrole
               and a.privilege_type = 'USAGE') then
    execute format('revoke usage on schema %I from %s', v_schema, role);
  end if;
end
$$;
comment on function regen._revoke_vector_usage(regrole) is 'Takes back USAGE on pgvector''s schema when the current role granted it';

-- As in sql/0008_search.sql, plus pgvector's schema; regen.search_scoped named by its oid (its
-- argument type spelled as this session finds it, wherever pgvector lives).
create or replace function regen.grant_app(role regrole)
returns void
language plpgsql volatile
as $$
declare
  v_search text := (select string_agg(p.oid::regprocedure::text, ', ') from pg_proc p
                    where p.pronamespace = 'regen'::regnamespace and p.proname = 'search_scoped');
begin
  perform regen._check_grantee(role);
  perform regen._grant_vector_usage(role);
  execute format('grant usage on schema regen to %s', role);
  -- search_scoped runs as the caller: it reads the store (under row-level security) and the catalog
  execute format('grant select on regen._embeddings, regen._sources, regen._versions, regen._source_versions to %s', role);
  execute format('grant select on regen.versions, regen.sources, regen.embedding_gap to %s', role);
  execute format('grant execute on function %s, '
                 'regen.search_input(text, text[], text), regen.set_tenant(text), regen.current_tenant(), '
                 'regen._transaction_marker(), regen._policy_tenant(), regen._search_scope(text[], text), '
                 'regen._search_setting(text, integer, integer, integer), regen.preprocess(text, jsonb) to %s', v_search, role);
end
$$;
comment on function regen.grant_app(regrole) is
  'Lets an application role search (regen.search_scoped, regen.set_tenant) and read regen.versions, regen.sources and '
  'regen.embedding_gap; it sees the store only through row-level security, one tenant per transaction. Grants USAGE on '
  'pgvector''s schema when the role lacks it (RG044 when the owner cannot)';

-- As in sql/0012_isolation_and_recovery.sql, plus pgvector's schema.
create or replace function regen.grant_admin(role regrole)
returns void
language plpgsql volatile
as $$
declare
  v_policy text := 'admin_' || role::oid;
  v_app regrole;
begin
  if role is null then
    raise exception 'role must be given' using errcode = 'RG043';
  end if;
  -- an application role that is this one, or a member of it, would see every tenant through it
  select a.role_oid::regrole into v_app from regen._app_roles() a
  where pg_has_role(a.role_oid, role, 'MEMBER') order by a.role_oid = role desc limit 1;
  if v_app = role then
    raise exception 'role % is an application role (regen.grant_app), bound to one tenant: an admin role sees every tenant', role
      using errcode = 'RG043', hint = format('give the worker and operators a role of their own, or regen.revoke_app(%L) first', role);
  elsif v_app is not null then
    raise exception 'role % is an application role (regen.grant_app) and a member of %: as an admin role, % would let it read every tenant',
      v_app, role, role
      using errcode = 'RG043', hint = format('revoke the membership (revoke %s from %s), or regen.revoke_app(%L) first', role, v_app, v_app);
  end if;
  perform regen._grant_vector_usage(role);
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
  'Lets a role run the worker and operate pgregen (rebuild, retry_failed, recover, every view and worker function) and see every '
  'tenant''s vectors; creating versions and registering sources stays with the owner. RG043 when an application role is a member of it; '
  'grants USAGE on pgvector''s schema when the role lacks it (RG044 when the owner cannot).';

-- As in sql/0008_search.sql, plus what grant_app gave on pgvector's schema.
create or replace function regen.revoke_app(role regrole)
returns void
language plpgsql volatile
as $$
begin
  execute format('revoke all on all tables in schema regen from %s', role);
  execute format('revoke all on all functions in schema regen from %s', role);
  execute format('revoke usage on schema regen from %s', role);
  perform regen._revoke_vector_usage(role);
end
$$;
comment on function regen.revoke_app(regrole) is 'Takes back what regen.grant_app() gave a role';

-- As in sql/0008_search.sql, plus what grant_admin gave on pgvector's schema.
create or replace function regen.revoke_admin(role regrole)
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
  perform regen._revoke_vector_usage(role);
end
$$;
comment on function regen.revoke_admin(regrole) is
  'Takes back what regen.grant_admin() gave a role, including its privileges on the pg-boss schema and on pgvector''s schema';

-- As in sql/0012_isolation_and_recovery.sql, and application roles keep USAGE on pgvector's schema
-- (after alter extension vector set schema, pgregen install gives them the new one). A role that the
-- owner cannot give it is named in a warning; the rest of the upgrade goes on.
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
      perform regen._grant_vector_usage(v_role);
    exception when sqlstate 'RG044' then
      get stacked diagnostics v_hint = pg_exception_hint;
      raise warning 'application role %: %', v_role, sqlerrm using hint = v_hint;
    end;
  end loop;
  revoke execute on all functions in schema regen from public;
end
$$;
comment on function regen._refresh_grants() is
  'Grants admin roles what later migrations added, application and admin roles USAGE on pgvector''s schema, '
  'and keeps every function from PUBLIC';

-- Functions are not callable by every role (pgregen install revokes again after every run).
revoke execute on all functions in schema regen from public;

select regen._pin_search_paths();
