-- Evaluation runs and shadow comparisons: how well a version's search finds the rows a labelled
-- query set judges relevant (recall@k, MRR, nDCG@k), how far two versions' results agree for the
-- same queries (overlap@k, rank agreement), and regen.migration_status, which shows both next to
-- each version's coverage. The metrics are computed here; a client only embeds the queries,
-- searches with regen.search_scoped and hands the ranked row ids over.
--
-- Error codes of this file: RG060 invalid metric argument (k, a ranked list, judgements), RG061
-- invalid run (no query, a query without a relevant judgement, no tenant, no source in scope).

-- Runs are history: versions and sources are kept by name, so a run outlives a retired version
-- or an unregistered source.
create table regen._eval_runs (
  id bigint generated always as identity primary key,
  at timestamptz not null default now(),
  version text not null,
  sources text[] not null,
  tenant text not null,
  query_set text not null,
  k integer not null,
  queries integer not null,
  recall_at_k double precision not null,
  mrr double precision not null,
  ndcg_at_k double precision not null,
  actor text not null default current_user,
  details jsonb not null
);
create index _eval_runs_version on regen._eval_runs (version, at desc);

create table regen._shadow_runs (
  id bigint generated always as identity primary key,
  at timestamptz not null default now(),
  version_a text not null,
  version_b text not null,
  sources text[] not null,
  tenant text not null,
  query_set text,
  k integer not null,
  queries integer not null,
  overlap_at_k double precision not null,
  rank_agreement double precision not null,
  actor text not null default current_user,
  details jsonb not null
);
create index _shadow_runs_version_a on regen._shadow_runs (version_a, at desc);
create index _shadow_runs_version_b on regen._shadow_runs (version_b, at desc);

create view regen.eval_runs as
  select r.id, r.at, r.version, r.sources, r.tenant, r.query_set, r.k, r.queries,
         r.recall_at_k, r.mrr, r.ndcg_at_k, r.actor, r.details
  from regen._eval_runs r;
comment on view regen.eval_runs is
  'Evaluation runs of a version on a labelled query set: mean recall@k, MRR and nDCG@k over the queries, who ran it '
  'and when; details holds each query''s scores and its top k row ids';

create view regen.shadow_runs as
  select r.id, r.at, r.version_a, r.version_b, r.sources, r.tenant, r.query_set, r.k, r.queries,
         r.overlap_at_k, r.rank_agreement, r.actor, r.details
  from regen._shadow_runs r;
comment on view regen.shadow_runs is
  'Shadow comparisons of two versions on the same queries: mean overlap@k and rank agreement of their top k rows; '
  'details holds each query''s figures and both top k lists';

-- A ranked list of row ids: given, no NULL, no row twice. `what` names it in the message.
create function regen._check_ranking(ranked text[], what text)
returns void
language plpgsql immutable parallel safe
as $$
declare
  v_at integer := array_position(ranked, null);
  v_twice text;
begin
  if ranked is null then
    raise exception '% must be an array of row ids, not NULL', what
      using errcode = 'RG060', hint = 'pass an empty array (''{}'') when the search found nothing';
  end if;
  if v_at is not null then
    raise exception '% has a NULL row id at position %', what, v_at using errcode = 'RG060';
  end if;
  select r into v_twice from unnest(ranked) r group by r having count(*) > 1 limit 1;
  if v_twice is not null then
    raise exception '% lists row % more than once', what, quote_literal(v_twice)
      using errcode = 'RG060', hint = 'collapse the chunks of a row to its best rank: one entry per row, nearest first';
  end if;
end
$$;
comment on function regen._check_ranking(text[], text) is 'RG060 unless a ranked list of row ids is given, without NULL and without a row twice';

create function regen._check_k(k integer)
returns void
language plpgsql immutable parallel safe
as $$
begin
  if k is null or k not between 1 and 1000 then
    raise exception 'k must be between 1 and 1000, not %', coalesce(k::text, 'NULL') using errcode = 'RG060';
  end if;
end
$$;
comment on function regen._check_k(integer) is 'RG060 unless k is between 1 and 1000 (the most regen.search_scoped returns)';

-- One query's scores. Relevant: a judged grade above 0. Gain: the grade itself (linear gain, as
-- trec_eval's ndcg_cut); discount: log2(rank + 1). Ideal DCG: the k best judged grades.
-- Not strict: a NULL argument is an error, not a NULL score.
create function regen.eval_scores(
  ranked text[],
  judged jsonb,
  k integer,
  out recall_at_k double precision,
  out reciprocal_rank double precision,
  out ndcg_at_k double precision,
  out relevant integer,
  out relevant_retrieved integer
)
language plpgsql immutable parallel safe
as $$
declare
  v_bad record;
  v_dcg double precision;
  v_ideal double precision;
