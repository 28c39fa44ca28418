#!/usr/bin/env node
// Entry point of the `pgregen` command: checks the Node.js version, then runs the compiled command
// line in dist/ (built by `npm run build`; `npm ci`, `npm pack` and the tests build it too).
// Plain JavaScript that any Node.js parses, so that an old one gets this message and not a stack trace.
import { existsSync } from 'node:fs';

const MINIMUM = [22, 12];
const [major, minor] = process.versions.node.split('.').map(Number);
if (major < MINIMUM[0] || (major === MINIMUM[0] && minor < MINIMUM[1])) {
  console.error(`pgregen: Node.js ${process.versions.node} is too old: pgregen needs Node.js ${MINIMUM.join('.')} or newer`);
  process.exit(1);
}
const compiled = new URL('../dist/cli/main.js', import.meta.url);
if (!existsSync(compiled)) {
  console.error('pgregen: the compiled command line (dist/) is missing: in a checkout of pgregen, run npm run build');
  process.exit(1);
}
// A reader that stops early (pgregen --help | head) closes the pipe: stop writing and exit quietly,
// without a stack trace.
for (const stream of [process.stdout, process.stderr]) {
  stream.on('error', (err) => {
    if (err.code === 'EPIPE') process.exit(process.exitCode ?? 0);
    throw err;
  });
}
const { main } = await import(compiled.href);
process.exitCode = await main(process.argv);
