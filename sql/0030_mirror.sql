-- A mirror of the active version's vectors in a column of the application's own table (issue 15,
-- item 2), for applications that read `kb.embedding` directly. Off by default; regen.set_mirror()
-- turns it on for a source.
--
-- Never on the application's write path: write-back (a statement trigger on regen._embeddings),
-- cutover and rollback (one on regen._source_versions) and set_mirror only note the rows whose
-- mirror is due in regen._mirror_pending; regen.sync_mirrors(), which the worker calls beside
-- regen.enqueue_fresh, writes them in short transactions of its own, locking the application's
-- rows with SKIP LOCKED: a row the application holds is left for the next call, so pgregen never
-- waits on the application, and an application write waits at most for one such short update.
-- The price: every mirrored vector is an UPDATE of the application's table (a new row version,
-- its indexes and its other triggers).
--
-- The mirror holds the vector of a row whose text is one chunk under the active version, NULL
-- for a row of several chunks or none yet. A text edit keeps the old vector there until the new
-- one is written, as search does.
--
-- Error codes of this file: RG084 a column that cannot mirror (not there, not a vector, read by the
-- source's expressions, of another size than the active version, or not writable by the owner).

create table regen._mirrors (
  source_id integer primary key references regen._sources (id) on delete cascade,
  column_name name not null,
  set_at timestamptz not null default now()
);
comment on table regen._mirrors is 'Sources whose active version''s vectors are mirrored into a column of their table (regen.set_mirror)';

create table regen._mirror_pending (
  source_id integer not null references regen._sources (id) on delete cascade,
  row_id text not null,
  primary key (source_id, row_id)
);
comment on table regen._mirror_pending is 'Rows whose mirror column is due: written by regen.sync_mirrors()';

create view regen.mirrors as
  select s.name as source, s.relation as "table", m.column_name as "column", m.set_at,
         (select count(*) from regen._mirror_pending p where p.source_id = m.source_id) as pending
  from regen._mirrors m join regen._sources s on s.id = m.source_id;
comment on view regen.mirrors is 'Sources with a mirror column (regen.set_mirror): its table and column, and the rows whose mirror is due';

-- The rows of a source's active version: their mirror is due (set_mirror, cutover, rollback).
create function regen._mirror_all(source_id integer)
returns bigint
language sql volatile
as $$
  with due as (
    insert into regen._mirror_pending (source_id, row_id)
    select it.source_id, it.row_id from regen._items it
    join regen._source_versions sv on sv.source_id = it.source_id and sv.version_id = it.version_id and sv.role = 'active'
    where it.source_id = _mirror_all.source_id
    on conflict do nothing
    returning 1
  )
  select count(*) from due
$$;
comment on function regen._mirror_all(integer) is 'Notes every row of a mirrored source''s active version as due; returns how many were not already';

create function regen.set_mirror(source text, column_name name)
returns text
language plpgsql volatile
as $$
declare
  v_source regen._sources := regen._source(source);
  v_attr record;
  v_dims integer;
  v_read name[];
begin
  if column_name is null then
    delete from regen._mirrors m where m.source_id = v_source.id;
    delete from regen._mirror_pending p where p.source_id = v_source.id;
    return null;
  end if;
  select a.attname, a.atttypmod, t.typname, n.nspname into v_attr
  from pg_attribute a join pg_type t on t.oid = a.atttypid join pg_namespace n on n.oid = t.typnamespace
  where a.attrelid = v_source.relation and a.attname = set_mirror.column_name and a.attnum > 0 and not a.attisdropped;
  if not found then
    raise exception 'table % has no column %', v_source.relation, column_name using errcode = 'RG084',
      hint = format('add it first: alter table %s add column %I vector', v_source.relation, column_name);
  end if;
  v_read := regen._source_columns(v_source);
  if v_read is null or column_name = any(v_read) then
    raise exception 'source % reads column %: a mirror written into it would change the text it embeds',
      v_source.name, case when v_read is null then 'every column (an expression takes the whole row)' else column_name::text end
      using errcode = 'RG084', hint = 'mirror into a column that none of the source''s expressions, its id or its tenant reads';
  end if;
  if v_attr.typname <> 'vector' or v_attr.nspname <> regen._vector_schema() then
    raise exception 'column %.% is of type %, not pgvector''s vector', v_source.relation, column_name, v_attr.typname
      using errcode = 'RG084';
  end if;
  v_dims := (select v.dimensions from regen._source_versions sv join regen._versions v on v.id = sv.version_id
             where sv.source_id = v_source.id and sv.role = 'active');
  if v_attr.atttypmod > 0 and v_attr.atttypmod <> v_dims then
    raise exception 'column %.% is vector(%), the active version of source % has % dimensions',
      v_source.relation, column_name, v_attr.atttypmod, v_source.name, v_dims
      using errcode = 'RG084', hint = 'an untyped vector column follows any version: alter table ... alter column ... type vector';
  end if;
  if not has_column_privilege(current_user, v_source.relation, column_name, 'UPDATE') then
    raise exception 'role % may not update %.%', current_user, v_source.relation, column_name using errcode = 'RG084',
      hint = format('grant update (%I) on %s to %I', column_name, v_source.relation, current_user);
  end if;
  insert into regen._mirrors as m (source_id, column_name) values (v_source.id, set_mirror.column_name)
  on conflict (source_id) do update set column_name = excluded.column_name, set_at = now();
  perform regen._mirror_all(v_source.id);
  return column_name;
end
$$;
comment on function regen.set_mirror(text, name) is
  'Mirrors a source''s active version''s vectors into a vector column of its table (NULL: stops mirroring); every row is '
  'due at once, and regen.sync_mirrors() (the worker) writes them. RG084 when the column cannot mirror.';

-- Write-back: the rows of an active version that got vectors are due.
create function regen.tg_embeddings__mirror() returns trigger
language plpgsql
as $$
begin
  if not exists (select 1 from regen._mirrors) then
    return null;
  end if;
  insert into regen._mirror_pending (source_id, row_id)
  select distinct n.source_id, n.row_id from new_rows n
  join regen._mirrors m on m.source_id = n.source_id
  join regen._source_versions sv on sv.source_id = n.source_id and sv.version_id = n.version_id and sv.role = 'active'
  on conflict do nothing;
  return null;
end
$$;
comment on function regen.tg_embeddings__mirror() is 'Notes the rows of mirrored sources whose active version''s vectors a statement wrote as due';
create trigger _300_mirror_insert after insert on regen._embeddings
  referencing new table as new_rows for each statement execute function regen.tg_embeddings__mirror();
create trigger _300_mirror_update after update on regen._embeddings
  referencing new table as new_rows for each statement execute function regen.tg_embeddings__mirror();

-- Cutover and rollback: a source whose active version changed has every row due.
create function regen.tg_source_versions__mirror() returns trigger
language plpgsql
as $$
begin
  perform regen._mirror_all(n.source_id)
  from (select distinct n.source_id from new_rows n
        join regen._mirrors m on m.source_id = n.source_id
        where n.role = 'active'
          and not exists (select 1 from old_rows o where o.source_id = n.source_id and o.version_id = n.version_id and o.role = 'active')) n;
  return null;
end
$$;
comment on function regen.tg_source_versions__mirror() is 'Notes every row of a mirrored source whose active version changed as due';
create trigger _300_mirror_flip after update on regen._source_versions
  referencing new table as new_rows old table as old_rows for each statement execute function regen.tg_source_versions__mirror();

-- Writes up to max_rows due mirrors per source, as the owner (the worker may not write the
-- application's tables), in the caller's transaction: keep it short (the worker calls it alone).
-- Its search_path (pgvector's schema, for vector_dims and vector's =) is pinned by
-- regen._pin_search_paths.
create function regen.sync_mirrors(max_rows integer default 500)
returns bigint
language plpgsql volatile security definer set search_path = pg_catalog, regen, pg_temp
as $$
declare
  v_m record;
  v_rows text[];
  v_done text[];
  v_written bigint := 0;
  v_n bigint;
begin
  if max_rows is null or max_rows < 1 then
    raise exception 'max_rows must be at least 1, not %', coalesce(max_rows::text, 'NULL') using errcode = 'RG003';
  end if;
  for v_m in
    select m.source_id, m.column_name, s.relation, s.id_column, s.id_type, sv.version_id, a.atttypmod
    from regen._mirrors m
    join regen._sources s on s.id = m.source_id
    join regen._source_versions sv on sv.source_id = m.source_id and sv.role = 'active'
    join pg_attribute a on a.attrelid = s.relation and a.attname = m.column_name and not a.attisdropped
  loop
    -- due rows no other sync has taken
    v_rows := array(select p.row_id from regen._mirror_pending p where p.source_id = v_m.source_id
                    order by p.row_id limit max_rows for update skip locked);
    continue when cardinality(v_rows) = 0;
    -- the application's rows, locked without waiting (a row the application holds stays due); the
    -- row's vector when its text is one chunk, else NULL; written only where it differs. The update
    -- finds the rows by their key, not their ctid: a row the application changed after this
    -- statement's snapshot is locked (and written) in its newest version.
    execute format($f$
      with target as (
        select (t.%2$I)::text as row_id from %1$s t where t.%2$I = any($1::%3$s[]) for update of t skip locked
      ), vec as (
        select g.row_id,
               (select case when $4 < 0 or vector_dims(e.embedding) = $4 then e.embedding end
                  from regen._embeddings e
                 where e.version_id = $2 and e.source_id = $3 and e.row_id = g.row_id and e.chunk_no = 1
                   and not exists (select 1 from regen._embeddings o where o.version_id = $2 and o.source_id = $3
                                   and o.row_id = g.row_id and o.chunk_no = 2)) as embedding
        from target g
      ), written as (
        update %1$s t set %4$I = v.embedding from vec v
         where t.%2$I = v.row_id::%3$s and t.%4$I is distinct from v.embedding
        returning 1
      )
      select (select array_agg(v.row_id) from vec v), (select count(*) from written)$f$,
      v_m.relation, v_m.id_column, v_m.id_type, v_m.column_name)
      into v_done, v_n
      using v_rows, v_m.version_id, v_m.source_id, v_m.atttypmod;
    v_written := v_written + v_n;
    -- done: the rows written (or already right), and those no longer in the table
    execute format('delete from regen._mirror_pending p where p.source_id = $1 and p.row_id = any($2)
                      and (p.row_id = any($3) or not exists (select 1 from %1$s t where t.%2$I = p.row_id::%3$s))',
                   v_m.relation, v_m.id_column, v_m.id_type)
      using v_m.source_id, v_rows, coalesce(v_done, '{}');
  end loop;
  return v_written;
end
$$;
comment on function regen.sync_mirrors(integer) is
  'Writes up to max_rows due mirror columns per source (regen.set_mirror), skipping rows the application holds locked '
  '(they stay due); returns the rows written. The worker calls it every REGEN_ENQUEUE_INTERVAL_MS.';

-- the functions of this file that name pgvector's objects (sql/0028_search_rows.sql)
insert into regen._pinned_functions (name) values ('sync_mirrors');
select regen._pin_search_paths();
select regen._refresh_grants();
