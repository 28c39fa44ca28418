-- Refusals the command line found missing (issue 11, items 8 and 9): a version whose provider the
-- worker cannot use (the filter expression's type is checked by sql/0012's register_source), and an
-- evaluation run in which no result can match any
-- judgement (a tenant without vectors, judgements of plain row ids for a run over several sources):
-- such a run scored 0 and was stored, and showed next to coverage in regen.migration_status.
--
-- Error codes of this file: RG003 (extended) unsupported provider, RG061 (extended) a run in which no result can match a judgement.

-- ---------------------------------------------------------------------------------------------
-- Versions: only the providers the worker embeds with. Same signature and body as in
-- sql/0002_versions.sql, plus the provider check.

create or replace function regen.create_version(
  tag text,
  model text,
  dimensions integer,
  provider text default 'openai',
  settings jsonb default '{}'
)
returns text
language plpgsql volatile
as $$
declare
  v_settings jsonb;
  v_existing regen._versions;
  v_id integer;
  v_opclass text;
  v_cast text;
begin
  if tag is null or tag !~ '^\S{1,200}$' then
    raise exception 'version tag must be 1 to 200 characters without spaces, not %', coalesce(quote_literal(tag), 'NULL')
      using errcode = 'RG003', hint = 'for example: text-embedding-3-small@1/chunk-2000/norm-l2';
  end if;
  if coalesce(model, '') = '' or coalesce(provider, '') = '' then
    raise exception 'version % needs a model and a provider', tag using errcode = 'RG003';
  end if;
  -- the worker embeds through the official openai client only: any other provider would be stored and ignored
  if provider <> 'openai' then
    raise exception 'version % names provider %, which pgregen does not support: the worker embeds only through the OpenAI API',
      tag, quote_literal(provider)
      using errcode = 'RG003',
            hint = 'use provider ''openai'' (the default): it covers OpenAI and any OpenAI-compatible endpoint (Azure, Ollama, vLLM, TEI), '
                   'which the worker reaches through OPENAI_BASE_URL';
  end if;
  if dimensions is null or dimensions not between 1 and 16000 then
    raise exception 'version % needs dimensions between 1 and 16000, not %', tag, coalesce(dimensions::text, 'NULL')
      using errcode = 'RG003';
  end if;
  v_settings := regen._version_settings(coalesce(create_version.settings, '{}'), dimensions, model);

  -- Serialise creators of the same tag so the comparison below is race-free.
  perform pg_advisory_xact_lock(hashtext('regen.create_version'), hashtext(tag));
  select * into v_existing from regen._versions v where v.tag = create_version.tag;
  if found then
    if (v_existing.model, v_existing.dimensions, v_existing.provider, v_existing.settings)
       is distinct from (model, dimensions, provider, v_settings) then
      raise exception 'version % already exists with other settings', tag
        using errcode = 'RG002',
              detail = format('existing: %s %s, %s dimensions, %s; asked: %s %s, %s dimensions, %s',
                              v_existing.provider, v_existing.model, v_existing.dimensions, v_existing.settings,
                              provider, model, dimensions, v_settings),
              hint = 'a tag names one vector space forever: give the new settings a new tag';
    end if;
    return tag;
  end if;

  insert into regen._versions (tag, provider, model, dimensions, settings)
  values (tag, provider, model, dimensions, v_settings)
  returning id into v_id;
  perform regen._create_queue(v_id);

  -- Partial expression HNSW index over this version's rows only, cast to its dimensions;
  -- halfvec above 2,000 dimensions, the most pgvector indexes as vector.
  v_cast := case when dimensions > 2000 then format('halfvec(%s)', dimensions) else format('vector(%s)', dimensions) end;
  v_opclass := (case when dimensions > 2000 then 'halfvec' else 'vector' end)
            || case v_settings->>'distance' when 'cosine' then '_cosine_ops' when 'l2' then '_l2_ops' else '_ip_ops' end;
  execute format('create index %I on regen._embeddings using hnsw ((embedding::%s) %s) where version_id = %s',
                 '_embeddings_hnsw_v' || v_id, v_cast, v_opclass, v_id);
  return tag;
