-- No applier waits on a batch (issue 13, item 2: under a steady stream of edits a migration keeps
-- its share of the worker). prepare_inputs without the source's applier lock, and with its item
-- locks held only briefly; write_embeddings and enqueue_fresh without their long item-lock waits.
--
-- Until now prepare_inputs applied its rows' logged changes itself (sql/0022), under the source's
-- applier lock, and locked its items before reading the source rows: both held until the statement
-- committed, through the reading, chunking and hashing of every text and the cache lookups. Under
-- 50 edits/s most backfill batches had a row edited since the worker's own apply_rows call a few
-- milliseconds earlier, so each prepare took the lock; the appliers (regen.enqueue_fresh and the
-- other batches' apply_rows) queued behind it, and an applier that reached one of the locked items
-- held every other applier of the source back while it waited.
--
-- Now a prepare reads first, locks last:
--   1. (Called by hand, without a job, the rows' logged changes are applied first, as before.)
--      One read-only statement (no lock of any kind) reads the rows' texts, the hashes their items
--      record and the latest change logged for each row, all in one snapshot, and makes the plan:
--      the chunks and their hashes. A row whose logged change the applier has not yet folded in
--      (deleted, filtered out, a new text, an expression error) is left out: the applier does what
--      that change calls for (a new text is marked fresh and gets a fresh job of its own once this
--      job ends; sql/0020's enqueue_fresh). A change of priority or tenant alone does not keep the
--      row out; the settle step moves vectors to the row's tenant.
--   2. Then, briefly: the items are locked in the order every applier takes them; rows whose text
--      was found changed without a logged change are the drifted rows of sql/0012, as before; and one
--      statement records the plan, stores the cache hits and claims the rest, for the rows whose items
--      still record the text that was read (an apply that committed in between took the others).
--
-- The two other places where an applier waited on a batch's item locks go as well: write_embeddings
-- no longer re-queues stale rows (which locked them through its HNSW insert), and enqueue_fresh takes
-- only the fresh items no batch holds (the rest at its next call).
--
-- Error codes of this file: none new.

-- A text claimed by something that is not a job of the version's queue (a provider batch of batch
-- mode, sql/0027, which holds its texts' claims for up to a day): a fresh edit does not wait for it.
create function regen._claimed_outside_queue(version_id integer, text_hash bytea)
returns boolean
language plpgsql volatile
as $$
begin
  return exists (select 1 from regen._claims c
                 where c.version_id = _claimed_outside_queue.version_id and c.text_hash = _claimed_outside_queue.text_hash
                   and not exists (select 1 from pgboss.job j where j.name = regen._queue(c.version_id) and j.id = c.job_id));
end
$$;
comment on function regen._claimed_outside_queue(integer, bytea) is
  'Whether a text''s claim (regen._claims) is held by something other than a job of the version''s queue (a provider batch), as committed now';

create or replace function regen.prepare_inputs(source text, version text, row_ids text[], job_id uuid default null, force boolean default false)
returns table (row_id text, chunk_no integer, content_hash bytea, text_hash bytea, input text, deferred boolean)
language plpgsql volatile set jit = off
as $$
declare
  v_source regen._sources := regen._source(source);
  v_version regen._versions;
  v_old_path text := current_setting('search_path');
  v_rows text[] := prepare_inputs.row_ids;
  v_alias text;
  v_live text;
  v_read text;
  v_broken text[] := '{}';
  v_id text;
  v_since timestamptz;
  v_fresh boolean := false;
  -- what the read found: drifted rows (their hash now and the one their item recorded), and the plan
  v_drift_rows text[];
  v_drift_now bytea[];
  v_drift_seen bytea[];
  v_requeue text[];
  v_plan_rows text[];
  v_plan_chunks integer[];
  v_plan_contents bytea[];
  v_plan_texts bytea[];
  v_plan_inputs text[];
begin
  select * into v_version from regen._versions v where v.id = regen._version_id(version);
  if not exists (select 1 from regen._source_versions sv where sv.source_id = v_source.id and sv.version_id = v_version.id) then
    raise exception 'source % does not use version %', v_source.name, v_version.tag
      using errcode = 'RG001', hint = 'see regen.embedding_gap for the versions each source uses';
  end if;
  v_alias := (select c.relname from pg_class c where c.oid = v_source.relation);
  -- With force the cache is skipped, except for vectors stored since this job was enqueued: those
  -- were embedded by this rebuild (another of its batches, or an earlier attempt of this job).
  if force and job_id is not null then
    v_since := regen._job_created(v_version.id, job_id);
  end if;
  if job_id is not null then
    v_fresh := exists (select 1 from pgboss.job j
                       where j.name = regen._queue(v_version.id) and j.id = prepare_inputs.job_id and j.priority >= regen.fresh_priority());
  end if;

  -- A job works only the items that still name it: an item moved to a later job is that job's.
  -- Called by hand (no job), the rows' logged changes are applied first, in the caller's
  -- transaction, so that it sees every row as it is now; the worker has applied them already, in a
  -- short transaction of its own (regen.apply_rows), and leaves what was logged since to the applier.
  if job_id is not null then
    v_rows := array(select it.row_id from regen._items it
                    where it.source_id = v_source.id and it.version_id = v_version.id
                      and it.row_id = any(prepare_inputs.row_ids) and it.queue_job = prepare_inputs.job_id);
  else
    perform regen._apply_source(v_source.id, v_rows);
  end if;

  -- 1. The read: texts, recorded hashes and logged changes in one snapshot; no lock taken.
  v_live := format('select (%1$I.%2$I)::text as row_id, (%3$s)::text as content from %4$s as %1$I',
                   v_alias, v_source.id_column, v_source.content_expression, v_source.relation);
  v_read := format($f$
    with live as materialized (%1$s where %2$I.%3$I = any($1::%4$s[])),   -- evaluated once per row
    seen as (
      select l.row_id, l.content, sha256(convert_to(l.content, 'UTF8')) as hash, it.content_hash as recorded,
             it.embedded_hash,
             -- a logged change that the applier has yet to fold in, and that is more than a new
             -- priority or tenant: the row is the applier's
             c.present is not null
               and (not c.present or c.error is not null or c.content_hash is distinct from it.content_hash) as applier
      from live l
      join regen._items it on it.source_id = $2 and it.version_id = $3 and it.row_id = l.row_id
      left join lateral (select c.present, c.error, c.content_hash from regen._changes c
                         where c.source_id = $2 and c.row_id = l.row_id order by c.seq desc limit 1) c on true
    ), drifted as (
      select s.* from seen s where not s.applier and s.content is not null and s.hash <> s.recorded
    ), plan as (
      select s.row_id, ch.chunk_no, s.hash as content_hash, sha256(convert_to(ch.chunk, 'UTF8')) as text_hash, ch.chunk as input
      from seen s
      cross join lateral regen.chunk_text(regen.preprocess(s.content, $4), $5, $6) ch
      where not s.applier and s.hash = s.recorded and ($7 or s.embedded_hash is distinct from s.hash)
    )
    select (select coalesce(array_agg(d.row_id order by d.row_id), '{}') from drifted d),
           (select coalesce(array_agg(d.hash order by d.row_id), '{}') from drifted d),
           (select coalesce(array_agg(d.recorded order by d.row_id), '{}') from drifted d),
           coalesce(array_agg(p.row_id order by p.row_id, p.chunk_no), '{}'),
           coalesce(array_agg(p.chunk_no order by p.row_id, p.chunk_no), '{}'),
           coalesce(array_agg(p.content_hash order by p.row_id, p.chunk_no), '{}'),
           coalesce(array_agg(p.text_hash order by p.row_id, p.chunk_no), '{}'),
           coalesce(array_agg(p.input order by p.row_id, p.chunk_no), '{}')
    from plan p$f$,
    v_live, v_alias, v_source.id_column, v_source.id_type);

  perform set_config('search_path', v_source.expression_search_path, true);
  begin
    execute v_read
      into v_drift_rows, v_drift_now, v_drift_seen, v_plan_rows, v_plan_chunks, v_plan_contents, v_plan_texts, v_plan_inputs
      using v_rows, v_source.id, v_version.id, v_version.settings,
            (v_version.settings->>'chunk_chars')::integer, (v_version.settings->>'chunk_overlap')::integer, force;
  exception when others then
    -- some row's expression raises: those rows fail alone, with the error; the others are read again
    foreach v_id in array v_rows loop
      begin
        execute format('%s where (%I.%I)::text = $1', v_live, v_alias, v_source.id_column) using v_id;
      exception when others then
        v_broken := v_broken || v_id;
        update regen._items it
           set failed_hash = it.content_hash, queue_job = null, attempts = it.attempts + 1, changed_at = now(),
               last_error = format('an expression of source %s raised an error on this row: %s', v_source.name, sqlerrm)
         where it.source_id = v_source.id and it.version_id = v_version.id and it.row_id = v_id;
      end;
    end loop;
    v_rows := array(select r from unnest(v_rows) r where r <> all(v_broken));
    execute v_read
      into v_drift_rows, v_drift_now, v_drift_seen, v_plan_rows, v_plan_chunks, v_plan_contents, v_plan_texts, v_plan_inputs
      using v_rows, v_source.id, v_version.id, v_version.settings,
            (v_version.settings->>'chunk_chars')::integer, (v_version.settings->>'chunk_overlap')::integer, force;
  end;
  perform set_config('search_path', v_old_path, true);

  -- 2. The writes, under item locks taken in the order write_embeddings and the appliers take them
  -- (so they never deadlock), held until the caller commits: right after this, in the worker.
  perform 1 from regen._items it
   where it.source_id = v_source.id and it.version_id = v_version.id
     and it.row_id = any(v_plan_rows || v_drift_rows)
   order by it.row_id
   for update;

  -- A text that changed without an edit between two reads (sql/0012): re-queued once, then failed.
  -- Only while the item still records the hash that was read next to it: an apply since then wins.
  if cardinality(v_drift_rows) > 0 then
    with drifted as (
      update regen._items it
         set content_hash = d.hash_now, drifts = it.drifts + 1, changed_at = now(), queue_job = null,
             failed_hash = case when it.drifts >= 1 then d.hash_now end,
             last_error = case when it.drifts >= 1
               then 'the text changed again without an edit between two reads: the content expression does not give '
                    'the same text for the same row (a volatile function, or one marked IMMUTABLE that is not)'
               else it.last_error end,
             attempts = it.attempts + (it.drifts >= 1)::integer
        from unnest(v_drift_rows, v_drift_now, v_drift_seen) as d(row_id, hash_now, seen)
       where it.source_id = v_source.id and it.version_id = v_version.id and it.row_id = d.row_id
         and it.content_hash = d.seen
      returning it.row_id, it.failed_hash is null as requeue)
    select coalesce(array_agg(d.row_id) filter (where d.requeue), '{}') into v_requeue from drifted d;
  end if;

  -- One statement, so the settle trigger of the cache-hit insert sees the recorded plan.
  return query
    with plan as (
      -- the rows whose items still record the text that was read (under the lock, so they stay so)
      select p.row_id, p.chunk_no, p.content_hash, p.text_hash, p.input, it.tenant
      from unnest(v_plan_rows, v_plan_chunks, v_plan_contents, v_plan_texts, v_plan_inputs)
             as p(row_id, chunk_no, content_hash, text_hash, input)
      join regen._items it on it.source_id = v_source.id and it.version_id = v_version.id and it.row_id = p.row_id
      where it.content_hash = p.content_hash
    ), recorded as (
      -- the chunks that make up the current text (written only where it changed)
      update regen._items it
         set plan_hash = p.content_hash, chunk_hashes = p.hashes
        from (select p.row_id, p.content_hash, array_agg(p.text_hash order by p.chunk_no) as hashes
                from plan p group by p.row_id, p.content_hash) p
       where it.source_id = v_source.id and it.version_id = v_version.id and it.row_id = p.row_id
         and it.content_hash = p.content_hash
         and (it.plan_hash, it.chunk_hashes) is distinct from (p.content_hash, p.hashes)
      returning 1
    ), pending as (
      -- chunks not already stored under the current text
      select p.* from plan p
      where force or not exists (select 1 from regen._embeddings e
                                 where e.version_id = v_version.id and e.source_id = v_source.id and e.row_id = p.row_id
                                   and e.chunk_no = p.chunk_no and e.text_hash = p.text_hash and e.content_hash = p.content_hash)
    ), known as (
      -- the cache: any vector of the same text in the store, else one that left the store (with
      -- force: only a vector stored since the job was enqueued)
      select t.*, coalesce(
               (select e.embedding from regen._embeddings e where e.version_id = v_version.id and e.text_hash = t.text_hash
                  and (not force or e.embedded_at >= v_since) limit 1),
               case when not force then (select c.embedding from regen._cache c
                                         where c.version_id = v_version.id and c.text_hash = t.text_hash) end)
             as embedding
      from pending t
    ), stored as (
      insert into regen._embeddings as e (version_id, source_id, row_id, chunk_no, tenant, content_hash, text_hash, embedding)
      select v_version.id, v_source.id, k.row_id, k.chunk_no, k.tenant, k.content_hash, k.text_hash, k.embedding
      from known k where k.embedding is not null
      on conflict on constraint _embeddings_pkey do update   -- (version_id, source_id, row_id, chunk_no)
        set tenant = excluded.tenant, content_hash = excluded.content_hash, text_hash = excluded.text_hash,
            embedding = excluded.embedding, embedded_at = now()
      returning 1
    ), claimed as (
      -- what is left for the provider is claimed for this job, text by text in hash order (so two
      -- batches never wait on each other in a cycle). A claim of another job that is still being
      -- worked stays; a lapsed one (its job ended, failed or was taken back) is taken over.
      insert into regen._claims as c (version_id, text_hash, job_id)
      select distinct v_version.id, k.text_hash, prepare_inputs.job_id from known k
      where k.embedding is null and prepare_inputs.job_id is not null
      order by 2
      on conflict on constraint _claims_pkey do update set job_id = excluded.job_id, claimed_at = now()
        where c.job_id = excluded.job_id or not regen._job_active(c.version_id, c.job_id)
      returning c.text_hash
    ), open as (
      -- deferred: claimed by another job, or written since this statement began (by a batch whose
      -- claim ended meanwhile): prepared again, it is a cache hit
      select k.*, prepare_inputs.job_id is not null
                  and ((not exists (select 1 from claimed c where c.text_hash = k.text_hash)
                        -- a fresh edit does not wait hours for a provider batch: it is embedded now
                        and not (v_fresh and regen._claimed_outside_queue(v_version.id, k.text_hash)))
                       or coalesce(d.stored_now, false)) as deferred
      from known k
      left join (select c.text_hash,
                        regen._stored_now(v_version.id, c.text_hash, case when force then coalesce(v_since, 'infinity') end) as stored_now
                   from claimed c) d on d.text_hash = k.text_hash
      where k.embedding is null
    )
    -- what is left for the provider; a text shared by several rows is sent once; a text another
    -- batch is embedding right now is not sent (deferred: its rows wait for that batch)
    select o.row_id, o.chunk_no, o.content_hash, o.text_hash,
           case when not o.deferred
                 and row_number() over (partition by o.text_hash order by o.row_id, o.chunk_no) = 1 then o.input end,
           o.deferred
    from open o
    order by o.row_id, o.chunk_no;

  -- drifted items go back to the queue as backfill, with the hash of what was read
  if cardinality(v_requeue) > 0 then
    perform regen._enqueue(v_source.id, v_version.id, v_requeue, false);
  end if;
end
$$;
comment on function regen.prepare_inputs(text, text, text[], uuid, boolean) is
  'Worker-facing: turns row ids into provider inputs for a version, settling cache hits without a provider call; '
  'job_id (the pg-boss job being worked) takes the items out of the queue and claims the texts left for the provider, '
  'so that a text is embedded by one batch at a time: rows whose text another active job has claimed come back '
  'deferred (no input), to be prepared again once that job is done. force re-embeds current rows and skips the cache, '
  'but for vectors stored since the job was enqueued. A row with a logged change the applier has yet to fold in (other '
  'than a new priority or tenant) is left to the applier (called without job_id, the rows'' changes are applied first). A row whose text no longer matches its captured hash is '
  're-queued once, then failed; a row whose expression raises fails. Reads without locks; locks its items only to write.';

-- ---------------------------------------------------------------------------------------------
-- write_embeddings of sql/0020, without its re-queue of stale rows: that locked their items at the
-- start of the statement, through the whole HNSW insert, and an applier that reached one of them
-- (with the source's lock held) waited as long, and every other applier with it; and with the
-- settle step's locks taken in another order, the two could deadlock. The apply of the edit that
-- made the row stale marked it fresh: regen.enqueue_fresh enqueues it once this batch's job ends.
create or replace function regen.write_embeddings(
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
      select c.present, c.content_hash from regen._changes c
      where c.source_id = a.source_id and c.row_id = i.row_id
      order by c.seq desc limit 1
    ) pending on true
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
        -- a change logged for the row and not applied yet says what it is now (no applier's lock
        -- is taken here: that would be held through the whole insert below)
        (pending.present is false, 7, 'untracked', 'row is not tracked for this version: deleted, filtered out, or not registered'),
        (pending.present and pending.content_hash is distinct from i.content_hash, 8, 'stale',
         'stale: the source text changed after the input was prepared'),
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
  )
  -- (a row edited while its batch was in flight is not enqueued here: the apply of its edit marked it
  -- fresh, and regen.enqueue_fresh gives it a fresh job once this batch's job is done)
  select j.row_id, j.chunk_no, j.reason is null, j.kind, j.reason
  from judged j
  order by j.ord;
$$;
comment on function regen.write_embeddings(text, text, text[], integer[], bytea[], vector[]) is
  'Worker-facing: stores vectors whose content hash still matches the source, whose dimensions match the version '
  'and that hold no NaN/Inf; refuses the rest per item with a kind (malformed, unknown_source, unknown_version, duplicate, '
  'nan, dimensions, untracked, stale, unplanned) and a reason (see regen.rejected_writes). Holds no item lock while the '
  'vectors are inserted; the settle trigger keeps only what still matches. A row with a logged change not yet applied is '
  'judged by that change. A stale row is left to regen.enqueue_fresh (its edit marked it fresh).';


-- ---------------------------------------------------------------------------------------------
-- enqueue_fresh of sql/0020, taking only fresh items no other session holds: it runs with the
-- appliers' locks of the sources it applied held (until it commits), so it must not wait on a batch.
create or replace function regen.enqueue_fresh(max_items integer default 10000)
returns bigint
language plpgsql volatile set jit = off
as $$
declare
  v_pair record;
  v_rows text[];
  v_left integer := enqueue_fresh.max_items;
  v_enqueued bigint := 0;
begin
  if max_items is null or max_items < 1 then
    raise exception 'max_items must be a positive integer, not %', coalesce(max_items::text, 'NULL') using errcode = 'RG003';
  end if;
  perform regen.apply_changes();
  -- One enqueuer at a time (several worker replicas call this); the others have nothing to add.
  if not pg_try_advisory_xact_lock(hashtext('regen.enqueue_fresh')) then
    return 0;
  end if;
  for v_pair in
    select distinct it.source_id, it.version_id from regen._items it where it.fresh order by 1, 2
  loop
    exit when v_left <= 0;
    -- The hottest first, should there be more than max_items. An item whose job is being worked
    -- right now stays marked until that job ends: taking it into a new job would send its text to
    -- the provider a second time while the first is in flight.
    with taken as (
      select it.row_id from regen._items it
      where it.source_id = v_pair.source_id and it.version_id = v_pair.version_id and it.fresh
        and not exists (select 1 from pgboss.job j
                        where j.name = regen._queue(it.version_id) and j.id = it.queue_job and j.state = 'active')
      order by it.priority desc, it.row_id
      limit v_left
      for update of it skip locked   -- held by a batch for a moment: taken at the next call, never waited for
    ), cleared as (
      update regen._items it set fresh = false
        from taken t
       where it.source_id = v_pair.source_id and it.version_id = v_pair.version_id and it.row_id = t.row_id
      returning it.row_id
    )
    select coalesce(array_agg(c.row_id), '{}') into v_rows from cleared c;
    v_left := v_left - cardinality(v_rows);
    v_enqueued := v_enqueued + regen._enqueue(v_pair.source_id, v_pair.version_id, v_rows, true);
  end loop;
  return v_enqueued;
end
$$;
comment on function regen.enqueue_fresh(integer) is
  'Applies the logged changes (regen.apply_changes), then enqueues the fresh edits (new rows, changed texts) as fresh jobs '
  'ahead of backfill; returns the items enqueued. Never waits on an item another session holds (it is taken at the next '
  'call). The worker calls it every REGEN_ENQUEUE_INTERVAL_MS; safe to call from anywhere.';


select regen._refresh_grants();
