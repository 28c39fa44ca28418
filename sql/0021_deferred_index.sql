-- Indexes built when it is cheapest (issue 13, item 4). Inserting a vector into an HNSW graph
-- costs far more than writing the row, and a version being built is not searched before cutover:
-- its index was pure cost during the backfill (2.3-3.6x the time of loading without it and
-- building it afterwards, growing with size). So:
--
-- * regen.create_version() no longer creates the version's HNSW index, and
--   regen._ensure_version_index() (start_migration, register_source) creates it only for a version
--   a source serves that holds no vectors yet (an empty index: no time, no long lock). A version
--   being built is loaded without an index.
-- * CREATE INDEX CONCURRENTLY cannot run inside a function, so SQL only plans: regen.version_index_plan()
--   gives the statements that make a version's index valid (create it; drop an invalid leftover
--   of an interrupted build first), and says whether the version's backfill is (nearly) complete.
--   The owner's library and command line run them on a connection of their own (src/versions.ts:
--   pgregen index build, pgregen migrate cutover, pgregen rebuild once the gap is closed). The
--   worker, an admin role that does not own regen._embeddings, never builds an index.
-- * regen.cutover() and regen.rollback() refuse (RG056) to make a version active while it has no
--   valid index; the library's cutover() builds it first, concurrently, and cuts over then.
-- * A large gap on a serving version (after a disaster, say): regen.index_deferral_plan() names the
--   index of a version in a rebuild's scope of which more than half the rows and at least
--   min_rows (default 10,000) are missing. pgregen rebuild drops it concurrently, the workers load
--   the fast way, and it is built again concurrently once the gap is closed.
-- * regen.search_scoped() takes the exact path while the version has no valid index (and the
--   tenant none of its own): the answer stays exact, only slower for large scopes (defined in
--   sql/0023_pending_moves.sql, which redefines search_scoped once more).
-- * regen.versions shows index_state (ready, missing, invalid, building) and index_ready.
--
-- Error codes of this file: RG056 a version without a valid HNSW index made active (cutover,
-- rollback); RG057 an index plan's argument out of range. RG058 and RG059 are the library's
-- (src/versions.ts): a concurrent build that ended without a valid index, and a role that may not
-- build indexes on regen._embeddings.

-- ---------------------------------------------------------------------------------------------
-- The state of each version's index

-- 'building' is seen for builds of the current role (or any, for a role with pg_read_all_stats):
-- pg_stat_progress_create_index hides other roles' relations. A build it cannot see shows as 'invalid'.
create view regen._version_indexes as
  select v.id as version_id,
         v.tag as version,
         ('_embeddings_hnsw_v' || v.id)::name as index_name,
         c.oid as index_oid,
         case when c.oid is null then 'missing'
              when i.indisvalid and i.indisready then 'ready'
              when exists (select 1 from pg_stat_progress_create_index p where p.index_relid = c.oid) then 'building'
              else 'invalid' end as state
  from regen._versions v
  left join pg_class c on c.relnamespace = 'regen'::regnamespace and c.relname = ('_embeddings_hnsw_v' || v.id)::name
  left join pg_index i on i.indexrelid = c.oid;
comment on view regen._version_indexes is
  'Each version''s partial HNSW index and its state: ready (valid), missing, invalid (left by an interrupted concurrent build) '
  'or building (a CREATE INDEX in progress)';

-- As in sql/0002_versions.sql, plus the index's state at the end.
create or replace view regen.versions as
  select v.tag, v.provider, v.model, v.dimensions, v.settings, v.created_at,
         case when v.dimensions > 2000 then 'halfvec' else 'vector' end as index_type,
         x.state as index_state,
         x.state = 'ready' as index_ready
  from regen._versions v
  join regen._version_indexes x on x.version_id = v.id;
comment on view regen.versions is
  'Registered versions (vector spaces) with their settings, and whether their HNSW index is ready: index_state is ready, '
  'missing (a version being built gets it when its backfill is complete), invalid (an interrupted build: pgregen index build '
  'replaces it) or building';

-- The one statement that builds a version's index, concurrently. m and ef_construction are
-- pgvector's defaults, as the index regen.create_version() used to create.
create function regen._version_index_ddl(version_id integer)
returns text
language sql stable strict
as $$
  select format('create index concurrently if not exists %I on regen._embeddings using hnsw %s where version_id = %s',
                '_embeddings_hnsw_v' || _version_index_ddl.version_id, regen._hnsw_expression(_version_index_ddl.version_id),
                _version_index_ddl.version_id)
