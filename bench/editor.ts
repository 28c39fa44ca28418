// The application's editor, in a process of its own (benchmarks I and K): one autocommit UPDATE of
// the text at a time, on random rows, each started at its slot of a steady rate (a slow edit does not
// delay the next slot), client-side wall time each. A process of its own, as an application is: in
// the benchmark's process the edits' timings would also count the event loop's other work (the local
// embedding server hashing vectors, the samplers), which an application's writes never wait on.
//
// As a module: startEditor() forks this file and returns a handle whose stop() ends the edits and
// resolves with their timings. As the child: reads its settings from argv, edits until the parent
// sends 'stop', then sends its samples and exits.
import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { mulberry32 } from '../src/prng.ts';

export interface EditorSettings {
  url: string;
  /** The table edited: `update <table> set body = $2 || substr(body, length($2) + 1) where id = $1`. */
  table: string;
  /** Rows 1..rows are edited. */
  rows: number;
  perSecond: number;
  seed: number;
}

export interface EditorTimings {
  /** Milliseconds per edit, in order. */
  samples: number[];
  seconds: number;
}

export interface Editor {
  /** Ends the edits (the one in flight finishes) and resolves with their timings. */
  stop(): Promise<EditorTimings>;
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Forks the editor and resolves once its connection is open and its statement prepared. */
export async function startEditor(settings: EditorSettings): Promise<Editor> {
  const child: ChildProcess = fork(fileURLToPath(import.meta.url), [JSON.stringify(settings)], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const reap = () => { if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL'); };
  process.on('exit', reap);
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => { process.off('exit', reap); resolve(code); }));
  const message = (kind: string) => new Promise<Record<string, unknown>>((resolve, reject) => {
    const onMessage = (m: Record<string, unknown>) => {
      if (m.kind === kind) { child.off('message', onMessage); resolve(m); }
    };
    child.on('message', onMessage);
    void exited.then((code) => reject(new Error(`the editor exited with ${code} before it sent '${kind}'`)));
  });
  await message('ready');
  return {
    async stop() {
      const done = message('timings');
      child.send('stop');
      const m = await done;
      await exited;
      return { samples: m.samples as number[], seconds: Number(m.seconds) };
    },
  };
}

async function runChild(settings: EditorSettings): Promise<void> {
  const editor = new pg.Client({ connectionString: settings.url, application_name: 'pgregen bench editor' });
  await editor.connect();
  const random = mulberry32(settings.seed);
  const text = `update ${settings.table} set body = $2 || substr(body, length($2) + 1) where id = $1`;
  await editor.query({ name: 'edit', text, values: [1, 'warm '] });
  let stopping = false;
  process.on('message', (m) => { if (m === 'stop') stopping = true; });
  process.send!({ kind: 'ready' });
  const samples: number[] = [];
  const t0 = performance.now();
  for (let i = 0; !stopping; i++) {
    const wait = t0 + (i * 1000) / settings.perSecond - performance.now();
    if (wait > 0) await sleep(wait);
    if (stopping) break;
    const t = performance.now();
    await editor.query({ name: 'edit', text, values: [1 + Math.floor(random() * settings.rows), `edit ${i}: `] });
    samples.push(performance.now() - t);
  }
  const seconds = (performance.now() - t0) / 1000;
  await editor.end();
  process.send!({ kind: 'timings', samples, seconds }, () => process.disconnect());
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  runChild(JSON.parse(process.argv[2]!) as EditorSettings).catch((err: Error) => {
    process.stderr.write(`editor: ${err.stack ?? err.message}\n`);
    process.exit(1);
  });
}
