-- pgregen: the private tables. The public interface is the functions and views of later files;
-- everything here starts with an underscore and may change between releases.
--
-- Functions on the write path say `set jit = off`: the planner prices their CTEs over transition
-- tables and arrays far above their real size, and JIT compilation then costs close to a second
-- per call, a hundred times the work itself.

-- Needs pgvector: the installer creates the extension (in its own schema, never in regen) first.

create schema if not exists regen;
comment on schema regen is
  'pgregen: keeps pgvector embeddings in sync with the text they were computed from. '
  'Public interface: the functions and views without a leading underscore.';

-- One vector space: provider, model, dimensions, chunking and preprocessing. Immutable once created.
create table regen._versions (
  id integer generated always as identity primary key,
  tag text not null unique check (tag ~ '^\S{1,200}$'),
  provider text not null,
  model text not null,
  dimensions integer not null check (dimensions between 1 and 16000),
  settings jsonb not null,
  created_at timestamptz not null default now()
);

-- A content type that carries embeddings: a user table, the text to embed and how to rank its rows.
create table regen._sources (
  id integer generated always as identity primary key,
  name text not null unique,
  relation regclass not null,
  id_column name not null,
  id_type text not null,
  content_expression text not null,
  tenant_column name,
  priority_expression text,
  weight double precision not null,
  filter_expression text,
  expression_search_path text not null,
  created_at timestamptz not null default now()
);

-- Which versions a source keeps vectors for: the active one, and during a migration the one being built.
create table regen._source_versions (
  source_id integer not null references regen._sources on delete cascade,
  version_id integer not null references regen._versions,
  role text not null check (role in ('active', 'building')),
  added_at timestamptz not null default now(),
  primary key (source_id, version_id)
);
create unique index _source_versions_one_active on regen._source_versions (source_id) where role = 'active';

-- Per source row and version in use: the hash of the text the version would embed now, and what is
-- stored for it. State (current, stale, missing, outdated, failed) is derived, never stored:
-- see regen._state(). No foreign keys on purpose: this table takes one row per source row and
-- is written in bulk by triggers; regen.unregister_source() cleans it up.
create table regen._items (
  source_id integer not null,
  version_id integer not null,
  row_id text not null,
  tenant text,
  priority double precision not null default 0,
  content_hash bytea not null,        -- sha256 of the content expression's text, now
  embedded_hash bytea,                -- content_hash whose complete set of chunk vectors is stored
  plan_hash bytea,                    -- content_hash that chunk_hashes were computed for
  chunk_hashes bytea[],               -- sha256 of each chunk's text as sent to the provider
  failed_hash bytea,                  -- content_hash that was refused as poison
  last_error text,
  attempts integer not null default 0,
  has_legacy boolean not null default false,  -- another version holds a vector for this row
  queue_job uuid,                     -- the pg-boss job this item waits in (see regen._enqueue)
  changed_at timestamptz not null default now(),
  primary key (source_id, version_id, row_id)
) with (fillfactor = 80);
create index _items_failed on regen._items (source_id, version_id) where failed_hash is not null;

-- The embedding store: one row per chunk and version. The column is untyped `vector` so one table
-- holds every version; each version gets a partial expression HNSW index cast to its dimensions.
-- toast_tuple_target and storage main keep vectors up to ~2,000 dimensions inline (no TOAST write).
create table regen._embeddings (
  version_id integer not null,
  source_id integer not null,
  row_id text not null,
  chunk_no integer not null,
  tenant text,
  content_hash bytea not null,
  text_hash bytea not null,
  embedding vector not null,
  embedded_at timestamptz not null default now(),
  primary key (version_id, source_id, row_id, chunk_no)
) with (toast_tuple_target = 8160);
alter table regen._embeddings alter column embedding set storage main;
-- The cache's first tier: a text already embedded anywhere in the store is never sent again.
create index _embeddings_text_hash on regen._embeddings (version_id, text_hash);

-- The cache's second tier: vectors that left the store (text edited, row deleted) keyed by the
-- hash of the exact text that was embedded, so an edit that is undone costs nothing.
create table regen._cache (
  version_id integer not null,
  text_hash bytea not null,
  embedding vector not null,
  cached_at timestamptz not null default now(),
  primary key (version_id, text_hash)
) with (toast_tuple_target = 8160);
alter table regen._cache alter column embedding set storage main;

-- Exact gap counts without counting: every change to regen._items appends signed deltas here, and
-- regen.compact_gap() folds them into _gap_counts. Appending never waits on another writer.
create table regen._gap_counts (
  source_id integer not null,
  version_id integer not null,
  tenant text,
  state text not null,
  queued boolean not null,
  n bigint not null,
  unique nulls not distinct (source_id, version_id, tenant, state, queued)
);
create table regen._gap_deltas (
  source_id integer not null,
  version_id integer not null,
  tenant text,
  state text not null,
  queued boolean not null,
  n bigint not null
);

-- Writes that regen.write_embeddings() refused, with the reason.
create table regen._rejections (
  id bigint generated always as identity primary key,
  at timestamptz not null default now(),
  source text,
  version text,
  row_id text,
  chunk_no integer,
  reason text not null
);
create index _rejections_at on regen._rejections (at);

create function regen._state(content_hash bytea, embedded_hash bytea, failed_hash bytea, has_legacy boolean)
returns text
language sql immutable parallel safe
as $$
  select case
    when embedded_hash = content_hash then 'current'
    when failed_hash = content_hash then 'failed'
    when embedded_hash is not null then 'stale'
    when has_legacy then 'outdated'
    else 'missing'
  end
$$;
comment on function regen._state(bytea, bytea, bytea, boolean) is
  'State of one item for one version: current, failed, stale, outdated or missing (first match wins)';