begin
  perform regen._check_k(k);
  perform regen._check_ranking(ranked, 'ranked');
  if judged is null or jsonb_typeof(judged) <> 'object' then
    raise exception 'judged must be a JSON object of row id to grade, not %', coalesce(jsonb_typeof(judged), 'NULL')
      using errcode = 'RG060', hint = 'for example ''{"184": 3, "29": 1}''; rows not listed count as not relevant';
  end if;
  select j.key, j.value into v_bad from jsonb_each(judged) j where jsonb_typeof(j.value) <> 'number' limit 1;
  if found then
    raise exception 'the grade of row % must be a number, not %', quote_literal(v_bad.key), v_bad.value::text
      using errcode = 'RG060', hint = 'grades above 0 are relevant, higher is more relevant';
  end if;

  with gains as (
    select j.key as row_id, (j.value::text)::float8 as gain from jsonb_each(judged) j where (j.value::text)::float8 > 0
  ),
  top as (
    select r.row_id, r.rank from unnest(ranked[1:k]) with ordinality r(row_id, rank)
  ),
  found as (
    select t.rank, g.gain from top t join gains g using (row_id)
  )
  select (select count(*) from gains),
         (select count(*) from found),
         (select 1.0 / min(f.rank) from found f),
         (select sum(f.gain / log(2.0, f.rank + 1.0)::float8) from found f),
         (select sum(i.gain / log(2.0, i.rank + 1.0)::float8)
            from (select g.gain, row_number() over (order by g.gain desc) as rank from gains g) i
           where i.rank <= k)
    into relevant, relevant_retrieved, reciprocal_rank, v_dcg, v_ideal;

  if relevant = 0 then
    reciprocal_rank := null;   -- undefined without a relevant row; runs refuse such queries
    return;
  end if;
  recall_at_k := relevant_retrieved::float8 / relevant;
  reciprocal_rank := coalesce(reciprocal_rank, 0);
  ndcg_at_k := coalesce(v_dcg, 0) / v_ideal;
end
$$;
comment on function regen.eval_scores(text[], jsonb, integer) is
  'Scores of one query''s ranked row ids against graded judgements ({row id: grade}, relevant when grade > 0): '
  'recall@k, reciprocal rank of the first relevant row in the top k (0 if none), nDCG@k (linear gain, log2 discount), '
  'relevant and relevant_retrieved counts; NULL scores when no row is relevant; RG060 on bad input';

-- Two top-k lists of one query. Overlap@k: rows in both top-k lists / n, where n is the longer of
-- the two (k when both are full). Rank agreement: 1 - F / F_max, with F Spearman's footrule over
-- the union of the two lists, a row missing from a list placed at rank n + 1 (Fagin, Kumar and
-- Sivakumar, "Comparing top k lists", 2003), and F_max the footrule of two disjoint lists of the
-- same lengths. 1: same rows in the same order; 0: no row in common; the same rows reversed score
-- in between (2/3 for 3 rows, 6/11 for 10). Both NULL when both lists are empty.
create function regen.compare_rankings(
  a text[],
  b text[],
  k integer,
  out overlap_at_k double precision,
  out rank_agreement double precision
)
language plpgsql immutable parallel safe
as $$
declare
  v_a text[];
  v_b text[];
  v_n integer;
  v_footrule double precision;
  v_max double precision;
begin
  perform regen._check_k(k);
  perform regen._check_ranking(a, 'a');
  perform regen._check_ranking(b, 'b');
  v_a := a[1:k];
  v_b := b[1:k];
  v_n := greatest(cardinality(v_a), cardinality(v_b));
  if v_n = 0 then
    return;
  end if;
  with ra as (select r.row_id, r.rank from unnest(v_a) with ordinality r(row_id, rank)),
       rb as (select r.row_id, r.rank from unnest(v_b) with ordinality r(row_id, rank))
  select count(*) filter (where ra.rank is not null and rb.rank is not null),
         sum(abs(coalesce(ra.rank, v_n + 1) - coalesce(rb.rank, v_n + 1)))
    into overlap_at_k, v_footrule
  from ra full join rb using (row_id);
  v_max := (select coalesce(sum(v_n + 1 - i), 0) from generate_series(1, cardinality(v_a)) i)
         + (select coalesce(sum(v_n + 1 - i), 0) from generate_series(1, cardinality(v_b)) i);
  overlap_at_k := overlap_at_k / v_n;
  rank_agreement := 1 - v_footrule / v_max;
