// F. Change-capture overhead: what pgregen's capture costs the application's own writes.
// Four identical tables (bench/capture-tables.ts): docs_plain (no trigger), docs_pgai (the design of
// pgai Vectorizer's source trigger, re-created), docs_rowtrigger (a no-op row trigger) and
// docs_captured, the registered pgregen source. The same statements run against all four from one
// autocommit connection, interleaved in rounds (each round runs a block on each table, the order
// rotating every round) so a noisy machine hurts all alike; per-statement client-side latencies
// give p50/p95 and their differences. DELETE runs on a second set of four tables of 1,000,000 rows
// in the same rounds, side by side with the 20,000-row set. Then a 4-client pgbench mix per table.
//
// When the schema defers the capture's work to regen.apply_changes() (sql/0020), that runs after
// the timed statements, outside their timings, and is timed on its own as deferred work; the gap
// is read before and after it (it must not change: the gap is exact while changes wait), and after
// every kind the capture is checked against the tables by brute force.
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import pg from 'pg';
import { mulberry32 } from '../src/prng.ts';
import {
  added, bulkTable, buildTable, captureTargets, CLIENTS, COPY_ROWS, BULK_ROWS, deferredTable, effectTable, key, latencyTable, mixTable,
  plus, ROUND, setupLines, SIZES, WARMUP, type CopyFrom, type Deferred, type Exactness, type Kind, type Measured, type Mix,
} from './capture-report.ts';
import {
  applyChanges, BODY_CHARS, buildSet, count, EXACT, gap, GAP, hasChangeLog, hasEnqueueFresh, jobs, ROLES, rowTriggers, settle, tableOf, TAG, TENANTS,
  vacuum, verifyCapture, type DocSet, type Gap, type Role,
} from './capture-tables.ts';
import { every, findPgbench, MIX, pgbench, pgbenchVersionOf, scriptDir, writeScripts } from './pgbench-mix.ts';
import { check, fmtInt, fmtMs, median, openServer, percentile, renderTable, renderTargets, serverInfo, type BenchOptions, type BenchReport } from './support.ts';

const INSERT_BASE = 10_000_000;
const COPY_BASE = 20_000_000;
const DRAIN_MS = 250;

interface Context {
  client: pg.Client;
  url: string;
  changeLog: boolean;
  /** regen.enqueue_fresh() exists (sql/0017): the worker, not the capture, enqueues fresh edits. */
  enqueueFresh: boolean;
  copyFrom: CopyFrom;
  exactness: Exactness;
  log: (line: string) => void;
}