end
$$;
comment on function regen.create_version(text, text, integer, text, jsonb) is
  'Registers a version tag (one vector space: provider, model, dimensions, chunking, preprocessing), its HNSW index and its queue. '
  'Idempotent for identical settings; RG002 when the tag exists with other settings; RG003 for invalid settings or a provider '
  'other than ''openai'' (OpenAI and any OpenAI-compatible endpoint), the only one the worker embeds with.';

-- ---------------------------------------------------------------------------------------------
-- Expressions: the type of an expression, compiled but never evaluated.

-- ---------------------------------------------------------------------------------------------
-- Evaluation: refuse a run in which no result can match any judgement.

-- A result can match a judgement only if the judged row has a vector of the version for the tenant
-- in one of the sources searched, under the id the run ranks it by (row_id, or source:row_id over
-- several sources). When not one relevant judged row of the whole query set does, the scores are 0
-- whatever the search does. Says why: the tenant has no vectors there at all, the judgements name
-- plain row ids while the run ranks source:row_id, or they name rows the scope does not hold.
-- Cheap enough to ask before the queries are embedded (src/eval/run.ts does).
create function regen._check_eval_scope(version text, tenant text, sources text[], results jsonb)
returns void
language plpgsql stable
as $$
declare
  v_version_id integer := regen._version_id(_check_eval_scope.version);
  v_qualified boolean := cardinality(sources) > 1;
  v_judged text[];
  v_names text := array_to_string(sources, ', ');
  v_examples text;
begin
  if results is null or jsonb_typeof(results) <> 'array' or sources is null or cardinality(sources) = 0 then
    return;   -- regen._check_run and regen.run_sources say what is wrong with these
  end if;
  select coalesce(array_agg(distinct j.key), '{}') into v_judged
  from jsonb_array_elements(results) e(value)
  cross join lateral jsonb_each(case when jsonb_typeof(e.value->'judgements') = 'object' then e.value->'judgements' else '{}' end) j
  where jsonb_typeof(j.value) = 'number' and (j.value::text)::float8 > 0;
  if cardinality(v_judged) = 0 then
    return;   -- record_eval_run refuses each query without a relevant judgement (RG061)
  end if;

  if exists (
    select 1
    from unnest(v_judged) k
    join regen._sources s on s.name = any(_check_eval_scope.sources)
                         and (not v_qualified or left(k, length(s.name) + 1) = s.name || ':')
    join regen._embeddings e on e.version_id = v_version_id and e.source_id = s.id
                            and e.row_id = case when v_qualified then substr(k, length(s.name) + 2) else k end
    where e.tenant = _check_eval_scope.tenant) then
    return;
  end if;

  select string_agg(quote_literal(k), ', ') into v_examples from (select k from unnest(v_judged) k order by k limit 5) x;
  if not exists (
    select 1 from regen._embeddings e join regen._sources s on s.id = e.source_id
    where e.version_id = v_version_id and s.name = any(_check_eval_scope.sources) and e.tenant = _check_eval_scope.tenant) then
    raise exception 'tenant % has no vectors of version % in source(s) %, so no search result can match a judgement',
      quote_literal(tenant), quote_literal(version), v_names
      using errcode = 'RG061',
            hint = 'check the tenant''s name (regen.embedding_gap_by_tenant lists the tenants of each source) and let the workers '
                   'embed its rows before evaluating';
  end if;
  if v_qualified and not exists (
    select 1 from unnest(v_judged) k join regen._sources s on s.name = any(_check_eval_scope.sources)
    where left(k, length(s.name) + 1) = s.name || ':') then
    raise exception 'the run searches % sources (%) and so ranks rows as source:row_id, but the judgements name plain row ids such as %',
      cardinality(sources), v_names, v_examples
      using errcode = 'RG061',
            hint = 'search the one source the query set was written for (pgregen eval --source NAME, or sources => array[...]), '
                   'or write its judgements as source:row_id';
  end if;
  raise exception 'none of the % relevant row(s) the judgements name (such as %) has a vector of version % for tenant % in source(s) %, '
                  'so no search result can match a judgement', cardinality(v_judged), v_examples, quote_literal(version), quote_literal(tenant), v_names
    using errcode = 'RG061',
          hint = case when v_qualified then 'over several sources a judgement names source:row_id; ' else '' end
              || 'check that the query set was written for these sources and this tenant, and that their rows are embedded '
                 '(regen.embedding_gap_by_tenant)';