$$;
comment on function regen._version_index_ddl(integer) is
  'CREATE INDEX CONCURRENTLY of a version''s partial HNSW index, spelled for the caller''s session';

-- ---------------------------------------------------------------------------------------------
-- Versions: as in sql/0013_cli_eval.sql, without the index (regen.version_index_plan builds it).

create or replace function regen.create_version(
  tag text,
  model text,
  dimensions integer,
  provider text default 'openai',
  settings jsonb default '{}'
)
returns text
language plpgsql volatile
as $$
declare
  v_settings jsonb;
  v_existing regen._versions;
  v_id integer;
begin
  if tag is null or tag !~ '^\S{1,200}$' then
    raise exception 'version tag must be 1 to 200 characters without spaces, not %', coalesce(quote_literal(tag), 'NULL')
      using errcode = 'RG003', hint = 'for example: text-embedding-3-small@1/chunk-2000/norm-l2';
  end if;
  if coalesce(model, '') = '' or coalesce(provider, '') = '' then
    raise exception 'version % needs a model and a provider', tag using errcode = 'RG003';
  end if;
  -- the worker embeds through the official openai client only: any other provider would be stored and ignored
  if provider <> 'openai' then
    raise exception 'version % names provider %, which pgregen does not support: the worker embeds only through the OpenAI API',
      tag, quote_literal(provider)
      using errcode = 'RG003',
            hint = 'use provider ''openai'' (the default): it covers OpenAI and any OpenAI-compatible endpoint (Azure, Ollama, vLLM, TEI), '
                   'which the worker reaches through OPENAI_BASE_URL';
  end if;
  if dimensions is null or dimensions not between 1 and 16000 then
    raise exception 'version % needs dimensions between 1 and 16000, not %', tag, coalesce(dimensions::text, 'NULL')
      using errcode = 'RG003';
  end if;
  v_settings := regen._version_settings(coalesce(create_version.settings, '{}'), dimensions, model);

  -- Serialise creators of the same tag so the comparison below is race-free.
  perform pg_advisory_xact_lock(hashtext('regen.create_version'), hashtext(tag));
  select * into v_existing from regen._versions v where v.tag = create_version.tag;
  if found then
    if (v_existing.model, v_existing.dimensions, v_existing.provider, v_existing.settings)
       is distinct from (model, dimensions, provider, v_settings) then
      raise exception 'version % already exists with other settings', tag
        using errcode = 'RG002',
              detail = format('existing: %s %s, %s dimensions, %s; asked: %s %s, %s dimensions, %s',
                              v_existing.provider, v_existing.model, v_existing.dimensions, v_existing.settings,
                              provider, model, dimensions, v_settings),
              hint = 'a tag names one vector space forever: give the new settings a new tag';
    end if;
    return tag;
  end if;

  insert into regen._versions (tag, provider, model, dimensions, settings)
  values (tag, provider, model, dimensions, v_settings)
  returning id into v_id;
  perform regen._create_queue(v_id);
  return tag;
end
$$;
comment on function regen.create_version(text, text, integer, text, jsonb) is
  'Registers a version tag (one vector space: provider, model, dimensions, chunking, preprocessing) and its queue. Its HNSW '
  'index comes when a source first serves it (regen.register_source) or, for a version being built, once its backfill is '
  'complete (regen.version_index_plan, pgregen index build). Idempotent for identical settings; RG002 when the tag exists with '
  'other settings; RG003 for invalid settings or a provider other than ''openai'' (OpenAI and any OpenAI-compatible endpoint), '
  'the only one the worker embeds with.';

-- As in sql/0009_migration.sql, for a version a source serves and that holds no vector yet only:
-- the index is empty then, and creating it inside the caller's transaction takes no time. Any
-- other index is built concurrently, by the owner (regen.version_index_plan).
create or replace function regen._ensure_version_index(version_id integer)
returns void
language plpgsql volatile
as $$
begin
  if to_regclass(format('regen.%I', '_embeddings_hnsw_v' || version_id)) is null
     and exists (select 1 from regen._source_versions sv where sv.version_id = _ensure_version_index.version_id and sv.role = 'active')
     and not exists (select 1 from regen._embeddings e where e.version_id = _ensure_version_index.version_id) then
    execute format('create index %I on regen._embeddings using hnsw %s where version_id = %s',
                   '_embeddings_hnsw_v' || version_id, regen._hnsw_expression(version_id), version_id);
  end if;