export async function run(options: BenchOptions): Promise<BenchReport> {
  const size = options.quick ? SIZES.quick : SIZES.full;
  const began = performance.now();
  const log = (line: string) => process.stderr.write(`capture-overhead [${((performance.now() - began) / 1000).toFixed(0)} s]: ${line}\n`);
  const copyFrom = await loadCopyFrom();
  const server = await openServer(log);
  const results: Measured[] = [];
  const mix: Mix[] = [];
  const exactness: Exactness = { reads: 0, equal: 0 };
  let info, settings = '', capture = '', small: DocSet, large: DocSet, pgbenchVersion = '';
  try {
    const scratch = await server.createDatabase();
    const client = new pg.Client({ connectionString: scratch.url, application_name: 'pgregen bench capture-overhead' });
    await client.connect();
    try {
      info = await serverInfo(client);
      await client.query(`select regen.create_version($1, 'local-hash', 64)`, [TAG]);
      const ctx: Context = { client, url: scratch.url, changeLog: await hasChangeLog(client), enqueueFresh: await hasEnqueueFresh(client), copyFrom, exactness, log };
      small = await buildSet(client, size.rows, '', log);
      capture = `${ctx.changeLog ? 'change log (regen.apply_changes() exists)' : 'statement-level capture (no regen.apply_changes() in this schema)'}; ` +
        `triggers on docs_captured: ${(await rowTriggers(client, 'docs_captured')).join(', ')}; ${await exceptionBlocks(client)}`;
      await client.query('set synchronous_commit = off');
      settings = (await client.query<{ s: string }>(
        `select string_agg(name || ' = ' || current_setting(name), ', ' order by name) as s from pg_settings
          where name in ('synchronous_commit', 'fsync', 'full_page_writes', 'autovacuum', 'shared_buffers', 'jit')`)).rows[0]!.s;
      const k = kinds(size.rows, size.large, size.statements);
      for (const kind of [k.updateBody, k.updateViews, k.updateHits, k.insert]) results.push(...await measureKind(ctx, kind, [small], size.statements, ROUND, WARMUP));
      results.push(...await measureKind(ctx, k.bulk, [small], size.bulk, 1, 1));
      results.push(...await measureKind(ctx, k.copy, [small], size.copies, 1, 1));
      const bin = await findPgbench(client);
      pgbenchVersion = await pgbenchVersionOf(bin);
      mix.push(...await measureMix(ctx, small, bin, size.mixSeconds, size.mixRepeats));
      large = await buildSet(client, size.large, '_large', log);
      results.push(...await measureKind(ctx, k.delete, [small, large], size.statements, ROUND, WARMUP));
    } finally {
      await client.end();
      await scratch.drop();
    }
  } finally {
    await server.stop();
  }

  const targets = captureTargets(results, mix, exactness);
  const tables = [latencyTable(results), bulkTable(results), deferredTable(results, mix, capture), effectTable(results), mixTable(mix),
    buildTable([small!, large!]), renderTargets(targets)];
  for (const table of tables) console.log(`\n${renderTable(table)}`);
  const figures: Record<string, number> = {};
  for (const r of results) {
    for (const role of ROLES) figures[`${key(r)} ${role} p50 ms`] = percentile(r.samples[role], 50);
    figures[`${key(r)} deferred ms`] = r.deferred.ms;
  }
  for (const m of mix) figures[`pgbench ${m.role} median tps`] = median(m.tps);
  return {
    title: 'F. Change-capture overhead on application writes',
    setup: setupLines(size, server.origin, settings, capture, pgbenchVersion, small!, large!),
    tables,
    targets,
    figures,
    server: info!,
  };
}

