-- The write path (issue 13, first part): write-back no longer holds the items' row locks while it
-- inserts into the HNSW index, so an application's edit of a row being written waits for a short
-- settle step at most; every refusal carries a kind to branch on; an edit of the priority or the
-- tenant alone no longer enqueues the row.
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
comment on function regen.tg_embeddings__settle() is
  'Locks the items of the vectors a statement stored, drops vectors of rows gone meanwhile, moves vectors to their row''s tenant, '
  'and marks items current once all their chunk vectors are stored';

-- The last error of a rebuild: any refusal but a stale one (a stale write is the normal race with an edit).
create or replace view regen.rebuild_progress as
  with rate as (
    select p.source_id, p.version_id, sum(p.items)::numeric / 5 as per_minute
    from regen._progress p
    where p.minute >= date_trunc('minute', now()) - interval '5 minutes'
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

-- The generated capture function of sql/0012, now enqueueing only new rows and changed texts.
-- Set-based, one call per statement, static SQL. It evaluates the
-- source's expressions once, without writing, inside a block; if any row makes them raise, it
-- evaluates row by row and records each such row as a failed item with the error: the
-- application's write goes through. (The block is a subtransaction that writes nothing, so it takes
-- no transaction id of its own.) It acts only when fired by its own table.
create or replace function regen._capture_function(s regen._sources)
returns void
language plpgsql volatile
as $$
declare
  v_fn text := format('regen.%I', 'tg_' || s.name || '__capture');
  v_alias text := (select c.relname from pg_class c where c.oid = s.relation);
  v_old_ids text;
