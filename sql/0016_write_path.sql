-- The write path (issue 13, first part): write-back no longer holds the items' row locks while it
-- inserts into the HNSW index, so an application's edit of a row being written waits for a short
-- settle step at most; every refusal carries a kind to branch on; items settled are counted per
-- second and tenant.
--
-- Error codes of this file: none new.

-- Refusals keep their kind next to their text (null for rows written before this file).
alter table regen._rejections add column kind text;

drop function regen.write_embeddings(text, text, text[], integer[], bytea[], vector[]);

create function regen.write_embeddings(
  source text,
  version text,
  row_ids text[],
  chunk_nos integer[],
  content_hashes bytea[],
  embeddings vector[]
)
returns table (row_id text, chunk_no integer, stored boolean, kind text, reason text)
language sql volatile set jit = off
as $$
  -- No lock on the items while the vectors go into the store (and its HNSW index, the slow part):
  -- an edit of these rows commits meanwhile. The settle trigger then locks the items the statement
  -- touched, briefly, and keeps only what still matches: see regen.tg_embeddings__settle.
  with args as (
    select s.id as source_id, v.id as version_id, v.dimensions
    from (select 1) one
    left join regen._sources s on s.name = write_embeddings.source
    left join regen._versions v on v.tag = write_embeddings.version
  ), input as (
    -- the vectors themselves stay in the array: judged is materialized, and 6 kB a row would spill
    select u.ord, u.row_id, u.chunk_no, u.content_hash, vector_dims(u.vec) as dims,
           row_number() over (partition by u.row_id, u.chunk_no order by u.ord) > 1 as duplicate
    from unnest(write_embeddings.row_ids, write_embeddings.chunk_nos, write_embeddings.content_hashes,
                write_embeddings.embeddings) with ordinality as u(row_id, chunk_no, content_hash, vec, ord)
  ), judged as (
    select i.ord, i.row_id, i.chunk_no, i.content_hash, a.source_id, a.version_id, it.tenant,
           it.chunk_hashes[i.chunk_no] as text_hash, r.kind, r.reason
    from input i
    cross join args a
    left join regen._items it on it.source_id = a.source_id and it.version_id = a.version_id and it.row_id = i.row_id
    left join lateral (
      select c.kind, c.reason from (values
        (cardinality(write_embeddings.row_ids) is distinct from cardinality(write_embeddings.chunk_nos)
           or cardinality(write_embeddings.row_ids) is distinct from cardinality(write_embeddings.content_hashes)
           or cardinality(write_embeddings.row_ids) is distinct from cardinality(write_embeddings.embeddings),
         1, 'malformed', 'malformed call: row_ids, chunk_nos, content_hashes and embeddings must have the same length'),
        (a.source_id is null, 2, 'unknown_source', format('unknown source %L', write_embeddings.source)),
        (a.version_id is null, 3, 'unknown_version', format('unknown version %L', write_embeddings.version)),
        (i.duplicate, 4, 'duplicate', 'duplicate item: this row and chunk already appear earlier in the batch'),
        (i.dims is null, 5, 'nan', 'NaN or infinity not allowed in vector'),
        (i.dims <> a.dimensions, 6, 'dimensions', format('expected %s dimensions, not %s', a.dimensions, i.dims)),
        (it.row_id is null, 7, 'untracked', 'row is not tracked for this version: deleted, filtered out, or not registered'),
        (i.content_hash is distinct from it.content_hash, 8, 'stale', 'stale: the source text changed after the input was prepared'),
        (it.plan_hash is distinct from it.content_hash or i.chunk_no is null or i.chunk_no not between 1 and cardinality(it.chunk_hashes),
         9, 'unplanned', format('chunk %s is not among the prepared inputs of this text', i.chunk_no))
      ) c(hit, rank, kind, reason)
      where c.hit
      order by c.rank
      limit 1
    ) r on true
  ), stored as (
    insert into regen._embeddings as e (version_id, source_id, row_id, chunk_no, tenant, content_hash, text_hash, embedding)
    select j.version_id, j.source_id, j.row_id, j.chunk_no, j.tenant, j.content_hash, j.text_hash, v.vec
    from judged j
    -- a second pass over the array, joined on position: embeddings[j.ord] would walk the array
    -- from its start for every item (elements of varying size), quadratic in the batch
    join unnest(write_embeddings.embeddings) with ordinality as v(vec, ord) on v.ord = j.ord
    where j.reason is null
    on conflict (version_id, source_id, row_id, chunk_no) do update
      set tenant = excluded.tenant, content_hash = excluded.content_hash, text_hash = excluded.text_hash,
          embedding = excluded.embedding, embedded_at = now()
    returning 1
  ), poisoned as (
    -- a vector the provider got wrong fails its item for this text; a new text gets a new chance
    update regen._items it
       set failed_hash = it.content_hash, last_error = j.reason, attempts = it.attempts + 1, queue_job = null, changed_at = now()
      from (select distinct on (j.row_id) j.source_id, j.version_id, j.row_id, j.content_hash, j.reason
              from judged j
             where j.kind in ('dimensions', 'nan')
             order by j.row_id, j.ord) j
     where it.source_id = j.source_id and it.version_id = j.version_id and it.row_id = j.row_id
       and it.content_hash = j.content_hash
    returning 1
  ), logged as (
    insert into regen._rejections (source, version, row_id, chunk_no, kind, reason)
    select write_embeddings.source, write_embeddings.version, j.row_id, j.chunk_no, j.kind, j.reason
    from judged j where j.reason is not null
    returning 1
  ), requeued as (
    -- a row edited while its batch was in flight goes back to the queue, as a fresh edit
    select regen._enqueue(a.source_id, a.version_id,
                          coalesce((select array_agg(distinct j.row_id) from judged j where j.kind = 'stale'), '{}'),
                          true) as n
    from args a where a.source_id is not null and a.version_id is not null
  )
  select j.row_id, j.chunk_no, j.reason is null, j.kind, j.reason
  from judged j
  left join requeued on true
  order by j.ord;
