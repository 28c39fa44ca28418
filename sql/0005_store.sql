-- The embedding store: gap counters, the cache, preparing inputs and writing vectors back.
--
-- Error code of this file: RG020 malformed write_embeddings call (arrays of different lengths).

-- Gap counters: each statement on regen._items appends its net change per
-- (source, version, tenant, state, queued). Set-based: one insert per statement. Every 1,000th
-- statement also folds the deltas (regen.compact_gap), so the view stays fast with no worker
-- running; a sequence counts statements because it takes no lock and never rolls back.
create sequence regen._gap_ticks;

create function regen.tg_items__count() returns trigger
language plpgsql set jit = off
as $$
begin
  -- Statement triggers fire for statements that changed no row as well: nothing to count then.
  if tg_op = 'DELETE' then
    if not exists (select from old_rows) then
      return null;
    end if;
  elsif not exists (select from new_rows) then
    return null;
  end if;
  if tg_op = 'INSERT' then
    insert into regen._gap_deltas (source_id, version_id, tenant, state, queued, n)
    select source_id, version_id, tenant, regen._state(content_hash, embedded_hash, failed_hash, has_legacy), queue_job is not null, count(*)
    from new_rows group by 1, 2, 3, 4, 5;
  elsif tg_op = 'DELETE' then
    insert into regen._gap_deltas (source_id, version_id, tenant, state, queued, n)
    select source_id, version_id, tenant, regen._state(content_hash, embedded_hash, failed_hash, has_legacy), queue_job is not null, -count(*)
    from old_rows group by 1, 2, 3, 4, 5;
  else
    insert into regen._gap_deltas (source_id, version_id, tenant, state, queued, n)
    select source_id, version_id, tenant, state, queued, sum(n)
    from (
      select source_id, version_id, tenant, regen._state(content_hash, embedded_hash, failed_hash, has_legacy) as state, queue_job is not null as queued, 1 as n
      from new_rows
      union all
      select source_id, version_id, tenant, regen._state(content_hash, embedded_hash, failed_hash, has_legacy), queue_job is not null, -1
      from old_rows
    ) d
    group by 1, 2, 3, 4, 5
    having sum(n) <> 0;
  end if;
  if nextval('regen._gap_ticks') % 1000 = 0 then
    perform regen.compact_gap();
  end if;
  return null;
end
$$;
comment on function regen.tg_items__count() is 'Appends the net gap-count change of a statement on regen._items';

create trigger _100_count_insert after insert on regen._items
  referencing new table as new_rows for each statement execute function regen.tg_items__count();
create trigger _100_count_update after update on regen._items
  referencing old table as old_rows new table as new_rows for each statement execute function regen.tg_items__count();
create trigger _100_count_delete after delete on regen._items
  referencing old table as old_rows for each statement execute function regen.tg_items__count();

create function regen.compact_gap()
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
  delete from regen._progress where minute < now() - interval '1 hour';
  return v_folded;
end
$$;
comment on function regen.compact_gap() is
  'Folds appended gap deltas into the gap counts; keeps regen.embedding_gap fast. Returns the number of deltas folded.';

-- A statement that stored vectors settles the items it touched: an item becomes current once every
-- chunk planned for its current text is stored under that text's hash. Extra chunks of an earlier,
-- longer text are dropped.
create function regen.tg_embeddings__settle() returns trigger
language plpgsql set jit = off
as $$
begin
  if not exists (select from new_rows) then
    return null;   -- a statement that wrote no vector
  end if;
  with touched as (
    select distinct version_id, source_id, row_id from new_rows
  ), done as (
    update regen._items it
       set embedded_hash = it.content_hash, failed_hash = null, last_error = null, queue_job = null, changed_at = now()
      from touched t
     where it.source_id = t.source_id and it.version_id = t.version_id and it.row_id = t.row_id
       and it.plan_hash = it.content_hash
       and it.embedded_hash is distinct from it.content_hash
       and cardinality(it.chunk_hashes) = (
             select count(*) from regen._embeddings e
             where e.version_id = it.version_id and e.source_id = it.source_id and e.row_id = it.row_id
               and e.content_hash = it.content_hash and e.chunk_no <= cardinality(it.chunk_hashes))
    returning it.version_id, it.source_id, it.row_id, cardinality(it.chunk_hashes) as chunks
  ), extra as (
    delete from regen._embeddings e using done d
    where e.version_id = d.version_id and e.source_id = d.source_id and e.row_id = d.row_id and e.chunk_no > d.chunks
  )
  insert into regen._progress (source_id, version_id, minute, items)
  select d.source_id, d.version_id, date_trunc('minute', now()), count(*)
  from done d group by 1, 2;
  return null;