begin
  v_old_ids := format('select (%I.%I)::text as row_id from old_rows as %I', v_alias, s.id_column, v_alias);
  execute format($f$
    create or replace function %1$s() returns trigger
    language plpgsql security definer set search_path = %2$s set jit = off
    as $body$
    declare
      v_ids text[] := '{}';
      v_tenants text[] := '{}';
      v_priorities float8[] := '{}';
      v_hashes bytea[] := '{}';
      v_bad_ids text[] := '{}';
      v_bad_tenants text[] := '{}';
      v_bad_errors text[] := '{}';
      v_versions integer[];
      v_row %3$s%%rowtype;
      v_one record;
      v_enqueued bigint;
    begin
      -- Generated for one table: fired by any other (a copy, a temporary table) it refuses to act.
      -- A restore gives the table a new oid; the source row then names it.
      if tg_relid <> %4$s::oid
         and not exists (select 1 from regen._sources s where s.id = %5$s and s.relation = tg_relid) then
        raise exception 'capture function %%.%% belongs to source %%, not to table %%.%%',
          'regen', %6$L, %7$L, tg_table_schema, tg_table_name
          using errcode = 'RG017', hint = 'pgregen installs its own triggers: use regen.register_source()';
      end if;

      if tg_op = 'TRUNCATE' then
        delete from regen._items where source_id = %5$s;
        delete from regen._embeddings where source_id = %5$s;
        return null;
      end if;

      if tg_op in ('INSERT', 'UPDATE') then
        begin
          select coalesce(array_agg(c.row_id), '{}'), coalesce(array_agg(c.tenant), '{}'),
                 coalesce(array_agg(c.priority), '{}'), coalesce(array_agg(c.content_hash), '{}')
            into v_ids, v_tenants, v_priorities, v_hashes
            from (%8$s) c;
        exception when others then
          -- an expression raised on some row: find which, keep the others
          v_ids := '{}'; v_tenants := '{}'; v_priorities := '{}'; v_hashes := '{}';
          for v_row in select * from new_rows loop
            begin
              select c.row_id, c.tenant, c.priority, c.content_hash into v_one from (%9$s) c;
              if found then
                v_ids := v_ids || v_one.row_id; v_tenants := v_tenants || v_one.tenant;
                v_priorities := v_priorities || v_one.priority; v_hashes := v_hashes || v_one.content_hash;
              end if;
            exception when others then
              v_bad_ids := v_bad_ids || (v_row.%10$I)::text;
              v_bad_errors := v_bad_errors || format('an expression of source %%s raised an error on this row: %%s', %7$L, sqlerrm);
              begin
                v_bad_tenants := v_bad_tenants || %11$s;
              exception when others then
                v_bad_tenants := v_bad_tenants || null::text;   -- the tenant itself does not compute
              end;
            end;
          end loop;
        end;
      end if;

      if tg_op in ('UPDATE', 'DELETE') then
        v_versions := array(select sv.version_id from regen._source_versions sv where sv.source_id = %5$s);
      end if;

      if tg_op = 'DELETE' then
        -- items first, then vectors, in two statements (see UPDATE)
        delete from regen._items it using (%12$s) gone
        where it.source_id = %5$s and it.version_id = any(v_versions) and it.row_id = gone.row_id;
        delete from regen._embeddings e using (%12$s) gone
        where e.version_id = any(v_versions) and e.source_id = %5$s and e.row_id = gone.row_id;
        return null;
      end if;

      if tg_op = 'UPDATE' then
        -- rows that left the source (id changed, filtered out, text now null) lose items and vectors.
        -- Two statements: deleting the items waits for a worker's write_embeddings that holds them,
        -- and only a statement started after that sees (and deletes) the vectors it wrote.
        if exists (select o.row_id from (%12$s) o except select unnest(v_ids || v_bad_ids)) then
          delete from regen._items it
          using (select o.row_id from (%12$s) o except select unnest(v_ids || v_bad_ids)) gone(row_id)
          where it.source_id = %5$s and it.version_id = any(v_versions) and it.row_id = gone.row_id;
          delete from regen._embeddings e
          using (select o.row_id from (%12$s) o except select unnest(v_ids || v_bad_ids)) gone(row_id)
          where e.version_id = any(v_versions) and e.source_id = %5$s and e.row_id = gone.row_id;
        end if;
      end if;

      -- The upsert, then fresh edits go to the queue at once: new rows and rows whose text changed,
      -- nothing else. A change of priority or tenant alone updates the item and leaves its place in
      -- the queue (and its band) as it was. `before` reads the items as the statement found them.
      if cardinality(v_ids) > 0 then
        with before as materialized (
          select it.version_id, it.row_id, it.content_hash
          from regen._items it
          where it.source_id = %5$s and it.row_id = any(v_ids)
            and it.version_id in (select sv.version_id from regen._source_versions sv where sv.source_id = %5$s)
        ), up as (
          insert into regen._items as it (source_id, version_id, row_id, tenant, priority, content_hash)
          select %5$s, sv.version_id, c.row_id, c.tenant, c.priority, c.content_hash
          from unnest(v_ids, v_tenants, v_priorities, v_hashes) as c(row_id, tenant, priority, content_hash)
          cross join regen._source_versions sv
          where sv.source_id = %5$s
          order by sv.version_id, c.row_id   -- the order the worker locks items in: no deadlock between the two
          on conflict (source_id, version_id, row_id) do update
            set tenant = excluded.tenant, priority = excluded.priority,
                content_hash = excluded.content_hash, changed_at = now()
            where (it.tenant, it.priority, it.content_hash)
                  is distinct from (excluded.tenant, excluded.priority, excluded.content_hash)
          returning it.version_id, it.row_id, it.content_hash)
        select regen._enqueue(%5$s, null, coalesce(array_agg(distinct up.row_id), '{}'), true) into v_enqueued
        from up left join before b on b.version_id = up.version_id and b.row_id = up.row_id
        where b.content_hash is distinct from up.content_hash;
      end if;

      -- rows an expression raised on: failed items, with the error (regen.failed_items); a later edit
      -- that the expressions accept makes them ordinary items again
      if cardinality(v_bad_ids) > 0 then
        insert into regen._items as it (source_id, version_id, row_id, tenant, priority, content_hash, failed_hash, last_error, attempts)
        select %5$s, sv.version_id, b.row_id, b.tenant, 0, h.hash, h.hash, b.error, 1
        from unnest(v_bad_ids, v_bad_tenants, v_bad_errors) as b(row_id, tenant, error)
        cross join lateral (select sha256(convert_to('pgregen: expression error: ' || b.error, 'UTF8')) as hash) h
        cross join regen._source_versions sv
        where sv.source_id = %5$s
        order by sv.version_id, b.row_id
        on conflict (source_id, version_id, row_id) do update
          set tenant = excluded.tenant, content_hash = excluded.content_hash, failed_hash = excluded.failed_hash,
              last_error = excluded.last_error, attempts = it.attempts + 1, queue_job = null, changed_at = now()
          where it.content_hash is distinct from excluded.content_hash or it.tenant is distinct from excluded.tenant;
      end if;

      -- a row that moved to another tenant moves its vectors with it
      if tg_op = 'UPDATE' then
        if %13$s then
          update regen._embeddings e set tenant = it.tenant
          from regen._items it
          where it.source_id = %5$s and it.version_id = any(v_versions) and it.row_id = any(v_ids || v_bad_ids)
            and e.version_id = it.version_id and e.source_id = it.source_id and e.row_id = it.row_id
            and e.tenant is distinct from it.tenant;
        end if;
      end if;
      return null;
    end
    $body$ $f$,
    v_fn,                                                         -- 1
    s.expression_search_path,                                     -- 2
    s.relation::regclass::text,                                   -- 3 (for %rowtype)
    s.relation::oid,                                              -- 4
    s.id,                                                         -- 5
    'tg_' || s.name || '__capture',                               -- 6
    s.name,                                                       -- 7
    regen._capture_select(s, 'new_rows'),                         -- 8
    regen._capture_select(s, '(select (v_row).*)'),               -- 9
    s.id_column,                                                  -- 10
    case when s.tenant_column is null then 'null::text'
         else format('(v_row.%I)::text', s.tenant_column) end,    -- 11
    v_old_ids,                                                    -- 12
    -- whether a row's tenant may have changed (always false without a tenant column): a (row, tenant)
    -- pair that was not there before. EXCEPT hashes both sides; a join of the transition tables,
    -- which have no statistics, was planned as a nested loop, quadratic in the rows of the statement.
    case when s.tenant_column is null then 'false'
         else format('exists (select (n.%1$I)::text, (n.%2$I)::text from new_rows n except select (o.%1$I)::text, (o.%2$I)::text from old_rows o)',
                     s.id_column, s.tenant_column) end);          -- 13
  execute format('comment on function %s() is %L', v_fn,
                 format('pgregen change capture for source %s, table %s (generated by regen.register_source)', s.name, s.relation));
  -- Generated functions are the owner's alone (PostgreSQL grants EXECUTE to PUBLIC on every new
  -- function): nobody else may attach this SECURITY DEFINER function to a table of theirs.
  execute format('revoke all on function %s() from public', v_fn);
end
$$;
comment on function regen._capture_function(regen._sources) is
  'Generates (or regenerates) a source''s capture trigger function; executable by its owner only';

-- Sources registered before this file get the new capture function (same triggers).
do $$
declare
  v regen._sources;
begin
  for v in select * from regen._sources loop
    perform regen._capture_function(v);
  end loop;
end
$$;

select regen._pin_search_paths();
select regen._refresh_grants();