$$;
comment on function regen.write_embeddings(text, text, text[], integer[], bytea[], vector[]) is
  'Worker-facing: stores vectors whose content hash still matches the source, whose dimensions match the version '
  'and that hold no NaN/Inf; refuses the rest per item with a kind (malformed, unknown_source, unknown_version, duplicate, '
  'nan, dimensions, untracked, stale, unplanned) and a reason (see regen.rejected_writes). Holds no item lock while the '
  'vectors are inserted; the settle trigger keeps only what still matches.';

alter table regen._progress rename column minute to at;
alter table regen._progress add column tenant text;
alter index regen._progress_minute rename to _progress_at;
-- Items settled are counted per second and tenant (regen.rebuild_status reads them).
comment on table regen._progress is 'Items settled per second, source, version and tenant (pruned after an hour by regen.compact_gap)';

create or replace function regen.compact_gap()
returns bigint
language plpgsql volatile
as $$
declare
  v_folded bigint;
begin
  -- One compactor at a time; a second caller has nothing to do.
  if not pg_try_advisory_xact_lock(hashtext('regen.compact_gap')) then
    return 0;
  end if;
  with moved as (
    delete from regen._gap_deltas returning *
  ), net as (
    select source_id, version_id, tenant, state, queued, sum(n) as n, count(*) as folded
    from moved group by 1, 2, 3, 4, 5
  ), applied as (
    insert into regen._gap_counts as c (source_id, version_id, tenant, state, queued, n)
    select source_id, version_id, tenant, state, queued, n from net
    on conflict (source_id, version_id, tenant, state, queued) do update set n = c.n + excluded.n
  )
  select coalesce(sum(folded), 0) into v_folded from net;
  delete from regen._gap_counts where n = 0;
  delete from regen._progress where at < now() - interval '1 hour';
  return v_folded;
end
$$;
comment on function regen.compact_gap() is
  'Folds appended gap deltas into the gap counts; keeps regen.embedding_gap fast. Returns the number of deltas folded.';

-- The settle trigger: the statement's vectors are in the store, not yet committed. Lock the items
-- they belong to (in the order every writer takes them; held until this write commits, a moment
-- from now), then keep only what still holds now that nothing can change under it: vectors of rows
-- no longer tracked go, vectors follow their row's tenant, and an item becomes current once every
-- chunk planned for its current text is stored under that text's hash. An edit that committed while
-- the vectors were being inserted leaves its item stale (its capture queued it again). Extra chunks
-- of an earlier, longer text are dropped.
create or replace function regen.tg_embeddings__settle() returns trigger
language plpgsql set jit = off
as $$
begin
  if not exists (select from new_rows) then
    return null;   -- a statement that wrote no vector
  end if;
  perform 1
    from regen._items it
    join (select distinct version_id, source_id, row_id from new_rows) t
      on it.source_id = t.source_id and it.version_id = t.version_id and it.row_id = t.row_id
   order by it.version_id, it.row_id
     for update of it;
  -- rows deleted (or filtered out) while their vectors were being written
  delete from regen._embeddings e
   using (select distinct version_id, source_id, row_id from new_rows) t
   where e.version_id = t.version_id and e.source_id = t.source_id and e.row_id = t.row_id
     and not exists (select 1 from regen._items it
                     where it.source_id = t.source_id and it.version_id = t.version_id and it.row_id = t.row_id);
  -- rows that moved to another tenant meanwhile
  update regen._embeddings e set tenant = it.tenant
    from (select distinct version_id, source_id, row_id from new_rows) t
    join regen._items it on it.source_id = t.source_id and it.version_id = t.version_id and it.row_id = t.row_id
   where e.version_id = t.version_id and e.source_id = t.source_id and e.row_id = t.row_id
     and e.tenant is distinct from it.tenant;
  with touched as (
    select distinct version_id, source_id, row_id from new_rows
  ), done as (
    update regen._items it
       set embedded_hash = it.content_hash, failed_hash = null, last_error = null, queue_job = null, drifts = 0, changed_at = now()
      from touched t
     where it.source_id = t.source_id and it.version_id = t.version_id and it.row_id = t.row_id
       and it.plan_hash = it.content_hash
       and it.embedded_hash is distinct from it.content_hash
       and cardinality(it.chunk_hashes) = (
             select count(*) from regen._embeddings e
             where e.version_id = it.version_id and e.source_id = it.source_id and e.row_id = it.row_id
               and e.content_hash = it.content_hash and e.chunk_no <= cardinality(it.chunk_hashes))
    returning it.version_id, it.source_id, it.row_id, it.tenant, cardinality(it.chunk_hashes) as chunks
  ), extra as (
    delete from regen._embeddings e using done d
    where e.version_id = d.version_id and e.source_id = d.source_id and e.row_id = d.row_id and e.chunk_no > d.chunks
  )
  insert into regen._progress (source_id, version_id, tenant, at, items)
  select d.source_id, d.version_id, d.tenant, date_trunc('second', now()), count(*)
  from done d group by 1, 2, 3;
  return null;
