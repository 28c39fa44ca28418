-- Isolation and recovery, after an independent review (issue 11):
--   * regen.grant_app refuses roles that row-level security does not bind, through membership too
--     (regen.grant_admin's side of it, with pgvector's schema, is in sql/0015);
--   * the gap never claims a vector that the store does not hold: the store's identity is checked
--     on every read of the gap, and regen.reconcile() repairs the bookkeeping after a restore that
--     left the vectors out, a partial restore or a truncate; regen.recover() then re-enqueues what was
--     lost, hot-first, by itself (regen.set_auto_recover); regen.rebuild() reconciles first (sql/0017);
--   * content, filter and tenant expressions must be immutable, the filter boolean; an item whose
--     text changes with no edit fails instead of being paid for forever (regen.prepare_inputs);
--   * a row an expression raises on at registration becomes a failed item;
--   * regen.retire's index cleanup names only retired versions, and register_source makes sure the
--     version's index exists.
-- The generated capture functions (executable by their owner only, acting only for their table,
-- failing the row and not the write when an expression raises) are in sql/0017.
--
-- Error codes of this file: RG015/RG016 expression unsafe, not immutable or of the wrong type,
-- RG043 (extended) role bound to no tenant.

-- ---------------------------------------------------------------------------------------------
-- Settings and the store's identity

create table regen._settings (
  name text primary key,
  value text not null
);
insert into regen._settings (name, value) values ('auto_recover', 'on');

-- The store as the bookkeeping last saw it: its table and its file. A restore creates a new table
-- (a new oid), TRUNCATE, VACUUM FULL and CLUSTER give it a new file; after any of these, the items'
-- record of what is stored is not trusted until regen.reconcile() has compared it with the store.
create table regen._store_identity (
  singleton boolean primary key default true check (singleton),
  table_oid oid not null,
  filenode oid not null,
  verified_at timestamptz not null default now()
);

-- Sources and versions that lost vectors (truncate, a delete by hand, a reconcile that found them
-- gone) and are not yet enqueued again: regen.recover() enqueues them, regen.rebuild() clears them.
create table regen._losses (
  source_id integer not null,
  version_id integer not null,
  items bigint not null,
  at timestamptz not null default now()
);

-- Times a row's text differed from its captured hash when the worker read it (see prepare_inputs).
alter table regen._items add column drifts smallint not null default 0;

-- The one place that compares the store with its recorded identity. A view, not a function: the gap
-- views read it with their owner's rights, and application roles execute only what grant_app gives.
create view regen._store_state as
  select exists (select 1 from regen._store_identity i
                 where i.table_oid = 'regen._embeddings'::regclass
                   and i.filenode = pg_relation_filenode('regen._embeddings'::regclass)) as verified;
comment on view regen._store_state is
  'One row: whether the store is the table and file the bookkeeping last reconciled with';

create function regen._store_verified()
returns boolean
language sql stable parallel safe
as $$ select s.verified from regen._store_state s $$;
comment on function regen._store_verified() is
  'True while the store is the table and file the bookkeeping last reconciled with (false after a restore, '
  'a truncate without its trigger, VACUUM FULL or CLUSTER, until regen.reconcile())';

-- The store as it is now becomes the one the bookkeeping agrees with (after a reconcile, a truncate).
create function regen._record_store_identity()
returns void
language sql volatile
as $$
  insert into regen._store_identity as i (singleton, table_oid, filenode, verified_at)
  values (true, 'regen._embeddings'::regclass, pg_relation_filenode('regen._embeddings'::regclass), now())
  on conflict (singleton) do update set table_oid = excluded.table_oid, filenode = excluded.filenode, verified_at = now()
$$;
comment on function regen._record_store_identity() is 'Records the store''s current table and file as the verified ones';
select regen._record_store_identity();   -- the store as this file finds it: its items agree with it

create function regen._setting(name text, fallback text)
returns text
language sql stable
as $$ select coalesce((select s.value from regen._settings s where s.name = _setting.name), fallback) $$;
comment on function regen._setting(text, text) is 'A pgregen setting (regen._settings), or the fallback';

create function regen.set_auto_recover(enabled boolean)
returns boolean
language plpgsql volatile
as $$
begin
  if enabled is null then
    raise exception 'set_auto_recover needs true or false, not NULL' using errcode = 'RG003';
  end if;
  insert into regen._settings as s (name, value) values ('auto_recover', case when enabled then 'on' else 'off' end)
  on conflict (name) do update set value = excluded.value;
  return enabled;
