-- Every function of regen that keeps generic plans plans them without JIT, whatever a later file
-- restates.
--
-- sql/0039 set `jit = off` on regen._search and regen.search_tenant with ALTER FUNCTION. A later
-- `create or replace` of either would drop the setting without a word (CREATE OR REPLACE restates a
-- function's SET list as written), and the search would compile its kept plan again on every call
-- (sql/0039 tells why). regen._pin_plans_without_jit(), which the installer runs after every
-- migration (as it runs regen._pin_search_paths()), sets `jit = off` on every function of regen set
-- to `plan_cache_mode = force_generic_plan` that lacks it.
--
-- Error codes of this file: none.

create function regen._pin_plans_without_jit()
returns setof regprocedure
language plpgsql volatile
as $$
declare
  v_fn regprocedure;
begin
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
comment on function regen._pin_plans_without_jit() is
  'Sets jit = off on every function of regen that keeps generic plans (plan_cache_mode = force_generic_plan); returns '
  'the functions changed. The installer calls it after every run.';

select regen._pin_plans_without_jit();