function kinds(rows: number, large: number, statements: number) {
  // Single-row kinds take distinct rows in a seeded random order, one slice each.
  const random = mulberry32(20261122);
  const shuffled = (n: number, take: number) => {
    const ids = Array.from({ length: n }, (_, i) => i + 1);
    for (let i = 0; i < take; i++) {
      const j = i + Math.floor(random() * (n - i));
      [ids[i], ids[j]] = [ids[j]!, ids[i]!];
    }
    return ids.slice(0, take);
  };
  const per = statements + WARMUP;
  const ids = shuffled(rows, 4 * per);
  check(ids.length === 4 * per, `rows (${rows}) must be at least ${4 * per}, four slices of single-row statements`);
  check(rows % BULK_ROWS === 0 && rows >= 2 * BULK_ROWS, `rows (${rows}) must be a multiple of ${BULK_ROWS}, at least two`);
  const slice = (k: number) => (i: number) => ids[k * per + i]!;
  const largeIds = shuffled(large, per);
  const fresh = (i: number) => INSERT_BASE + 1 + i;
  const sql = (text: (t: string) => string, values: (i: number) => unknown[]) => (t: string, _set: DocSet, i: number) => ({ text: text(t), values: values(i) });
  const copies = new Map<number, Buffer>();
  const copyData = (i: number) => {
    if (!copies.has(i)) {
      const lines = Array.from({ length: COPY_ROWS }, (_, k) => {
        const id = COPY_BASE + 1 + k;
        return [id, tenant(id), `Document ${id}`, body(`copy ${i}.${k}`), k % 1000, 0].join('\t');
      });
      copies.clear();
      copies.set(i, Buffer.from(`${lines.join('\n')}\n`));
    }
    return copies.get(i)!;
  };
  const single = { rowsPerStatement: 1 };
  const none = () => ({ gap: {}, jobs: 0 });
  return {
    updateBody: {
      ...single, key: 'update-body', label: 'UPDATE body (embedded text), 1 row',
      statement: sql((t) => `update ${t} set body = $2 || substr(body, length($2) + 1) where id = $1`, (i) => [slice(0)(i), `edit ${i}: `]),
      expect: (n: number) => ({ gap: { current: -n, stale: n, queued: n }, jobs: Math.ceil(n / 64) }),
      pgaiQueued: (n: number) => n,
    },
    updateViews: {
      ...single, key: 'update-views', label: 'UPDATE views (the priority expression), 1 row',
      statement: sql((t) => `update ${t} set views = views + 1 where id = $1`, (i) => [slice(1)(i)]),
      expect: none,
      pgaiQueued: (n: number) => n,   // pgai queues a change of any column but the embedding
    },
    updateHits: {
      ...single, key: 'update-hits', label: 'UPDATE hits (no expression uses it), 1 row',
      statement: sql((t) => `update ${t} set hits = hits + 1 where id = $1`, (i) => [slice(2)(i)]),
      expect: none,
      pgaiQueued: (n: number) => n,
    },
    insert: {
      ...single, key: 'insert', label: 'INSERT, 1 row',
      statement: sql((t) => `insert into ${t} (id, tenant, title, body, views) values ($1, $2, $3, $4, $5)`,
        (i) => [fresh(i), tenant(fresh(i)), `Document ${fresh(i)}`, body(`new ${i}`), i % 1000]),
      expect: (n: number) => ({ gap: { expected: n, missing: n, queued: n }, jobs: Math.ceil(n / 64) }),
      pgaiQueued: (n: number) => n,
    },
    delete: {
      // rows with a current item and a stored vector, picked at random over the whole table
      ...single, key: 'delete', label: 'DELETE, 1 row',
      statement: (t: string, set: DocSet, i: number) => ({ text: `delete from ${t} where id = $1`, values: [set.suffix ? largeIds[i]! : slice(3)(i)] }),
      expect: (n: number) => ({ gap: { expected: -n, current: -n }, jobs: 0 }),
      pgaiQueued: () => 0,
    },
    bulk: {
      // items are settled before every round, so what is left afterwards is the last statement's doing
      key: 'update-body-bulk', label: `UPDATE body, ${fmtInt(BULK_ROWS)} rows in one statement`, rowsPerStatement: BULK_ROWS,
      statement: sql((t) => `update ${t} set body = $2 || substr(body, length($2) + 1) where id between $1 and $1 + ${BULK_ROWS - 1}`,
        (i) => [1 + ((i * BULK_ROWS) % rows), `bulk ${i}: `]),
      expect: () => ({ gap: { current: -BULK_ROWS, stale: BULK_ROWS, queued: BULK_ROWS }, jobs: Math.ceil(BULK_ROWS / 64) }),
      pgaiQueued: () => BULK_ROWS,
    },
    copy: {
      // the same ids every round: the rows of the round before are deleted (untimed) first
      key: 'copy', label: `COPY FROM STDIN, ${fmtInt(COPY_ROWS)} new rows`, rowsPerStatement: COPY_ROWS,
      statement: (t: string, _set: DocSet, i: number) => ({ copy: `copy ${t} (id, tenant, title, body, views, hits) from stdin`, data: copyData(i) }),
      expect: () => ({ gap: { expected: COPY_ROWS, missing: COPY_ROWS, queued: COPY_ROWS }, jobs: Math.ceil(COPY_ROWS / 64) }),
      pgaiQueued: () => COPY_ROWS,
      cleanup: async (client: pg.Client, set: DocSet, changeLog: boolean) => {
        for (const role of ROLES) await client.query(`delete from ${tableOf(set, role)} where id > $1`, [COPY_BASE]);
        await applyChanges(client, changeLog);
        await settle(client, set);
      },
    },
  } satisfies Record<string, Kind>;
}

