import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // every test file's temp dirs go when the file ends (test/helpers/temp-dirs.ts)
    // ...and no daemon of the host's is used by accident (test/helpers/isolated-env-setup.ts)
    setupFiles: ['test/helpers/temp-dirs-setup.ts', 'test/helpers/isolated-env-setup.ts'],
    // afterAll hooks in reverse order: the setup file's removal of temp dirs runs last (stated, not assumed)
    sequence: { hooks: 'stack' },
    testTimeout: 120_000,
    hookTimeout: 60_000,
    pool: 'forks',
    // two cores: registry processes and QEMU guests need room to breathe
    maxWorkers: 2,
  },
});
