-- Workers learn of new versions and new work at once (issue 14, item 4), with LISTEN/NOTIFY
-- instead of their polling: a new version's queue was served only at the worker's next 10-second
-- look for versions, and new jobs were fetched at its next poll (REGEN_POLL_INTERVAL_SECONDS).
--
-- Channels (payload empty; PostgreSQL folds identical notifications of a transaction into one):
--   regen_versions  a version was created (regen.create_version)
--   regen_work      jobs were enqueued (regen._enqueue, redefined in sql/0027_batch_mode.sql: rebuilds,
--                   fresh edits, migrations, recovery)
-- Nothing on the application's write path notifies: a NOTIFY serializes the commits that send one.
-- A notification only wakes a worker; what there is to do is still read from the tables, so a
-- missed one (a worker reconnecting, a pooler in transaction mode that cannot LISTEN) costs the
-- polling delay and nothing else.
--
-- Error codes of this file: none.

create function regen.tg_versions__notify() returns trigger
language plpgsql
as $$
begin
  perform pg_notify('regen_versions', '');
  return null;
end
$$;
comment on function regen.tg_versions__notify() is 'Notifies channel regen_versions: a version was created (workers serve its queue at once)';

create trigger versions_notify after insert on regen._versions
  for each statement execute function regen.tg_versions__notify();

select regen._refresh_grants();
