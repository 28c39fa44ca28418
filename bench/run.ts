// Runs the benchmarks in sequence and writes their figures to bench/RESULTS.md, replacing the
// section of each benchmark that ran and keeping the others.
//
//   npm run bench                       every benchmark, full size
//   npm run bench -- --quick            smoke size (seconds, not results)
//   npm run bench -- --only gap-view    one benchmark (repeat --only for more)
//
// A benchmark is any bench/*.ts that exports `run({ quick })`; its name is the file's. It returns
// either a BenchReport (tables; this file lays out the section) or { name, markdown } (a section
// it laid out itself). DATABASE_URL: measure on that server (scratch databases are created and
// dropped) instead of a throwaway local cluster, for the benchmarks that support it.
import { existsSync } from 'node:fs';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { commandLine, machineLines, renderTable, revision, type BenchOptions, type BenchReport } from './support.ts';

type Section = { name: string; markdown: string };
type Bench = { name: string; run: (options: BenchOptions) => Promise<BenchReport | Section> };

// These two first (the foundation), then the others by name.
const FIRST = ['write-back', 'gap-view'];
const RESULTS = fileURLToPath(new URL('./RESULTS.md', import.meta.url));
const HEADER = '# pgregen benchmarks\n\nWritten by `npm run bench` (bench/run.ts). Each section is replaced when its benchmark runs again.\n';

const { values } = (() => {
  try {
    return parseArgs({ options: { quick: { type: 'boolean', default: false }, only: { type: 'string', multiple: true } } });
  } catch (error) {
    console.error(`${(error as Error).message}\nusage: npm run bench [-- --quick] [-- --only NAME ...]`);
    process.exit(2);
  }
})();
const benchmarks = await discover();
const unknown = (values.only ?? []).filter((name) => !benchmarks.some((b) => b.name === name));
if (unknown.length) {
  console.error(`unknown benchmark ${unknown.join(', ')}; known: ${benchmarks.map((b) => b.name).join(', ')}`);
  process.exit(2);
}
const selected = benchmarks.filter((b) => !values.only || values.only.includes(b.name));
const command = commandLine();

let failed = false;
for (const bench of selected) {
  console.log(`\n=== ${bench.name}${values.quick ? ' (quick)' : ''} ===`);
  const started = new Date();
  try {
    const result = await bench.run({ quick: values.quick });
    const ms = Date.now() - started.getTime();
    if ('markdown' in result) await writeSection(result.name, result.markdown);
    else await writeSection(bench.name, section(result, started, ms));
    console.log(`\n${bench.name}: done in ${(ms / 1000).toFixed(0)} s, written to bench/RESULTS.md`);
  } catch (error) {
    failed = true;
    console.error(`\n${bench.name} FAILED: ${(error as Error).stack ?? String(error)}`);
  }
}
// Exit even if a benchmark left a handle open (a pool, a timer, a child's pipe): its figures are written.
process.exit(failed ? 1 : 0);

/** Every bench/*.ts with a `run` export. A file that fails to load becomes a benchmark that fails. */
async function discover(): Promise<Bench[]> {
  const dir = fileURLToPath(new URL('.', import.meta.url));
  const files = (await readdir(dir)).filter((f) => f.endsWith('.ts') && f !== 'run.ts');
  const found: Bench[] = [];
  for (const file of files) {
    const name = file.slice(0, -'.ts'.length);
    try {
      const module = (await import(new URL(file, import.meta.url).href)) as { run?: unknown };
      if (typeof module.run === 'function') found.push({ name, run: module.run as Bench['run'] });
    } catch (error) {
      found.push({ name, run: () => Promise.reject(new Error(`bench/${file} could not be loaded`, { cause: error })) });
    }
  }
  const rank = (name: string) => (FIRST.includes(name) ? FIRST.indexOf(name) : FIRST.length);
  return found.sort((a, b) => rank(a.name) - rank(b.name) || a.name.localeCompare(b.name));
}

function section(report: BenchReport, started: Date, ms: number): string {
  const lines = [
    `## ${report.title}${values.quick ? ' (quick smoke size: not a result)' : ''}`,
    '',
    `- date: ${started.toISOString().replace('T', ' ').slice(0, 16)} UTC, took ${(ms / 60_000).toFixed(1)} min`,
    `- command: \`${command}\``,
    `- code: ${revision()}`,
    ...machineLines(report.server).map((line) => `- ${line}`),
    ...report.setup.map((line) => `- ${line}`),
    '',
    ...report.tables.flatMap((table) => [renderTable(table), '']),
  ];
  return lines.join('\n').trimEnd();
}

/** Replaces this benchmark's section of RESULTS.md (between its markers), keeping every other one. */
async function writeSection(name: string, body: string): Promise<void> {
  const start = `<!-- bench:${name}:start -->`;
  const end = `<!-- bench:${name}:end -->`;
  const block = `${start}\n${body.trim()}\n${end}`;
  const old = existsSync(RESULTS) ? await readFile(RESULTS, 'utf8') : HEADER;
  const from = old.indexOf(start);
  const to = old.indexOf(end, from);
  let text: string;
  if (from >= 0 && to > from) {
    text = old.slice(0, from) + block + old.slice(to + end.length);
  } else {
    // Keep the sections in run order: insert before the first later one present.
    const later = benchmarks.slice(benchmarks.findIndex((b) => b.name === name) + 1)
      .map((b) => old.indexOf(`<!-- bench:${b.name}:start -->`)).filter((i) => i >= 0);
    const at = later.length ? Math.min(...later) : old.length;
    text = `${old.slice(0, at).trimEnd()}\n\n${block}\n\n${old.slice(at).trimStart()}`;
  }
  await writeFile(RESULTS, `${text.trimEnd()}\n`);
}

