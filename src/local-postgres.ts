// A throwaway PostgreSQL cluster in a temp directory, for the tests and the demo when no
// database URL or container runtime is available. Tuned for speed, not durability.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { constants, rmSync } from 'node:fs';
import { access, chown, mkdtemp, open, readdir, readFile, realpath, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';

const run = promisify(execFile);

export type LocalPostgres = {
  url: string;
  stop(): Promise<void>;
  /** Fast shutdown, then the same data directory on the same port again; resolves once it accepts connections. */
  restart(): Promise<void>;
};

export type LocalPostgresOptions = { port?: number; log?: (line: string) => void };

type RunAs = { uid: number; gid: number } | undefined;

export async function startLocalPostgres(options: LocalPostgresOptions = {}): Promise<LocalPostgres> {
  const bin = await findServerBinDir();
  const pgConfig = join(bin, 'pg_config');
  const major = (await run(pgConfig, ['--version'])).stdout.match(/\d+/)?.[0] ?? '?';
  const sharedir = (await run(pgConfig, ['--sharedir'])).stdout.trim();
  if (!(await exists(join(sharedir, 'extension', 'vector.control')))) {
    throw new Error(
      `pgvector is not installed for PostgreSQL ${major} (no ${sharedir}/extension/vector.control): ` +
        `run ./run setup as root, or install postgresql-${major}-pgvector, or set TEST_DATABASE_URL/DATABASE_URL`,
    );
  }
  return serve(bin, options, async (data, dir, runAs, log) => {
    log(`initdb PostgreSQL ${major} in ${data}`);
    await runCommand(join(bin, 'initdb'), ['-D', data, '-U', 'postgres', '-A', 'trust', '--no-sync', '-E', 'UTF8', '--locale=C'], dir, runAs);
  });
}

/**
 * A streaming hot standby of a cluster that accepts replication connections from 127.0.0.1 (one of
 * startLocalPostgres's does): its data directory copied with pg_basebackup (-R: it follows the
 * primary), then started read-only on a port of its own. Stopping it leaves the primary running.
 */
export async function startLocalStandby(primaryUrl: string, options: LocalPostgresOptions = {}): Promise<LocalPostgres> {
  const bin = await findServerBinDir();
  return serve(bin, options, async (data, dir, runAs, log) => {
    log(`pg_basebackup of ${primaryUrl} into ${data}`);
    await runCommand(join(bin, 'pg_basebackup'), ['-D', data, '-d', primaryUrl, '-R', '-X', 'stream', '--no-sync', '-c', 'fast'], dir, runAs);
  }, ['hot_standby=on']);
}

/** Makes a data directory in a fresh temp directory (`create`), starts postgres on it, and stops and removes it all on stop(). */
async function serve(bin: string, options: LocalPostgresOptions,
  create: (data: string, dir: string, runAs: RunAs, log: (line: string) => void) => Promise<void>, settings: string[] = []): Promise<LocalPostgres> {
  const log = options.log ?? (() => {});
  const runAs = await unprivilegedUser();
  // realpath: postgres reports data_directory as given, and tmpdir() may be a symlink (macOS).
  const dir = await realpath(await mkdtemp(join(tmpdir(), 'pgregen-pg-')));
  const data = join(dir, 'data');
  const logPath = join(dir, 'postgres.log');
  let child: ChildProcess | undefined;
  // If the owner never calls stop() (crash, forgotten teardown), don't leave a cluster running.
  // SIGQUIT (immediate shutdown) and not SIGKILL: the postmaster then takes its backends down too,
  // where SIGKILL would leave a busy backend running on as an orphan.
  const onExit = () => {
    child?.kill('SIGQUIT');
    rmSync(dir, { recursive: true, force: true });
  };
  process.on('exit', onExit);

  try {
    if (runAs) await chown(dir, runAs.uid, runAs.gid);
    await create(data, dir, runAs, log);

    const port = options.port ?? (await freePort());
    const args = ['-D', data, '-p', String(port), '-k', dir, '-c', 'listen_addresses=127.0.0.1']
      .concat(['fsync=off', 'synchronous_commit=off', 'full_page_writes=off', 'max_connections=200', 'shared_buffers=256MB', ...settings]
        .flatMap((s) => ['-c', s]));
    const url = `postgres://postgres@127.0.0.1:${port}/postgres`;
    const launch = async () => {
      const logFile = await open(logPath, 'a');
      // uid/gid instead of `runuser`: runuser forks, so killing it would orphan the postmaster.
      const server = spawn(join(bin, 'postgres'), args, { cwd: dir, stdio: ['ignore', logFile.fd, logFile.fd], ...runAs });
      child = server;
      let spawnError: Error | undefined;
      server.on('error', (error) => (spawnError = error)); // e.g. EACCES; unhandled it would crash the process
      await logFile.close();
      const died = () => {
        if (spawnError) return `could not start (${spawnError.message})`;
        const status = server.exitCode ?? server.signalCode;
        return status === null ? undefined : `exited with ${status}`;
      };
      await waitUntilReady(url, data, died, logPath);
    };
    await launch();
    log(`postgres ready at ${url} (log: ${logPath})`);

    let stopping: Promise<void> | undefined;
    const stop = () =>
      (stopping ??= (async () => {
        await shutdown(child!);
        process.off('exit', onExit);
        await rm(dir, { recursive: true, force: true });
      })());
    const restart = async () => {
      if (stopping) throw new Error('postgres was stopped');
      await shutdown(child!);
      await launch();
      log(`postgres restarted at ${url}`);
    };
    return { url, stop, restart };
  } catch (error) {
    if (child) await shutdown(child);
    process.off('exit', onExit);
    await rm(dir, { recursive: true, force: true });
    throw error;
  }
}

/** The directory holding `postgres`, `initdb` and `pg_config`; same order as scripts/find-pg-bin.sh. */
async function findServerBinDir(): Promise<string> {
  const candidates: string[] = [];
  if (process.env.PG_BIN) candidates.push(process.env.PG_BIN);
  // Debian/Ubuntu keep server binaries off PATH, one directory per major version; newest first.
  const versions = await readdir('/usr/lib/postgresql').catch(() => [] as string[]);
  versions.sort((a, b) => b.localeCompare(a, 'en', { numeric: true }));
  candidates.push(...versions.map((v) => `/usr/lib/postgresql/${v}/bin`));
  candidates.push(...(process.env.PATH ?? '').split(delimiter).filter(Boolean));
  for (const dir of candidates) {
    const found = await Promise.all(['postgres', 'initdb', 'pg_config'].map((name) => exists(join(dir, name), constants.X_OK)));
    if (found.every(Boolean)) return dir;
  }
  throw new Error(
    'PostgreSQL server binaries (postgres, initdb, pg_config) not found in $PG_BIN, /usr/lib/postgresql/*/bin or PATH: ' +
      'install the PostgreSQL server, set PG_BIN to its bin directory, or set TEST_DATABASE_URL/DATABASE_URL',
  );
}

/** initdb and postgres refuse to run as root; as root, run them as the `postgres` system user. */
async function unprivilegedUser(): Promise<RunAs> {
  if (process.getuid?.() !== 0) return undefined;
  try {
    const uid = Number((await run('id', ['-u', 'postgres'])).stdout.trim());
    const gid = Number((await run('id', ['-g', 'postgres'])).stdout.trim());
    return { uid, gid };
  } catch {
    throw new Error(
      'running as root, and PostgreSQL refuses to run as root, but there is no `postgres` system user to run it as: ' +
        'create one (useradd --system postgres), run as a normal user, or set TEST_DATABASE_URL/DATABASE_URL',
    );
  }
}

async function runCommand(file: string, args: string[], cwd: string, runAs: RunAs): Promise<void> {
  try {
    await run(file, args, { cwd, ...runAs });
  } catch (error) {
    const e = error as Error & { stderr?: string; stdout?: string };
    throw new Error(`${file} failed: ${e.stderr || e.stdout || e.message}`.trim());
  }
}

/** Asks the OS for a free port; another process could take it before postgres binds, which is rare enough. */
async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve, reject) => server.once('error', reject).listen(0, '127.0.0.1', resolve));
  const address = server.address();
  await new Promise((resolve) => server.close(resolve));
  if (address === null || typeof address === 'string') throw new Error('could not pick a free TCP port');
  return address.port;
}