function tenant(id: number): string {
  return `tenant-${String(id % TENANTS).padStart(3, '0')}`;
}

function body(prefix: string): string {
  return `${prefix} `.padEnd(BODY_CHARS, 'lorem ipsum dolor sit amet ');
}

/** regen.apply_changes(), timed into `deferred`, with the gap of each set read before and after: it must not change. */
async function applyChecked(ctx: Context, sets: DocSet[], deferred: Deferred): Promise<void> {
  if (!ctx.changeLog) return;
  const before = await Promise.all(sets.map((s) => gap(ctx.client, s)));
  const applied = (await applyChanges(ctx.client, true))!;
  deferred.calls++;
  deferred.ms += applied.ms;
  deferred.rows += applied.rows;
  deferred.perCall.push(applied.ms);
  for (const [k, set] of sets.entries()) {
    const after = await gap(ctx.client, set);
    const differs = EXACT.filter((c) => after[c] !== before[k]![c]);
    ctx.exactness.reads++;
    if (differs.length === 0) ctx.exactness.equal++;
    else ctx.exactness.first ??= `${set.source}: ${differs.map((c) => `${c} ${before[k]![c]} before, ${after[c]} after`).join(', ')}`;
  }
}

async function measureKind(ctx: Context, kind: Kind, sets: DocSet[], timed: number, round: number, warmup: number): Promise<Measured[]> {
  const { client } = ctx;
  const bulk = kind.rowsPerStatement > 1;
  const deferred: Deferred = { calls: 0, ms: 0, rows: 0, perCall: [], enqueueMs: 0, enqueued: 0 };
  const ignored: Deferred = { ...deferred, perCall: [] };
  for (const set of sets) {
    await applyChecked(ctx, [set], ignored);
    await settle(client, set);
    await vacuum(client, set);
  }
  await client.query('select regen.compact_gap()');
  const rows = await Promise.all(sets.map((s) => count(client, tableOf(s, 'plain'))));
  const before = await Promise.all(sets.map((s) => gap(client, s)));

  const refs = sets.flatMap((set) => ROLES.map((role) => ({ set, role, table: tableOf(set, role) })));
  const samples = refs.map(() => [] as number[]);
  const roundRatios = sets.map(() => [] as number[]);
  const statement = async (ref: (typeof refs)[number], i: number) => {
    const s = kind.statement(ref.table, ref.set, i);
    const start = performance.now();
    if ('copy' in s) {
      const stream = client.query(ctx.copyFrom(s.copy));
      await pipeline(Readable.from([s.data]), stream);
      check(stream.rowCount === kind.rowsPerStatement, `${kind.label} on ${ref.table}: ${stream.rowCount} rows copied`);
    } else {
      await client.query({ name: `${kind.key}-${ref.table}`, text: s.text, values: s.values });
    }
    return performance.now() - start;
  };
  // bulk kinds: the changes of the round before are applied (deferred work), undone if need be, and settled
  const betweenRounds = async (first: boolean) => {
    if (!bulk) return;
    await applyChecked(ctx, sets, first ? ignored : deferred);
    for (const set of sets) {
      if (!first) await kind.cleanup?.(client, set, ctx.changeLog);
      await settle(client, set);
    }
  };
  for (let i = 0; i < warmup; i++) {
    await betweenRounds(i === 0);
    for (const ref of refs) await statement(ref, i);
  }
  for (let r = 0, i = warmup; i < warmup + timed; r++) {
    await betweenRounds(false);
    const n = Math.min(round, warmup + timed - i);
    const order = [...refs.keys()].map((k) => (k + r) % refs.length);
    const inRound = refs.map(() => [] as number[]);
    for (const k of order) {
      for (let j = 0; j < n; j++) inRound[k]!.push(await statement(refs[k]!, i + j));
      samples[k]!.push(...inRound[k]!);
    }
    for (const [s, set] of sets.entries()) {
      const at = (role: Role) => inRound[refs.findIndex((x) => x.set === set && x.role === role)]!;
      roundRatios[s]!.push(median(at('captured')) / median(at('plain')));
    }
    i += n;
  }

  // Bulk kinds settle before every round: only the last statement's effect remains.
  const statements = bulk ? 1 : warmup + timed;
  await applyChecked(ctx, sets, deferred);
  // The capture only marks fresh edits; the worker enqueues them every REGEN_ENQUEUE_INTERVAL_MS,
  // outside the application's transactions: here once, after the timings.
  const start = performance.now();
  deferred.enqueued = ctx.enqueueFresh
    ? Number((await client.query<{ n: string }>('select regen.enqueue_fresh(1000000) as n')).rows[0]!.n)
    : 0;
  deferred.enqueueMs = performance.now() - start;
  const out: Measured[] = [];
  for (const [s, set] of sets.entries()) {
    const label = `${kind.label} (${tableOf(set, 'captured')})`;
    const after = await gap(client, set);
    const delta = Object.fromEntries(GAP.map((c) => [c, after[c] - before[s]![c]])) as Gap;
    const jobsAdded = await jobs(client, set);   // settled (no job) when the kind began
    const want = kind.expect(statements);
    for (const c of GAP) {
      check(delta[c] === (want.gap[c] ?? 0), `${label}: regen.embedding_gap ${c} changed by ${delta[c]} after ${statements} statements, expected ${want.gap[c] ?? 0}`);
    }
    // (a schema without enqueue_fresh enqueues in the statement, into jobs of its own making)
    if (ctx.enqueueFresh) check(jobsAdded === want.jobs, `${label}: ${jobsAdded} pg-boss jobs added, expected ${want.jobs}`);
    await verifyCapture(client, set, label);
    // the baseline did its part as well: one queue row per change it must queue
    const queued = await count(client, set.pgaiQueue);
    check(queued === kind.pgaiQueued(statements), `${label}: the pgai-style trigger queued ${queued} rows, expected ${kind.pgaiQueued(statements)}`);
    const mine = Object.fromEntries(ROLES.map((role) => [role, samples[refs.findIndex((x) => x.set === set && x.role === role)]!])) as Record<Role, number[]>;
    const m: Measured = { kind, set, rows: rows[s]!, statements, samples: mine, roundRatios: roundRatios[s]!, gap: delta, jobs: jobsAdded, deferred };
    ctx.log(`${kind.label} at ${fmtInt(m.rows)} rows: p50 added ${ROLES.slice(1).map((role) => `${role} ${plus(added(m, role))} ms`).join(', ')}` +
      (ctx.changeLog ? `; deferred ${fmtMs(deferred.ms)} ms for ${fmtInt(deferred.rows)} changes` : ''));
    out.push(m);
  }
  for (const set of sets) await kind.cleanup?.(client, set, ctx.changeLog);
  return out;
}

