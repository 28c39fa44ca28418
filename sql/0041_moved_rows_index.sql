-- Search stays fast while changes wait to be applied.
--
-- A search leaves out the rows deleted, or moved out of its tenant, by a change the worker has not
-- applied yet (regen._moved_rows, sql/0023). Only the change log's index on (source_id, row_id)
-- served that test, so under a backlog a search read every pending change of every row it ranked,
-- and the general path (a tenant ranked through an index) read the whole log for the tenant's
-- moved rows. Measured on bench P's data (1,536 dimensions) with 300,000 changes pending, about 14
-- per row (a bulk edit while the worker is down), and no index: a tenant of 1,000 vectors took
-- 10.5 ms (5.8 ms for the naive statement; 2.3 ms with nothing pending), a tenant of 10,000 took
-- 118 ms (43 ms naive; 18 ms with nothing pending). With this index: 5.1 ms and 37 ms.
--
-- The index holds the changes that take a row out of its tenant (a delete, a key change, a row
-- filtered out or its text now null, a move to another tenant), under the tenant they take it out
-- of: its predicate is regen._moved_rows's own condition, over the columns of regen._change_log
-- (regen._changes spelled out). An INSERT, and an UPDATE that keeps its tenant (nearly every
-- change), fail the predicate at its first term and write nothing to it; a DELETE adds one entry.
-- The build reads the change log once, under a lock that holds off the capture's inserts meanwhile:
-- the log is normally small (the worker applies it every REGEN_ENQUEUE_INTERVAL_MS).
--
-- Error codes of this file: none.

create index _change_log_moved on regen._change_log (old_tenant, source_id, row_id)
  where old_tenant is not null
    and ((not coalesce(present, content is not null or content_hash is not null))
         or (case when coalesce(present, content is not null or content_hash is not null) then tenant end)
            is distinct from old_tenant);
comment on index regen._change_log_moved is
  'Changes not yet applied that take a row out of a tenant (deleted, key changed, filtered out, moved): '
  'regen._moved_rows, which a search reads to leave those rows out, looks them up here by tenant and row';