end
$$;
comment on function regen.set_auto_recover(boolean) is
  'On (the default): after vectors are lost (truncate, a delete by hand, a restore without them) the worker '
  're-enqueues them by itself, hot-first (regen.recover). Off: they wait for regen.rebuild().';

-- ---------------------------------------------------------------------------------------------
-- The gap, derived from the store whenever the store is not the one last reconciled with.
-- Verified (the normal case): the counters, as before. Not verified: every item is judged against
-- the store itself, so no vector is claimed that is not there; slower (one probe per item) until
-- regen.reconcile() runs, which the worker, regen.rebuild() and regen.recover() do by themselves.
-- No function calls: application roles read the gap and execute only what grant_app gives.

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
           case
             when held.embedded and it.embedded_hash = it.content_hash then 'current'
             when it.failed_hash = it.content_hash then 'failed'
             when held.embedded then 'stale'
             when it.has_legacy and held.legacy then 'outdated'
             else 'missing'
           end,
           it.queue_job is not null, 1::bigint
    from regen._items it
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
    where not (select s.verified from regen._store_state s)
  ) c
  group by 1, 2, 3, 4, 5;
comment on view regen._gap_totals is
  'Item counts per source, version, tenant, state and queued flag: from the counters while the store is verified, '
  'else judged item by item against the store';

-- The gap view says whether its figures come from a verified store (last column).
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
         (select st.verified from regen._store_state st) as store_verified
  from regen._source_versions sv
  join regen._sources s on s.id = sv.source_id
  join regen._versions v on v.id = sv.version_id
  left join regen._gap_totals t on t.source_id = sv.source_id and t.version_id = sv.version_id
  group by s.name, v.tag, sv.role;
comment on view regen.embedding_gap is
  'Per source and version in use: rows expected to have vectors, and how many are current, missing, stale '
  '(text changed since embedding), outdated (only an older version has them), failed, queued; coverage '
  '(current / expected), cutover_ready (coverage >= 0.995) and store_verified. Exact and never claims a vector '
  'the store does not hold: from counters (cheap enough to poll every second) while the store is verified, '
  'judged against the store itself until regen.reconcile() has run after a restore or truncate.';

-- ---------------------------------------------------------------------------------------------
-- Reconcile: make the bookkeeping agree with the store, whatever changed the store behind its back.

create type regen.reconcile_result as (source text, version text, unsettled bigint, settled bigint,
                                       orphans_removed bigint, tenants_fixed bigint);
comment on type regen.reconcile_result is
  'One row of regen.reconcile(): per source and version, items that no longer have their vectors (now missing '
  'or stale), items whose vectors were found stored (now current), vectors of untracked rows removed, and '
  'vectors moved to their row''s tenant';

create function regen.reconcile()
returns setof regen.reconcile_result
language plpgsql volatile set jit = off
as $$
declare
  v_sv record;
  v_result regen.reconcile_result;
  v_n bigint;
