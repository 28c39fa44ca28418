#!/usr/bin/env node
// Entry point of the `pgregen` command. Node >= 22.18 runs the TypeScript sources directly.
const [major, minor] = process.versions.node.split('.').map(Number);
if (major < 22 || (major === 22 && minor < 18)) {
  console.error(`pgregen: Node.js ${process.versions.node} is too old: pgregen needs Node.js 22.18 or newer (24 recommended)`);
  console.error('  hint: run it through ./run or npm run, which use the Node.js 24 installed with the dependencies');
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
const { main } = await import('../src/cli/main.ts');
process.exitCode = await main(process.argv);