end
$$;
comment on function regen._ensure_version_index(integer) is
  'Creates the (empty) HNSW index of a version a source serves and that holds no vectors yet; any other is left to '
  'regen.version_index_plan';

-- ---------------------------------------------------------------------------------------------
-- Plans: the statements the owner's library runs, one at a time, outside a transaction

create type regen.version_index_step as (
  version text,
  state text,
  action text,
  index_name text,
  statement text,
  open bigint,
  expected bigint,
  backfilled boolean
);
comment on type regen.version_index_step is
  'One step of regen.version_index_plan(): what the index of a version needs (create, drop, wait) and how far its backfill is';

-- Every version a source uses (or the one named, used or not) whose index is not ready:
--   missing  -> create: CREATE INDEX CONCURRENTLY
--   invalid  -> drop: DROP INDEX CONCURRENTLY of the leftover; the plan after it says create
--   building -> wait: another session is building it
-- backfilled: at most 1% of the rows the version's sources expect are still to embed (missing, stale
-- or outdated; failed items do not hold it back). Building the index then costs no more than after
-- the last row, and the few rows left go into the index as they are written.
create function regen.version_index_plan(version text default null)
returns setof regen.version_index_step
language plpgsql stable
as $$
declare
  v_version_id integer := case when version_index_plan.version is not null then regen._version_id(version_index_plan.version) end;
begin
  return query
  with gap as (
    select g.version, sum(g.expected)::bigint as expected, sum(g.missing + g.stale + g.outdated)::bigint as open
    from regen.embedding_gap g
    group by g.version
  )
  select x.version, x.state,
         case x.state when 'missing' then 'create' when 'invalid' then 'drop' else 'wait' end,
         format('regen.%I', x.index_name),
         case x.state when 'missing' then regen._version_index_ddl(x.version_id)
                      when 'invalid' then format('drop index concurrently if exists regen.%I', x.index_name) end,
         coalesce(g.open, 0), coalesce(g.expected, 0),
         coalesce(g.open, 0) <= floor(coalesce(g.expected, 0) * 0.01)
  from regen._version_indexes x
  left join gap g on g.version = x.version
  where x.state <> 'ready'
    and (x.version_id = v_version_id
         or v_version_id is null and exists (select 1 from regen._source_versions sv where sv.version_id = x.version_id))
  order by x.version_id;
end
$$;
comment on function regen.version_index_plan(text) is
  'What the HNSW index of each version in use (or of the one named) needs to be ready: create (CREATE INDEX CONCURRENTLY), '
  'drop (DROP INDEX CONCURRENTLY of an invalid leftover, then create) or wait (a build is running), with the statement to run '
  'outside a transaction as the owner of regen._embeddings, and whether the version''s backfill is complete (at most 1% of '
  'its rows still to embed). pgregen index build runs it. RG001 unknown version.';

create type regen.index_deferral_step as (
  version text,
  index_name text,
  missing bigint,
  expected bigint,
  statement text
);
comment on type regen.index_deferral_step is 'One step of regen.index_deferral_plan(): an index to drop before a large load';

-- The index of a version in a rebuild's scope (the sources named, or all; the version named, or
-- each one's active version) of which more than half the rows, and at least min_rows, are missing:
-- the workers load such a gap faster without it, and it is built again concurrently afterwards.
-- Counted over every source using the version (the index holds them all). Only missing rows count:
-- a stale or outdated row has a vector that searches use meanwhile.
create function regen.index_deferral_plan(source text default null, version text default null, min_rows bigint default 10000)
returns setof regen.index_deferral_step
language plpgsql stable
as $$
declare
  v_source_id integer := case when index_deferral_plan.source is not null then (regen._source(index_deferral_plan.source)).id end;
  v_version_id integer := case when index_deferral_plan.version is not null then regen._version_id(index_deferral_plan.version) end;