begin
  -- One reconcile at a time; the second waits and then finds little to do.
  perform pg_advisory_xact_lock(hashtext('regen.reconcile'));

  -- Vectors of versions no source uses any more have no item to account for them.
  delete from regen._embeddings e
  where not exists (select 1 from regen._source_versions sv where sv.source_id = e.source_id and sv.version_id = e.version_id);

  for v_sv in
    select sv.source_id, sv.version_id, s.name, v.tag
    from regen._source_versions sv join regen._sources s on s.id = sv.source_id join regen._versions v on v.id = sv.version_id
    order by s.name, v.tag
  loop
    v_result := (v_sv.name, v_sv.tag, 0, 0, 0, 0);

    -- vectors of rows that are not tracked (deleted, filtered out while the store was away) would be
    -- found by searches: they go (into the cache, by the release trigger)
    delete from regen._embeddings e
    where e.version_id = v_sv.version_id and e.source_id = v_sv.source_id
      and not exists (select 1 from regen._items it
                      where it.source_id = e.source_id and it.version_id = e.version_id and it.row_id = e.row_id);
    get diagnostics v_n = row_count;
    v_result.orphans_removed := v_n;

    -- a vector searchable under another tenant than its row's (a partial restore) follows its row
    update regen._embeddings e set tenant = it.tenant
      from regen._items it
     where it.source_id = v_sv.source_id and it.version_id = v_sv.version_id
       and e.version_id = it.version_id and e.source_id = it.source_id and e.row_id = it.row_id
       and e.tenant is distinct from it.tenant;
    get diagnostics v_n = row_count;
    v_result.tenants_fixed := v_n;

    -- items that claim vectors the store does not hold (all chunks of the text they were embedded for)
    update regen._items it set embedded_hash = null, changed_at = now()
     where it.source_id = v_sv.source_id and it.version_id = v_sv.version_id and it.embedded_hash is not null
       and (select count(*) from regen._embeddings e
             where e.version_id = it.version_id and e.source_id = it.source_id and e.row_id = it.row_id
               and e.content_hash = it.embedded_hash
               and (it.plan_hash is distinct from it.embedded_hash or e.chunk_no <= cardinality(it.chunk_hashes)))
           < case when it.plan_hash = it.embedded_hash then cardinality(it.chunk_hashes) else 1 end;
    get diagnostics v_n = row_count;
    v_result.unsettled := v_n;

    -- items whose complete set of chunk vectors for their current text is stored (a store restored
    -- from a later point than the items)
    update regen._items it
       set embedded_hash = it.content_hash, failed_hash = null, last_error = null, queue_job = null, drifts = 0, changed_at = now()
     where it.source_id = v_sv.source_id and it.version_id = v_sv.version_id
       and it.embedded_hash is distinct from it.content_hash and it.plan_hash = it.content_hash
       and (select count(*) from regen._embeddings e
             where e.version_id = it.version_id and e.source_id = it.source_id and e.row_id = it.row_id
               and e.content_hash = it.content_hash and e.chunk_no <= cardinality(it.chunk_hashes))
           = cardinality(it.chunk_hashes);
    get diagnostics v_n = row_count;
    v_result.settled := v_n;

    -- 'outdated' claims an older version's vector: only where one is stored
    update regen._items it set has_legacy = false, changed_at = now()
     where it.source_id = v_sv.source_id and it.version_id = v_sv.version_id and it.has_legacy
       and not exists (select 1 from regen._source_versions o
                       join regen._embeddings e on e.version_id = o.version_id and e.source_id = o.source_id and e.row_id = it.row_id
                       where o.source_id = it.source_id and o.version_id <> it.version_id);

    if v_result.unsettled > 0 then
      insert into regen._losses (source_id, version_id, items) values (v_sv.source_id, v_sv.version_id, v_result.unsettled);
    end if;
    return next v_result;
  end loop;

  perform regen._correct_gap_counts();
  perform regen._record_store_identity();
end
$$;
comment on function regen.reconcile() is
  'Makes the items agree with the store after it changed behind pgregen''s back (a restore without the vectors, '
  'a partial restore, TRUNCATE, VACUUM FULL): unsettles items whose vectors are gone, settles items whose vectors '
  'are all there, removes vectors of untracked rows, moves vectors to their row''s tenant, corrects the gap '
  'counters and marks the store verified. Holds the row locks of the items it changes until it commits.';

-- The gap counters made equal to a count of the items, in one statement (one snapshot): changes
-- committed after it carry their own deltas, so nothing is counted twice or lost.
create function regen._correct_gap_counts()
returns bigint
language sql volatile set jit = off
as $$
  with corrected as (
    insert into regen._gap_deltas (source_id, version_id, tenant, state, queued, n)
    select source_id, version_id, tenant, state, queued, sum(n)
    from (
      select it.source_id, it.version_id, it.tenant, regen._state(it.content_hash, it.embedded_hash, it.failed_hash, it.has_legacy) as state,
             it.queue_job is not null as queued, count(*) as n
      from regen._items it group by 1, 2, 3, 4, 5
      union all
      select c.source_id, c.version_id, c.tenant, c.state, c.queued, -c.n from regen._gap_counts c
      union all
      select d.source_id, d.version_id, d.tenant, d.state, d.queued, -d.n from regen._gap_deltas d
    ) x
    group by 1, 2, 3, 4, 5
    having sum(n) <> 0
    returning 1
  )
  select count(*) from corrected
$$;
comment on function regen._correct_gap_counts() is
  'Appends the deltas that make the gap counters equal to a count of the items; returns how many it appended';

-- ---------------------------------------------------------------------------------------------
-- Losses recorded by the store's triggers, and the unattended recovery.

create or replace function regen.tg_embeddings__truncate() returns trigger
language plpgsql
as $$
begin
  update regen._items set embedded_hash = null, changed_at = now() where embedded_hash is not null;
  update regen._items set has_legacy = false, changed_at = now() where has_legacy;
  insert into regen._losses (source_id, version_id, items)
  select it.source_id, it.version_id, count(*) from regen._items it group by 1, 2;
  -- the items now say exactly what the (empty) store holds
  perform regen._record_store_identity();
  return null;
