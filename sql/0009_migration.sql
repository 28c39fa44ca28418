-- Migrating a source to another version without downtime: the new version is built beside the
-- active one (edits captured for both, backfill hot-first), cutover is gated on its coverage,
-- rollback flips back to the version kept as 'previous', and retire removes a version's vectors
-- once the rollback window has passed. Every step is recorded in regen.version_events.
--
-- Error codes of this file: RG050 the migration step does not fit the source's versions (already
-- used, nothing building, a version still kept for rollback), RG051 cutover below the coverage
-- gate, RG052 a forced cutover without a reason, RG053 nothing to roll back to, RG054 retire
-- refused (the active version, or inside the rollback window), RG055 an invalid argument.

-- Roles: 'active' is served; 'building' is being filled; 'previous' was active before the last
-- cutover (or rollback) and is kept current, so rolling back to it needs no re-embedding.
alter table regen._source_versions drop constraint _source_versions_role_check;
alter table regen._source_versions add constraint _source_versions_role_check
  check (role in ('active', 'building', 'previous'));
alter table regen._source_versions add column role_since timestamptz not null default now();
comment on column regen._source_versions.role_since is 'When the version took its present role: for previous, the start of the rollback window';
-- At most one building and one previous version per source: kept by the migration functions, which
-- lock a source's version rows first (regen._lock_versions). A unique index could not take a swap.

create table regen._version_events (
  id bigint generated always as identity primary key,
  at timestamptz not null default now(),
  actor text not null default session_user,
  source text not null,
  version text not null,
  event text not null check (event in ('start_migration', 'cutover', 'rollback', 'retire')),
  from_version text,
  coverage numeric,
  forced boolean not null default false,
  reason text,
  detail jsonb
);
create index _version_events_source on regen._version_events (source, at);

create view regen.version_events as
  select e.id, e.at, e.actor, e.source, e.version, e.event, e.from_version, e.coverage, e.forced, e.reason, e.detail
  from regen._version_events e;
comment on view regen.version_events is
  'Audit trail of migrations: when, who (session user), which source and version, what (start_migration, cutover, '
  'rollback, retire), the version served before, the coverage at that moment and the reason given';

-- Coverage of one source's version, from the exact gap counts.
create function regen._coverage(source_id integer, version_id integer)
returns table (expected bigint, current bigint, missing bigint, stale bigint, outdated bigint, failed bigint, queued bigint, coverage numeric)
language sql stable
as $$
  select coalesce(sum(t.n), 0)::bigint,
         coalesce(sum(t.n) filter (where t.state = 'current'), 0)::bigint,
         coalesce(sum(t.n) filter (where t.state = 'missing'), 0)::bigint,
         coalesce(sum(t.n) filter (where t.state = 'stale'), 0)::bigint,
         coalesce(sum(t.n) filter (where t.state = 'outdated'), 0)::bigint,
         coalesce(sum(t.n) filter (where t.state = 'failed'), 0)::bigint,
         coalesce(sum(t.n) filter (where t.queued and t.state <> 'current'), 0)::bigint,
         round(coalesce(coalesce(sum(t.n) filter (where t.state = 'current'), 0)::numeric / nullif(sum(t.n), 0), 1), 6)
  from regen._gap_totals t
  where t.source_id = _coverage.source_id and t.version_id = _coverage.version_id
$$;
comment on function regen._coverage(integer, integer) is 'Exact item counts by state and coverage (current / expected) of one source and version';

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

-- A version's HNSW index (see regen.create_version), made again if regen.retire() dropped it when
-- the last source stopped using the version. It then covers no rows: creating it takes no time.
create function regen._ensure_version_index(version_id integer)
returns void
language plpgsql volatile
as $$
begin
  if to_regclass(format('regen.%I', '_embeddings_hnsw_v' || version_id)) is null then
    execute format('create index %I on regen._embeddings using hnsw %s where version_id = %s',
                   '_embeddings_hnsw_v' || version_id, regen._hnsw_expression(version_id), version_id);
  end if;
