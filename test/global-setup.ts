/// <reference path="./support/provided.d.ts" />
// Vitest globalSetup: picks a PostgreSQL server with pgvector, builds the template database that
// every test file copies (see test/support/db.ts), and hands both to the tests via provide().
// Meanwhile it compiles src/ to dist/ (npm run build), which bin/pgregen.js runs for the CLI tests.
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import pg from 'pg';
import type { TestProject } from 'vitest/node';
import { startLocalPostgres } from '../src/local-postgres.ts';
import { quoteIdent, withDatabase } from './support/url.ts';

const TEMPLATE = 'pgregen_template';
const CONTAINER_IMAGE = 'pgvector/pgvector:pg17';
const projectRoot = fileURLToPath(new URL('..', import.meta.url));
const run = promisify(execFile);

type Server = { url: string; description: string; stop(): Promise<void> };

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  let server: Server | undefined;
  const built = buildDist();
  built.catch(() => {});   // awaited below, after the server
  try {
    server = await chooseServer();
    process.stderr.write(`pgregen tests: ${server.description}\n`);
    await createTemplate(server.url);
    await built;
  } catch (error) {
    await server?.stop();
    // Vitest follows a failed globalSetup with a misleading "No test files found"; say what broke.
    process.stderr.write(`pgregen tests: could not prepare the test database: ${(error as Error).message}\n`);
    throw error;
  }
  project.provide('serverUrl', server.url);
  project.provide('templateDatabase', TEMPLATE);
  // The template stays behind on a TEST_DATABASE_URL server; the next run drops and rebuilds it.
  return () => server.stop();
}

/** Compiles src/ to dist/ as `npm run build` does (incremental: about a second when nothing changed). */
async function buildDist(): Promise<void> {
  const tsc = fileURLToPath(new URL('../node_modules/typescript/bin/tsc', import.meta.url));
  try {
    await run(process.execPath, [tsc, '-p', 'tsconfig.build.json'], { cwd: projectRoot, timeout: 300_000 });
  } catch (error) {
    const { stdout, stderr } = error as { stdout?: string; stderr?: string };
    throw new Error(`npm run build failed (the CLI tests run dist/):\n${stdout ?? ''}${stderr ?? ''}`);
  }
}

/** TEST_DATABASE_URL, else a container if a runtime answers, else a throwaway local cluster. */
async function chooseServer(): Promise<Server> {
  const given = process.env.TEST_DATABASE_URL;
  if (given) {
    return { url: given, description: `using TEST_DATABASE_URL (${redact(given)})`, stop: async () => {} };
  }
  if (await containerRuntimeAnswers()) {
    const { PostgreSqlContainer } = await import('@testcontainers/postgresql');
    const container = await new PostgreSqlContainer(CONTAINER_IMAGE).start();
    return {
      url: container.getConnectionUri(),
      description: `using a ${CONTAINER_IMAGE} container (testcontainers)`,
      stop: async () => {
        await container.stop();
      },
    };
  }
  const local = await startLocalPostgres();
  return { ...local, description: `no TEST_DATABASE_URL and no container runtime: using a throwaway local cluster at ${local.url}` };
}

/**
 * True when testcontainers finds a Docker/Podman engine. Probed in a child process with a time limit:
 * a socket that accepts but never answers would otherwise stall the run and keep vitest from exiting.
 */
async function containerRuntimeAnswers(): Promise<boolean> {
  const probe = "const { getContainerRuntimeClient } = await import('testcontainers'); await getContainerRuntimeClient();";
  try {
    await run(process.execPath, ['--input-type=module', '--eval', probe], { cwd: projectRoot, timeout: 5_000, killSignal: 'SIGKILL' });
    return true;
  } catch {
    return false;
  }
}

async function createTemplate(serverUrl: string): Promise<void> {
  // FORCE: a crashed earlier run may still hold connections to the old template.
  await withClient(serverUrl, async (client) => {
    await client.query(`DROP DATABASE IF EXISTS ${quoteIdent(TEMPLATE)} WITH (FORCE)`);
    await client.query(`CREATE DATABASE ${quoteIdent(TEMPLATE)}`);
  });
  const templateUrl = withDatabase(serverUrl, TEMPLATE);
  await withClient(templateUrl, (client) => client.query('CREATE EXTENSION IF NOT EXISTS vector'));
  // A dynamic import, as agreed while src/install.ts was still being written; a static import works too.
  const { install } = await import('../src/install.ts');
  await install({ connectionString: templateUrl });

  // CREATE DATABASE ... TEMPLATE fails while anyone is connected to the template, so a connection
  // that install() forgot to close would break every test file. Close it here, and say so.
  await withClient(serverUrl, async (client) => {
    const { rowCount } = await client.query(
      'SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()',
      [TEMPLATE],
    );
    if (rowCount) process.stderr.write(`pgregen tests: warning: install() left ${rowCount} connection(s) open to ${TEMPLATE}; closed them\n`);
  });
}

async function withClient<T>(url: string, work: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return await work(client);
  } finally {
    await client.end();
  }
}

function redact(url: string): string {
  try {
    const parsed = new URL(url);
    if (parsed.password) parsed.password = '***';
    return parsed.toString();
  } catch {
    return '(unparsable URL)';
  }
}
