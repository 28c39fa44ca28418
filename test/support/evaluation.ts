// Helpers of test/evaluation.test.ts: metric cases computed by hand, an independent scorer to check
// SQL's per-query scores against, waiting for a version to be built, and running the CLI.
import { execFile, execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import type { Db } from '../../src/db.ts';
import { defaultCranfieldDir } from '../../src/eval/cranfield.ts';
import { waitFor } from './worker.ts';

export interface MetricCase {
  name: string;
  ranked: string[];
  judged: Record<string, number>;
  k: number;
  expect: {
    recall_at_k: number | null; reciprocal_rank: number | null; ndcg_at_k: number | null;
    relevant: number; relevantRetrieved: number;
  };
}

const log2 = Math.log2;

export const metricCases: MetricCase[] = [
  {
    // relevant a (3), c (1), x (2, not found); top 3 = a b c: DCG = 3/1 + 1/2, ideal = 3/1 + 2/log2(3) + 1/2
    name: 'graded, one relevant row not found',
    ranked: ['a', 'b', 'c', 'd'], judged: { a: 3, c: 1, x: 2, n: 0 }, k: 3,
    expect: { recall_at_k: 2 / 3, reciprocal_rank: 1, ndcg_at_k: 3.5 / (3 + 2 / log2(3) + 0.5), relevant: 3, relevantRetrieved: 2 },
  },
  {
    // the only relevant row is at rank 4, beyond k = 3: nothing counts
    name: 'k cut-off',
    ranked: ['a', 'b', 'c', 'd'], judged: { d: 2 }, k: 3,
    expect: { recall_at_k: 0, reciprocal_rank: 0, ndcg_at_k: 0, relevant: 1, relevantRetrieved: 0 },
  },
  {
    // the same at k = 4: rank 4 gives 1/4 and 2/log2(5) against an ideal of 2/1
    name: 'k reaching the relevant row',
    ranked: ['a', 'b', 'c', 'd'], judged: { d: 2 }, k: 4,
    expect: { recall_at_k: 1, reciprocal_rank: 0.25, ndcg_at_k: (2 / log2(5)) / 2, relevant: 1, relevantRetrieved: 1 },
  },
  {
    // the grades in reverse order: DCG = 1/1 + 2/log2(3) + 4/2, ideal = 4/1 + 2/log2(3) + 1/2
    name: 'graded, worst order first',
    ranked: ['low', 'mid', 'top'], judged: { top: 4, mid: 2, low: 1 }, k: 3,
    expect: { recall_at_k: 1, reciprocal_rank: 1, ndcg_at_k: (1 + 2 / log2(3) + 2) / (4 + 2 / log2(3) + 0.5), relevant: 3, relevantRetrieved: 3 },
  },
  {
    name: 'perfect ranking', ranked: ['p', 'q'], judged: { p: 2, q: 1 }, k: 10,
    expect: { recall_at_k: 1, reciprocal_rank: 1, ndcg_at_k: 1, relevant: 2, relevantRetrieved: 2 },
  },
  {
    name: 'nothing found', ranked: [], judged: { p: 2 }, k: 10,
    expect: { recall_at_k: 0, reciprocal_rank: 0, ndcg_at_k: 0, relevant: 1, relevantRetrieved: 0 },
  },
  {
    // no grade above 0: recall and nDCG have no denominator
    name: 'no relevant row', ranked: ['a', 'b'], judged: { a: 0, b: -1 }, k: 10,
    expect: { recall_at_k: null, reciprocal_rank: null, ndcg_at_k: null, relevant: 0, relevantRetrieved: 0 },
  },
];

/** recall@k, reciprocal rank and nDCG@k (linear gain, log2 discount), computed without SQL. */
export function scoreByHand(ranked: string[], judged: Record<string, number>, k: number): { recall: number; reciprocalRank: number; ndcg: number } {
  const gains = Object.entries(judged).filter(([, grade]) => grade > 0);
  const gain = new Map(gains);
  const top = ranked.slice(0, k);
  const found = top.filter((id) => gain.has(id));
  const first = top.findIndex((id) => gain.has(id));
  const dcg = top.reduce((sum, id, i) => sum + (gain.get(id) ?? 0) / log2(i + 2), 0);
  const ideal = gains.map(([, grade]) => grade).sort((a, b) => b - a).slice(0, k).reduce((sum, g, i) => sum + g / log2(i + 2), 0);
  return { recall: found.length / gains.length, reciprocalRank: first < 0 ? 0 : 1 / (first + 1), ndcg: dcg / ideal };
}

/** Waits until every row of a source has a current vector of the version (coverage 1). */
export async function waitForVersion(db: Db, source: string, version: string, timeoutMs = 150_000): Promise<void> {
  await waitFor(`version ${version} of ${source} to reach coverage 1`, async () => {
    const { rows } = await db.query<{ coverage: string; failed: string }>(
      'select coverage, failed from regen.embedding_gap where source = $1 and version = $2', [source, version]);
    if (rows[0] && Number(rows[0].failed) > 0) throw new Error(`${rows[0].failed} items of ${version} failed: see regen.failed_items`);
    return rows[0] && Number(rows[0].coverage) === 1;
  }, timeoutMs, 250);
}

const MAIN = pathToFileURL(fileURLToPath(new URL('../../src/cli/main.ts', import.meta.url))).href;
const EVAL = pathToFileURL(fileURLToPath(new URL('../../src/cli/eval.ts', import.meta.url))).href;
const ERRORS = pathToFileURL(fileURLToPath(new URL('../../src/errors.ts', import.meta.url))).href;

// The `pgregen` command line in a child process: main() once it registers eval and shadow; until
// then the same program with the two commands added, and main()'s mapping of errors to exit codes.
const RUNNER = `
import { CommanderError } from 'commander';
import { main, program } from ${JSON.stringify(MAIN)};
import { evalCommand, shadowCommand } from ${JSON.stringify(EVAL)};
import { describeError } from ${JSON.stringify(ERRORS)};
const argv = ['node', 'pgregen', ...process.argv.slice(1)];
const cli = program();
if (cli.commands.some((c) => c.name() === 'eval')) {
  process.exitCode = await main(argv);
} else {
  for (const command of [evalCommand(), shadowCommand()]) {
    cli.addCommand(command.exitOverride().showHelpAfterError('(run with --help for usage)'));
  }
  try {
    await cli.parseAsync(argv);
  } catch (err) {
    if (err instanceof CommanderError) process.exitCode = err.exitCode === 0 ? 0 : 2;
    else { process.stderr.write('pgregen: ' + describeError(err) + '\\n'); process.exitCode = 1; }
  }
}
`;

export async function runCli(args: string[], env: Record<string, string>): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, ['--input-type=module', '--eval', RUNNER, ...args],
      { cwd: fileURLToPath(new URL('../..', import.meta.url)), env: { PATH: process.env.PATH ?? '', ...env }, timeout: 120_000 },
      (error, stdout, stderr) => {
        const code = error ? (typeof error.code === 'number' ? error.code : 1) : 0;
        resolve({ code, stdout, stderr });
      });
  });
}

/**
 * Where the tests read the Cranfield collection: beside the project (or $REGEN_CRANFIELD_DIR), and
 * when this checkout is a clone of a repository on the same machine (a CI run on a fresh clone),
 * beside that repository. The first place is returned when neither holds it, so the error names it.
 */
export function cranfieldDir(): string {
  const first = defaultCranfieldDir();
  if (existsSync(join(first, 'cranfield-documents.json'))) return first;
  try {
    const root = fileURLToPath(new URL('../..', import.meta.url));
    const origin = execFileSync('git', ['-C', root, 'config', '--get', 'remote.origin.url'], { encoding: 'utf8' }).trim();
    const repository = origin.startsWith('file://') ? fileURLToPath(origin) : origin;
    // a local path, as `git clone .` records it (/path/to/repo/.) or relative to this checkout
    if (!/^[\w+-]+:\/\//.test(repository) && !/^[^/]+@[^:]+:/.test(repository)) {
      const beside = join(dirname(resolve(root, repository)), 'shared', 'data', 'cranfield');
      if (existsSync(join(beside, 'cranfield-documents.json'))) return beside;
    }
  } catch {
    // not a git checkout, or no origin: only the first place counts
  }
  return first;
}