end
$$;
comment on function regen.tg_embeddings__settle() is
  'Locks the items of the vectors a statement stored, drops vectors of rows gone meanwhile, moves vectors to their row''s tenant, '
  'and marks items current once all their chunk vectors are stored';


-- The last error of a rebuild: any refusal but a stale one (a stale write is the normal race with an edit).
create or replace view regen.rebuild_progress as
  with rate as (
    select p.source_id, p.version_id, sum(p.items)::numeric / 5 as per_minute
    from regen._progress p
    where p.at >= date_trunc('minute', now()) - interval '5 minutes'
    group by 1, 2
  ), last_error as (
    select distinct on (r.source, r.version) r.source, r.version, r.reason, r.at
    from regen._rejections r
    where r.kind is distinct from 'stale' and r.reason not like 'stale:%'   -- rows from before kinds: by their text
    order by r.source, r.version, r.at desc
  )
  select g.source, g.version, g.current as done, g.expected as total,
         round(100 * g.coverage, 1) as percent, g.queued,
         round(coalesce(rate.per_minute, 0), 1) as rate_per_minute,
         case when g.current >= g.expected then interval '0'
              when coalesce(rate.per_minute, 0) > 0
                then make_interval(secs => round(60 * (g.expected - g.current) / rate.per_minute)) end as eta,
         g.failed as failures,
         e.reason as last_error, e.at as last_error_at
  from regen.embedding_gap g
  join regen._sources s on s.name = g.source
  join regen._versions v on v.tag = g.version
  left join rate on rate.source_id = s.id and rate.version_id = v.id
  left join last_error e on e.source = g.source and e.version = g.version;
comment on view regen.rebuild_progress is
  'Per source and version: done (current), total (expected), percent, queued, rate per minute over the last 5 minutes, '
  'ETA at that rate, failures and the last error';


-- Rejections with their kind; the last error of a rebuild is any refusal but a stale one.
create or replace view regen.rejected_writes as
  select r.at, r.source, r.version, r.row_id, r.chunk_no, r.reason, r.kind
  from regen._rejections r;
comment on view regen.rejected_writes is
  'Vectors refused by regen.write_embeddings() and provider refusals, with the reason and its kind '
  '(stale, dimensions, nan, untracked, ..., provider for regen.fail_inputs, batch for regen.report_error)';

create or replace function regen.fail_inputs(source text, version text, row_ids text[], content_hashes bytea[], reasons text[])
returns bigint
language sql volatile set jit = off
as $$
  with input as (
    select u.row_id, u.content_hash, u.reason
    from unnest(fail_inputs.row_ids, fail_inputs.content_hashes, fail_inputs.reasons) as u(row_id, content_hash, reason)
  ), failed as (
    update regen._items it
       set failed_hash = it.content_hash, last_error = i.reason, attempts = it.attempts + 1, queue_job = null, changed_at = now()
      from (select distinct on (row_id) * from input order by row_id) i
     where it.source_id = (select s.id from regen._sources s where s.name = fail_inputs.source)
       and it.version_id = (select v.id from regen._versions v where v.tag = fail_inputs.version)
       and it.row_id = i.row_id and it.content_hash = i.content_hash
    returning 1
  ), logged as (
    insert into regen._rejections (source, version, row_id, kind, reason)
    select fail_inputs.source, fail_inputs.version, i.row_id, 'provider', i.reason from input i
    returning 1
  )
  select count(*) from failed
$$;
comment on function regen.fail_inputs(text, text, text[], bytea[], text[]) is
  'Worker-facing: dead-letters items the provider refused (with the reason, in regen.failed_items) for their current text';

create or replace function regen.report_error(source text, version text, message text)
returns void
language sql volatile
as $$
  insert into regen._rejections (source, version, kind, reason) values (source, version, 'batch', message)
$$;
comment on function regen.report_error(text, text, text) is
  'Worker-facing: records a batch-level error (provider unavailable, missing key) for regen.rebuild_progress';


select regen._pin_search_paths();
select regen._refresh_grants();