end
$$;
comment on function regen._ensure_version_index(integer) is 'Creates a version''s partial HNSW index when it is missing';

-- The index of a version no source uses any more: regen.retire() names it, and the caller drops it
-- with DROP INDEX CONCURRENTLY (which cannot run inside a function), so searches never wait.
create function regen.unused_version_indexes()
returns table (version text, index_name text)
language sql stable
as $$
  select v.tag, format('regen.%I', c.relname)
  from regen._versions v
  join pg_class c on c.relname = '_embeddings_hnsw_v' || v.id
                 and c.relnamespace = 'regen'::regnamespace
  where not exists (select 1 from regen._source_versions sv where sv.version_id = v.id)
$$;
comment on function regen.unused_version_indexes() is
  'HNSW indexes of versions no source uses: drop them with DROP INDEX CONCURRENTLY (pgregen migrate retire does)';

-- The source's versions, locked: migration steps of one source run one at a time.
create function regen._lock_versions(source_id integer)
returns void
language sql volatile
as $$
  select null from regen._source_versions sv where sv.source_id = _lock_versions.source_id for update
$$;
comment on function regen._lock_versions(integer) is 'Locks the version rows of a source, so its migration steps run one at a time';

create function regen.start_migration(source text, version text)
returns regen.rebuild_result
language plpgsql volatile set jit = off
as $$
declare
  v_source regen._sources := regen._source(start_migration.source);
  v_version_id integer := regen._version_id(start_migration.version);
  v_role text;
  v_building text;
  v_active integer;
  v_copied bigint;
  v_result regen.rebuild_result;
begin
  perform regen._lock_versions(v_source.id);
  select sv.role into v_role from regen._source_versions sv where sv.source_id = v_source.id and sv.version_id = v_version_id;
  if v_role is not null then
    raise exception 'source % already uses version % (%)', v_source.name, quote_literal(start_migration.version), v_role
      using errcode = 'RG050',
            hint = case v_role when 'previous' then 'it is kept for rollback: regen.cutover() returns to it, regen.retire() removes it'
                               when 'building' then 'follow it in regen.embedding_gap, then regen.cutover()'
                               else 'it is the version served now' end;
  end if;
  select v.tag into v_building from regen._source_versions sv join regen._versions v on v.id = sv.version_id
  where sv.source_id = v_source.id and sv.role = 'building';
  if v_building is not null then
    raise exception 'source % is already migrating to version %', v_source.name, quote_literal(v_building)
      using errcode = 'RG050', hint = format('cut over to it, or abandon it with regen.retire(%L, %L)', v_source.name, v_building);
  end if;
  select sv.version_id into strict v_active from regen._source_versions sv where sv.source_id = v_source.id and sv.role = 'active';
  perform regen._ensure_version_index(v_version_id);

  -- No edit may commit between the copy below and the trigger seeing the new version: it would be
  -- captured for neither. Writers to the table wait for this transaction (the copy is one statement).
  execute format('lock table %s in share row exclusive mode', v_source.relation);
  insert into regen._source_versions (source_id, version_id, role) values (v_source.id, v_version_id, 'building');
  -- The text hash does not depend on the version: the active version's items are the rows to build.
  -- A row that has a vector in the active version is 'outdated' until the new one has its own.
  insert into regen._items (source_id, version_id, row_id, tenant, priority, content_hash, has_legacy)
  select it.source_id, v_version_id, it.row_id, it.tenant, it.priority, it.content_hash, it.embedded_hash is not null
  from regen._items it
  where it.source_id = v_source.id and it.version_id = v_active
  order by it.row_id;
  get diagnostics v_copied = row_count;
  if v_copied >= 1000 then
    analyze regen._items;
  end if;

  select * into v_result from regen.rebuild(v_source.name, start_migration.version);
  insert into regen._version_events (source, version, event, from_version, coverage, detail)
  values (v_source.name, start_migration.version, 'start_migration',
          (select v.tag from regen._versions v where v.id = v_active), 0,
          jsonb_build_object('items', v_copied, 'enqueued', v_result.items));
  return (v_source.name, start_migration.version, v_copied, null, v_result.jobs)::regen.rebuild_result;