end
$$;
comment on function regen.tg_embeddings__truncate() is
  'After the store is truncated no item is current any more; the loss is recorded for regen.recover()';

create or replace function regen.tg_embeddings__release() returns trigger
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
    -- Items whose current vectors were deleted stop counting as current. The capture trigger and
    -- retire delete the items first, so this touches items only when vectors were deleted by hand:
    -- a loss, which regen.recover() enqueues again.
    with unsettled as (
      update regen._items it set embedded_hash = null, changed_at = now()
        from (select distinct version_id, source_id, row_id, content_hash from old_rows) o
       where it.source_id = o.source_id and it.version_id = o.version_id and it.row_id = o.row_id
         and it.embedded_hash = o.content_hash
      returning it.source_id, it.version_id
    )
    insert into regen._losses (source_id, version_id, items)
    select u.source_id, u.version_id, count(*) from unsettled u group by 1, 2;
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
comment on function regen.tg_embeddings__release() is
  'Keeps vectors that leave the store in the cache, un-settles their items and records the loss';

create type regen.recover_result as (source text, version text, items bigint, reconciled boolean);
comment on type regen.recover_result is 'One row of regen.recover(): items enqueued again per source and version, and whether a reconcile ran first';

create function regen.recover()
returns setof regen.recover_result
language plpgsql volatile set jit = off
as $$
declare
  v_reconciled boolean := false;
  v_loss record;
  v_rebuilt regen.rebuild_result;
begin
  -- One recovery at a time across worker replicas; the others have nothing to add.
  if not pg_try_advisory_xact_lock(hashtext('regen.recover')) then
    return;
  end if;
  if not regen._store_verified() then
    perform regen.reconcile();
    v_reconciled := true;
  end if;
  if regen._setting('auto_recover', 'on') <> 'on' then
    if v_reconciled then
      return next (null, null, 0, true)::regen.recover_result;
    end if;
    return;
  end if;
  for v_loss in
    select s.name, v.tag
    from (select distinct l.source_id, l.version_id from regen._losses l) l
    join regen._source_versions sv on sv.source_id = l.source_id and sv.version_id = l.version_id
    join regen._sources s on s.id = l.source_id
    join regen._versions v on v.id = l.version_id
    order by s.weight desc, s.name
  loop
    -- regen.rebuild enqueues the gap hot-first and clears the loss
    for v_rebuilt in select * from regen.rebuild(v_loss.name, v_loss.tag) loop
      return next (v_rebuilt.source, v_rebuilt.version, v_rebuilt.items, v_reconciled)::regen.recover_result;
    end loop;
  end loop;
  delete from regen._losses l
  where not exists (select 1 from regen._source_versions sv where sv.source_id = l.source_id and sv.version_id = l.version_id);
end
$$;
comment on function regen.recover() is
  'Unattended recovery, run by the worker every few seconds: reconciles a store that changed behind pgregen''s back, '
  'then (with auto_recover on, the default) enqueues again, hot-first, the items of every source and version that '
  'lost vectors. Cheap when there is nothing to do.';

create view regen.recovery_status as
  select regen._store_verified() as store_verified,
         (select i.verified_at from regen._store_identity i) as verified_at,
         regen._setting('auto_recover', 'on') = 'on' as auto_recover,
         coalesce((select sum(l.items) from regen._losses l), 0)::bigint as lost_items_waiting,
         (select min(l.at) from regen._losses l) as lost_since;
comment on view regen.recovery_status is
  'Whether the store is verified (false after a restore or truncate until regen.reconcile), whether lost vectors '
  'are re-enqueued by themselves (regen.set_auto_recover), and lost items not yet enqueued again';

-- ---------------------------------------------------------------------------------------------
-- Expressions: immutable, of the right type, and never a reason for an application's write to fail.

-- regen._check_expression casts the expression to the wanted type, and PostgreSQL casts an
-- integer to boolean (0 false, anything else true): a filter `1` or `id` passed. This reads the
-- expression's own type instead: the subquery returns no row (LIMIT 0: the expression never runs),
-- the outer join one row of NULL, and pg_typeof tells that NULL's declared type. A domain counts
-- as its base type; a type with an implicit cast to the expected one (integer to float8) passes,
-- one with only an explicit cast (integer to boolean) does not.
create function regen._check_expression_type(
  relation regclass,
  alias text,
  expr text,
  expected_type regtype,
  what text,
  search_path text
)
returns void
language plpgsql volatile
as $$
declare
  v_old_path text := current_setting('search_path');
  v_type regtype;
  v_base regtype;
