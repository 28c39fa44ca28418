// The worker's configuration, from the environment. SETTINGS is the single source for parsing,
// validation, `pgregen worker --help` and the README's table.
import { PgregenError } from '../errors.ts';

export interface WorkerConfig {
  databaseUrl: string;
  openaiApiKey: string;
  openaiBaseUrl: string | undefined;
  versions: string[];               // empty: every version
  concurrency: number;
  requestsPerMinute: number | undefined;
  tokensPerMinute: number | undefined;
  maxInputsPerRequest: number;
  maxTokensPerRequest: number;
  requestTimeoutMs: number;
  adaptive: boolean;
  maxAttempts: number;
  jobsPerFetch: number;
  backfillShare: number;
  pollIntervalSeconds: number;
  enqueueIntervalMs: number;
  superviseIntervalSeconds: number;
  port: number;
  shutdownTimeoutMs: number;
  secretsDir: string | undefined;
  logLevel: string;
}

type Kind = 'string' | 'int' | 'fraction' | 'list' | 'boolean';

interface Setting {
  env: string;
  key: keyof WorkerConfig;
  kind: Kind;
  default?: string;
  required?: boolean;
  min?: number;
  max?: number;
  description: string;
}

export const SETTINGS: Setting[] = [
  { env: 'DATABASE_URL', key: 'databaseUrl', kind: 'string', required: true, description: 'PostgreSQL connection string of the database pgregen is installed in' },
  { env: 'OPENAI_API_KEY', key: 'openaiApiKey', kind: 'string', required: true, description: 'API key for the embeddings endpoint (any non-empty value for local servers that need none); tenants with their own key override it' },
  { env: 'OPENAI_BASE_URL', key: 'openaiBaseUrl', kind: 'string', description: 'OpenAI-compatible endpoint (Azure, Ollama, vLLM, TEI, ...); default: OpenAI' },
  { env: 'REGEN_VERSIONS', key: 'versions', kind: 'list', default: '', description: 'comma-separated version tags this worker embeds; default: all' },
  { env: 'REGEN_CONCURRENCY', key: 'concurrency', kind: 'int', default: '4', min: 1, max: 256, description: 'the most provider requests in flight at once: the worker starts with one and adapts to how fast the endpoint answers' },
  { env: 'REGEN_RPM', key: 'requestsPerMinute', kind: 'int', min: 1, description: 'requests-per-minute limit to pace to (your account\'s limit); default: unlimited' },
  { env: 'REGEN_TPM', key: 'tokensPerMinute', kind: 'int', min: 1, description: 'tokens-per-minute limit to pace to; default: unlimited' },
  { env: 'REGEN_MAX_INPUTS_PER_REQUEST', key: 'maxInputsPerRequest', kind: 'int', default: '2048', min: 1, max: 2048, description: 'the most inputs per provider request (OpenAI allows 2,048): the worker starts with 32 and adapts to how fast the endpoint answers' },
  { env: 'REGEN_MAX_TOKENS_PER_REQUEST', key: 'maxTokensPerRequest', kind: 'int', default: '300000', min: 1, max: 300000, description: 'tokens per provider request (OpenAI allows 300,000)' },
  { env: 'REGEN_REQUEST_TIMEOUT_MS', key: 'requestTimeoutMs', kind: 'int', default: '60000', min: 100, description: 'time limit of one provider request' },
  { env: 'REGEN_ADAPTIVE', key: 'adaptive', kind: 'boolean', default: 'true', description: 'true: requests in flight and inputs per request adapt to how fast the endpoint answers, up to REGEN_CONCURRENCY and REGEN_MAX_INPUTS_PER_REQUEST; false: always those two' },
  { env: 'REGEN_MAX_ATTEMPTS', key: 'maxAttempts', kind: 'int', default: '6', min: 1, max: 50, description: 'attempts of one provider request on 429, 5xx and timeouts before the batch is handed back to the queue' },
  { env: 'REGEN_JOBS_PER_FETCH', key: 'jobsPerFetch', kind: 'int', default: '8', min: 1, max: 1000, description: 'queue jobs (of up to 64 rows each) fetched at once and packed into provider requests together' },
  { env: 'REGEN_BACKFILL_SHARE', key: 'backfillShare', kind: 'fraction', default: '0.5', min: 0, max: 0.9, description: 'share of the worker\'s time given to the backfill (rebuilds, migrations) whenever it waits: that share of its fetch loops take backfill jobs first, the others fresh edits first; 0: fresh edits always first' },
  { env: 'REGEN_POLL_INTERVAL_SECONDS', key: 'pollIntervalSeconds', kind: 'int', default: '1', min: 1, description: 'how often an idle worker looks for work' },
  { env: 'REGEN_ENQUEUE_INTERVAL_MS', key: 'enqueueIntervalMs', kind: 'int', default: '250', min: 10, max: 60000, description: 'how often the worker moves fresh edits (new rows, changed texts) from the capture triggers into the queue, set-based (regen.enqueue_fresh)' },
  { env: 'REGEN_SUPERVISE_INTERVAL_SECONDS', key: 'superviseIntervalSeconds', kind: 'int', default: '15', min: 1, max: 3600, description: 'how often the queue looks for batches of crashed workers (heartbeat lost) and expired ones, to retry them' },
  { env: 'REGEN_PORT', key: 'port', kind: 'int', default: '9464', min: 0, max: 65535, description: 'port of /healthz, /readyz and /metrics (0: any free port)' },
  { env: 'REGEN_SHUTDOWN_TIMEOUT_MS', key: 'shutdownTimeoutMs', kind: 'int', default: '20000', min: 0, description: 'on SIGTERM, how long in-flight batches may finish before they are handed back to the queue' },
  { env: 'REGEN_SECRETS_DIR', key: 'secretsDir', kind: 'string', description: 'folder of secret files (e.g. a mounted Kubernetes Secret): a tenant key reference REGEN_KEY_NAME is read from the env var of that name, else the file of that name here, re-read when it changes or after a 401' },
  { env: 'REGEN_LOG_LEVEL', key: 'logLevel', kind: 'string', default: 'info', description: 'trace, debug, info, warn, error' },
];

