/**
 * What most registry-backed tests start from: a real docker-registry, a worker pool of two and a
 * `Targets`, started before the file's own beforeAll and stopped after its tests. Calling
 * `registryBed` at a file's top level registers the hooks.
 */
import { afterAll, beforeAll } from 'vitest';
import { Targets } from '../../src/oci/open.js';
import { WorkerPool } from '../../src/workers/pool.js';
import { startRegistry, type TestRegistry } from './registry.js';

export interface RegistryBed {
  readonly registry: TestRegistry;
  readonly pool: WorkerPool;
  readonly targets: Targets;
}

export function registryBed(): RegistryBed {
  let registry: TestRegistry | undefined;
  let pool: WorkerPool | undefined;
  const targets = new Targets();
  beforeAll(async () => {
    registry = await startRegistry();
    pool = new WorkerPool(2);
  });
  afterAll(async () => {
    await pool?.close();
    await targets.close();
    await registry?.stop();
  });
  return {
    get registry(): TestRegistry {
      if (!registry) throw new Error('the registry starts in beforeAll');
      return registry;
    },
    get pool(): WorkerPool {
      if (!pool) throw new Error('the worker pool starts in beforeAll');
      return pool;
    },
    targets,
  };
}