begin
  perform regen._check_expression_text(expr, what);   -- RG015: exactly one safe expression, before it is compiled
  perform set_config('search_path', search_path, true);
  begin
    execute format('select pg_typeof(c.value)::regtype from (select 1) one '
                   'left join (select (%s) as value from %s as %I limit 0) c on true', expr, relation, alias)
      into v_type;
  exception when others then
    perform set_config('search_path', v_old_path, true);
    raise exception '% does not compile: %', what, sqlerrm
      using errcode = 'RG016', detail = format('expression: %s', expr),
            hint = format('columns are those of %s; functions outside pg_catalog and the table''s schema must be schema-qualified', relation);
  end;
  perform set_config('search_path', v_old_path, true);
  v_base := v_type;
  while (select t.typtype from pg_type t where t.oid = v_base) = 'd' loop
    v_base := (select t.typbasetype from pg_type t where t.oid = v_base);
  end loop;
  if v_base = expected_type
     or exists (select 1 from pg_cast c where c.castsource = v_base and c.casttarget = expected_type and c.castcontext = 'i') then
    return;
  end if;
  raise exception '% must be of type %, not %', what, expected_type, v_type
    using errcode = 'RG016', detail = format('expression: %s', expr),
          hint = case when expected_type = 'boolean'::regtype
                      then 'a filter says which rows get vectors: give a condition, e.g. status = ''published'' or flags <> 0'
                      else format('cast it: (%s)::%s', expr, expected_type) end;
end
$$;
comment on function regen._check_expression_type(regclass, text, text, regtype, text, text) is
  'Refuses (RG015, RG016) an expression that is unsafe, does not compile, or whose type is neither expected_type (or a domain '
  'over it) nor implicitly cast to it; an integer filter is refused though PostgreSQL casts integer to boolean. Never evaluates it.';

-- Compiles the expression as an index expression over an empty temporary copy of the table:
-- PostgreSQL then refuses anything that is not immutable, and subqueries. The copy vanishes with
-- the block (a sentinel error rolls it back).
create function regen._check_immutable(relation regclass, alias text, expr text, what text, search_path text)
returns void
language plpgsql volatile
as $$
declare
  v_old_path text := current_setting('search_path');
  v_error text;
begin
  if to_regclass(format('pg_temp.%I', alias)) is not null then
    raise exception 'cannot check the % here: this session has a temporary table named %', what, quote_ident(alias)
      using errcode = 'RG016', hint = 'the check compiles the expression on an empty temporary copy of the table: register from a session without that temporary table';
  end if;
  perform set_config('search_path', search_path, true);
  begin
    execute format('create temporary table %I (like %s)', alias, relation);
    execute format('create index on pg_temp.%I (((%s)))', alias, expr);
    raise exception using errcode = 'RGCHK';   -- roll back the temporary table (never escapes)
  exception when others then
    if sqlstate <> 'RGCHK' then
      v_error := sqlerrm;
    end if;
  end;
  perform set_config('search_path', v_old_path, true);
  if v_error is not null then
    raise exception '% must be immutable, computed from the row alone: %', what, v_error
      using errcode = 'RG016', detail = format('expression: %s', expr),
            hint = 'the same row must always give the same result: no now(), random(), subqueries, or casts that depend on '
                   'settings such as timestamptz::text (use to_char(... at time zone ''UTC'', ...) or an immutable function)';
  end if;
end
$$;
comment on function regen._check_immutable(regclass, text, text, text, text) is
  'Refuses (RG016) an expression that is not immutable or uses a subquery';