end
$$;
comment on function regen._check_eval_scope(text, text, text[], jsonb) is
  'RG061 when not one row judged relevant in a run''s results has a vector of the version for the tenant in the sources searched '
  '(under the id the run ranks it by): no result could match a judgement, and every score would be 0';

-- Same signature and body as in sql/0010_evaluation.sql, plus regen._check_eval_scope before the
-- queries are scored and a refusal when no query ranked any row.
create or replace function regen.record_eval_run(
  version text,
  query_set text,
  k integer,
  results jsonb,
  tenant text,
  sources text[] default null
)
returns regen.eval_runs
language plpgsql volatile
as $$
declare
  v_sources text[] := regen.run_sources(array[version], sources);
  v_entry record;
  v_id text;
  v_ids text[] := '{}';
  v_ranked text[];
  v_score record;
  v_details jsonb := '[]';
  v_message text;
  v_hint text;
  v_run regen.eval_runs;
  v_ranked_rows bigint := 0;
begin
  perform regen._check_k(k);
  perform regen._check_run(tenant, results);
  if query_set is null or query_set = '' then
    raise exception 'a run needs the name of its query set' using errcode = 'RG061';
  end if;
  perform regen._check_eval_scope(record_eval_run.version, record_eval_run.tenant, v_sources, record_eval_run.results);
  for v_entry in select e.value, e.ord from jsonb_array_elements(results) with ordinality e(value, ord) loop
    v_id := regen._result_id(v_entry.value, v_entry.ord, v_ids);
    v_ids := v_ids || v_id;
    v_ranked := regen._json_ranking(v_entry.value->'ranked');
    begin
      select * into v_score from regen.eval_scores(v_ranked, v_entry.value->'judgements', k);
    exception when sqlstate 'RG060' then
      get stacked diagnostics v_message = message_text, v_hint = pg_exception_hint;
      raise exception 'query %: %', quote_literal(v_id), v_message using errcode = 'RG060', hint = v_hint;
    end;
    if v_score.relevant = 0 then
      raise exception 'query % has no relevant judgement (a grade above 0), so its recall and nDCG are undefined', quote_literal(v_id)
        using errcode = 'RG061', hint = 'leave queries without a relevant row out of the query set';
    end if;
    v_ranked_rows := v_ranked_rows + cardinality(v_ranked);
    v_details := v_details || jsonb_build_object(
      'id', v_id, 'recall_at_k', v_score.recall_at_k, 'reciprocal_rank', v_score.reciprocal_rank,
      'ndcg_at_k', v_score.ndcg_at_k, 'relevant', v_score.relevant, 'relevant_retrieved', v_score.relevant_retrieved,
      'ranked', to_jsonb(v_ranked[1:k]));
  end loop;
  if v_ranked_rows = 0 then
    raise exception 'no query of the run ranked any row, so no result can match a judgement: every score would be 0'
      using errcode = 'RG061',
            hint = format('search tenant %s in version %s again once its rows are embedded (regen.embedding_gap_by_tenant)',
                          quote_literal(record_eval_run.tenant), quote_literal(record_eval_run.version));
  end if;

  insert into regen._eval_runs (version, sources, tenant, query_set, k, queries, recall_at_k, mrr, ndcg_at_k, details)
  select record_eval_run.version, v_sources, record_eval_run.tenant, record_eval_run.query_set, record_eval_run.k,
         count(*), avg((d->>'recall_at_k')::float8), avg((d->>'reciprocal_rank')::float8), avg((d->>'ndcg_at_k')::float8),
         v_details
  from jsonb_array_elements(v_details) d
  returning * into v_run;
  return v_run;
end
$$;
comment on function regen.record_eval_run(text, text, integer, jsonb, text, text[]) is
  'Scores a version''s search results on a labelled query set and stores the run in regen.eval_runs. results: '
  '[{"id": ..., "ranked": [row ids, nearest first], "judgements": {row id: grade}}, ...]; returns the run. RG061 for an '
  'invalid run, also one in which no result can match a judgement (see regen._check_eval_scope)';
