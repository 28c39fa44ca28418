// pgregen's programmatic API.
export { install, uninstall, type InstallOptions, type InstallResult, type UninstallResult } from './install.ts';
export { prepareInputs, writeEmbeddings, type Input, type VectorItem, type WriteResult } from './store.ts';
export { readGap, type GapRow } from './gap.ts';
export { search, type SearchContext, type SearchHit, type SearchOptions } from './search.ts';
export { tenantIndexes, type TenantIndexOptions, type TenantIndexStep } from './tenant-indexes.ts';
export { cutover, retire, rollback, startMigration, type RetireResult, type StartResult } from './migrate.ts';
export { startLocalPostgres, type LocalPostgres } from './local-postgres.ts';
export { PgregenError } from './errors.ts';
export type { Db } from './db.ts';