-- ---------------------------------------------------------------------------------------------
-- prepare_inputs of sql/0005, with two guards before anything is sent to the provider:
--   * drift: the items are locked, so no edit is in flight, and the text read now must hash to the
--     captured hash. When it does not, the capture missed an edit (triggers disabled, a restore of
--     the table alone) or the expression does not give the same text twice. The first time the item
--     takes the hash of what was read and goes back to the queue; the second time in a row, it fails
--     with the reason: an expression that changes by itself would otherwise be paid for forever.
--   * errors: a row whose expression raises fails alone, with the error; the batch goes on.
create or replace function regen.prepare_inputs(source text, version text, row_ids text[], job_id uuid default null, force boolean default false)
returns table (row_id text, chunk_no integer, content_hash bytea, text_hash bytea, input text)
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
begin
  select * into v_version from regen._versions v where v.id = regen._version_id(version);
  if not exists (select 1 from regen._source_versions sv where sv.source_id = v_source.id and sv.version_id = v_version.id) then
    raise exception 'source % does not use version %', v_source.name, v_version.tag
      using errcode = 'RG001', hint = 'see regen.embedding_gap for the versions each source uses';
  end if;
  v_alias := (select c.relname from pg_class c where c.oid = v_source.relation);

  -- A job works only the items that still name it: an item moved to a later job is that job's.
  if job_id is not null then
    v_rows := array(select it.row_id from regen._items it
                    where it.source_id = v_source.id and it.version_id = v_version.id
                      and it.row_id = any(prepare_inputs.row_ids) and it.queue_job = prepare_inputs.job_id);
  end if;

  -- Lock the items in the order write_embeddings and the capture triggers take them (so the three
  -- never deadlock); an edit of these rows then waits, and the statements below see the latest text.
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
    v_alias, v_source.id_column, v_source.content_expression, v_source.relation, v_source.id_type)
  using v_rows, v_source.id, v_version.id, v_version.settings,
        (v_version.settings->>'chunk_chars')::integer, (v_version.settings->>'chunk_overlap')::integer, force;
  perform set_config('search_path', v_old_path, true);

  -- drifted items go back to the queue as backfill, with the hash of what was read
  if cardinality(v_requeue) > 0 then
    perform regen._enqueue(v_source.id, v_version.id, v_requeue, false);
  end if;
end
$$;
comment on function regen.prepare_inputs(text, text, text[], uuid, boolean) is
  'Worker-facing: turns row ids into provider inputs for a version, settling cache hits without a provider call; '
  'job_id (the pg-boss job being worked) takes the items out of the queue; force re-embeds current rows and skips the cache. '
  'A row whose text no longer matches its captured hash is re-queued once, then failed; a row whose expression raises fails.';

-- ---------------------------------------------------------------------------------------------
-- register_source of sql/0003: expressions must be immutable (the filter boolean), the version's
-- index is made sure of, and rows an expression raises on become failed items instead of failing
-- the registration.
create or replace function regen.register_source(
  name text,
  relation regclass,
  id_column name,
  content_expression text,
  tenant_column name default null,
  priority_expression text default null,
  weight double precision default 1,
  filter_expression text default null,
  version text default null
)
returns text
language plpgsql volatile
as $$
declare
  v_source regen._sources;
  v_version_id integer;
  v_alias text;
  v_id_attnum smallint;
  v_path text;
  v_col name;
  v_captured bigint;
  v_id text;
