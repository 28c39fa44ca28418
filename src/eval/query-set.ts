// The labelled query-set file: a name and queries, each with its text and graded judgements
// (row id -> grade; a grade above 0 is relevant, higher is more relevant, rows not listed are not).
//
//   { "name": "cranfield",
//     "queries": [ { "id": "1", "text": "what similarity laws ...", "judgements": { "184": 3, "29": 2 } } ] }
//
// Row ids are the source's id column as text (regen.search_scoped's row_id). A run over several
// sources ranks rows as "source:row_id", so its judgements must use that form too.
import { readFile, writeFile } from 'node:fs/promises';
import { PgregenError } from '../errors.ts';

export interface LabelledQuery {
  id: string;
  text: string;
  /** Row id -> grade. */
  judgements: Record<string, number>;
}

export interface QuerySet {
  name: string;
  queries: LabelledQuery[];
}

const FORMAT_HINT = 'expected {"name": "...", "queries": [{"id": "1", "text": "...", "judgements": {"<row id>": <grade>}}]}';
const MAX_PROBLEMS = 10;

/** Checks a parsed JSON value; `origin` names it in the message (a file path, "the query set"). */
export function parseQuerySet(value: unknown, origin = 'the query set'): QuerySet {
  const problems: string[] = [];
  const problem = (text: string) => { if (problems.length < MAX_PROBLEMS) problems.push(text); };
  if (!isObject(value)) {
    throw new PgregenError(`${origin} is not a query set: a JSON object is expected, not ${describe(value)}`, FORMAT_HINT);
  }
  const name = value.name;
  if (typeof name !== 'string' || name.trim() === '') problem(`"name" must be a non-empty string, not ${describe(name)}`);
  const queries: LabelledQuery[] = [];
  if (!Array.isArray(value.queries) || value.queries.length === 0) {
    problem(`"queries" must be a non-empty array, not ${describe(value.queries)}`);
  } else {
    const seen = new Set<string>();
    value.queries.forEach((entry: unknown, i: number) => {
      const at = `queries[${i}]`;
      if (!isObject(entry)) return problem(`${at} must be an object, not ${describe(entry)}`);
      const id = typeof entry.id === 'number' && Number.isFinite(entry.id) ? String(entry.id) : entry.id;
      if (typeof id !== 'string' || id === '') return problem(`${at}.id must be a non-empty string or a number, not ${describe(entry.id)}`);
      if (seen.has(id)) problem(`${at}.id ${JSON.stringify(id)} is used by an earlier query too`);
      seen.add(id);
      if (typeof entry.text !== 'string' || entry.text.trim() === '') problem(`${at}.text (query ${id}) must be a non-empty string`);
      const judgements = entry.judgements;
      if (!isObject(judgements)) return problem(`${at}.judgements (query ${id}) must be an object of row id to grade, not ${describe(judgements)}`);
      const bad = Object.entries(judgements).find(([, grade]) => typeof grade !== 'number' || !Number.isFinite(grade));
      if (bad) return problem(`${at}.judgements[${JSON.stringify(bad[0])}] (query ${id}) must be a number, not ${describe(bad[1])}`);
      if (!Object.values(judgements).some((grade) => (grade as number) > 0)) {
        return problem(`query ${id} has no relevant judgement (a grade above 0): its recall and nDCG are undefined; leave it out`);
      }
      queries.push({ id, text: entry.text as string, judgements: judgements as Record<string, number> });
    });
  }
  if (problems.length > 0) {
    throw new PgregenError(`${origin} is not a valid query set:\n  - ${problems.join('\n  - ')}`, FORMAT_HINT);
  }
  return { name: (name as string).trim(), queries };
}

export async function readQuerySet(path: string): Promise<QuerySet> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    throw new PgregenError(`cannot read the query set ${path}: ${(err as Error).message}`,
      'pass the path of a query-set JSON file (pgregen eval cranfield --out FILE writes one)');
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new PgregenError(`the query set ${path} is not valid JSON: ${(err as Error).message}`, FORMAT_HINT);
  }
  return parseQuerySet(value, `the query set ${path}`);
}

export async function writeQuerySet(path: string, querySet: QuerySet): Promise<void> {
  await writeFile(path, `${JSON.stringify(querySet, null, 1)}\n`);
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function describe(value: unknown): string {
  if (value === undefined) return 'missing';
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  if (typeof value === 'object') return 'an object';
  const text = JSON.stringify(value);
  return text.length > 40 ? `${text.slice(0, 40)}...` : text;
}
