import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // every test file's temp dirs go when the file ends (test/helpers/temp-dirs.ts)
    setupFiles: ['test/helpers/temp-dirs-setup.ts'],
    // afterAll hooks in reverse order: the setup file's removal of temp dirs runs last (stated, not assumed)
    sequence: { hooks: 'stack' },
    testTimeout: 120_000,
    hookTimeout: 60_000,
    pool: 'forks',
    // two cores: registry processes and QEMU guests need room to breathe
    maxWorkers: 2,
  },
});