begin
  if name is null or name !~ '^[a-z][a-z0-9_]{0,39}$' then
    raise exception 'source name must be 1 to 40 lowercase letters, digits or underscores, starting with a letter, not %',
      coalesce(quote_literal(name), 'NULL') using errcode = 'RG011';
  end if;
  if relation is null then
    raise exception 'source % needs a table', name using errcode = 'RG013';
  end if;
  if exists (select 1 from regen._sources s where s.name = register_source.name) then
    raise exception 'source % is already registered', name
      using errcode = 'RG011', hint = 'unregister it first with regen.unregister_source(), or pick another name';
  end if;
  if (select c.relkind from pg_class c where c.oid = relation) not in ('r', 'p') then
    raise exception '% is not a table', relation using errcode = 'RG013', hint = 'sources must be ordinary or partitioned tables';
  end if;
  if (select c.relpersistence from pg_class c where c.oid = relation) = 't' then
    raise exception '% is a temporary table', relation using errcode = 'RG013', hint = 'sources must be ordinary or partitioned tables';
  end if;
  if version is null then
    raise exception 'source % needs a version', name
      using errcode = 'RG001', hint = 'create one with regen.create_version() and pass its tag';
  end if;
  v_version_id := regen._version_id(version);
  if weight is null or weight = 'NaN' or weight in ('Infinity', '-Infinity') then
    raise exception 'weight of source % must be a finite number', name using errcode = 'RG016';
  end if;

  -- No writes may slip between the initial capture and the triggers.
  execute format('lock table %s in share row exclusive mode', relation);

  foreach v_col in array array[id_column, tenant_column] loop
    if v_col is not null and not exists (
      select 1 from pg_attribute a where a.attrelid = relation and a.attname = v_col and a.attnum > 0 and not a.attisdropped) then
      raise exception 'column % does not exist in %', quote_ident(v_col), relation
        using errcode = 'RG013',
              hint = format('columns of %s: %s', relation,
                            (select string_agg(quote_ident(a.attname), ', ' order by a.attnum) from pg_attribute a
                             where a.attrelid = relation and a.attnum > 0 and not a.attisdropped));
    end if;
  end loop;
  select a.attnum into v_id_attnum from pg_attribute a where a.attrelid = relation and a.attname = id_column;
  if not exists (
    select 1 from pg_index i
    where i.indrelid = relation and i.indisunique and i.indisvalid and i.indpred is null and i.indexprs is null
      and i.indnkeyatts = 1 and i.indkey[0] = v_id_attnum) then
    raise exception 'column % of % is not unique', quote_ident(id_column), relation
      using errcode = 'RG014',
            hint = 'the id column needs a primary key or a unique index on that column alone';
  end if;

  v_alias := (select c.relname from pg_class c where c.oid = relation);
  v_path := format('pg_catalog, %I, pg_temp',
                   (select n.nspname from pg_class c join pg_namespace n on n.oid = c.relnamespace where c.oid = relation));
  perform regen._check_expression(relation, v_alias, content_expression, 'text', 'content expression', v_path);
  perform regen._check_immutable(relation, v_alias, format('(%s)::text', content_expression), 'content expression', v_path);
  if tenant_column is not null then
    perform regen._check_immutable(relation, v_alias, format('(%I.%I)::text', v_alias, tenant_column),
                                   format('tenant column %s (as text)', quote_ident(tenant_column)), v_path);
  end if;
  if priority_expression is not null then
    perform regen._check_expression(relation, v_alias, priority_expression, 'float8', 'priority expression', v_path);
  end if;
  if filter_expression is not null then
    perform regen._check_expression(relation, v_alias, filter_expression, 'boolean', 'filter expression', v_path);
    perform regen._check_expression_type(relation, v_alias, filter_expression, 'boolean', 'filter expression', v_path);
    perform regen._check_immutable(relation, v_alias, filter_expression, 'filter expression', v_path);
  end if;

  insert into regen._sources (name, relation, id_column, id_type, content_expression, tenant_column,
                              priority_expression, weight, filter_expression, expression_search_path)
  values (name, relation, id_column,
          (select format_type(a.atttypid, a.atttypmod) from pg_attribute a where a.attrelid = relation and a.attnum = v_id_attnum),
          content_expression, tenant_column, priority_expression, weight, filter_expression, v_path)
  returning * into v_source;
  insert into regen._source_versions (source_id, version_id, role) values (v_source.id, v_version_id, 'active');
  -- the version's index, should a retire have dropped it
  perform regen._ensure_version_index(v_version_id);

  perform regen._install_capture(v_source);

  -- Capture the rows already there in one set-based pass, under the same search_path as the trigger.
  perform set_config('search_path', v_path, true);
  begin
    execute format($f$
      insert into regen._items (source_id, version_id, row_id, tenant, priority, content_hash)
      select %1$s, %2$s, c.row_id, c.tenant, c.priority, c.content_hash from (%3$s) c$f$,
      v_source.id, v_version_id, regen._capture_select(v_source, relation::text));
    get diagnostics v_captured = row_count;
  exception when others then
    -- an expression raises on some row: capture row by row; those rows become failed items
    v_captured := 0;
    for v_id in execute format('select (%1$I.%2$I)::text from %3$s as %1$I', v_alias, id_column, relation) loop
      begin
        execute format($f$
          insert into regen._items (source_id, version_id, row_id, tenant, priority, content_hash)
          select %1$s, %2$s, c.row_id, c.tenant, c.priority, c.content_hash from (%3$s and (%4$I.%5$I)::text = $1) c$f$,
          v_source.id, v_version_id, regen._capture_select(v_source, relation::text), v_alias, id_column)
        using v_id;
        v_captured := v_captured + 1;
      exception when others then
        insert into regen._items (source_id, version_id, row_id, tenant, priority, content_hash, failed_hash, last_error, attempts)
        select v_source.id, v_version_id, v_id, null, 0, h.hash, h.hash, h.error, 1
        from (select format('an expression of source %s raised an error on this row: %s', v_source.name, sqlerrm) as error) e
        cross join lateral (select sha256(convert_to('pgregen: expression error: ' || e.error, 'UTF8')) as hash, e.error) h;
      end;
    end loop;
  end;
  -- A bulk capture leaves regen._items without statistics until autovacuum comes by; the planner
  -- would then pick nested loops over thousands of items for the worker's first batches.
  if v_captured >= 1000 then
    analyze regen._items;
  end if;
  return name;