end
$$;
comment on function regen.tg_embeddings__settle() is 'Marks items current once all their chunk vectors are stored';

-- Vectors that leave the store (edited text, deleted rows) go to the cache, so the same text is
-- never paid for twice; items whose current vectors were deleted stop counting as current.
create function regen.tg_embeddings__release() returns trigger
language plpgsql set jit = off
as $$
begin
  if not exists (select from old_rows) then
    return null;   -- a statement that removed or replaced no vector
  end if;
  if tg_op = 'DELETE' then
    insert into regen._cache (version_id, text_hash, embedding)
    select distinct on (o.version_id, o.text_hash) o.version_id, o.text_hash, o.embedding
    from old_rows o
    on conflict do nothing;
    update regen._items it set embedded_hash = null, changed_at = now()
      from (select distinct version_id, source_id, row_id, content_hash from old_rows) o
     where it.source_id = o.source_id and it.version_id = o.version_id and it.row_id = o.row_id
       and it.embedded_hash = o.content_hash;
  else
    -- an update replaced a chunk's vector: keep the old one if its text differs
    insert into regen._cache (version_id, text_hash, embedding)
    select distinct on (o.version_id, o.text_hash) o.version_id, o.text_hash, o.embedding
    from old_rows o
    join new_rows n on n.version_id = o.version_id and n.source_id = o.source_id
                   and n.row_id = o.row_id and n.chunk_no = o.chunk_no
    where n.text_hash <> o.text_hash
    on conflict do nothing;
  end if;
  return null;
end
$$;
comment on function regen.tg_embeddings__release() is 'Keeps vectors that leave the store in the cache and un-settles their items';

create function regen.tg_embeddings__truncate() returns trigger
language plpgsql
as $$
begin
  update regen._items set embedded_hash = null, changed_at = now() where embedded_hash is not null;
  return null;
end
$$;
comment on function regen.tg_embeddings__truncate() is 'After the store is truncated no item is current any more';

create trigger _100_settle_insert after insert on regen._embeddings
  referencing new table as new_rows for each statement execute function regen.tg_embeddings__settle();
create trigger _100_settle_update after update on regen._embeddings
  referencing new table as new_rows for each statement execute function regen.tg_embeddings__settle();
create trigger _200_release_update after update on regen._embeddings
  referencing old table as old_rows new table as new_rows for each statement execute function regen.tg_embeddings__release();
create trigger _200_release_delete after delete on regen._embeddings
  referencing old table as old_rows for each statement execute function regen.tg_embeddings__release();
create trigger _200_release_truncate after truncate on regen._embeddings
  for each statement execute function regen.tg_embeddings__truncate();

-- Turns rows into provider inputs for one version: reads each row's text, preprocesses and chunks
-- it, records the chunk plan, and settles every chunk whose text is already embedded (the store or
-- the cache) without a provider call. Returns what is left to embed. Rows already current, gone or
-- filtered out return nothing. When several rows share a text, only the first carries `input`; the
-- others have input null and take the vector of the same text_hash.
create function regen.prepare_inputs(source text, version text, row_ids text[], job_id uuid default null, force boolean default false)
returns table (row_id text, chunk_no integer, content_hash bytea, text_hash bytea, input text)
language plpgsql volatile set jit = off
as $$
declare
  v_source regen._sources := regen._source(source);
  v_version regen._versions;
  v_old_path text := current_setting('search_path');
  v_rows text[] := prepare_inputs.row_ids;