end
$$;
comment on function regen.compare_rankings(text[], text[], integer) is
  'Agreement of two ranked lists of row ids in their top k: overlap@k (shared rows / longer list) and rank agreement '
  '(1 - normalised Spearman footrule, missing rows at rank n + 1: 1 same order, 0 disjoint); RG060 on bad input';

-- The sources a run reads: the given ones (default: all) that use every one of its versions. The
-- client asks first and searches exactly these, so that the two sides of a shadow comparison read
-- the same sources, and the recorded run says what was searched.
create function regen.run_sources(versions text[], sources text[] default null)
returns text[]
language plpgsql stable
as $$
declare
  v_version text;
  v_names text[];
  v_these text[];
begin
  if versions is null or cardinality(versions) = 0 or array_position(versions, null) is not null then
    raise exception 'a run needs its version (two for a shadow comparison), not %', coalesce(versions::text, 'NULL')
      using errcode = 'RG061';
  end if;
  foreach v_version in array versions loop
    -- as regen.search_scoped: RG001 unknown version, RG010 unknown source, RG042 a source not using the version
    select coalesce(array_agg(s.name order by s.name), '{}') into v_these
    from regen._search_scope(run_sources.sources, v_version) sc, unnest(sc.source_ids) i
    join regen._sources s on s.id = i;
    v_names := case when v_names is null then v_these
                    else array(select n from unnest(v_names) n where n = any(v_these) order by n) end;
  end loop;
  if cardinality(v_names) = 0 then
    raise exception 'no source uses %', (select string_agg('version ' || quote_literal(v), ' and ') from unnest(versions) v)
      using errcode = 'RG061',
            hint = 'see regen.embedding_gap for the versions each source uses; a source uses a second version while it migrates to it';
  end if;
  return v_names;
end
$$;
comment on function regen.run_sources(text[], text[]) is
  'The sources an evaluation or shadow run reads: those given (default all) that use every one of the versions; '
  'RG001/RG010/RG042 as regen.search_scoped, RG061 when no source does';

create function regen._check_run(tenant text, results jsonb)
returns void
language plpgsql immutable parallel safe
as $$
begin
  if tenant is null or tenant = '' then
    raise exception 'a run needs the tenant whose rows were searched' using errcode = 'RG061';
  end if;
  if results is null or jsonb_typeof(results) <> 'array' or jsonb_array_length(results) = 0 then
    raise exception 'results must be a non-empty JSON array with one entry per query, not %',
                    coalesce(left(results::text, 60), 'NULL')
      using errcode = 'RG061';
  end if;
end
$$;
comment on function regen._check_run(text, jsonb) is 'RG061 unless a run names its tenant and has at least one result';

-- The id of one entry of a run's results: a string or a number, unique within the run.
create function regen._result_id(entry jsonb, ord bigint, seen text[])
returns text
language plpgsql immutable parallel safe
as $$
declare
  v_id text := case when jsonb_typeof(entry->'id') in ('string', 'number') then entry->>'id' end;
begin
  if jsonb_typeof(entry) <> 'object' or v_id is null or v_id = '' then
    raise exception 'result % has no id: each entry must be an object with an "id" (string or number)', ord
      using errcode = 'RG061';
  end if;
  if v_id = any(seen) then
    raise exception 'query % appears more than once in the results', quote_literal(v_id) using errcode = 'RG061';
  end if;
  return v_id;
end
$$;
comment on function regen._result_id(jsonb, bigint, text[]) is 'The id of one result entry of a run; RG061 when missing or repeated';

-- A JSON array of row ids as text[]; NULL when the value is not an array (regen._check_ranking says so).
create function regen._json_ranking(value jsonb)
returns text[]
language sql immutable parallel safe
as $$
  select case when jsonb_typeof(value) = 'array' then array(select jsonb_array_elements_text(value)) end
$$;
comment on function regen._json_ranking(jsonb) is 'A JSON array of row ids as text[] (NULL when not an array)';

