-- The rebuild button, its progress, bring-your-own-key settings and worker-facing failure reports.
-- See sql/0004_queue.sql for how items are enqueued.
--
-- Error codes of this file: RG030 queue not installed, RG031 invalid API key reference.

create function regen.set_tenant_key(tenant text, api_key_ref text)
returns void
language plpgsql volatile
as $$
begin
  if tenant is null then
    raise exception 'set_tenant_key needs a tenant' using errcode = 'RG031';
  end if;
  if api_key_ref is null then
    delete from regen._tenant_keys k where k.tenant = set_tenant_key.tenant;
    return;
  end if;
  if api_key_ref !~ '^[A-Za-z_][A-Za-z0-9_]{0,127}$' then
    raise exception 'api key reference % is not the name of an environment variable or secret', quote_literal(api_key_ref)
      using errcode = 'RG031',
            hint = 'pass the NAME of the variable the worker reads the key from (e.g. TENANT_ACME_OPENAI_KEY), never the key itself';
  end if;
  insert into regen._tenant_keys as k (tenant, api_key_ref) values (set_tenant_key.tenant, set_tenant_key.api_key_ref)
  on conflict on constraint _tenant_keys_pkey do update set api_key_ref = excluded.api_key_ref, updated_at = now();
end
$$;
comment on function regen.set_tenant_key(text, text) is
  'Bring-your-own-key: the worker embeds this tenant''s rows with the API key in the named environment variable or secret '
  '(never the key itself); null removes it';

create view regen.tenant_keys as select k.tenant, k.api_key_ref, k.updated_at from regen._tenant_keys k;
comment on view regen.tenant_keys is 'Tenants with their own API key reference (names, not keys)';

create type regen.rebuild_result as (source text, version text, items bigint, estimated_tokens bigint, jobs bigint);
comment on type regen.rebuild_result is 'One row of regen.rebuild(): items (and jobs) enqueued, or with dry_run what would be, per source and version';

create function regen.rebuild(
  source text default null,
  version text default null,
  force boolean default false,
  dry_run boolean default false,
  tenant text default null
)
returns setof regen.rebuild_result
language plpgsql volatile set jit = off
as $$
declare
  v_result regen.rebuild_result;
  v_target record;
  v_items bigint;
  v_tokens bigint;
begin
  if rebuild.source is not null then
    perform regen._source(rebuild.source);
  end if;
  if rebuild.version is not null then
    perform regen._version_id(rebuild.version);
  end if;
  if to_regclass('pgboss.job') is null then
    raise exception 'the pg-boss queue is not installed'
      using errcode = 'RG030', hint = 'run pgregen install, which installs pg-boss';
  end if;

  for v_target in
    select s.*, sv.version_id, v.tag, v.settings
    from regen._sources s
    join regen._source_versions sv on sv.source_id = s.id
    join regen._versions v on v.id = sv.version_id
    where (rebuild.source is null or s.name = rebuild.source)
      and (case when rebuild.version is null then sv.role = 'active' else v.tag = rebuild.version end)
    order by s.weight desc, s.name
  loop
    if dry_run then
      -- what would be enqueued, with a token estimate from the text itself (4 bytes a token,
      -- the usual rule of thumb; the worker counts exactly)
      execute format($f$
        select count(*), coalesce(sum(ceil(octet_length((%1$s)::text) / 4.0)), 0)::bigint
        from regen._items it
        join %2$s as %3$I on (%3$I.%4$I)::text = it.row_id
        where it.source_id = $1 and it.version_id = $2 and ($3::text is null or it.tenant = $3)
          and (it.queue_job is null or not exists (select 1 from pgboss.job j where j.name = regen._queue(it.version_id)
                                                   and j.id = it.queue_job and j.state in ('created', 'retry')))
          and ($4 or (it.embedded_hash is distinct from it.content_hash and it.failed_hash is distinct from it.content_hash))$f$,
        v_target.content_expression, v_target.relation,
        (select c.relname from pg_class c where c.oid = v_target.relation), v_target.id_column)
      into v_items, v_tokens
      using v_target.id, v_target.version_id, rebuild.tenant, rebuild.force;
    else
      v_items := regen._enqueue(v_target.id, v_target.version_id,
        array(select it.row_id from regen._items it
              where it.source_id = v_target.id and it.version_id = v_target.version_id
                and (rebuild.tenant is null or it.tenant = rebuild.tenant)
                and (rebuild.force or (it.embedded_hash is distinct from it.content_hash
                                       and it.failed_hash is distinct from it.content_hash))),
        false, rebuild.force);
      v_tokens := null;
    end if;
    v_result := (v_target.name, v_target.tag, v_items, v_tokens, ceil(v_items / 64.0));
    return next v_result;
  end loop;
end
$$;
comment on function regen.rebuild(text, text, boolean, boolean, text) is
  'The rebuild button: enqueues the gap (missing, stale, outdated items; everything with force) of one source or all, '
  'for the active version or the given one, into pg-boss in priority order. dry_run returns what would be enqueued, '
  'with an estimated token count, and enqueues nothing.';

-- Worker-facing: items the provider refused one by one (a 400 for one input, an input over the
-- model's token limit) fail for their current text, with the reason; the rest of the batch goes on.
create function regen.fail_inputs(source text, version text, row_ids text[], content_hashes bytea[], reasons text[])
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
    insert into regen._rejections (source, version, row_id, reason)
    select fail_inputs.source, fail_inputs.version, i.row_id, i.reason from input i
    returning 1
  )
  select count(*) from failed
$$;
comment on function regen.fail_inputs(text, text, text[], bytea[], text[]) is
  'Worker-facing: dead-letters items the provider refused (with the reason, in regen.failed_items) for their current text';

create view regen.rebuild_progress as
  with rate as (
    select p.source_id, p.version_id, sum(p.items)::numeric / 5 as per_minute
    from regen._progress p
    where p.minute >= date_trunc('minute', now()) - interval '5 minutes'
    group by 1, 2
  ), last_error as (
    select distinct on (r.source, r.version) r.source, r.version, r.reason, r.at
    from regen._rejections r
    where r.reason not like 'stale:%'
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

create function regen.queue_depth()
returns table (version text, state text, jobs bigint, items bigint)
language sql stable
as $$
  select v.tag, j.state::text, count(*), coalesce(sum(jsonb_array_length(j.data->'rows')), 0)
  from regen._versions v
  join pgboss.job j on j.name = regen._queue(v.id)
  where j.state in ('created', 'retry', 'active')
  group by 1, 2 order by 1, 2
$$;
comment on function regen.queue_depth() is 'Per version, jobs and items waiting (created, retry) or in flight (active) in its queue';

-- Worker-facing: the queue names of versions (all, or the given tags), for the worker to subscribe to.
create function regen.version_queues(tags text[] default null)
returns table (version text, queue text)
language sql stable
as $$
  select v.tag, regen._queue(v.id) from regen._versions v
  where version_queues.tags is null or v.tag = any(version_queues.tags)
  order by v.id
$$;
comment on function regen.version_queues(text[]) is 'Worker-facing: the pg-boss queue of each version (all, or the given tags)';

-- Worker-facing: a batch-level failure (provider unreachable, bad key) shown as the last error of
-- the source and version in regen.rebuild_progress.
create function regen.report_error(source text, version text, message text)
returns void
language sql volatile
as $$
  insert into regen._rejections (source, version, reason) values (source, version, message)
$$;
comment on function regen.report_error(text, text, text) is
  'Worker-facing: records a batch-level error (provider unavailable, missing key) for regen.rebuild_progress';
