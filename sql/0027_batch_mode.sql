-- Batch mode (issue 14, item 2): a version's backfill (a migration, a large rebuild) sent to the
-- provider's Batch API (OpenAI: /v1/files and /v1/batches, half the price of synchronous calls,
-- results within 24 hours) instead of its synchronous endpoint; fresh edits always go synchronous.
--
-- The worker prepares a batch of backfill jobs as usual (regen.prepare_inputs: cache hits settled,
-- texts claimed), records what it submits here before it submits it, uploads one line per
-- distinct text (custom_id: the text's sha256 in hex), creates the provider batch and completes the
-- queue jobs. The items then point at the provider batch (queue_job = its id here), so that no
-- rebuild or recovery enqueues them again while it is in flight. The worker polls what is in
-- flight; a finished batch (completed, expired, failed, cancelled) is written back a slice at a
-- time (so that no item stays locked through a long write-back), each slice in a transaction that
-- holds the provider batch's row, goes through regen.write_embeddings' checks (a text edited after
-- submission is refused as stale; its edit has its fresh job) and marks its chunks written; the
-- last marks the batch written and queues again whatever it did not embed. So each chunk's result
-- is written once, whichever worker gets there, after whatever crash.
--
-- Error codes of this file: RG001 (reused) unknown version.

create table regen._provider_batches (
  id uuid primary key default gen_random_uuid(),
  version_id integer not null references regen._versions (id) on delete cascade,
  state text not null default 'submitting' check (state in ('submitting', 'submitted', 'written', 'abandoned')),
  provider_batch_id text unique,
  provider_status text,
  input_file_id text,
  lines integer not null,
  completed integer,
  failed integer,
  created_at timestamptz not null default now(),
  submitted_at timestamptz,
  expires_at timestamptz,
  checked_at timestamptz,
  written_at timestamptz,
  written integer,
  requeued integer,
  last_error text
);
create index _provider_batches_open on regen._provider_batches (state) where state in ('submitting', 'submitted');
comment on table regen._provider_batches is
  'Provider batches (Batch API) of a version''s backfill: recorded before submission (submitting), in flight (submitted), '
  'written back (written), or given up (abandoned: never created at the provider)';

create table regen._provider_batch_rows (
  batch_id uuid not null references regen._provider_batches (id) on delete cascade,
  source_id integer not null,
  row_id text not null,
  chunk_no integer not null,
  content_hash bytea not null,
  text_hash bytea not null,
  written boolean not null default false,
  primary key (batch_id, source_id, row_id, chunk_no)
);
comment on table regen._provider_batch_rows is
  'The chunks a provider batch embeds: line custom_id = encode(text_hash, ''hex''), one line per distinct text; written: '
  'its vector was handed to write_embeddings (the write-back goes a slice at a time, each slice once)';

-- A slice of a finished provider batch written back: its chunks marked written, the count kept.
create function regen.provider_batch_slice_written(id uuid, source text, row_ids text[], chunk_nos integer[], stored integer)
returns void
language sql volatile
as $$
  update regen._provider_batch_rows r set written = true
    from unnest(provider_batch_slice_written.row_ids, provider_batch_slice_written.chunk_nos) as w(row_id, chunk_no)
   where r.batch_id = provider_batch_slice_written.id and r.source_id = (regen._source(provider_batch_slice_written.source)).id
     and r.row_id = w.row_id and r.chunk_no = w.chunk_no;
  update regen._provider_batches b set written = coalesce(b.written, 0) + provider_batch_slice_written.stored
   where b.id = provider_batch_slice_written.id;
$$;
comment on function regen.provider_batch_slice_written(uuid, text, text[], integer[], integer) is
  'Worker-facing: marks a slice of a provider batch''s chunks written back (in the transaction that wrote them), adding the vectors stored';

create view regen.provider_batches as
  select b.id, v.tag as version, b.state, b.provider_batch_id, b.provider_status, b.lines, b.completed, b.failed,
         b.created_at, b.submitted_at, b.expires_at, b.checked_at, b.written_at, b.written, b.requeued, b.last_error
  from regen._provider_batches b
  join regen._versions v on v.id = b.version_id;
comment on view regen.provider_batches is
  'Provider batches of batch mode: state (submitting, submitted, written, abandoned), the provider''s status and counts, '
  'and what was written back and queued again';

create function regen.set_batch_mode(version text, enabled boolean)
returns boolean
language plpgsql volatile
as $$
begin
  update regen._versions v set settings = v.settings || jsonb_build_object('batch_mode', coalesce(enabled, false))
   where v.id = regen._version_id(set_batch_mode.version);
  return coalesce(enabled, false);
end
$$;
comment on function regen.set_batch_mode(text, boolean) is
  'Batch mode of a version: its backfill (rebuilds, migrations) goes through the provider''s Batch API at half the price, '
  'results within 24 hours; fresh edits stay synchronous. Returns the mode set.';

create function regen.batch_mode(version text)
returns boolean
language sql stable
as $$
  select coalesce((v.settings->>'batch_mode')::boolean, false) from regen._versions v where v.tag = batch_mode.version
$$;
comment on function regen.batch_mode(text) is 'Worker-facing: whether the version''s backfill goes through the provider''s Batch API';

-- Recorded before submission: the batch, its chunks, and its items pointing at it.
create function regen.record_provider_batch(version text, source text, row_ids text[], chunk_nos integer[],
                                            content_hashes bytea[], text_hashes bytea[])
returns uuid
language plpgsql volatile
as $$
declare
  v_id uuid;
  v_version integer := regen._version_id(version);
  v_source integer := (regen._source(source)).id;
begin
  insert into regen._provider_batches (version_id, lines)
  values (v_version, (select count(distinct t) from unnest(text_hashes) t))
  returning id into v_id;
  insert into regen._provider_batch_rows (batch_id, source_id, row_id, chunk_no, content_hash, text_hash)
  select v_id, v_source, r.row_id, r.chunk_no, r.content_hash, r.text_hash
  from unnest(row_ids, chunk_nos, content_hashes, text_hashes) as r(row_id, chunk_no, content_hash, text_hash)
  on conflict do nothing;
  update regen._items it set queue_job = v_id
   where it.source_id = v_source and it.version_id = v_version and it.row_id = any(row_ids);
  -- the texts' claims pass from the jobs to the provider batch, which holds them until it is written
  -- back: another batch that wants one of its texts waits for it (or joins it) instead of paying again
  update regen._claims c set job_id = v_id, claimed_at = now()
   where c.version_id = v_version and c.text_hash = any(text_hashes);
  return v_id;
end
$$;
comment on function regen.record_provider_batch(text, text, text[], integer[], bytea[], bytea[]) is
  'Worker-facing: records a provider batch about to be submitted (state submitting) with its chunks; its items point at it';

-- A row whose text another submission has claimed joins the provider batch that has its text
-- (submitting or submitted), whole: every chunk's text must be there. Returns the rows attached.
create function regen.attach_to_provider_batches(version text, source text, row_ids text[], chunk_nos integer[],
                                                 content_hashes bytea[], text_hashes bytea[])
returns text[]
language plpgsql volatile
as $$
declare
  v_version integer := regen._version_id(version);
  v_source integer := (regen._source(source)).id;
  v_rows text[];
begin
  with wanted as (
    select r.row_id, r.chunk_no, r.content_hash, r.text_hash,
           (select b.id from regen._provider_batches b
              join regen._provider_batch_rows x on x.batch_id = b.id and x.text_hash = r.text_hash
             where b.version_id = v_version and b.state in ('submitting', 'submitted')
             order by b.created_at limit 1) as batch_id
    from unnest(row_ids, chunk_nos, content_hashes, text_hashes) as r(row_id, chunk_no, content_hash, text_hash)
  ), whole as (
    select w.row_id from wanted w group by w.row_id having bool_and(w.batch_id is not null)
  ), attached as (
    insert into regen._provider_batch_rows (batch_id, source_id, row_id, chunk_no, content_hash, text_hash)
    select w.batch_id, v_source, w.row_id, w.chunk_no, w.content_hash, w.text_hash
    from wanted w join whole using (row_id)
    on conflict do nothing
    returning row_id, batch_id
  ), pointed as (
    update regen._items it set queue_job = a.batch_id
      from (select distinct on (a.row_id) a.row_id, a.batch_id from attached a order by a.row_id) a
     where it.source_id = v_source and it.version_id = v_version and it.row_id = a.row_id
    returning it.row_id
  )
  select coalesce(array_agg(p.row_id), '{}') into v_rows from pointed p;
  return v_rows;
end
$$;
comment on function regen.attach_to_provider_batches(text, text, text[], integer[], bytea[], bytea[]) is
  'Worker-facing: rows whose every chunk text is in a provider batch in flight of the version join it (written back with it); '
  'returns the rows attached';

-- The claims of sql/0022_fair_queue.sql: a provider batch in flight holds its texts' claims as an
-- active job does, and release_claims' cleanup of old claims leaves them.
create or replace function regen._job_active(version_id integer, job_id uuid)
returns boolean
language plpgsql volatile
as $$
begin
  return exists (select 1 from pgboss.job j
                 where j.name = regen._queue(_job_active.version_id) and j.id = _job_active.job_id and j.state = 'active')
      or exists (select 1 from regen._provider_batches b
                 where b.id = _job_active.job_id and b.state in ('submitting', 'submitted'));
end
$$;
comment on function regen._job_active(integer, uuid) is
  'Whether a job of the version''s queue is being worked now (state active), or a provider batch of batch mode is in flight, '
  'as committed now';

create or replace function regen.release_claims(job_ids uuid[])
returns bigint
language sql volatile
as $$
  -- Never waits: a claim locked by a batch taking it over is that batch's now. Claims older than an
  -- hour (of a crashed worker, whose job has long been retried) go as well, but for those of a
  -- provider batch in flight (up to a day).
  with gone as (
    delete from regen._claims c
     where c.ctid = any(array(select c2.ctid from regen._claims c2
                              where c2.job_id = any(release_claims.job_ids)
                                 or (c2.claimed_at < now() - interval '1 hour'
                                     and not exists (select 1 from regen._provider_batches b
                                                     where b.id = c2.job_id and b.state in ('submitting', 'submitted')))
                              for update skip locked))
    returning 1
  )
  select count(*) from gone
$$;
comment on function regen.release_claims(uuid[]) is
  'Worker-facing: releases the texts the given jobs claimed (regen.prepare_inputs), after their vectors were written or '
  'their batch failed; returns the claims released. A provider batch in flight keeps its claims until it is written back.';

create function regen.provider_batch_submitted(id uuid, provider_batch_id text, input_file_id text, expires_at timestamptz)
returns void
language sql volatile
as $$
  update regen._provider_batches b
     set state = 'submitted', provider_batch_id = provider_batch_submitted.provider_batch_id,
         input_file_id = provider_batch_submitted.input_file_id, expires_at = provider_batch_submitted.expires_at,
         submitted_at = now(), provider_status = 'validating'
   where b.id = provider_batch_submitted.id and b.state = 'submitting'
$$;
comment on function regen.provider_batch_submitted(uuid, text, text, timestamptz) is 'Worker-facing: a recorded provider batch was created at the provider';

create function regen.provider_batch_checked(id uuid, provider_status text, completed integer, failed integer)
returns void
language sql volatile
as $$
  update regen._provider_batches b
     set provider_status = provider_batch_checked.provider_status, completed = provider_batch_checked.completed,
         failed = provider_batch_checked.failed, checked_at = now()
   where b.id = provider_batch_checked.id
$$;
comment on function regen.provider_batch_checked(uuid, text, integer, integer) is 'Worker-facing: the provider''s status and counts of a batch, as last polled';

-- The end of a provider batch, in the transaction that wrote its last slice back (or that found it
-- was never created): marked so, and every item it left without its vector queued again as backfill.
create function regen.provider_batch_done(id uuid, state text, last_error text default null)
returns bigint
language plpgsql volatile
as $$
declare
  v_batch regen._provider_batches;
  v_requeued bigint := 0;
  v_pair record;
begin
  if state not in ('written', 'abandoned') then
    raise exception 'a provider batch ends written or abandoned, not %', state using errcode = 'RG003';
  end if;
  select * into v_batch from regen._provider_batches b where b.id = provider_batch_done.id;
  for v_pair in
    select r.source_id, array_agg(distinct r.row_id) as rows
    from regen._provider_batch_rows r
    join regen._items it on it.source_id = r.source_id and it.version_id = v_batch.version_id and it.row_id = r.row_id
    where r.batch_id = provider_batch_done.id and it.queue_job = provider_batch_done.id
    group by r.source_id
  loop
    update regen._items it set queue_job = null
     where it.source_id = v_pair.source_id and it.version_id = v_batch.version_id and it.row_id = any(v_pair.rows)
       and it.queue_job = provider_batch_done.id;
    v_requeued := v_requeued + regen._enqueue(v_pair.source_id, v_batch.version_id, v_pair.rows, false);
  end loop;
  delete from regen._claims c where c.job_id = provider_batch_done.id;
  update regen._provider_batches b
     set state = provider_batch_done.state, written_at = now(), written = coalesce(b.written, 0),
         requeued = v_requeued, last_error = coalesce(provider_batch_done.last_error, b.last_error)
   where b.id = provider_batch_done.id;
  return v_requeued;
end
$$;
comment on function regen.provider_batch_done(uuid, text, text) is
  'Worker-facing: ends a provider batch (written: its slices were written back, the last in this transaction; abandoned: it was never '
  'created at the provider) and queues again, as backfill, the items it left without their vector; returns those';

-- _enqueue of sql/0018_hot_first.sql, notifying regen_work when it enqueued anything (sql/0025), and
-- leaving the items of a provider batch in flight out of backfill.
create or replace function regen._enqueue(
  source_id integer, version_id integer, row_ids text[], fresh boolean, force boolean default false
)
returns bigint
language plpgsql volatile set jit = off
as $$
declare
  v_rank integer := regen._weight_rank(_enqueue.source_id);
  -- without a priority expression every row of the source is hot
  v_ranked boolean := (select s.priority_expression is not null from regen._sources s where s.id = _enqueue.source_id);
  v_count bigint;
  v_salt text := gen_random_uuid()::text;
begin
  with candidates as materialized (
    select it.version_id, it.row_id, it.priority, coalesce(k.api_key_ref, '') as key_ref,
           _enqueue.fresh or not v_ranked or it.priority > 0 as hot   -- fresh edits are one band: not split
    from regen._source_versions sv
    join regen._items it on it.source_id = sv.source_id and it.version_id = sv.version_id
    left join regen._tenant_keys k on k.tenant = it.tenant
    where sv.source_id = _enqueue.source_id
      and (_enqueue.version_id is null or sv.version_id = _enqueue.version_id)
      and it.row_id = any(_enqueue.row_ids)          -- primary-key probes per version
      and (it.queue_job is null
           or not exists (select 1 from pgboss.job j
                          where j.name = regen._queue(it.version_id) and j.id = it.queue_job and j.state in ('created', 'retry')
                            and (j.priority >= 1000000000 or not _enqueue.fresh)))
      and (_enqueue.force or (it.embedded_hash is distinct from it.content_hash
                              and it.failed_hash is distinct from it.content_hash))
      -- backfill waits for a provider batch that has the item (a fresh edit does not)
      and (_enqueue.fresh or not exists (select 1 from regen._provider_batches b
                                         where b.id = it.queue_job and b.state in ('submitting', 'submitted')))
    for update of it
  ), batched as (
    -- job ids are derived from (statement salt, version, key, batch): no join needed to assign them
    select n.*, md5(v_salt || '/' || n.version_id || '/' || n.key_ref || '/' || n.hot || '/' || n.batch_no)::uuid as job_id
    from (select c.*, (row_number() over (partition by c.version_id, c.key_ref, c.hot order by c.priority desc, c.row_id) - 1) / 64 as batch_no
            from candidates c) n
  ), jobs as (
    select b.version_id, b.key_ref, b.hot, b.batch_no, b.job_id,
           array_agg(b.row_id order by b.priority desc, b.row_id) as rows
    from batched b group by b.version_id, b.key_ref, b.hot, b.batch_no, b.job_id
  ), marked as (
    -- driven by the assignments, one primary-key lookup each
    update regen._items it set queue_job = a.job_id
      from batched a
     where it.source_id = _enqueue.source_id and it.version_id = a.version_id and it.row_id = a.row_id
    returning 1
  ), inserted as (
    insert into pgboss.job (id, name, data, priority, retry_limit, retry_delay, retry_backoff, retry_delay_max,
                            expire_seconds, deletion_seconds, keep_until, policy, dead_letter, heartbeat_seconds)
    select j.job_id, q.name,
           jsonb_build_object('source', s.name, 'version', v.tag, 'rows', to_jsonb(j.rows),
                              'key', nullif(j.key_ref, ''), 'force', _enqueue.force, 'fresh', _enqueue.fresh),
           case when _enqueue.fresh then 1000000000 + v_rank * 1000
                else (case when j.hot then 500000000 else 0 end) + v_rank * 1000000 + 999999 - least(j.batch_no, 999999)::integer end,
           q.retry_limit, q.retry_delay, q.retry_backoff, q.retry_delay_max,
           q.expire_seconds, q.deletion_seconds, now() + q.retention_seconds * interval '1 second',
           q.policy, q.dead_letter, q.heartbeat_seconds
    from jobs j
    join pgboss.queue q on q.name = regen._queue(j.version_id)
    join regen._sources s on s.id = _enqueue.source_id
    join regen._versions v on v.id = j.version_id
    returning 1
  )
  select (select count(*) from marked) into v_count;
  if v_count > 0 then
    -- workers that LISTEN fetch at once instead of at their next poll (sent when this commits;
    -- one notification per transaction however many calls)
    perform pg_notify('regen_work', '');
  end if;
  return v_count;
end
$$;
comment on function regen._enqueue(integer, integer, text[], boolean, boolean) is
  'Enqueues items that need work and wait in no job into pg-boss: fresh edits first, then hot rows of every source (heavier '
  'source first), then cold ones (priority 0 or less); hotter rows first within; returns the number of items and, if any, notifies channel regen_work';



select regen._refresh_grants();