end
$$;
comment on function regen.start_migration(text, text) is
  'Starts building a new version of a source beside the active one: edits are captured for both, and every row is '
  'enqueued hot-first. The active version keeps serving until regen.cutover(). RG050 when the source already uses '
  'the version or is migrating to another. Returns the rows to build and the jobs enqueued.';

create function regen.cutover(
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
  'Makes a version the one served for a source, if its coverage reaches min_coverage (default 0.995); the version '
  'served until now is kept, still maintained, for regen.rollback(). RG051 below the gate; force => true needs a '
  'reason (RG052) and is recorded.';

create function regen.rollback(source text, reason text default null)
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
  'Serves the previous version of a source again, at once: its vectors were kept and maintained, so nothing is '
  're-embedded. The version rolled back from becomes the one kept. RG053 when there is none.';

create function regen.retire(source text, version text, min_age interval default '7 days')
returns bigint
language plpgsql volatile set jit = off
as $$
declare
  v_source regen._sources := regen._source(retire.source);
  v_version_id integer := regen._version_id(retire.version);
  v_sv regen._source_versions;
  v_deleted bigint;
begin
  if min_age is null or min_age < interval '0' then
    raise exception 'min_age must be an interval of zero or more, not %', coalesce(min_age::text, 'NULL')
      using errcode = 'RG055', hint = 'the rollback window, e.g. ''7 days''';
  end if;
  perform regen._lock_versions(v_source.id);
  select sv.* into v_sv from regen._source_versions sv where sv.source_id = v_source.id and sv.version_id = v_version_id;
  if v_sv.role is null then
    raise exception 'source % does not use version %', v_source.name, quote_literal(retire.version)
      using errcode = 'RG050', hint = 'see regen.embedding_gap for the versions each source uses';
  elsif v_sv.role = 'active' then
    raise exception 'version % is the active version of source % and cannot be retired', quote_literal(retire.version), v_source.name
      using errcode = 'RG054', hint = 'cut over to another version first';
  elsif v_sv.role = 'previous' and now() - v_sv.role_since < min_age then
    raise exception 'version % of source % is inside its rollback window: it stopped being served % ago, less than %',
      quote_literal(retire.version), v_source.name, date_trunc('second', now() - v_sv.role_since), min_age
      using errcode = 'RG054',
            hint = format('retire it after %s, or pass a shorter min_age', to_char(v_sv.role_since + min_age, 'YYYY-MM-DD HH24:MI:SS TZ'));
  end if;
  -- A 'building' version was never served: abandoning it needs no window.
  delete from regen._source_versions sv where sv.source_id = v_source.id and sv.version_id = v_version_id;
  -- Searches are not blocked: deleting rows takes no lock readers wait for. Items first, then
  -- vectors (the order the capture trigger deletes in).
  delete from regen._items it where it.source_id = v_source.id and it.version_id = v_version_id;
  delete from regen._embeddings e where e.source_id = v_source.id and e.version_id = v_version_id;
  get diagnostics v_deleted = row_count;
  delete from regen._gap_counts g where g.source_id = v_source.id and g.version_id = v_version_id;
  delete from regen._gap_deltas g where g.source_id = v_source.id and g.version_id = v_version_id;
  insert into regen._version_events (source, version, event, detail)
  values (v_source.name, retire.version, 'retire',
          jsonb_build_object('role', v_sv.role, 'vectors_removed', v_deleted, 'min_age', min_age::text));
  return v_deleted;
end
$$;
comment on function regen.retire(text, text, interval) is
  'Removes a version a source no longer serves: its items and vectors. A previous version only after min_age '
  '(default 7 days) since it stopped being served (RG054 inside that window, and always for the active version); '
  'a building version (an abandoned migration) at any time. Searches are not blocked. Returns the vectors removed.';
