-- search_rows on the approximate path: each row at its best chunk (issue 15, item 3).
--
-- The approximate path of regen._search (sql/0028_search_rows.sql) took each row at the best of its
-- chunks that the HNSW scan found. The scan is approximate: it can find a row through one chunk and
-- miss a nearer chunk of the same row, so the distance returned was not always the row's (a test
-- saw 0.157 against 0.134). Now the rows found are ranked again over all of their stored chunks,
-- exactly: one more statement over k rows' chunks, through the store's primary key. Which rows are
-- found stays approximate (the recall); the chunk and distance given for each are exact.
--
-- Error codes of this file: none.

create or replace function regen._search(
  query vector,
  k integer,
  sources text[],
  version text,
  max_distance double precision,
  best_per_row boolean
)
returns setof regen.search_hit
language plpgsql stable security invoker
set enable_sort = on set enable_seqscan = on set enable_bitmapscan = on
-- its statements' plans are kept: a custom plan per tenant would plan the search again every call
set plan_cache_mode = force_generic_plan
as $$
declare
  v_tenant text := regen.current_tenant();
  v_scope record;
  v_version regen._versions;
  v_exact_max integer := regen._search_setting('regen.search_exact_max_rows', 10000, 0, 100000000);
  v_ef integer := regen._search_setting('regen.search_ef_search', 100, 1, 1000);
  v_op text;
  v_cast text;
  v_in_scope bigint;
  v_hits regen.search_hit[];
  v_rows regen.search_hit[];
  v_fetch integer;
  v_tenant_index boolean;
  v_version_index boolean;
  v_tenant_min integer := regen._search_setting('regen.search_tenant_index_min_rows', 1000, 0, 100000000);
  -- A tenant's own graph holds only its vectors: a wider search there costs less than on the version's
  -- index and buys the recall (0.995 at 400 against 0.91 at 100 on the search benchmark's largest tenant).
  v_tenant_ef integer := regen._search_setting('regen.search_tenant_ef_search', 400, 1, 1000);
  v_threshold integer;
  v_caller_ef text;
  v_caller_iterative text;
  v_moved_sources integer[];
  v_moved_rows text[];
  v_moved text := '';
  v_distance text;
begin
  if k is null or k not between 1 and 1000 then
    raise exception 'k must be between 1 and 1000, not %', coalesce(k::text, 'NULL') using errcode = 'RG041';
  end if;
  if max_distance = 'NaN'::float8 then
    raise exception 'max_distance must be a number, not NaN' using errcode = 'RG041';
  end if;
  select * into v_scope from regen._search_scope(sources, version);
  if v_scope.version_id is null or cardinality(v_scope.source_ids) = 0 then
    return;   -- no source in scope
  end if;
  select * into v_version from regen._versions v where v.id = v_scope.version_id;
  -- the version searched, for regen.search_tenant's answer (transaction-local, like the tenant)
  perform set_config('regen.searched_version', v_version.tag, true);
  -- vector_dims() is pgvector's: from here on its library is loaded, and hnsw.* are known settings
  if query is null or vector_dims(query) <> v_version.dimensions then
    raise exception 'the query has % dimensions, version % has %',
                    coalesce(vector_dims(query)::text, 'no'), v_version.tag, v_version.dimensions
      using errcode = 'RG041', hint = 'embed the query with the version''s own model (see regen.versions)';
  end if;

  v_distance := coalesce(v_version.settings->>'distance', 'inner_product');

  -- How many vectors are in scope, counted up to the exact path's threshold (an index-only scan of
  -- the scope index). A scope no larger than the lower threshold of a tenant with an index of its
  -- own is ranked exactly whatever indexes exist: the common case, without looking them up.
  select count(*) into v_in_scope from (
    select 1 from regen._embeddings e
    where e.version_id = v_scope.version_id and e.tenant = v_tenant and e.source_id = any(v_scope.source_ids)
    limit v_exact_max + 1) s;
  if v_in_scope > least(v_tenant_min, v_exact_max) then
    -- Rows deleted, or moved out of this tenant, whose change the worker has yet to apply (a moment,
    -- REGEN_ENQUEUE_INTERVAL_MS): their vectors are left out of the answer now. Usually none. (The exact
    -- path, regen._exact_hits, leaves them out by itself.)
    select coalesce(array_agg(m.source_id), '{}'), coalesce(array_agg(m.row_id), '{}')
      into v_moved_sources, v_moved_rows
    from regen._moved_rows m where m.source_id = any(v_scope.source_ids);
    if cardinality(v_moved_rows) > 0 then
      v_moved := ' and not exists (select 1 from unnest($6::integer[], $7::text[]) m(source_id, row_id)'
                 ' where m.source_id = e.source_id and m.row_id = e.row_id)';
    end if;

    -- The version's distance, spelled with pgvector's operator wherever pgvector lives.
    select format('operator(%I.%s)', n.nspname,
                  case v_distance when 'cosine' then '<=>' when 'l2' then '<->' else '<#>' end)
      into v_op
    from pg_extension e join pg_namespace n on n.oid = e.extnamespace where e.extname = 'vector';

    -- A tenant of its own HNSW index (see regen.tenant_index_plan) is searched through it above a lower
    -- threshold: its graph holds the tenant's vectors only, so it finds them as well as an exact scan.
    -- The names are regen._tenant_index_name() and regen._version_indexes' index_name, spelled out: an
    -- application role executes and reads only what regen.grant_app() granted it.
    select exists (
      select 1 from pg_class c join pg_index i on i.indexrelid = c.oid
      where c.relnamespace = 'regen'::regnamespace
        and c.relname = '_embeddings_hnsw_v' || v_scope.version_id || '_t' || left(md5(v_tenant), 16)
        and i.indisvalid and i.indisready) into v_tenant_index;
    -- Without a valid index of the version (being built, or dropped for a large load) the scan below
    -- would read and sort the scope anyway, by the index's cast: the exact path answers instead.
    select exists (
      select 1 from pg_class c join pg_index i on i.indexrelid = c.oid
      where c.relnamespace = 'regen'::regnamespace
        and c.relname = ('_embeddings_hnsw_v' || v_scope.version_id)::name
        and i.indisvalid and i.indisready) into v_version_index;
    v_threshold := case when v_tenant_index then least(v_tenant_min, v_exact_max) else v_exact_max end;

    if (v_tenant_index or v_version_index) and v_in_scope > v_threshold then
      -- Large scope: the tenant's own HNSW index when it has one, else the version's, scanned
      -- iteratively (pgvector 0.8) with the scope as its filter until k rows of the scope are found.
      -- The tenant is a literal in the query, so the planner can prove a tenant index's predicate. Sorts are switched off so that the planner cannot
      -- trade the index for a full read of the scope. The index ranks by the cast (vector(n), or
      -- halfvec(n) above 2,000 dimensions); the distance returned is that of the full vectors.
      -- Per row, the scan asks for more chunks (4 times as many each round) until they hold k
      -- distinct rows, each at its best chunk found.
      v_cast := case when v_version.dimensions > 2000 then format('halfvec(%s)', v_version.dimensions)
                     else format('vector(%s)', v_version.dimensions) end;
      v_caller_iterative := current_setting('hnsw.iterative_scan');
      v_caller_ef := current_setting('hnsw.ef_search');
      perform set_config('hnsw.iterative_scan', 'relaxed_order', true);
      perform set_config('enable_sort', 'off', true);
      perform set_config('enable_seqscan', 'off', true);
      perform set_config('enable_bitmapscan', 'off', true);
      v_fetch := case when best_per_row then 2 * k else k end;
      loop
        perform set_config('hnsw.ef_search', least(1000, greatest(case when v_tenant_index then v_tenant_ef else v_ef end, v_fetch))::text, true);
        execute format($f$
          select array_agg(row(s.name, c.row_id, c.chunk_no, c.distance)::regen.search_hit)
          from (select e.source_id, e.row_id, e.chunk_no, (e.embedding %2$s $1)::float8 as distance
                  from regen._embeddings e
                 where e.version_id = %1$s and e.tenant = %4$L and e.source_id = any($3)%5$s
                 order by e.embedding::%3$s %2$s $1::%3$s
                 limit $4) c
          join regen._sources s on s.id = c.source_id$f$,
          v_scope.version_id, v_op, v_cast, v_tenant, v_moved)
          into v_hits
          using query, v_tenant, v_scope.source_ids, v_fetch, null::float8, v_moved_sources, v_moved_rows;
        exit when not best_per_row;
        v_rows := array(select (h.source, h.row_id, h.chunk_no, h.distance)::regen.search_hit
                        from (select distinct on (h.source, h.row_id) h.*
                                from unnest(v_hits) h order by h.source, h.row_id, h.distance, h.chunk_no) h
                        order by h.distance, h.source, h.row_id
                        limit k);
        -- enough rows; or the scan gave up short of the chunks asked for (the exact path answers)
        -- (beyond the larger of the exact path's threshold and 64 chunks a row, the exact path too)
        exit when cardinality(v_rows) >= k or coalesce(cardinality(v_hits), 0) < v_fetch
               or v_fetch >= greatest(v_threshold, 64 * k);
        v_fetch := least(v_fetch * 4, greatest(v_threshold, 64 * k));
      end loop;
      perform set_config('enable_sort', 'on', true);
      perform set_config('enable_seqscan', 'on', true);
      perform set_config('enable_bitmapscan', 'on', true);
      -- the caller's values again (an error in between rolls them back with its (sub)transaction)
      perform set_config('hnsw.iterative_scan', v_caller_iterative, true);
      perform set_config('hnsw.ef_search', v_caller_ef, true);
      if best_per_row then
        -- Each row found, at its best chunk over all of its stored chunks: the scan may have found
        -- another of its chunks and not that one. An exact pass over those rows' chunks alone.
        execute format($f$
          select array(
            select row(b.source, b.row_id, b.chunk_no, b.distance)::regen.search_hit
            from (select distinct on (r.source, r.row_id) r.source, e.row_id, e.chunk_no, (e.embedding %2$s $1)::float8 as distance
                    from unnest($2::regen.search_hit[]) r
                    join regen._sources s on s.name = r.source
                    join regen._embeddings e on e.version_id = %1$s and e.source_id = s.id and e.row_id = r.row_id
                                            and e.tenant = %3$L
                   order by r.source, r.row_id, 4, e.chunk_no) b
            order by b.distance, b.source, b.row_id)$f$,
          v_scope.version_id, v_op, v_tenant)
          into v_hits
          using query, v_rows;
      end if;
      -- The iterative scan gives up at hnsw.max_scan_tuples; short of k rows, the exact path answers.
      if cardinality(v_hits) >= k then
        return query
          select h.* from unnest(v_hits) h
          where max_distance is null or h.distance <= max_distance
          order by h.distance, h.source, h.row_id, h.chunk_no;
        return;
      end if;
    end if;
  end if;

  -- Small scope, or no index to scan: every vector of the scope, exactly.
  return query select * from regen._exact_hits(query, k, v_scope.version_id, v_scope.source_ids, v_tenant, v_distance,
                                               max_distance, best_per_row);
end
$$;


-- create or replace drops nothing else, but the search_path pinned by regen._pin_search_paths
-- (pgvector's schema) is restated here as the function's SET list was written: pin it again.
select regen._pin_search_paths();
