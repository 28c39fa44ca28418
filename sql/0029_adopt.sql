-- Adopting existing embeddings (issue 15, item 1). Most teams who come to pgregen have vectors
-- already: a column of the source table that a script filled (with NULLs where it failed), or a
-- table of their own keyed by the row id, with a chunk number. regen.start_adoption() and
-- regen.finish_adoption() store those vectors as a version's, for the rows' current text, with no
-- provider call beyond a sample:
--
-- 1. start_adoption(source, version, vector_column, ...) checks the arguments, judges every row
--    (below) and draws a random sample of the rows it can adopt (sample_fraction of them, at least
--    sample_min), whose chunk texts, as the version prepares them, it returns through
--    regen.adoption_sample(id).
-- 2. The caller embeds the sample with the version's model (pgregen adopt, or adopt() in
--    TypeScript: the only provider calls) and hands the vectors to finish_adoption(id, ...).
-- 3. finish_adoption compares each sample vector with the existing one (cosine similarity).
--    All at min_cosine or above: the vectors are adopted as the version's own, current, and
--    join the content-addressed cache. Any below: the adoption is refused, with the figures, and
--    nothing is stored; unless force, in which case the vectors are stored but marked adopted:
--    searchable at once, in a state of their own in regen.embedding_gap ('adopted', counted in
--    expected, not in current), never handed out by the cache, and re-embedded by the next
--    regen.rebuild(), hot-first, like any other gap. The sample rows get the fresh vectors either way.
--
-- Nobody can prove which text and which model produced an old vector; the sample is the evidence,
-- and regen.adoptions keeps it (sampled, the lowest and mean similarity, how many fell below).
--
-- Rows judged by start and again by finish (an edit in between is seen), each one of:
--   ok                 its text's chunks each have a vector of the version's dimensions
--   current            the version already holds the row's vectors for its text (left as they are)
--   null               a NULL vector (or no vector for one of its chunks): left missing
--   wrong_dimensions   a vector of another size than the version's: left missing
--   chunked            from a column, but the version splits the row's text into several chunks:
--                      one vector cannot stand for them (adopt from a table that names chunks)
--   not_given          a row of the source that the table of vectors does not have
--   unknown            a row of the table of vectors that is not a row of the source (deleted,
--                      filtered out, or its text edited and not yet applied)
-- Chunk numbers are pgregen's: 1 for the first chunk, as regen._embeddings.chunk_no.
--
-- Error codes of this file: RG080 invalid adoption argument; RG081 unknown adoption or one already
-- finished; RG082 the sample's vectors do not match the sample.

-- The hash that marks an item's vectors as adopted without verification: not the content's own
-- hash, so that nothing takes them for current. (Spelled out in the views: application roles read
-- the gap and execute only what grant_app gives.)
create function regen._adopted_hash(content_hash bytea)
returns bytea
language sql immutable parallel safe
as $$ select sha256('adopted:'::bytea || content_hash) $$;
comment on function regen._adopted_hash(bytea) is
  'The embedded_hash (and regen._embeddings content_hash and text_hash) of vectors adopted without verification';

-- regen._state of sql/0001, with the adopted state: stored, for the current text, but not proven.
create or replace function regen._state(content_hash bytea, embedded_hash bytea, failed_hash bytea, has_legacy boolean)
returns text
language sql immutable parallel safe
as $$
  select case
    when embedded_hash = content_hash then 'current'
    when failed_hash = content_hash then 'failed'
    when embedded_hash is not null and embedded_hash = sha256('adopted:'::bytea || content_hash) then 'adopted'
    when embedded_hash is not null then 'stale'
    when has_legacy then 'outdated'
    else 'missing'
  end
$$;
comment on function regen._state(bytea, bytea, bytea, boolean) is
  'State of one item for one version: current, failed, adopted (vectors adopted without verification), stale, outdated '
  'or missing (first match wins)';