const MIX_BASE = 30_000_000;
const MIX_ROLES: Role[] = ['plain', 'pgai', 'captured'];

/**
 * The 4-client pgbench mix on the plain, pgai-style and pgregen tables in turn, `repeats` rounds,
 * the order rotating; a drain loop works as each table's worker would, every DRAIN_MS. The rows the
 * mix inserted are deleted after each run (untimed), so every run starts from the same table.
 */
async function measureMix(ctx: Context, set: DocSet, bin: string, seconds: number, repeats: number): Promise<Mix[]> {
  const { client } = ctx;
  const out: Mix[] = MIX_ROLES.map((role) => ({ role, tps: [], transactions: 0, drain: { calls: 0, ms: 0, rows: 0 } }));
  const scripts = await scriptDir();
  try {
    const args = new Map<Role, string[]>();
    for (const role of MIX_ROLES) {
      await client.query(`create sequence ${tableOf(set, role)}_bench_ids start ${MIX_BASE + 1}`);
      args.set(role, await writeScripts(scripts.dir, tableOf(set, role), set.rows));
    }
    for (let r = 0; r < repeats; r++) {
      for (const k of MIX_ROLES.keys()) {
        const role = MIX_ROLES[(k + r) % MIX_ROLES.length]!;
        const m = out.find((x) => x.role === role)!;
        await vacuum(client, set);
        let drained = 0;
        const drain = role === 'captured'
          ? every(ctx.url, DRAIN_MS, async (c) => {
            // once per interval, as the worker does (applyChanges would go on until the log is empty)
            if (ctx.changeLog) drained += Number((await c.query<{ n: string }>('select regen.apply_changes() as n')).rows[0]!.n);
            if (ctx.enqueueFresh) await c.query('select regen.enqueue_fresh()');
          })
          : role === 'pgai'
            ? every(ctx.url, DRAIN_MS, async (c) => { drained += (await c.query(`delete from ${set.pgaiQueue}`)).rowCount ?? 0; })
            : undefined;
        const result = await pgbench(bin, ctx.url, args.get(role)!, CLIENTS, seconds).catch(async (error) => {
          await drain?.stop().catch(() => {});
          throw error;
        });
        const loop = await drain?.stop();
        m.tps.push(result.tps);
        m.transactions += result.transactions;
        m.drain.calls += loop?.calls ?? 0;
        m.drain.ms += loop?.ms ?? 0;
        m.drain.rows += drained;
        ctx.log(`pgbench mix on ${tableOf(set, role)}: ${result.tps.toFixed(0)} tps (${MIX.map((s, i) => `${s.name} ${result.perScript[i]}`).join(', ')})`);
        if (role === 'pgai') {
          const left = await count(client, set.pgaiQueue);
          check(drained + left === result.transactions, `pgbench mix: the pgai-style trigger queued ${drained + left} rows for ${result.transactions} changes`);
        }
        if (role === 'captured') {
          const rest: Deferred = { calls: 0, ms: 0, rows: 0, perCall: [], enqueueMs: 0, enqueued: 0 };
          await applyChecked(ctx, [set], rest);
          m.drain.rows += rest.rows;
          if (ctx.enqueueFresh) await client.query('select regen.enqueue_fresh(1000000)');
          await verifyCapture(client, set, `pgbench mix, run ${r + 1}`);
        }
        await client.query(`delete from ${tableOf(set, role)} where id > $1`, [MIX_BASE]);
        await applyChanges(client, ctx.changeLog);
        await settle(client, set);
      }
    }
  } finally {
    await scripts.remove();
  }
  return out;
}

/** pg-copy-streams, a devDependency: loaded by name so the type checker does not need its types. */
async function loadCopyFrom(): Promise<CopyFrom> {
  const name = 'pg-copy-streams';
  const module = (await import(name).catch((error) => {
    throw new Error('benchmark F needs the devDependency pg-copy-streams (npm install)', { cause: error });
  })) as { from?: CopyFrom; default?: { from?: CopyFrom } };
  const from = module.from ?? module.default?.from;
  check(from !== undefined, 'pg-copy-streams has no export `from`');
  return from;
}

/** Whether the generated capture function catches its expressions' errors (an exception block: a subtransaction). */
async function exceptionBlocks(client: pg.Client): Promise<string> {
  const { rows: [row] } = await client.query<{ def: string | null }>(
    `select pg_get_functiondef(p.oid) as def from pg_proc p
      where p.pronamespace = 'regen'::regnamespace and p.proname = 'tg_docs__capture'`);
  if (!row?.def) return 'capture function regen.tg_docs__capture not found';
  const blocks = row.def.match(/exception when others/g)?.length ?? 0;
  return `the capture function has ${blocks} exception block(s) (each a subtransaction, per row or per statement)`;
}