export function readConfig(env: NodeJS.ProcessEnv = process.env): WorkerConfig {
  const problems: string[] = [];
  const config: Record<string, unknown> = {};
  for (const s of SETTINGS) {
    const raw = env[s.env] === '' ? undefined : env[s.env] ?? s.default;
    if (raw === undefined) {
      if (s.required) problems.push(`${s.env} is not set: ${s.description}`);
      config[s.key] = undefined;
      continue;
    }
    if (s.kind === 'int' || s.kind === 'fraction') {
      const n = Number(raw);
      const what = s.kind === 'int' ? 'an integer' : 'a number';
      if (raw.trim() === '' || !(s.kind === 'int' ? Number.isInteger(n) : Number.isFinite(n))
          || (s.min !== undefined && n < s.min) || (s.max !== undefined && n > s.max)) {
        problems.push(`${s.env}=${raw} is not ${what}${s.min !== undefined ? ` >= ${s.min}` : ''}${s.max !== undefined ? ` and <= ${s.max}` : ''}`);
      }
      config[s.key] = n;
    } else if (s.kind === 'boolean') {
      if (!['true', 'false'].includes(raw.trim().toLowerCase())) problems.push(`${s.env}=${raw} is not true or false`);
      config[s.key] = raw.trim().toLowerCase() === 'true';
    } else if (s.kind === 'list') {
      config[s.key] = raw.split(',').map((v) => v.trim()).filter(Boolean);
    } else {
      config[s.key] = raw;
    }
  }
  if (!['trace', 'debug', 'info', 'warn', 'error'].includes(String(config.logLevel))) {
    problems.push(`REGEN_LOG_LEVEL=${String(config.logLevel)} is not one of trace, debug, info, warn, error`);
  }
  if (problems.length > 0) {
    throw new PgregenError(`bad worker configuration:\n  - ${problems.join('\n  - ')}`,
      'set the variables above (see pgregen worker --help or the README\'s worker configuration table)');
  }
  return config as unknown as WorkerConfig;
}

/** The configuration table as text, for --help. */
export function describeSettings(): string {
  return SETTINGS.map((s) => `  ${s.env.padEnd(30)} ${s.description}${s.default ? ` (default ${s.default || 'empty'})` : ''}${s.required ? ' [required]' : ''}`).join('\n');
}