-- The counts of sql/0020_change_log.sql, with the adopted state.
create or replace view regen._gap_totals as
  select source_id, version_id, tenant, state, queued, sum(n)::bigint as n
  from (
    select c.source_id, c.version_id, c.tenant, c.state, c.queued, c.n from regen._gap_counts c
    where (select s.verified from regen._store_state s)
    union all
    select d.source_id, d.version_id, d.tenant, d.state, d.queued, d.n from regen._gap_deltas d
    where (select s.verified from regen._store_state s)
    union all
    select it.source_id, it.version_id, it.tenant,
           case when it.embedded_hash = it.content_hash then 'current'
                when it.failed_hash = it.content_hash then 'failed'
                when it.embedded_hash = sha256('adopted:'::bytea || it.content_hash) then 'adopted'
                when it.embedded_hash is not null then 'stale'
                when it.has_legacy then 'outdated'
                else 'missing' end,
           it.queue_job is not null, -1::bigint
    from (select distinct c.source_id, c.row_id from regen._changes c) p
    join regen._source_versions sv on sv.source_id = p.source_id
    join regen._items it on it.source_id = sv.source_id and it.version_id = sv.version_id and it.row_id = p.row_id
    where (select s.verified from regen._store_state s)
    union all
    select l.source_id, sv.version_id, l.tenant,
           case when l.error is not null then 'failed'
                when it.embedded_hash = l.content_hash then 'current'
                when it.failed_hash = l.content_hash then 'failed'
                when it.embedded_hash = sha256('adopted:'::bytea || l.content_hash) then 'adopted'
                when it.embedded_hash is not null then 'stale'
                when it.has_legacy then 'outdated'
                else 'missing' end,
           l.error is null and it.queue_job is not null, 1::bigint
    from (select distinct on (c.source_id, c.row_id) c.* from regen._changes c order by c.source_id, c.row_id, c.seq desc) l
    join regen._source_versions sv on sv.source_id = l.source_id
    left join regen._items it on it.source_id = l.source_id and it.version_id = sv.version_id and it.row_id = l.row_id
    where l.present and (select s.verified from regen._store_state s)
    union all
    select it.source_id, it.version_id, it.tenant,
           case
             when held.embedded and it.embedded_hash = it.content_hash then 'current'
             when it.failed_hash = it.content_hash then 'failed'
             when held.embedded and it.embedded_hash = sha256('adopted:'::bytea || it.content_hash) then 'adopted'
             when held.embedded then 'stale'
             when it.has_legacy and held.legacy then 'outdated'
             else 'missing'
           end,
           it.queue_job is not null, 1::bigint
    from regen._items it
    -- Only while the store is not verified. The join on an expression the planner cannot estimate
    -- keeps this branch's estimated cost small: judged by its true size, every read of the gap would
    -- be compiled by JIT (1.9 s at 50,000 items with PostgreSQL's default settings), verified or not.
    join (select 1 as one from regen._store_state s where not s.verified) unverified
      on unverified.one = it.version_id - it.version_id + 1
    cross join lateral (
      select it.embedded_hash is not null and (
               select count(*) from regen._embeddings e
               where e.version_id = it.version_id and e.source_id = it.source_id and e.row_id = it.row_id
                 and e.content_hash = it.embedded_hash
                 and (it.plan_hash is distinct from it.embedded_hash or e.chunk_no <= cardinality(it.chunk_hashes))
             ) >= case when it.plan_hash = it.embedded_hash then cardinality(it.chunk_hashes) else 1 end as embedded,
             it.has_legacy and exists (
               select 1 from regen._source_versions o
               join regen._embeddings e on e.version_id = o.version_id and e.source_id = o.source_id and e.row_id = it.row_id
               where o.source_id = it.source_id and o.version_id <> it.version_id) as legacy
    ) held
  ) c
  group by 1, 2, 3, 4, 5;
comment on view regen._gap_totals is
  'Item counts per source, version, tenant, state and queued flag: from the counters while the store is verified '
  '(corrected for the rows whose changes wait in regen._changes), else judged item by item against the store';

-- The gap views of sql/0012 and sql/0006, with a column for the adopted items (last, so that the
-- views keep their columns).
create or replace view regen.embedding_gap as
  select s.name as source,
         v.tag as version,
         sv.role,
         coalesce(sum(t.n), 0)::bigint as expected,
         coalesce(sum(t.n) filter (where t.state = 'current'), 0)::bigint as current,
         coalesce(sum(t.n) filter (where t.state = 'missing'), 0)::bigint as missing,
         coalesce(sum(t.n) filter (where t.state = 'stale'), 0)::bigint as stale,
         coalesce(sum(t.n) filter (where t.state = 'outdated'), 0)::bigint as outdated,
         coalesce(sum(t.n) filter (where t.state = 'failed'), 0)::bigint as failed,
         coalesce(sum(t.n) filter (where t.queued and t.state <> 'current'), 0)::bigint as queued,
         round(coalesce(coalesce(sum(t.n) filter (where t.state = 'current'), 0)::numeric / nullif(sum(t.n), 0), 1), 4) as coverage,
         coalesce(coalesce(sum(t.n) filter (where t.state = 'current'), 0)::numeric / nullif(sum(t.n), 0), 1) >= 0.995 as cutover_ready,
         (select st.verified from regen._store_state st) as store_verified,
         coalesce(sum(t.n) filter (where t.state = 'adopted'), 0)::bigint as adopted
  from regen._source_versions sv
  join regen._sources s on s.id = sv.source_id
  join regen._versions v on v.id = sv.version_id
  left join regen._gap_totals t on t.source_id = sv.source_id and t.version_id = sv.version_id
  group by s.name, v.tag, sv.role;
comment on view regen.embedding_gap is
  'Per source and version in use: rows expected to have vectors, and how many are current, missing, stale '
  '(text changed since embedding), outdated (only an older version has them), failed, adopted (vectors adopted '
  'without verification: searchable, re-embedded by the next rebuild), queued; coverage (current / expected), '
  'cutover_ready (coverage >= 0.995) and store_verified. Exact and never claims a vector the store does not hold: '
  'from counters (cheap enough to poll every second) while the store is verified, judged against the store itself '
  'until regen.reconcile() has run after a restore or truncate.';

create or replace view regen.embedding_gap_by_tenant as
  select s.name as source,
         v.tag as version,
         t.tenant,
         sum(t.n)::bigint as expected,
         coalesce(sum(t.n) filter (where t.state = 'current'), 0)::bigint as current,
         coalesce(sum(t.n) filter (where t.state = 'missing'), 0)::bigint as missing,
         coalesce(sum(t.n) filter (where t.state = 'stale'), 0)::bigint as stale,
         coalesce(sum(t.n) filter (where t.state = 'outdated'), 0)::bigint as outdated,
         coalesce(sum(t.n) filter (where t.state = 'failed'), 0)::bigint as failed,
         coalesce(sum(t.n) filter (where t.queued and t.state <> 'current'), 0)::bigint as queued,
         round(coalesce(coalesce(sum(t.n) filter (where t.state = 'current'), 0)::numeric / nullif(sum(t.n), 0), 1), 4) as coverage,
         coalesce(sum(t.n) filter (where t.state = 'adopted'), 0)::bigint as adopted
  from regen._gap_totals t
  join regen._sources s on s.id = t.source_id
  join regen._versions v on v.id = t.version_id
  join regen._source_versions sv on sv.source_id = t.source_id and sv.version_id = t.version_id
  group by s.name, v.tag, t.tenant
  having sum(t.n) <> 0;
comment on view regen.embedding_gap_by_tenant is 'regen.embedding_gap per tenant (tenants with rows only)';

-- regen.rebuild_status of sql/0019, counting adopted items as open work (a rebuild re-embeds them).
create or replace function regen.rebuild_status(
  sources text[] default null,
  versions text[] default null,
  tenant text default null,
  window_seconds integer default 10
)
returns regen.rebuild_status_row
language plpgsql stable
as $$
declare
  v_status regen.rebuild_status_row;
begin
  if window_seconds is null or window_seconds not between 1 and 3600 then
    raise exception 'window_seconds must be between 1 and 3600, not %', coalesce(window_seconds::text, 'NULL') using errcode = 'RG041';
  end if;
  if cardinality(sources) is distinct from cardinality(versions) and sources is not null and versions is not null then
    raise exception 'sources and versions must be arrays of the same length (pairs), not % and %', cardinality(sources), cardinality(versions)
      using errcode = 'RG041';
  end if;
  -- the scope: (source, version) pairs; a null array means every source, or each source's active version
  with scope as (
    select sv.source_id, sv.version_id, s.name as source, v.tag as version
    from regen._source_versions sv
    join regen._sources s on s.id = sv.source_id
    join regen._versions v on v.id = sv.version_id
    where case
      when rebuild_status.sources is not null and rebuild_status.versions is not null
        then (s.name, v.tag) in (select * from unnest(rebuild_status.sources, rebuild_status.versions))
      when rebuild_status.sources is not null then s.name = any(rebuild_status.sources) and sv.role = 'active'
      when rebuild_status.versions is not null then v.tag = any(rebuild_status.versions)
      else sv.role = 'active' end
  ), gap as (
    select coalesce(sum(t.n) filter (where t.state in ('missing', 'stale', 'outdated', 'adopted')), 0)::bigint as open,
           coalesce(sum(t.n) filter (where t.state = 'failed'), 0)::bigint as failed
    from regen._gap_totals t join scope sc on sc.source_id = t.source_id and sc.version_id = t.version_id
    where rebuild_status.tenant is null or t.tenant = rebuild_status.tenant
  ), settled as (
    select coalesce(sum(p.items), 0)::bigint as n
    from regen._progress p join scope sc on sc.source_id = p.source_id and sc.version_id = p.version_id
    where p.at > now() - make_interval(secs => window_seconds)
      and (rebuild_status.tenant is null or p.tenant = rebuild_status.tenant)
  ), queue as (
    select coalesce(sum(q.items), 0)::bigint as items, coalesce(sum(q.jobs), 0)::bigint as jobs,
           coalesce(sum(q.jobs) filter (where q.state = 'active'), 0)::bigint as active
    from regen.queue_depth() q where q.version in (select sc.version from scope sc)
  )
  select gap.open, gap.failed, settled.n, settled.n::float8 / window_seconds,
         case when gap.open = 0 then 0 when settled.n > 0 then gap.open / (settled.n::float8 / window_seconds) end,
         queue.items, queue.jobs, queue.active
    into v_status
    from gap, settled, queue;
  return v_status;
end
$$;
comment on function regen.rebuild_status(text[], text[], text, integer) is
  'Open (missing, stale, outdated, adopted) and failed items of a scope (source and version pairs, sources at their active version, '
  'or everything active; optionally one tenant), the items settled in the last window_seconds, the rate per second and '
  'the ETA at that rate, and the jobs of its versions waiting or in flight';


-- ---------------------------------------------------------------------------------------------
-- Adoptions

create table regen._adoptions (
  id bigint generated always as identity primary key,
  source_id integer not null references regen._sources (id) on delete cascade,
  version_id integer not null references regen._versions (id) on delete cascade,
  vectors_from text not null,
  vector_column name not null,
  id_column name not null,
  chunk_column name,
  sample_fraction double precision not null,
  sample_min integer not null,
  min_cosine double precision not null,
  state text not null default 'sampled' check (state in ('sampled', 'adopted', 'forced', 'refused')),
  judged jsonb,
  sampled_rows integer,
  sampled_chunks integer,
  sample_min_cosine double precision,
  sample_mean_cosine double precision,
  sample_below integer,
  adopted_rows bigint,
  unverified_rows bigint,
  started_at timestamptz not null default now(),
  finished_at timestamptz,
  started_by text not null default session_user
);
comment on table regen._adoptions is
  'One row per adoption of existing vectors (regen.start_adoption, regen.finish_adoption): what was adopted from where, '
  'the sample''s evidence and the outcome';

create table regen._adoption_samples (
  adoption_id bigint not null references regen._adoptions (id) on delete cascade,
  row_id text not null,
  chunk_no integer not null,
  input text not null,
  text_hash bytea not null,
  existing vector not null,
  primary key (adoption_id, row_id, chunk_no)
);
comment on table regen._adoption_samples is
  'The sample of an adoption: each chunk''s text as the version prepares it, and the vector to be adopted for it';

create view regen.adoptions as
  select a.id, s.name as source, v.tag as version, a.vectors_from, a.vector_column, a.id_column, a.chunk_column,
         a.state, a.judged, a.sampled_rows, a.sampled_chunks, a.min_cosine, a.sample_min_cosine, a.sample_mean_cosine,
         a.sample_below, a.adopted_rows, a.unverified_rows, a.started_at, a.finished_at, a.started_by
  from regen._adoptions a
  join regen._sources s on s.id = a.source_id
  join regen._versions v on v.id = a.version_id;
comment on view regen.adoptions is
  'Adoptions of existing vectors: source, version, where the vectors came from; state (sampled: waiting for the sample''s '
  'vectors; adopted: the sample matched, the vectors are the version''s own; forced: stored unverified, as adopted; '
  'refused: the sample did not match, nothing stored); judged (rows per verdict); the sample''s size, lowest and mean '
  'cosine similarity and how many chunks fell below min_cosine; rows adopted, and of them unverified';

-- Every row of the source as the adoption sees it: its current text's chunks as the version
-- prepares them, the vector given for each, and the row's verdict (see the top of this file); and
-- the rows of the table of vectors that are not rows of the source ('unknown').
create function regen._adoption_rows(a regen._adoptions)
returns table (row_id text, chunk_no integer, tenant text, content_hash bytea, text_hash bytea, input text,
               embedding vector, verdict text)
language plpgsql volatile set jit = off
as $$
declare
  v_source regen._sources;
  v_version regen._versions;
  v_alias text;
  v_old_path text := current_setting('search_path');
  v_sql text;
begin
  select * into v_source from regen._sources s where s.id = a.source_id;
  select * into v_version from regen._versions v where v.id = a.version_id;
  v_alias := (select c.relname from pg_class c where c.oid = v_source.relation);
  v_sql := format($f$
    with live as materialized (
      select (%1$I.%2$I)::text as row_id, (%3$s)::text as content from %4$s as %1$I
    ), plan as (
      select l.row_id, it.tenant, it.content_hash, it.embedded_hash = it.content_hash as current,
             ch.chunk_no, ch.chunk as input, sha256(convert_to(ch.chunk, 'UTF8')) as text_hash,
             count(*) over (partition by l.row_id) as chunks
      from live l
      join regen._items it on it.source_id = $1 and it.version_id = $2 and it.row_id = l.row_id
                          and it.content_hash = sha256(convert_to(l.content, 'UTF8'))
      cross join lateral regen.chunk_text(regen.preprocess(l.content, $3), $4, $5) ch
      where l.content is not null
    ), given as materialized (
      select (g.%5$I)::text as row_id, %6$s as chunk_no, (g.%7$I)::vector as embedding from %8$s as g
    ), given_rows as (
      select g.row_id, count(*) as n from given g group by g.row_id
    )
    select p.row_id, p.chunk_no::integer, p.tenant, p.content_hash, p.text_hash, p.input, g.embedding,
           case when bool_or(p.current) over w then 'current'
                when gr.row_id is null then 'not_given'
                when gr.n > p.chunks or ($6 and p.chunks > 1) then 'chunked'
                when bool_or(g.embedding is null) over w then 'null'
                when bool_or(vector_dims(g.embedding) <> $7) over w then 'wrong_dimensions'
                else 'ok' end
    from plan p
    left join given g on g.row_id = p.row_id and g.chunk_no = p.chunk_no
    left join given_rows gr on gr.row_id = p.row_id
    window w as (partition by p.row_id)
    union all
    select g.row_id, g.chunk_no::integer, null, null, null, null, null, 'unknown'
    from given g where not exists (select 1 from plan p where p.row_id = g.row_id)$f$,
    v_alias, v_source.id_column, v_source.content_expression, v_source.relation,
    a.id_column, case when a.chunk_column is null then '1' else format('g.%I', a.chunk_column) end, a.vector_column, a.vectors_from);
  -- the source's expressions as its capture evaluates them, and pgvector's names
  perform set_config('search_path', v_source.expression_search_path || ', ' || quote_ident(regen._vector_schema()), true);
  begin
    return query execute v_sql
      using a.source_id, a.version_id, v_version.settings, (v_version.settings->>'chunk_chars')::integer,
            (v_version.settings->>'chunk_overlap')::integer, a.chunk_column is null, v_version.dimensions;
  exception when others then
    perform set_config('search_path', v_old_path, true);
    raise exception 'adoption %: reading the vectors and texts failed: %', a.id, sqlerrm
      using errcode = 'RG080',
            hint = 'a source expression that raises on some row: see regen.failed_items; the vector column must cast to vector';
  end;
  perform set_config('search_path', v_old_path, true);
end
$$;
comment on function regen._adoption_rows(regen._adoptions) is
  'The rows an adoption judges: each chunk of each source row''s current text with the vector given for it and the row''s verdict';

-- The judged rows of an adoption, in a temporary table of this transaction.
create function regen._judge_adoption(a regen._adoptions)
returns jsonb
language plpgsql volatile
as $$
begin
  perform regen.apply_changes();   -- so that the items hold every row's current text
  if to_regclass('pg_temp._regen_adoption_rows') is not null then
    drop table pg_temp._regen_adoption_rows;
  end if;
  create temporary table _regen_adoption_rows on commit drop as select * from regen._adoption_rows(a);
  return coalesce((select jsonb_object_agg(j.verdict, j.n order by j.verdict)
                   from (select r.verdict, count(distinct r.row_id) as n from pg_temp._regen_adoption_rows r group by r.verdict) j), '{}');
end
$$;
comment on function regen._judge_adoption(regen._adoptions) is
  'Judges every row of an adoption into pg_temp._regen_adoption_rows (dropped at commit); returns the rows per verdict';

create function regen.start_adoption(
  source text,
  version text,
  vector_column name,
  from_table regclass default null,
  id_column name default null,
  chunk_column name default null,
  sample_fraction double precision default 0.01,
  sample_min integer default 50,
  min_cosine double precision default 0.99
)
returns setof regen.adoptions
language plpgsql volatile
as $$
declare
  v_source regen._sources := regen._source(source);
  v_version_id integer := regen._version_id(version);
  v_from regclass := coalesce(from_table, v_source.relation);
  v_id name := coalesce(start_adoption.id_column, v_source.id_column);
  v_type regtype;
  v_a regen._adoptions;
  v_ok bigint;
  v_n integer;
begin
  if not exists (select 1 from regen._source_versions sv where sv.source_id = v_source.id and sv.version_id = v_version_id) then
    raise exception 'source % does not use version %', v_source.name, version
      using errcode = 'RG001', hint = 'see regen.embedding_gap for the versions each source uses';
  end if;
  if vector_column is null then
    raise exception 'vector_column must be given' using errcode = 'RG080';
  end if;
  if from_table is null and chunk_column is not null then
    raise exception 'chunk_column needs from_table: a column of the source table holds one vector per row'
      using errcode = 'RG080', hint = 'adopt chunked vectors from a table keyed by the row id and the chunk number';
  end if;
  if sample_fraction is null or sample_fraction not between 0 and 1 or sample_fraction = 'NaN'::float8 then
    raise exception 'sample_fraction must be between 0 and 1, not %', coalesce(sample_fraction::text, 'NULL') using errcode = 'RG080';
  end if;
  if sample_min is null or sample_min not between 1 and 100000 then
    raise exception 'sample_min must be between 1 and 100000, not %', coalesce(sample_min::text, 'NULL') using errcode = 'RG080',
      hint = 'every adoption re-embeds a sample: nobody can prove otherwise which text and model produced an old vector';
  end if;
  if min_cosine is null or min_cosine not between -1 and 1 or min_cosine = 'NaN'::float8 then
    raise exception 'min_cosine must be between -1 and 1, not %', coalesce(min_cosine::text, 'NULL') using errcode = 'RG080';
  end if;
  select a.atttypid::regtype into v_type from pg_attribute a
   where a.attrelid = v_from and a.attname = vector_column and a.attnum > 0 and not a.attisdropped;
  if v_type is null then
    raise exception 'table % has no column %', v_from, vector_column using errcode = 'RG080';
  end if;
  if not exists (select 1 from pg_attribute a where a.attrelid = v_from and a.attname = v_id and a.attnum > 0 and not a.attisdropped) then
    raise exception 'table % has no column % (the row id)', v_from, v_id using errcode = 'RG080',
      hint = format('name the column that holds source %s''s row ids (its %s): id_column', v_source.name, v_source.id_column);
  end if;
  if chunk_column is not null and not exists (
       select 1 from pg_attribute a where a.attrelid = v_from and a.attname = chunk_column and a.attnum > 0
          and not a.attisdropped and a.atttypid in ('smallint'::regtype, 'integer'::regtype, 'bigint'::regtype)) then
    raise exception 'table % has no integer column % (the chunk number)', v_from, chunk_column using errcode = 'RG080';
  end if;
  insert into regen._adoptions (source_id, version_id, vectors_from, vector_column, id_column, chunk_column,
                                sample_fraction, sample_min, min_cosine)
  values (v_source.id, v_version_id, v_from::text, vector_column, v_id, chunk_column, sample_fraction, sample_min, min_cosine)
  returning * into v_a;

  v_a.judged := regen._judge_adoption(v_a);
  v_ok := coalesce((v_a.judged->>'ok')::bigint, 0);
  v_n := least(v_ok, greatest(sample_min, ceil(sample_fraction * v_ok)))::integer;
  insert into regen._adoption_samples (adoption_id, row_id, chunk_no, input, text_hash, existing)
  select v_a.id, r.row_id, r.chunk_no, r.input, r.text_hash, r.embedding
  from pg_temp._regen_adoption_rows r
  where r.verdict = 'ok'
    and r.row_id in (select o.row_id from (select distinct x.row_id from pg_temp._regen_adoption_rows x where x.verdict = 'ok') o
                     order by random() limit v_n);
  update regen._adoptions a set judged = v_a.judged, sampled_rows = v_n,
         sampled_chunks = (select count(*) from regen._adoption_samples s where s.adoption_id = v_a.id)
   where a.id = v_a.id;
  drop table pg_temp._regen_adoption_rows;
  return query select * from regen.adoptions a where a.id = v_a.id;
end
$$;
comment on function regen.start_adoption(text, text, name, regclass, name, name, double precision, integer, double precision) is
  'Starts adopting existing vectors as a version''s: from vector_column of the source table (one vector per row), or of '
  'from_table keyed by id_column (default: the source''s id column name) and optionally chunk_column (pgregen''s chunk '
  'numbers, from 1). Judges every row (regen.adoptions.judged) and draws the sample to re-embed (sample_fraction of the '
  'rows it can adopt, at least sample_min): regen.adoption_sample(id). No provider call; nothing stored yet.';

create function regen.adoption_sample(adoption_id bigint)
returns table (row_id text, chunk_no integer, input text, model text, dimensions integer, send_dimensions boolean)
language sql stable
as $$
  select s.row_id, s.chunk_no, s.input, v.model, v.dimensions, coalesce((v.settings->>'send_dimensions')::boolean, false)
  from regen._adoption_samples s
  join regen._adoptions a on a.id = s.adoption_id
  join regen._versions v on v.id = a.version_id
  where s.adoption_id = adoption_sample.adoption_id
  order by s.row_id, s.chunk_no
$$;
comment on function regen.adoption_sample(bigint) is
  'What to embed for an adoption''s sample: each chunk''s text as the version prepares it, with the version''s model, '
  'dimensions and whether to send them';

create function regen.finish_adoption(
  adoption_id bigint,
  row_ids text[],
  chunk_nos integer[],
  embeddings vector[],
  force boolean default false
)
returns setof regen.adoptions
language plpgsql volatile set jit = off
as $$
declare
  v_a regen._adoptions;
  v_dims integer;
  v_missing bigint;
  v_verified boolean;
begin
  select * into v_a from regen._adoptions a where a.id = finish_adoption.adoption_id for update;
  if not found then
    raise exception 'unknown adoption %', coalesce(adoption_id::text, 'NULL') using errcode = 'RG081',
      hint = 'start one with regen.start_adoption(); regen.adoptions lists them';
  end if;
  if v_a.state <> 'sampled' then
    raise exception 'adoption % is finished already (%)', v_a.id, v_a.state using errcode = 'RG081',
      hint = 'start a new one with regen.start_adoption()';
  end if;
  if force is null then
    raise exception 'force must be true or false, not NULL' using errcode = 'RG080';
  end if;
  if cardinality(row_ids) is distinct from cardinality(chunk_nos) or cardinality(row_ids) is distinct from cardinality(embeddings) then
    raise exception 'row_ids, chunk_nos and embeddings must be arrays of the same length, not %, % and %',
      cardinality(row_ids), cardinality(chunk_nos), cardinality(embeddings) using errcode = 'RG082';
  end if;
  v_dims := (select v.dimensions from regen._versions v where v.id = v_a.version_id);
  -- the sample's vectors: one for each chunk of the sample, of the version's size, and nothing else
  create temporary table _regen_adoption_sample on commit drop as
    select s.row_id, s.chunk_no, s.text_hash, s.existing, g.embedding as fresh,
           (1 - (g.embedding <=> s.existing))::float8 as similarity
    from regen._adoption_samples s
    left join unnest(row_ids, chunk_nos, embeddings) g(row_id, chunk_no, embedding)
      on g.row_id = s.row_id and g.chunk_no = s.chunk_no
    where s.adoption_id = v_a.id;
  select count(*) into v_missing from pg_temp._regen_adoption_sample s where s.fresh is null;
  if v_missing > 0
     or cardinality(row_ids) <> (select count(*) from pg_temp._regen_adoption_sample)
     or exists (select 1 from unnest(embeddings) e where e is null or vector_dims(e) <> v_dims) then
    raise exception 'the vectors given are not those of adoption %''s sample: % of its % chunks have none, % were given',
      v_a.id, v_missing, (select count(*) from pg_temp._regen_adoption_sample), coalesce(cardinality(row_ids), 0)
      using errcode = 'RG082',
            hint = format('embed each chunk of select * from regen.adoption_sample(%s) once, with %s dimensions', v_a.id, v_dims);
  end if;
  select count(*), min(s.similarity), avg(s.similarity), count(*) filter (where s.similarity < v_a.min_cosine)
    into v_a.sampled_chunks, v_a.sample_min_cosine, v_a.sample_mean_cosine, v_a.sample_below
  from pg_temp._regen_adoption_sample s;
  v_verified := v_a.sample_below = 0;
  v_a.finished_at := now();

  if not v_verified and not force then
    update regen._adoptions a set state = 'refused', sampled_chunks = v_a.sampled_chunks, sample_min_cosine = v_a.sample_min_cosine,
           sample_mean_cosine = v_a.sample_mean_cosine, sample_below = v_a.sample_below, adopted_rows = 0, unverified_rows = 0,
           finished_at = v_a.finished_at
     where a.id = v_a.id;
    drop table pg_temp._regen_adoption_sample;
    return query select * from regen.adoptions a where a.id = v_a.id;
    return;
  end if;

  -- Judged again: an edit since the start is seen (its row is no longer 'ok' for its old text).
  v_a.judged := regen._judge_adoption(v_a);
  create temporary table _regen_adopted on commit drop as
    select r.row_id, r.chunk_no, r.tenant, r.content_hash, r.text_hash,
           coalesce(case when s.text_hash = r.text_hash then s.fresh end, r.embedding) as embedding,
           -- a row of the sample carries its fresh vectors: it is the version's own either way
           v_verified or bool_and(s.fresh is not null and s.text_hash = r.text_hash) over (partition by r.row_id) as proven
    from pg_temp._regen_adoption_rows r
    left join pg_temp._regen_adoption_sample s on s.row_id = r.row_id and s.chunk_no = r.chunk_no
    where r.verdict = 'ok';
  -- the items' plans, then the vectors (the settle trigger marks the proven items current)
  update regen._items it set plan_hash = it.content_hash, chunk_hashes = p.hashes
    from (select a.row_id, array_agg(a.text_hash order by a.chunk_no) as hashes
            from pg_temp._regen_adopted a group by a.row_id) p
   where it.source_id = v_a.source_id and it.version_id = v_a.version_id and it.row_id = p.row_id;
  delete from regen._embeddings e
   using (select distinct a.row_id from pg_temp._regen_adopted a) p
   where e.version_id = v_a.version_id and e.source_id = v_a.source_id and e.row_id = p.row_id;
  insert into regen._embeddings (version_id, source_id, row_id, chunk_no, tenant, content_hash, text_hash, embedding)
  select v_a.version_id, v_a.source_id, a.row_id, a.chunk_no, a.tenant,
         case when a.proven then a.content_hash else regen._adopted_hash(a.content_hash) end,
         case when a.proven then a.text_hash else regen._adopted_hash(a.text_hash) end,
         a.embedding
  from pg_temp._regen_adopted a
  order by a.row_id, a.chunk_no;
  -- the unproven ones: stored, searchable, in the gap as adopted
  update regen._items it set embedded_hash = regen._adopted_hash(it.content_hash), failed_hash = null, last_error = null,
         changed_at = now()
    from (select distinct a.row_id from pg_temp._regen_adopted a where not a.proven) p
   where it.source_id = v_a.source_id and it.version_id = v_a.version_id and it.row_id = p.row_id;

  update regen._adoptions a set state = case when v_verified then 'adopted' else 'forced' end,
         judged = v_a.judged, sampled_chunks = v_a.sampled_chunks, sample_min_cosine = v_a.sample_min_cosine,
         sample_mean_cosine = v_a.sample_mean_cosine, sample_below = v_a.sample_below,
         adopted_rows = (select count(distinct x.row_id) from pg_temp._regen_adopted x),
         unverified_rows = (select count(distinct x.row_id) from pg_temp._regen_adopted x where not x.proven),
         finished_at = v_a.finished_at
   where a.id = v_a.id;
  drop table pg_temp._regen_adopted;
  drop table pg_temp._regen_adoption_rows;
  drop table pg_temp._regen_adoption_sample;
  return query select * from regen.adoptions a where a.id = v_a.id;
end
$$;
comment on function regen.finish_adoption(bigint, text[], integer[], vector[], boolean) is
  'Finishes an adoption with its sample embedded (row_ids, chunk_nos and embeddings: one for each chunk of '
  'regen.adoption_sample). Every sample chunk at min_cosine or above: the vectors become the version''s own (current, '
  'in the cache). Any below: refused, nothing stored; with force, stored as adopted (searchable, a state of their own in '
  'regen.embedding_gap, re-embedded by the next rebuild). The sample rows get their fresh vectors. Rows are judged again first.';

-- the functions of this file that name pgvector's objects (sql/0028_search_rows.sql)
insert into regen._pinned_functions (name) values ('_adoption_rows'), ('finish_adoption');
select regen._pin_search_paths();
select regen._refresh_grants();
