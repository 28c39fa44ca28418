-- A fair and honest queue (issue 13, item 2: the worker's side).
--
-- * Fresh edits stay ahead of backfill without starving it. pg-boss hands out a version's jobs by
--   priority, and fresh-edit jobs sit in a band above every backfill job (sql/0004, sql/0018):
--   regen.fresh_priority() names where that band starts, so that the worker can fetch either side
--   of it: REGEN_BACKFILL_SHARE (default 0.5) of its fetch loops take backfill jobs first whenever
--   backfill waits, the others fresh edits first; with only one kind waiting, every loop takes it.
-- * Each distinct (version, text) is sent to the provider once, also when several batches or
--   replicas want it at the same time. regen.prepare_inputs() claims each text it leaves for the
--   provider for its job (regen._claims); a text claimed by another job that is still active is
--   not handed out again: its rows come back deferred, and the worker prepares them again once
--   that job is done (the vector is then in the store, a cache hit). So does a text that another
--   batch wrote while the statement ran (its claim ended just before this one took it over). A claim lapses by itself when
--   its job is no longer active: completed, failed, or taken back by pg-boss after a crash (the
--   heartbeat), so a dead holder leaves nothing stuck. The worker releases its claims after every
--   round of a batch (regen.release_claims).
-- * A forced rebuild skips the cache, but no longer for vectors stored since its job was enqueued:
--   those were embedded by the same rebuild, and a text shared by rows of several of its jobs is
--   embedded once.
--
-- Error codes of this file: none new.

create function regen.fresh_priority()
returns integer
language sql immutable parallel safe
as $$ select 1000000000 $$;
comment on function regen.fresh_priority() is
  'Worker-facing: the lowest pg-boss priority of a fresh-edit job; every backfill job is below it';

-- The two checks below are volatile and in plpgsql: each query of theirs takes a snapshot of its
-- own, so they see what committed after the statement that calls them began (a job that ended, a
-- vector another batch wrote meanwhile).
create function regen._job_active(version_id integer, job_id uuid)
returns boolean
language plpgsql volatile
as $$
begin
  return exists (select 1 from pgboss.job j
                 where j.name = regen._queue(_job_active.version_id) and j.id = _job_active.job_id and j.state = 'active');
end
$$;
comment on function regen._job_active(integer, uuid) is 'Whether a job of the version''s queue is being worked now (state active), as committed now';

create function regen._stored_now(version_id integer, text_hash bytea, since timestamptz default null)
returns boolean
language plpgsql volatile
as $$
begin
  return exists (select 1 from regen._embeddings e
                 where e.version_id = _stored_now.version_id and e.text_hash = _stored_now.text_hash
                   and (_stored_now.since is null or e.embedded_at >= _stored_now.since));
end
$$;
comment on function regen._stored_now(integer, bytea, timestamptz) is
  'Whether the store holds a vector of this text in this version (stored since `since`, if given), as committed now '
  '(not as of the calling statement''s start)';

create function regen._job_created(version_id integer, job_id uuid)
returns timestamptz
language sql stable
as $$
  select j.created_on from pgboss.job j where j.name = regen._queue(_job_created.version_id) and j.id = _job_created.job_id
$$;
comment on function regen._job_created(integer, uuid) is 'When a job of the version''s queue was enqueued (null when there is no such job)';

-- One row per text a batch is embedding: written by regen.prepare_inputs, deleted by
-- regen.release_claims; a row whose job is no longer active is a lapsed claim, taken over by the
-- next batch that wants the text.
create table regen._claims (
  version_id integer not null,
  text_hash bytea not null,
  job_id uuid not null,
  claimed_at timestamptz not null default now(),
  constraint _claims_pkey primary key (version_id, text_hash)
);
create index _claims_job on regen._claims (job_id);
comment on table regen._claims is
  'Texts (per version) that a batch is sending to the provider, and the pg-boss job of that batch: another batch that wants '
  'the same text waits for it instead of sending it too. A claim whose job is no longer active has lapsed.';

create function regen.release_claims(job_ids uuid[])
returns bigint
language sql volatile
as $$
  -- Never waits: a claim locked by a batch taking it over is that batch's now. Claims older than an
  -- hour (of a crashed worker, whose job has long been retried) go as well.
  with gone as (
    delete from regen._claims c
     where c.ctid = any(array(select c2.ctid from regen._claims c2
                              where c2.job_id = any(release_claims.job_ids) or c2.claimed_at < now() - interval '1 hour'
                              for update skip locked))
    returning 1
  )
  select count(*) from gone
$$;
comment on function regen.release_claims(uuid[]) is
  'Worker-facing: releases the texts the given jobs claimed (regen.prepare_inputs), after their vectors were written or '
  'their batch failed; returns the claims released';

-- Applying the change log of a batch's rows in a short transaction of its own. prepare_inputs and
-- write_embeddings apply their rows' pending changes themselves (sql/0020), under the source's
-- applier lock, which they then hold until they commit: through a whole HNSW insert, while every
-- other batch of the source waits. Under a steady stream of edits most batches have a row edited
-- since it was enqueued, so the worker applies them here first, right before each of the two.
create function regen.apply_rows(source text, row_ids text[])
returns bigint
language sql volatile
as $$
  select coalesce(sum(regen._apply_source(s.id, apply_rows.row_ids)), 0)::bigint
  from regen._sources s
  where s.name = apply_rows.source   -- nothing logged for the rows: _apply_source takes no lock
$$;
comment on function regen.apply_rows(text, text[]) is
  'Worker-facing: applies the logged changes of these rows of a source (regen._apply_source) in the caller''s transaction, '
  'which the worker keeps short; returns the changes applied';

-- ---------------------------------------------------------------------------------------------
-- prepare_inputs of sql/0012, applying its rows' logged changes first (sql/0020) and with the claims, the deferred rows (a new column, hence drop and
-- create) and the forced rebuild's use of vectors stored since its job was enqueued.