end
$$;
comment on function regen.register_source(text, regclass, name, text, name, text, double precision, text, text) is
  'Registers a table as a source of embeddings: validates every identifier and expression (content, filter and tenant '
  'immutable, the filter boolean), installs change-capture triggers and captures the existing rows (a row an expression '
  'raises on becomes a failed item). All or nothing.';

-- ---------------------------------------------------------------------------------------------
-- Roles: an application role must be bound by row-level security, through every role it can become.

-- Roles that read every tenant's vectors: superusers, BYPASSRLS roles, the store's owner, and the
-- roles regen.grant_admin gave a policy of their own.
create function regen._unbound_roles()
returns table (role_oid oid, why text)
language sql stable
as $$
  select r.oid, case when r.rolsuper then 'is a superuser' when r.rolbypassrls then 'has BYPASSRLS'
                     else 'owns the pgregen schema (owners bypass row-level security)' end
  from pg_roles r
  where r.rolsuper or r.rolbypassrls or r.oid = (select c.relowner from pg_class c where c.oid = 'regen._embeddings'::regclass)
  union
  select p.oid, 'is an admin role (regen.grant_admin)'
  from pg_policy pol, unnest(pol.polroles) as p(oid)
  where pol.polrelid = 'regen._embeddings'::regclass and pol.polname like 'admin\_%'
$$;
comment on function regen._unbound_roles() is 'Roles that row-level security does not bind to one tenant, and why';

-- Roles given regen.grant_app: those EXECUTE regen.set_tenant is granted to directly, admins aside.
create function regen._app_roles()
returns table (role_oid oid)
language sql stable
as $$
  select distinct a.grantee
  from pg_proc p, aclexplode(p.proacl) a
  where p.oid = 'regen.set_tenant(text)'::regprocedure and a.grantee <> 0 and a.grantee <> p.proowner
    and a.grantee not in (select u.role_oid from regen._unbound_roles() u)
$$;
comment on function regen._app_roles() is 'Roles granted with regen.grant_app()';

create or replace function regen._check_grantee(role regrole)
returns void
language plpgsql stable
as $$
declare
  v_via regrole;
  v_why text;
begin
  if role is null then
    raise exception 'role must be given' using errcode = 'RG043';
  end if;
  if exists (select 1 from pg_roles r where r.oid = role and (r.rolsuper or r.rolbypassrls)) then
    raise exception 'role % bypasses row-level security (superuser or BYPASSRLS)', role
      using errcode = 'RG043', hint = 'grant to a role without SUPERUSER and BYPASSRLS: tenant isolation relies on row-level security';
  end if;
  if role = (select c.relowner from pg_class c where c.oid = 'regen._embeddings'::regclass) then
    raise exception 'role % owns the pgregen schema, and owners bypass row-level security', role
      using errcode = 'RG043', hint = 'give the application a role of its own';
  end if;
  -- the role itself, or any role it is a member of (directly or not, inheriting or not: a member
  -- can SET ROLE to it)
  select u.role_oid::regrole, u.why into v_via, v_why
  from regen._unbound_roles() u
  where pg_has_role(role, u.role_oid, 'MEMBER')
  order by u.role_oid = role desc
  limit 1;
  if v_via = role then
    raise exception 'role % % and sees every tenant', role, v_why
      using errcode = 'RG043', hint = format('give the application a role of its own, or regen.revoke_admin(%L) first', role);
  elsif v_via is not null then
    raise exception 'role % is a member of %, which %: through it, it could read every tenant''s vectors', role, v_via, v_why
      using errcode = 'RG043',
            hint = format('revoke the membership (revoke %s from %s), or give the application a role of its own', v_via, role);
  end if;
end
$$;
comment on function regen._check_grantee(regrole) is
  'RG043 when a role, or any role it is a member of, would bypass row-level security or see every tenant';

-- ---------------------------------------------------------------------------------------------
-- Retire names only retired versions' indexes: a version created and not yet registered keeps its own.
create or replace function regen.unused_version_indexes()
returns table (version text, index_name text)
language sql stable
as $$
  select v.tag, format('regen.%I', c.relname)
  from regen._versions v
  join pg_class c on c.relname = '_embeddings_hnsw_v' || v.id
                 and c.relnamespace = 'regen'::regnamespace
  where not exists (select 1 from regen._source_versions sv where sv.version_id = v.id)
    and exists (select 1 from regen._version_events e where e.version = v.tag and e.event = 'retire')
$$;
comment on function regen.unused_version_indexes() is
  'HNSW indexes of retired versions that no source uses any more: drop them with DROP INDEX CONCURRENTLY '
  '(pgregen migrate retire drops the retired version''s). A version never used keeps its index.';

