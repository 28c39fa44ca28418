-- Measuring the gap. The counts come from regen._gap_counts plus not yet folded deltas: exact
-- (transactional, like the items themselves) and independent of the number of source rows.

create view regen._gap_totals as
  select source_id, version_id, tenant, state, queued, sum(n)::bigint as n
  from (
    select source_id, version_id, tenant, state, queued, n from regen._gap_counts
    union all
    select source_id, version_id, tenant, state, queued, n from regen._gap_deltas
  ) c
  group by 1, 2, 3, 4, 5;
comment on view regen._gap_totals is 'Item counts per source, version, tenant, state and queued flag';

create view regen.embedding_gap as
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
         coalesce(coalesce(sum(t.n) filter (where t.state = 'current'), 0)::numeric / nullif(sum(t.n), 0), 1) >= 0.995 as cutover_ready
  from regen._source_versions sv
  join regen._sources s on s.id = sv.source_id
  join regen._versions v on v.id = sv.version_id
  left join regen._gap_totals t on t.source_id = sv.source_id and t.version_id = sv.version_id
  group by s.name, v.tag, sv.role;
comment on view regen.embedding_gap is
  'Per source and version in use: rows expected to have vectors, and how many are current, missing, stale '
  '(text changed since embedding), outdated (only an older version has them), failed, queued; coverage '
  '(current / expected) and cutover_ready (coverage >= 0.995). Exact; cheap enough to poll every second.';

create view regen.embedding_gap_by_tenant as
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
         round(coalesce(coalesce(sum(t.n) filter (where t.state = 'current'), 0)::numeric / nullif(sum(t.n), 0), 1), 4) as coverage
  from regen._gap_totals t
  join regen._sources s on s.id = t.source_id
  join regen._versions v on v.id = t.version_id
  join regen._source_versions sv on sv.source_id = t.source_id and sv.version_id = t.version_id
  group by s.name, v.tag, t.tenant
  having sum(t.n) <> 0;
comment on view regen.embedding_gap_by_tenant is 'regen.embedding_gap per tenant (tenants with rows only)';

create view regen.failed_items as
  select s.name as source, v.tag as version, it.row_id, it.tenant, it.last_error as error, it.attempts,
         it.changed_at as failed_at
  from regen._items it
  join regen._sources s on s.id = it.source_id
  join regen._versions v on v.id = it.version_id
  where it.failed_hash is not null
    and it.failed_hash = it.content_hash
    and it.embedded_hash is distinct from it.content_hash;
comment on view regen.failed_items is
  'Items whose current text was refused as poison (wrong dimensions, NaN, provider refusal) with the error and attempt count; '
  'retry with regen.retry_failed()';

create view regen.rejected_writes as
  select r.at, r.source, r.version, r.row_id, r.chunk_no, r.reason
  from regen._rejections r;
comment on view regen.rejected_writes is 'Vectors refused by regen.write_embeddings(), with the reason';
