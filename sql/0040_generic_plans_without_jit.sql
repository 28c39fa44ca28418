-- Every function of regen that keeps generic plans plans them without JIT, whatever a later file
-- restates.
--
-- sql/0039 set `jit = off` on regen._search and regen.search_tenant with ALTER FUNCTION. A later
-- `create or replace` of either would drop the setting without a word (CREATE OR REPLACE restates a
-- function's SET list as written), and the search would compile its kept plan again on every call
-- (sql/0039 tells why). regen._pin_search_paths(), which the installer runs after every migration,
-- now also sets `jit = off` on every function of regen set to `plan_cache_mode = force_generic_plan`
-- that lacks it; it returns the functions it changed, for either reason.
--
-- Error codes of this file: none new (RG070 as before).

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
  -- a kept generic plan is costed without its parameters, and may be estimated above jit_above_cost
  for v_fn in
    select p.oid::regprocedure from pg_proc p
    where p.pronamespace = 'regen'::regnamespace
      and 'plan_cache_mode=force_generic_plan' = any(p.proconfig)
      and not 'jit=off' = any(p.proconfig)
    order by p.oid
  loop
    execute format('alter function %s set jit = off', v_fn);
    return next v_fn;
  end loop;
end
$$;
comment on function regen._pin_search_paths() is
  'Gives the functions that name pgvector''s objects the search_path pg_catalog, regen, <pgvector''s schema>, pg_temp, '
  'and every function that keeps generic plans (plan_cache_mode = force_generic_plan) jit = off; returns the functions '
  'changed. The installer calls it after every run (also after alter extension vector set schema).';

select regen._pin_search_paths();
