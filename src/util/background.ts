/**
 * Work a service started and does not wait for (its answer has gone already: a snapshot's chunks
 * kept in the host cache, a boot profile inherited), kept so that the service, when it closes,
 * lets that work finish before it closes what the work uses (the chunk cache's index).
 */
export class BackgroundWork {
  readonly #pending = new Set<Promise<unknown>>();

  /** Keep `p` until it settles. Its rejection is its owner's to handle; here it is only waited for. */
  add(p: Promise<unknown>): void {
    const kept = p.then(() => undefined, () => undefined).finally(() => this.#pending.delete(kept));
    this.#pending.add(kept);
  }

  /** Resolves once everything added so far has settled (never rejects). */
  async settled(): Promise<void> {
    await Promise.all([...this.#pending]);
  }
}