begin
  select * into v_version from regen._versions v where v.id = regen._version_id(version);
  if not exists (select 1 from regen._source_versions sv where sv.source_id = v_source.id and sv.version_id = v_version.id) then
    raise exception 'source % does not use version %', v_source.name, v_version.tag
      using errcode = 'RG001', hint = 'see regen.embedding_gap for the versions each source uses';
  end if;

  -- A job works only the items that still name it: an item moved to a later job is that job's.
  if job_id is not null then
    v_rows := array(select it.row_id from regen._items it
                    where it.source_id = v_source.id and it.version_id = v_version.id
                      and it.row_id = any(prepare_inputs.row_ids) and it.queue_job = prepare_inputs.job_id);
  end if;

  -- Lock the items in the order write_embeddings and the capture triggers take them (so the three
  -- never deadlock); an edit of these rows then waits, and the statement below sees the latest text.
  perform 1 from regen._items it
   where it.source_id = v_source.id and it.version_id = v_version.id and it.row_id = any(v_rows)
   order by it.row_id
   for update;

  -- One statement, so the settle trigger of the cache-hit insert sees the recorded plan.
  perform set_config('search_path', v_source.expression_search_path, true);
  return query execute format($f$
    with texts as (
      select (%1$I.%2$I)::text as row_id, (%3$s)::text as content
      from %4$s as %1$I where %1$I.%2$I = any($1::%5$s[])
    ), plan as (
      select r.row_id, ch.chunk_no, sha256(convert_to(r.content, 'UTF8')) as content_hash,
             sha256(convert_to(ch.chunk, 'UTF8')) as text_hash, ch.chunk as input, it.tenant
      from texts r
      join regen._items it on it.source_id = $2 and it.version_id = $3 and it.row_id = r.row_id
      cross join lateral regen.chunk_text(regen.preprocess(r.content, $4), $5, $6) ch
      where $7 or it.embedded_hash is distinct from sha256(convert_to(r.content, 'UTF8'))
    ), recorded as (
      -- the chunks that make up the current text (written only where it changed). Only while the
      -- item still records that text: an edit that commits meanwhile has set a newer content_hash,
      -- which must stay (its capture trigger already queued the edit).
      update regen._items it
         set plan_hash = p.content_hash, chunk_hashes = p.hashes
        from (select p.row_id, p.content_hash, array_agg(p.text_hash order by p.chunk_no) as hashes
                from plan p group by p.row_id, p.content_hash) p
       where it.source_id = $2 and it.version_id = $3 and it.row_id = p.row_id
         and it.content_hash = p.content_hash
         and (it.plan_hash, it.chunk_hashes) is distinct from (p.content_hash, p.hashes)
      returning 1
    ), pending as (
      -- chunks not already stored under the current text
      select p.* from plan p
      where $7 or not exists (select 1 from regen._embeddings e
                        where e.version_id = $3 and e.source_id = $2 and e.row_id = p.row_id and e.chunk_no = p.chunk_no
                          and e.text_hash = p.text_hash and e.content_hash = p.content_hash)
    ), known as (
      -- the cache: any vector of the same text in the store, else one that left the store
      select t.*, case when not $7 then coalesce(
               (select e.embedding from regen._embeddings e where e.version_id = $3 and e.text_hash = t.text_hash limit 1),
               (select c.embedding from regen._cache c where c.version_id = $3 and c.text_hash = t.text_hash)) end as embedding
      from pending t
    ), stored as (
      insert into regen._embeddings as e (version_id, source_id, row_id, chunk_no, tenant, content_hash, text_hash, embedding)
      select $3, $2, k.row_id, k.chunk_no, k.tenant, k.content_hash, k.text_hash, k.embedding
      from known k where k.embedding is not null
      on conflict (version_id, source_id, row_id, chunk_no) do update
        set tenant = excluded.tenant, content_hash = excluded.content_hash, text_hash = excluded.text_hash,
            embedding = excluded.embedding, embedded_at = now()
      returning 1
    )
    -- what is left for the provider; a text shared by several rows is sent once
    select k.row_id, k.chunk_no, k.content_hash, k.text_hash,
           case when row_number() over (partition by k.text_hash order by k.row_id, k.chunk_no) = 1 then k.input end
    from known k
    where k.embedding is null
    order by k.row_id, k.chunk_no$f$,
    (select c.relname from pg_class c where c.oid = v_source.relation), v_source.id_column,
    v_source.content_expression, v_source.relation, v_source.id_type)
  using v_rows, v_source.id, v_version.id, v_version.settings,
        (v_version.settings->>'chunk_chars')::integer, (v_version.settings->>'chunk_overlap')::integer, force;
  perform set_config('search_path', v_old_path, true);
end
$$;
comment on function regen.prepare_inputs(text, text, text[], uuid, boolean) is
  'Worker-facing: turns row ids into provider inputs for a version, settling cache hits without a provider call; '
  'job_id (the pg-boss job being worked) takes the items out of the queue; force re-embeds current rows and skips the cache';