begin
  if min_rows is null or min_rows < 0 then
    raise exception 'min_rows must be 0 or more, not %', coalesce(min_rows::text, 'NULL')
      using errcode = 'RG057', hint = 'the fewest missing rows worth loading without the index, e.g. 10000';
  end if;
  return query
  with scope as (
    select distinct sv.version_id
    from regen._source_versions sv
    where (v_source_id is null or sv.source_id = v_source_id)
      and case when v_version_id is null then sv.role = 'active' else sv.version_id = v_version_id end
  ), gap as (
    select g.version, sum(g.missing)::bigint as missing, sum(g.expected)::bigint as expected
    from regen.embedding_gap g
    group by g.version
  )
  select x.version, format('regen.%I', x.index_name), g.missing, g.expected,
         format('drop index concurrently if exists regen.%I', x.index_name)
  from scope s
  join regen._version_indexes x on x.version_id = s.version_id
  join gap g on g.version = x.version
  where x.state <> 'missing' and g.missing >= index_deferral_plan.min_rows and g.missing * 2 > g.expected
  order by x.version_id;
end
$$;
comment on function regen.index_deferral_plan(text, text, bigint) is
  'The HNSW indexes to drop (DROP INDEX CONCURRENTLY) before a rebuild of the scope loads a large gap: a version of which '
  'more than half the rows and at least min_rows (default 10,000) are missing. Searches take the exact path meanwhile; '
  'regen.version_index_plan builds the index again. pgregen rebuild runs it. RG057 for a negative min_rows.';

-- RG056 when a version has no valid index: what is wrong and the command that builds it.
create function regen._require_version_index(source text, version_id integer, step text)
returns void
language plpgsql stable
as $$
declare
  v_index regen._version_indexes;
begin
  select * into strict v_index from regen._version_indexes x where x.version_id = _require_version_index.version_id;
  if v_index.state = 'ready' then
    return;
  end if;
  raise exception '% of source % refused: version % has no valid HNSW index (%)', step, source, quote_literal(v_index.version),
    case v_index.state when 'missing' then 'it is built once the backfill is complete'
                       when 'building' then 'a concurrent build is running'
                       else 'an interrupted concurrent build left it invalid' end
    using errcode = 'RG056',
          hint = case when v_index.state = 'building'
                      then 'wait for the build to finish (pg_stat_progress_create_index shows it), then try again'
                      else format('build it first, concurrently, as the owner of regen._embeddings: pgregen index build --version %s '
                                  '(pgregen migrate %s does it before the %s)', v_index.version, step, step) end;
end
$$;
comment on function regen._require_version_index(text, integer, text) is
  'Raises RG056 when a version has no valid HNSW index, naming the command that builds it';

-- ---------------------------------------------------------------------------------------------
-- Making a version active needs its index: as in sql/0009_migration.sql, plus RG056 after every
-- other check (so a cutover below the gate is refused for that first, before anything is built).

create or replace function regen.cutover(
  source text,
  version text,
  min_coverage double precision default 0.995,
  force boolean default false,
  reason text default null
)
returns text
language plpgsql volatile
as $$
declare
  v_source regen._sources := regen._source(cutover.source);
  v_version_id integer := regen._version_id(cutover.version);
  v_role text;
  v_active regen._source_versions;
  v_active_tag text;
  v_gap record;
