// pgregen's programmatic API: `import { install, search, rebuild, ... } from 'pgregen'`.
// The command line (src/cli/) is a thin layer over these modules.
export { install, uninstall, type InstallOptions, type InstallResult, type UninstallResult } from './install.ts';
export {
  buildVersionIndexes, createVersion, deferVersionIndexes, listVersions, SUPPORTED_PROVIDERS, versionIndexPlan,
  type BuildIndexOptions, type CreatedVersion, type DeferOptions, type IndexProgress, type IndexState, type IndexStep, type VersionRow,
} from './versions.ts';
export {
  listSources, registerSource, setMirror, unregisterSource, type RegisteredSource, type SourceDefinition, type SourceRow,
} from './sources.ts';
export { readGap, versionCoverage, type GapRow } from './gap.ts';
export { rebuild, scopeStatus, trackProgress, type Outcome, type Progress, type RebuildOptions, type RebuildRow, type Scope, type ScopeStatus } from './rebuild.ts';
export { readStatus, type Status } from './status.ts';
export {
  enqueueFresh, prepareInputs, reconcile, recover, syncMirrors, writeEmbeddings, type Input, type ReconcileRow, type Recovered, type RefusalKind, type VectorItem, type WriteResult,
} from './store.ts';
export { adopt, type Adoption, type AdoptOptions } from './adopt.ts';
export { search, type SearchContext, type SearchHit, type SearchOptions } from './search.ts';
export { vectorBinary } from './vector-binary.ts';
export { tenantIndexes, type TenantIndexOptions, type TenantIndexStep } from './tenant-indexes.ts';
export { cutover, retire, rollback, startMigration, type FlipOptions, type RetireResult, type StartResult } from './migrate.ts';
export {
  evaluate, shadowCompare, type EvalContext, type EvalRun, type EvaluateOptions, type ShadowOptions, type ShadowRun,
} from './eval/run.ts';
export { parseQuerySet, readQuerySet, writeQuerySet, type LabelledQuery, type QuerySet } from './eval/query-set.ts';
export { cranfieldQuerySet, loadCranfield, registerCranfieldSource, type CranfieldLoad, type CranfieldOptions } from './eval/cranfield.ts';
export { startLocalPostgres, startLocalStandby, type LocalPostgres } from './local-postgres.ts';
export { PgregenError } from './errors.ts';
export type { Db } from './db.ts';