async function waitUntilReady(url: string, data: string, died: () => string | undefined, logPath: string): Promise<void> {
  const deadline = Date.now() + 30_000;
  let lastError: unknown;
  while (Date.now() < deadline) {
    const death = died();
    if (death) throw new Error(`postgres ${death} before accepting connections:\n${await tail(logPath)}`);
    const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 2_000 });
    let dataDirectory: string;
    try {
      await client.connect();
      dataDirectory = (await client.query('select current_setting($1) as dir', ['data_directory'])).rows[0].dir;
      await client.end();
    } catch (error) {
      lastError = error;
      await client.end().catch(() => {});
      await new Promise((resolve) => setTimeout(resolve, 100));
      continue;
    }
    // The port may belong to another server that was there first; ours then fails to bind.
    if (dataDirectory === data) return;
    throw new Error(`port ${new URL(url).port} is taken by another PostgreSQL (data directory ${dataDirectory}): pick another port`);
  }
  throw new Error(`postgres did not accept connections within 30 s (${String(lastError)}):\n${await tail(logPath)}`);
}

/** Fast shutdown (SIGINT: abort transactions, no waiting for clients); immediate (SIGQUIT) after 10 s. */
async function shutdown(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGINT');
  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(true), 10_000)));
  if (await Promise.race([exited.then(() => false), timedOut])) {
    child.kill('SIGQUIT');
    await exited;
  }
  clearTimeout(timer);
}

async function tail(path: string, lines = 30): Promise<string> {
  const text = await readFile(path, 'utf8').catch(() => '(no server log)');
  return text.trimEnd().split('\n').slice(-lines).join('\n');
}

async function exists(path: string, mode = constants.F_OK): Promise<boolean> {
  return access(path, mode).then(
    () => true,
    () => false,
  );
}
