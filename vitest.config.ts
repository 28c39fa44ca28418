import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    // Starts (or connects to) PostgreSQL once and builds the template database the test files copy.
    globalSetup: ['test/global-setup.ts'],
    include: ['test/**/*.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 120_000,
    pool: 'forks',
    // Each file works in its own database, so files can run side by side; 2 matches the 2-core CI box.
    fileParallelism: true,
    maxWorkers: 2,
    // vitest's own summary, plus one plain "tests: N passed, N failed" line for CI
    reporters: ['default', './test/support/summary-reporter.ts'],
  },
});
