-- Versions (the per-vector version tag), text preprocessing and chunking.
--
-- Error codes of this file: RG001 unknown version, RG002 tag exists with other settings,
-- RG003 invalid version settings.

create function regen._version_id(tag text)
returns integer
language plpgsql stable
as $$
declare
  v_id integer;
begin
  select v.id into v_id from regen._versions v where v.tag = _version_id.tag;
  if v_id is null then
    raise exception 'unknown version %', coalesce(quote_literal(tag), 'NULL')
      using errcode = 'RG001',
            hint = 'create it with regen.create_version(), or list the versions with: select * from regen.versions';
  end if;
  return v_id;
end
$$;
comment on function regen._version_id(text) is 'Id of a version tag; raises RG001 when unknown';

-- Fills in defaults and validates; the result is what is stored and compared.
create function regen._version_settings(settings jsonb, dimensions integer, model text)
returns jsonb
language plpgsql immutable
as $$
declare
  v_unknown text;
  v jsonb;
begin
  if settings is null or jsonb_typeof(settings) <> 'object' then
    raise exception 'version settings must be a json object, not %', coalesce(jsonb_typeof(settings), 'NULL')
      using errcode = 'RG003';
  end if;
  select string_agg(k, ', ') into v_unknown
  from jsonb_object_keys(settings) k
  where k not in ('chunk_chars', 'chunk_overlap', 'whitespace', 'lowercase', 'distance', 'max_input_tokens', 'send_dimensions');
  if v_unknown is not null then
    raise exception 'unknown version setting(s): %', v_unknown
      using errcode = 'RG003',
            hint = 'known settings: chunk_chars, chunk_overlap, whitespace (collapse|keep), lowercase, distance (cosine|l2|inner_product), max_input_tokens, send_dimensions';
  end if;
  v := jsonb_build_object(
    'chunk_chars', 2000, 'chunk_overlap', 200, 'whitespace', 'collapse', 'lowercase', false,
    'distance', 'cosine', 'max_input_tokens', 8191,
    -- text-embedding-3 models shorten their vectors when asked; most other models refuse the field
    'send_dimensions', coalesce(model, '') ~ '^text-embedding-3') || settings;
  if jsonb_typeof(v->'chunk_chars') <> 'number' or (v->>'chunk_chars')::numeric not between 100 and 1000000
     or (v->>'chunk_chars')::numeric <> trunc((v->>'chunk_chars')::numeric) then
    raise exception 'chunk_chars must be an integer between 100 and 1000000, not %', v->'chunk_chars' using errcode = 'RG003';
  end if;
  if jsonb_typeof(v->'chunk_overlap') <> 'number' or (v->>'chunk_overlap')::numeric < 0
     or (v->>'chunk_overlap')::numeric > (v->>'chunk_chars')::numeric / 2
     or (v->>'chunk_overlap')::numeric <> trunc((v->>'chunk_overlap')::numeric) then
    raise exception 'chunk_overlap must be an integer between 0 and chunk_chars / 2, not %', v->'chunk_overlap' using errcode = 'RG003';
  end if;
  if v->>'whitespace' not in ('collapse', 'keep') then
    raise exception 'whitespace must be "collapse" or "keep", not %', v->'whitespace' using errcode = 'RG003';
  end if;
  if jsonb_typeof(v->'lowercase') <> 'boolean' then
    raise exception 'lowercase must be true or false, not %', v->'lowercase' using errcode = 'RG003';
  end if;
  if v->>'distance' not in ('cosine', 'l2', 'inner_product') then
    raise exception 'distance must be "cosine", "l2" or "inner_product", not %', v->'distance' using errcode = 'RG003';
  end if;
  if jsonb_typeof(v->'max_input_tokens') <> 'number' or (v->>'max_input_tokens')::numeric < 1 then
    raise exception 'max_input_tokens must be a positive integer, not %', v->'max_input_tokens' using errcode = 'RG003';
  end if;
  if jsonb_typeof(v->'send_dimensions') <> 'boolean' then
    raise exception 'send_dimensions must be true or false, not %', v->'send_dimensions' using errcode = 'RG003';
  end if;
  if dimensions > 4000 then
    raise exception 'version with % dimensions cannot be indexed: pgvector indexes at most 4000 (as halfvec)', dimensions
      using errcode = 'RG003', hint = 'choose a model size (dimensions) of 4000 or fewer';
  end if;
  return v;
