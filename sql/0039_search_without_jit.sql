-- The search functions plan without JIT.
--
-- A cached generic plan is costed without the tenant's size, and its estimates can be large: on a
-- store loaded without a vacuum (no visibility map, so no index-only scan) and a regen._default_scope
-- that was never analyzed, search_tenant's one-statement search was estimated at about 117,000,
-- above PostgreSQL's jit_above_cost (100,000). With jit = on (PostgreSQL's default wherever its LLVM
-- support is installed, as on this project's test machines and many managed services) every call
-- then compiled its plan again: about 15 ms of JIT compilation for a search of one vector that runs
-- in 0.1 ms (measured with auto_explain on bench P's quick size: "JIT: Functions: 50 ... Emission
-- 15.6 ms"). A compiled plan is not kept between executions, so the cost is paid on every call, and
-- it buys nothing here: the time of a search is in pgvector's distance functions and the index,
-- which JIT does not compile.
--
-- Set on the two plpgsql functions that run every search statement (regen.search_scoped and
-- regen.search_rows call regen._search; regen.search_tenant runs its one-statement search itself);
-- a function's setting holds for the statements it runs and plans, the dynamic ones included.
-- test/search-without-jit.test.ts checks that both keep it.

alter function regen._search(vector, integer, text[], text, double precision, boolean) set jit = off;
alter function regen.search_tenant(text, vector, integer, text[], text, double precision, boolean) set jit = off;