begin
  if min_coverage is null or min_coverage = 'NaN' or min_coverage not between 0 and 1 then
    raise exception 'min_coverage must be between 0 and 1, not %', coalesce(min_coverage::text, 'NULL')
      using errcode = 'RG055', hint = 'the share of rows with a current vector, e.g. 0.995';
  end if;
  if force and coalesce(btrim(reason), '') = '' then
    raise exception 'a forced cutover needs a reason'
      using errcode = 'RG052', hint = 'pass reason => ''...'': it is recorded in regen.version_events';
  end if;
  perform regen._lock_versions(v_source.id);
  select sv.role into v_role from regen._source_versions sv where sv.source_id = v_source.id and sv.version_id = v_version_id;
  if v_role is null then
    raise exception 'source % does not use version %', v_source.name, quote_literal(cutover.version)
      using errcode = 'RG050', hint = format('start building it first: regen.start_migration(%L, %L)', v_source.name, cutover.version);
  elsif v_role = 'active' then
    raise notice 'version % is already the active version of source %', cutover.version, v_source.name;
    return cutover.version;
  end if;
  select sv.* into strict v_active from regen._source_versions sv where sv.source_id = v_source.id and sv.role = 'active';
  select v.tag into v_active_tag from regen._versions v where v.id = v_active.version_id;
  if v_role = 'building' and exists (select 1 from regen._source_versions sv where sv.source_id = v_source.id and sv.role = 'previous') then
    raise exception 'source % still keeps version % for rollback',
      v_source.name, (select quote_literal(v.tag) from regen._source_versions sv join regen._versions v on v.id = sv.version_id
                      where sv.source_id = v_source.id and sv.role = 'previous')
      using errcode = 'RG050', detail = format('after this cutover %s would be the version kept for rollback', quote_literal(v_active_tag)),
            hint = 'retire the older version first with regen.retire()';
  end if;

  select * into v_gap from regen._coverage(v_source.id, v_version_id);
  if v_gap.coverage < min_coverage and not force then
    raise exception 'version % of source % covers % of its rows, below the cutover gate of %',
      quote_literal(cutover.version), v_source.name,
      round(v_gap.coverage * 100, 2) || '%', round(min_coverage::numeric * 100, 2) || '%'
      using errcode = 'RG051',
            detail = format('%s of %s rows current; missing %s, stale %s, outdated %s, failed %s; %s queued',
                            v_gap.current, v_gap.expected, v_gap.missing, v_gap.stale, v_gap.outdated, v_gap.failed, v_gap.queued),
            hint = 'let the workers finish (regen.rebuild_progress), retry failed items with regen.retry_failed(), '
                   'or force => true with a reason';
  end if;
  perform regen._require_version_index(v_source.name, v_version_id, 'cutover');

  -- One transaction flips both roles: a search sees the old version or the new one, never neither.
  update regen._source_versions sv set role = 'previous', role_since = now()
  where sv.source_id = v_source.id and sv.version_id = v_active.version_id;
  update regen._source_versions sv set role = 'active', role_since = now()
  where sv.source_id = v_source.id and sv.version_id = v_version_id;
  insert into regen._version_events (source, version, event, from_version, coverage, forced, reason, detail)
  values (v_source.name, cutover.version, 'cutover', v_active_tag, v_gap.coverage, force and v_gap.coverage < min_coverage,
          nullif(btrim(reason), ''),
          jsonb_build_object('min_coverage', min_coverage, 'expected', v_gap.expected, 'current', v_gap.current));
  return cutover.version;
end
$$;
comment on function regen.cutover(text, text, double precision, boolean, text) is
  'Makes a version the one served for a source, if its coverage reaches min_coverage (default 0.995) and its HNSW index is '
  'valid; the version served until now is kept, still maintained, for regen.rollback(). RG051 below the gate; RG056 without a '
  'valid index (pgregen migrate cutover builds it first); force => true needs a reason (RG052) and is recorded.';

create or replace function regen.rollback(source text, reason text default null)
returns text
language plpgsql volatile
as $$
declare
  v_source regen._sources := regen._source(rollback.source);
  v_previous integer;
  v_active integer;
  v_gap record;
  v_tag text;
begin
  perform regen._lock_versions(v_source.id);
  select sv.version_id into v_previous from regen._source_versions sv where sv.source_id = v_source.id and sv.role = 'previous';
  if v_previous is null then
    raise exception 'source % has no previous version to roll back to', v_source.name
      using errcode = 'RG053', hint = 'a version is kept for rollback by regen.cutover() until regen.retire() removes it';
  end if;
  perform regen._require_version_index(v_source.name, v_previous, 'rollback');
  select sv.version_id into strict v_active from regen._source_versions sv where sv.source_id = v_source.id and sv.role = 'active';
  select * into v_gap from regen._coverage(v_source.id, v_previous);
  -- a swap: the version rolled back from is now the one kept, and can be cut over to again
  update regen._source_versions sv set role = 'previous', role_since = now()
  where sv.source_id = v_source.id and sv.version_id = v_active;
  update regen._source_versions sv set role = 'active', role_since = now()
  where sv.source_id = v_source.id and sv.version_id = v_previous;
  select v.tag into v_tag from regen._versions v where v.id = v_previous;
  insert into regen._version_events (source, version, event, from_version, coverage, reason)
  values (v_source.name, v_tag, 'rollback', (select v.tag from regen._versions v where v.id = v_active), v_gap.coverage,
          nullif(btrim(reason), ''));
  return v_tag;
end
$$;
comment on function regen.rollback(text, text) is
  'Serves the previous version of a source again, at once: its vectors and its index were kept and maintained, so nothing is '
  're-embedded. The version rolled back from becomes the one kept. RG053 when there is none; RG056 when its HNSW index is not '
  'valid (dropped by hand, or an interrupted build: pgregen migrate rollback builds it first).';

-- Functions are not callable by every role (pgregen install revokes again after every run), and
-- the functions that name pgvector's objects get their search_path again (create or replace reset it).
revoke execute on all functions in schema regen from public;
select regen._pin_search_paths();
