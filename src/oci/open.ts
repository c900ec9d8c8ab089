import { OciLayoutStore } from './layout/layout-store.js';
import { RegistryClient, type RegistryClientOptions } from './registry/transport.js';
import { RegistryRepository } from './registry/repository.js';
import type { ImageRef } from './ref.js';
import type { Target } from './store.js';

export interface OpenTargetOptions extends RegistryClientOptions {
  /** Create the layout directory when it does not exist (push, copy destination). */
  createLayout?: boolean;
}

/**
 * Opens the store a reference names. Registry clients are shared per host within a `Targets`
 * so that two repositories of one registry share connections and tokens, and blobs can be mounted.
 */
export class Targets {
  private readonly clients = new Map<string, RegistryClient>();

  constructor(private readonly options: RegistryClientOptions = {}) {}

  async open(ref: ImageRef, opts: { createLayout?: boolean } = {}): Promise<Target> {
    if (ref.kind === 'layout') {
      const store = new OciLayoutStore(ref.dir);
      if (opts.createLayout) await store.init();
      return store;
    }
    let client = this.clients.get(ref.registry);
    if (!client) {
      client = new RegistryClient(ref.registry, this.options);
      this.clients.set(ref.registry, client);
    }
    return new RegistryRepository(client, ref.repository);
  }

  async close(): Promise<void> {
    await Promise.all([...this.clients.values()].map((c) => c.close()));
    this.clients.clear();
  }
}

/** `fn` with a `Targets` of its own, closed (its connections with it) however `fn` ends. */
export async function withTargets<T>(options: RegistryClientOptions, fn: (targets: Targets) => Promise<T>): Promise<T> {
  const targets = new Targets(options);
  try {
    return await fn(targets);
  } finally {
    await targets.close();
  }
}
