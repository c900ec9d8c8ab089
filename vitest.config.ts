import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 120_000,
    hookTimeout: 60_000,
    pool: 'forks',
    // two cores: registry processes and QEMU guests need room to breathe
    maxWorkers: 2,
  },
});
