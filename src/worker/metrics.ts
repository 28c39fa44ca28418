// Prometheus metrics of the worker. Queue depth and the gap are read from SQL when scraped.
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { Db } from '../db.ts';
import { queueDepth } from '../store.ts';
import { readFreshness } from '../freshness.ts';
import { readGap } from '../gap.ts';

export type Metrics = ReturnType<typeof createMetrics>;

export function createMetrics(db: Db) {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: 'pgregen_worker_' });
  // Prometheus' conventions keep _total for counters; prom-client's defaults add three gauges named
  // so (nodejs_active_handles_total and the like), sums of the gauges of the same name without the
  // suffix, which are served by type: the sums go.
  for (const metric of registry.getMetricsAsArray()) {
    const { name, type } = metric as unknown as { name: string; type: string };
    if (type === 'gauge' && name.endsWith('_total')) registry.removeSingleMetric(name);
  }
  const vectors = new Counter({ name: 'pgregen_vectors_embedded_total', help: 'Vectors stored after a provider call', labelNames: ['version'], registers: [registry] });
  const requests = new Counter({ name: 'pgregen_provider_requests_total', help: 'Provider requests by HTTP status', labelNames: ['status'], registers: [registry] });
  const tokens = new Counter({ name: 'pgregen_provider_tokens_total', help: 'Tokens sent to the provider (counted before sending)', registers: [registry] });
  const latency = new Histogram({ name: 'pgregen_provider_request_seconds', help: 'Provider request latency', labelNames: ['status'],
    buckets: [0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60], registers: [registry] });
  const rateLimited = new Counter({ name: 'pgregen_provider_rate_limited_total', help: 'Provider answers 429', registers: [registry] });
  const failures = new Counter({ name: 'pgregen_failures_total', help: 'Items refused (poison) and batches handed back', labelNames: ['kind'], registers: [registry] });
  const jobs = new Counter({ name: 'pgregen_jobs_total', help: 'Queue jobs worked, by kind: fresh (edits) or backfill (rebuilds, migrations)',
    labelNames: ['kind'], registers: [registry] });
  const deferred = new Counter({ name: 'pgregen_rows_deferred_total',
    help: 'Rows whose text another batch was embedding, prepared again once it was done (counted per wait)', registers: [registry] });
  new Gauge({
    name: 'pgregen_queue_depth', help: 'Queued items by version and job state', labelNames: ['version', 'state'], registers: [registry],
    async collect() {
      this.reset();
      for (const row of await queueDepth(db).catch(() => [])) this.set({ version: row.version, state: row.state }, row.items);
    },
  });
  new Gauge({
    name: 'pgregen_gap', help: 'Items per source, version and state (regen.embedding_gap)', labelNames: ['source', 'version', 'state'], registers: [registry],
    async collect() {
      this.reset();
      for (const row of await readGap(db).catch(() => [])) {
        for (const state of ['current', 'missing', 'stale', 'outdated', 'failed'] as const) {
          this.set({ source: row.source, version: row.version, state }, row[state]);
        }
      }
    },
  });
  // Freshness (regen.freshness), one query per scrape for the three gauges: the first to be collected reads it.
  let freshness: ReturnType<typeof readFreshness> | undefined;
  const freshnessOnce = () => {
    freshness ??= readFreshness(db).catch(() => null).finally(() => { setTimeout(() => { freshness = undefined; }, 1_000).unref(); });
    return freshness;
  };
  new Gauge({
    name: 'pgregen_oldest_edit_seconds', help: 'Age of the oldest edit not yet searchable, per source and version (0: none waiting)',
    labelNames: ['source', 'version'], registers: [registry],
    async collect() {
      this.reset();
      for (const f of (await freshnessOnce()) ?? []) this.set({ source: f.source, version: f.version }, f.oldest_edit_seconds ?? 0);
    },
  });
  new Gauge({
    name: 'pgregen_oldest_backfill_seconds', help: 'How long the oldest waiting backfill job has been queued, per source and version (0: none)',
    labelNames: ['source', 'version'], registers: [registry],
    async collect() {
      this.reset();
      for (const f of (await freshnessOnce()) ?? []) this.set({ source: f.source, version: f.version }, f.oldest_backfill_seconds ?? 0);
    },
  });
  new Gauge({
    name: 'pgregen_edit_delay_seconds', help: 'Delay from edit to vector of the fresh edits settled in the last 5 minutes, per source, version and quantile',
    labelNames: ['source', 'version', 'quantile'], registers: [registry],
    async collect() {
      this.reset();
      for (const f of (await freshnessOnce()) ?? []) {
        if (f.edit_delay_p50_seconds !== null) this.set({ source: f.source, version: f.version, quantile: '0.5' }, f.edit_delay_p50_seconds);
        if (f.edit_delay_p99_seconds !== null) this.set({ source: f.source, version: f.version, quantile: '0.99' }, f.edit_delay_p99_seconds);
      }
    },
  });
  return { registry, vectors, requests, tokens, latency, rateLimited, failures, jobs, deferred };
}