-- Worker-facing: stores vectors that still match their source; returns one row per item, in order.
-- pgvector cannot represent NaN or infinity, so a client sends such a vector as a NULL element: it is
-- refused here like any other bad vector, per item, and the rest of the batch is stored.
create function regen.write_embeddings(
  source text,
  version text,
  row_ids text[],
  chunk_nos integer[],
  content_hashes bytea[],
  embeddings vector[]
)
returns table (row_id text, chunk_no integer, stored boolean, reason text)
language sql volatile set jit = off
as $$
  -- Lock the items first, in a fixed order: an edit of the same rows waits for this write (or this
  -- write for the edit), so the hash comparison below sees the latest text.
  select 1 from regen._items it
   where it.source_id = (select s.id from regen._sources s where s.name = write_embeddings.source)
     and it.version_id = (select v.id from regen._versions v where v.tag = write_embeddings.version)
     and it.row_id = any(write_embeddings.row_ids)
   order by it.row_id
   for update;

  with args as (
    select s.id as source_id, v.id as version_id, v.dimensions
    from (select 1) one
    left join regen._sources s on s.name = write_embeddings.source
    left join regen._versions v on v.tag = write_embeddings.version
  ), input as (
    -- the vectors themselves stay in the array: judged is materialized, and 6 kB a row would spill
    select u.ord, u.row_id, u.chunk_no, u.content_hash, vector_dims(u.vec) as dims
    from unnest(write_embeddings.row_ids, write_embeddings.chunk_nos, write_embeddings.content_hashes,
                write_embeddings.embeddings) with ordinality as u(row_id, chunk_no, content_hash, vec, ord)
  ), judged as (
    select i.ord, i.row_id, i.chunk_no, i.content_hash, a.source_id, a.version_id, it.tenant,
           it.chunk_hashes[i.chunk_no] as text_hash,
           case
             when cardinality(write_embeddings.row_ids) is distinct from cardinality(write_embeddings.chunk_nos)
               or cardinality(write_embeddings.row_ids) is distinct from cardinality(write_embeddings.content_hashes)
               or cardinality(write_embeddings.row_ids) is distinct from cardinality(write_embeddings.embeddings)
               then 'malformed call: row_ids, chunk_nos, content_hashes and embeddings must have the same length'
             when a.source_id is null then format('unknown source %L', write_embeddings.source)
             when a.version_id is null then format('unknown version %L', write_embeddings.version)
             when row_number() over (partition by i.row_id, i.chunk_no order by i.ord) > 1
               then 'duplicate item: this row and chunk already appear earlier in the batch'
             when i.dims is null then 'NaN or infinity not allowed in vector'
             when i.dims <> a.dimensions then format('expected %s dimensions, not %s', a.dimensions, i.dims)
             when it.row_id is null then 'row is not tracked for this version: deleted, filtered out, or not registered'
             when i.content_hash is distinct from it.content_hash then 'stale: the source text changed after the input was prepared'
             when it.plan_hash is distinct from it.content_hash or i.chunk_no is null
               or i.chunk_no not between 1 and cardinality(it.chunk_hashes)
               then format('chunk %s is not among the prepared inputs of this text', i.chunk_no)
           end as reason
    from input i
    cross join args a
    left join regen._items it on it.source_id = a.source_id and it.version_id = a.version_id and it.row_id = i.row_id
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
             where j.reason like 'expected % dimensions, not %' or j.reason like 'NaN%'
             order by j.row_id, j.ord) j
     where it.source_id = j.source_id and it.version_id = j.version_id and it.row_id = j.row_id
       and it.content_hash = j.content_hash
    returning 1
  ), logged as (
    insert into regen._rejections (source, version, row_id, chunk_no, reason)
    select write_embeddings.source, write_embeddings.version, j.row_id, j.chunk_no, j.reason
    from judged j where j.reason is not null
    returning 1
  ), requeued as (
    -- a row edited while its batch was in flight goes back to the queue, as a fresh edit
    select regen._enqueue(a.source_id, a.version_id,
                          coalesce((select array_agg(distinct j.row_id) from judged j where j.reason like 'stale:%'), '{}'),
                          true) as n
    from args a where a.source_id is not null and a.version_id is not null
  )
  select j.row_id, j.chunk_no, j.reason is null, j.reason
  from judged j
  left join requeued on true
  order by j.ord;
$$;
comment on function regen.write_embeddings(text, text, text[], integer[], bytea[], vector[]) is
  'Worker-facing: stores vectors whose content hash still matches the source, whose dimensions match the version '
  'and that hold no NaN/Inf; refuses the rest per item with a reason (see regen.rejected_writes).';

-- Failed items get another chance: clears the failure so the item counts as missing or stale again.
create function regen.retry_failed(source text default null, version text default null)
returns bigint
language sql volatile set jit = off
as $$
  with cleared as (
    update regen._items it set failed_hash = null, last_error = null, changed_at = now()
      from regen._sources s, regen._versions v
     where it.source_id = s.id and it.version_id = v.id and it.failed_hash is not null
       and (retry_failed.source is null or s.name = retry_failed.source)
       and (retry_failed.version is null or v.tag = retry_failed.version)
    returning it.source_id, it.version_id, it.row_id
  )
  select coalesce(sum(regen._enqueue(c.source_id, c.version_id, c.rows, true)), 0)::bigint
  from (select source_id, version_id, array_agg(row_id) as rows from cleared group by 1, 2) c
$$;
comment on function regen.retry_failed(text, text) is 'Clears failures (of one source and version, or all) and enqueues the items again; returns how many were enqueued';