end
$$;
comment on function regen._version_settings(jsonb, integer, text) is 'Version settings with defaults filled in; raises RG003 when invalid';

create function regen.create_version(
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
  'Idempotent for identical settings; RG002 when the tag exists with other settings.';

create view regen.versions as
  select v.tag, v.provider, v.model, v.dimensions, v.settings, v.created_at,
         case when v.dimensions > 2000 then 'halfvec' else 'vector' end as index_type
  from regen._versions v;
comment on view regen.versions is 'Registered versions (vector spaces) with their settings';

-- The text a version sends to the provider, before chunking.
create function regen.preprocess(content text, settings jsonb)
returns text
language sql immutable strict parallel safe
as $$
  select case when (settings->>'lowercase')::boolean then lower(t) else t end
  from (select case when settings->>'whitespace' = 'keep' then content
                    else btrim(regexp_replace(regexp_replace(content, '[ \t\r\f\v]+', ' ', 'g'),
                                              ' ?\n[ \n]*\n ?', E'\n\n', 'g'), E' \n') end as t) p
$$;
comment on function regen.preprocess(text, jsonb) is
  'Applies a version''s preprocessing (whitespace collapse, lowercase) to a text';

-- Splits a text into chunks of at most max_chars characters. Cuts at the last paragraph break
-- in the window, else the last sentence end, else the last space, else hard at max_chars; a cut
-- is only taken in the second half of the window so chunks are never tiny. Each next chunk
-- starts up to `overlap` characters before the previous cut, on a word boundary.
create function regen.chunk_text(content text, max_chars integer, overlap integer default 0)
returns table (chunk_no integer, chunk text)
language plpgsql immutable strict parallel safe
as $$
declare
  v_len integer := length(content);
  v_pos integer := 1;           -- 1-based start of the current chunk
  v_no integer := 0;
  v_window text;
  v_cut integer;
  v_next integer;
  v_sep text;               -- a pattern whose group 1 is the text before the cut
  v_at integer;
begin
  if max_chars < 1 or overlap < 0 or overlap * 2 > max_chars then
    raise exception 'chunk_text needs max_chars >= 1 and 0 <= overlap <= max_chars / 2, not % and %', max_chars, overlap
      using errcode = 'RG003';
  end if;
  loop
    v_no := v_no + 1;
    if v_len - v_pos + 1 <= max_chars then
      chunk_no := v_no; chunk := substr(content, v_pos); return next;
      return;
    end if;
    v_window := substr(content, v_pos, max_chars);
    v_cut := null;
    -- greedy prefixes: the text before the last paragraph break, sentence end, or space
    foreach v_sep in array array['^(.*\S)\s*\n\s*\n', '^(.*[.!?])\s', '^(.*\S)\s'] loop
      v_at := length(substring(v_window from v_sep));
      if v_at > max_chars / 2 then
        v_cut := v_at;
        exit;
      end if;
    end loop;
    v_cut := coalesce(v_cut, max_chars);
    chunk_no := v_no; chunk := rtrim(substr(content, v_pos, v_cut), E' \n'); return next;
    -- next start: overlap characters back, moved forward to the start of a word
    v_next := v_pos + v_cut - overlap;
    if overlap > 0 then
      v_at := strpos(substr(content, v_next, overlap), ' ');
      if v_at > 0 then v_next := v_next + v_at; end if;
    end if;
    v_next := greatest(v_next, v_pos + 1);
    -- skip whitespace at the start of a chunk
    while v_next <= v_len and substr(content, v_next, 1) in (' ', E'\n') loop
      v_next := v_next + 1;
    end loop;
    if v_next > v_len then return; end if;
    v_pos := v_next;
  end loop;
end
$$;
comment on function regen.chunk_text(text, integer, integer) is
  'Splits text into chunks of at most max_chars characters, cutting on paragraph, then sentence, then word boundaries, with overlap';