create function regen.record_eval_run(
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
begin
  perform regen._check_k(k);
  perform regen._check_run(tenant, results);
  if query_set is null or query_set = '' then
    raise exception 'a run needs the name of its query set' using errcode = 'RG061';
  end if;
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
    v_details := v_details || jsonb_build_object(
      'id', v_id, 'recall_at_k', v_score.recall_at_k, 'reciprocal_rank', v_score.reciprocal_rank,
      'ndcg_at_k', v_score.ndcg_at_k, 'relevant', v_score.relevant, 'relevant_retrieved', v_score.relevant_retrieved,
      'ranked', to_jsonb(v_ranked[1:k]));
  end loop;

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
  '[{"id": ..., "ranked": [row ids, nearest first], "judgements": {row id: grade}}, ...]; returns the run';

create function regen.record_shadow_run(
  version_a text,
  version_b text,
  k integer,
  results jsonb,
  tenant text,
  sources text[] default null,
  query_set text default null
)
returns regen.shadow_runs
language plpgsql volatile
as $$
declare
  v_sources text[] := regen.run_sources(array[version_a, version_b], sources);
  v_entry record;
  v_id text;
  v_ids text[] := '{}';
  v_a text[];
  v_b text[];
  v_cmp record;
  v_details jsonb := '[]';
  v_message text;
  v_hint text;
  v_run regen.shadow_runs;
begin
  perform regen._check_k(k);
  perform regen._check_run(tenant, results);
  for v_entry in select e.value, e.ord from jsonb_array_elements(results) with ordinality e(value, ord) loop
    v_id := regen._result_id(v_entry.value, v_entry.ord, v_ids);
    v_ids := v_ids || v_id;
    v_a := regen._json_ranking(v_entry.value->'a');
    v_b := regen._json_ranking(v_entry.value->'b');
    begin
      select * into v_cmp from regen.compare_rankings(v_a, v_b, k);
    exception when sqlstate 'RG060' then
      get stacked diagnostics v_message = message_text, v_hint = pg_exception_hint;
      raise exception 'query %: %', quote_literal(v_id), v_message using errcode = 'RG060', hint = v_hint;
    end;
    v_details := v_details || jsonb_build_object(
      'id', v_id, 'overlap_at_k', v_cmp.overlap_at_k, 'rank_agreement', v_cmp.rank_agreement,
      'a', to_jsonb(v_a[1:k]), 'b', to_jsonb(v_b[1:k]));
  end loop;

  -- a query both versions found nothing for agrees fully: there is nothing to disagree on
  insert into regen._shadow_runs (version_a, version_b, sources, tenant, query_set, k, queries, overlap_at_k, rank_agreement, details)
  select record_shadow_run.version_a, record_shadow_run.version_b, v_sources, record_shadow_run.tenant,
         record_shadow_run.query_set, record_shadow_run.k, count(*),
         avg(coalesce((d->>'overlap_at_k')::float8, 1)), avg(coalesce((d->>'rank_agreement')::float8, 1)), v_details
  from jsonb_array_elements(v_details) d
  returning * into v_run;
  return v_run;
end
$$;
comment on function regen.record_shadow_run(text, text, integer, jsonb, text, text[], text) is
  'Compares two versions'' top k rows for the same queries (regen.compare_rankings) and stores the means in '
  'regen.shadow_runs. results: [{"id": ..., "a": [row ids of version_a], "b": [row ids of version_b]}, ...]; returns the run';

create view regen.migration_status as
  select g.source, g.version, g.role, g.expected, g.current, g.coverage, g.cutover_ready,
         e.id as eval_run, e.query_set as eval_query_set, e.k as eval_k,
         round(e.recall_at_k::numeric, 4) as recall_at_k, round(e.mrr::numeric, 4) as mrr,
         round(e.ndcg_at_k::numeric, 4) as ndcg_at_k, e.at as evaluated_at,
         sh.id as shadow_run, sh.other as shadow_version, sh.k as shadow_k,
         round(sh.overlap_at_k::numeric, 4) as overlap_at_k, round(sh.rank_agreement::numeric, 4) as rank_agreement,
         sh.at as compared_at
  from regen.embedding_gap g
  left join lateral (
    select r.id, r.query_set, r.k, r.recall_at_k, r.mrr, r.ndcg_at_k, r.at
    from regen._eval_runs r
    where r.version = g.version and g.source = any(r.sources)
    order by r.at desc, r.id desc
    limit 1) e on true
  left join lateral (
    select r.id, case when r.version_a = g.version then r.version_b else r.version_a end as other,
           r.k, r.overlap_at_k, r.rank_agreement, r.at
    from regen._shadow_runs r
    where (r.version_a = g.version or r.version_b = g.version) and g.source = any(r.sources)
    order by r.at desc, r.id desc
    limit 1) sh on true;
comment on view regen.migration_status is
  'Per source and version in use: its role (active, building, previous), coverage from regen.embedding_gap, the scores '
  'of its latest evaluation run (regen.eval_runs) and its latest shadow comparison with another version (regen.shadow_runs)';