drop function regen.prepare_inputs(text, text, text[], uuid, boolean);

create function regen.prepare_inputs(source text, version text, row_ids text[], job_id uuid default null, force boolean default false)
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
  v_drifted text[];
  v_requeue text[];
  v_broken text[] := '{}';
  v_id text;
  v_since timestamptz;
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

  -- A job works only the items that still name it: an item moved to a later job is that job's.
  if job_id is not null then
    v_rows := array(select it.row_id from regen._items it
                    where it.source_id = v_source.id and it.version_id = v_version.id
                      and it.row_id = any(prepare_inputs.row_ids) and it.queue_job = prepare_inputs.job_id);
  end if;

  -- Changes logged for these rows and not yet applied: apply them now (before taking any item lock,
  -- in the order every applier takes them), so the items record the text the inputs are read from.
  -- (_apply_source returns at once, taking no lock, when nothing is logged for them)
  perform regen._apply_source(v_source.id, v_rows);

  -- Lock the items in the order write_embeddings and the appliers take them (so they never
  -- deadlock); the statements below see the latest text the items record.
  perform 1 from regen._items it
   where it.source_id = v_source.id and it.version_id = v_version.id and it.row_id = any(v_rows)
   order by it.row_id
   for update;

  perform set_config('search_path', v_source.expression_search_path, true);
  v_live := format('select (%1$I.%2$I)::text as row_id, sha256(convert_to((%3$s)::text, ''UTF8'')) as hash from %4$s as %1$I',
                   v_alias, v_source.id_column, v_source.content_expression, v_source.relation);
  begin
    execute format($f$
      with live as materialized (%1$s where %2$I.%3$I = any($1::%4$s[])),   -- evaluated once per row
      drifted as (
        update regen._items it
           set content_hash = l.hash, drifts = it.drifts + 1, changed_at = now(), queue_job = null,
               failed_hash = case when it.drifts >= 1 then l.hash end,
               last_error = case when it.drifts >= 1
                 then 'the text changed again without an edit between two reads: the content expression does not give '
                      'the same text for the same row (a volatile function, or one marked IMMUTABLE that is not)'
                 else it.last_error end,
               attempts = it.attempts + (it.drifts >= 1)::integer
          from live l
         where it.source_id = $2 and it.version_id = $3 and it.row_id = l.row_id
           and l.hash is not null and l.hash <> it.content_hash
        returning it.row_id, it.failed_hash is null as requeue)
      select coalesce(array_agg(d.row_id), '{}'), coalesce(array_agg(d.row_id) filter (where d.requeue), '{}') from drifted d$f$,
      v_live, v_alias, v_source.id_column, v_source.id_type)
    into v_drifted, v_requeue
    using v_rows, v_source.id, v_version.id;
  exception when others then
    -- some row's expression raises: those rows fail alone, with the error
    v_drifted := '{}'; v_requeue := '{}';
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
  end;
  v_rows := array(select r from unnest(v_rows) r where r <> all(v_drifted) and r <> all(v_broken));

  -- One statement, so the settle trigger of the cache-hit insert sees the recorded plan.
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
      -- which must stay (the apply that recorded it marked the edit fresh).
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
      -- the cache: any vector of the same text in the store, else one that left the store (with
      -- force: only a vector stored since the job was enqueued, $8)
      select t.*, coalesce(
               (select e.embedding from regen._embeddings e where e.version_id = $3 and e.text_hash = t.text_hash
                  and (not $7 or e.embedded_at >= $8) limit 1),
               case when not $7 then (select c.embedding from regen._cache c where c.version_id = $3 and c.text_hash = t.text_hash) end)
             as embedding
      from pending t
    ), stored as (
      insert into regen._embeddings as e (version_id, source_id, row_id, chunk_no, tenant, content_hash, text_hash, embedding)
      select $3, $2, k.row_id, k.chunk_no, k.tenant, k.content_hash, k.text_hash, k.embedding
      from known k where k.embedding is not null
      on conflict (version_id, source_id, row_id, chunk_no) do update
        set tenant = excluded.tenant, content_hash = excluded.content_hash, text_hash = excluded.text_hash,
            embedding = excluded.embedding, embedded_at = now()
      returning 1
    ), claimed as (
      -- what is left for the provider is claimed for this job ($9), text by text in hash order (so two
      -- batches never wait on each other in a cycle). A claim of another job that is still being
      -- worked stays; a lapsed one (its job ended, failed or was taken back) is taken over.
      insert into regen._claims as c (version_id, text_hash, job_id)
      select distinct $3, k.text_hash, $9::uuid from known k
      where k.embedding is null and $9::uuid is not null
      order by 2
      on conflict on constraint _claims_pkey do update set job_id = excluded.job_id, claimed_at = now()
        where c.job_id = excluded.job_id or not regen._job_active(c.version_id, c.job_id)
      returning c.text_hash
    ), open as (
      -- deferred: claimed by another job, or written since this statement began (by a batch whose
      -- claim ended meanwhile): prepared again, it is a cache hit
      select k.*, $9::uuid is not null
                  and (not exists (select 1 from claimed c where c.text_hash = k.text_hash) or d.stored_now) as deferred
      from known k
      left join (select c.text_hash, regen._stored_now($3, c.text_hash, case when $7 then coalesce($8, 'infinity') end) as stored_now from claimed c) d on d.text_hash = k.text_hash
      where k.embedding is null
    )
    -- what is left for the provider; a text shared by several rows is sent once; a text another
    -- batch is embedding right now is not sent (deferred: its rows wait for that batch)
    select o.row_id, o.chunk_no, o.content_hash, o.text_hash,
           case when not o.deferred
                 and row_number() over (partition by o.text_hash order by o.row_id, o.chunk_no) = 1 then o.input end,
           o.deferred
    from open o
    order by o.row_id, o.chunk_no$f$,
    v_alias, v_source.id_column, v_source.content_expression, v_source.relation, v_source.id_type)
  using v_rows, v_source.id, v_version.id, v_version.settings,
        (v_version.settings->>'chunk_chars')::integer, (v_version.settings->>'chunk_overlap')::integer, force,
        v_since, job_id;
  perform set_config('search_path', v_old_path, true);

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
  'but for vectors stored since the job was enqueued. A row whose text no longer matches its captured hash is '
  're-queued once, then failed; a row whose expression raises fails.';

select regen._refresh_grants();
