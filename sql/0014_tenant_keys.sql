-- Bring-your-own-key, fixed: tenant key references live in one namespace, and the worker looks up
-- a tenant's reference when it works a job, not when the job was enqueued.
--
-- * Namespace. A reference is REGEN_KEY_ followed by letters, digits or underscores (at most 128
--   characters in all): the name of an environment variable of the worker, or of a file in its
--   REGEN_SECRETS_DIR. The worker's own settings (DATABASE_URL, OPENAI_API_KEY, PG*, REGEN_*) can
--   never be named, so no tenant can have the worker send its database password as a bearer token.
--   References stored before this file that do not fit stay in regen._tenant_keys (the constraint
--   below is NOT VALID, so the upgrade never fails), show as usable = false in regen.tenant_keys,
--   and are refused by the worker with an error in regen.rebuild_progress.last_error until the
--   tenant's key is set again: its rows are not embedded with another key meanwhile.
-- * Work-time lookup. regen._enqueue still groups a tenant's rows into jobs by the reference it had
--   when they were enqueued (so one job mostly needs one key), but the worker asks
--   regen.key_refs() for the current reference of every row it is about to embed. A change thus
--   reaches jobs that wait, jobs that are retried and edits made earlier in the changing
--   transaction alike; only a provider request already in flight finishes with the key it has.
--
-- Error code of this file: RG031 invalid API key reference (the refused value is never repeated:
-- it may be a key pasted by mistake).

create function regen._key_ref_ok(api_key_ref text)
returns boolean
language sql immutable strict parallel safe
as $$ select api_key_ref ~ '^REGEN_KEY_[A-Za-z0-9_]{1,118}$' $$;
comment on function regen._key_ref_ok(text) is
  'True when an API key reference is in the REGEN_KEY_ namespace (REGEN_KEY_ then 1 to 118 letters, digits or underscores)';

alter table regen._tenant_keys
  add constraint _tenant_keys_ref_namespace check (regen._key_ref_ok(api_key_ref)) not valid;

create or replace function regen.set_tenant_key(tenant text, api_key_ref text)
returns void
language plpgsql volatile
as $$
begin
  if set_tenant_key.tenant is null then
    raise exception 'set_tenant_key needs a tenant' using errcode = 'RG031';
  end if;
  if set_tenant_key.api_key_ref is null then
    delete from regen._tenant_keys k where k.tenant = set_tenant_key.tenant;
    return;
  end if;
  -- Neither argument is repeated in the message: a key pasted into either lands in client logs.
  if not regen._key_ref_ok(set_tenant_key.api_key_ref) then
    raise exception 'api key reference refused: expected the name of an environment variable or secret file that starts with REGEN_KEY_'
      using errcode = 'RG031',
            hint = 'pass the NAME the worker reads the key from, REGEN_KEY_ then letters, digits or underscores '
                   '(at most 128 characters, e.g. REGEN_KEY_ACME), never the key itself; the refused value is not repeated here';
  end if;
  insert into regen._tenant_keys as k (tenant, api_key_ref) values (set_tenant_key.tenant, set_tenant_key.api_key_ref)
  on conflict on constraint _tenant_keys_pkey do update set api_key_ref = excluded.api_key_ref, updated_at = now();
end
$$;
comment on function regen.set_tenant_key(text, text) is
  'Bring-your-own-key: the worker embeds this tenant''s rows with the API key in the environment variable or secret file '
  'named api_key_ref (REGEN_KEY_..., never the key itself), from the next batch on, queued work included; null removes it';

create or replace view regen.tenant_keys as
select k.tenant, k.api_key_ref, k.updated_at, regen._key_ref_ok(k.api_key_ref) as usable
from regen._tenant_keys k;
comment on view regen.tenant_keys is
  'Tenants with their own API key reference (names, not keys); usable is false for a reference outside the REGEN_KEY_ '
  'namespace, stored before it existed, which the worker refuses until regen.set_tenant_key sets a new one';

-- Worker-facing: the current key reference of each given row of a source and version, read when the
-- job is worked. Rows of tenants without their own key are left out (they use the worker's default
-- key); problem says why the worker must not use a reference, without repeating it.
create function regen.key_refs(source text, version text, row_ids text[])
returns table (row_id text, api_key_ref text, problem text)
language sql stable
as $$
  select it.row_id, k.api_key_ref,
         case when not regen._key_ref_ok(k.api_key_ref) then
           format('the api key reference of tenant %s is outside the REGEN_KEY_ namespace (set before it existed), so the worker '
                  'refuses it and does not embed the tenant''s rows: select regen.set_tenant_key(%L, ''REGEN_KEY_...'') '
                  'with the name of a variable or secret file that holds the key', quote_literal(k.tenant), k.tenant)
         end
  from regen._items it
  join regen._tenant_keys k on k.tenant = it.tenant
  where it.source_id = (select s.id from regen._sources s where s.name = key_refs.source)
    and it.version_id = (select v.id from regen._versions v where v.tag = key_refs.version)
    and it.row_id = any(key_refs.row_ids)
$$;
comment on function regen.key_refs(text, text, text[]) is
  'Worker-facing: the tenant API key reference of each row (rows on the default key left out), looked up when a job is worked, '
  'so a changed key reaches queued and retried work; problem is set when the worker must refuse the reference';
