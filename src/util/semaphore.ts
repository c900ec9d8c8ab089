export type Priority = 'demand' | 'prefetch' | 'background';

const RANK: Record<Priority, number> = { demand: 0, prefetch: 1, background: 2 };

/**
 * The priority of a piece of work that may become more urgent while it waits: a prefetch that a
 * demand read comes to need is raised to demand. Waiters of a `PrioritySemaphore` are ordered by
 * their urgency's priority at the time a slot frees, not at the time they queued.
 */
export class Urgency {
  private current: Priority;
  private readonly listeners = new Set<() => void>();

  constructor(priority: Priority) {
    this.current = priority;
  }

  get priority(): Priority {
    return this.current;
  }

  /** Make this work at least as urgent as `priority` (never less urgent than it is). */
  raise(priority: Priority): void {
    if (RANK[priority] >= RANK[this.current]) return;
    this.current = priority;
    for (const fn of [...this.listeners]) fn();
  }

  /** Call `fn` whenever this urgency is raised, until the returned function is called. */
  onRaise(fn: () => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }
}

/**
 * A counting semaphore whose waiters are served by priority, then in arrival order: a guest's
 * read (demand) overtakes boot-profile prefetch and speculation, which overtake a background fill.
 * A waiter that queued with an `Urgency` is served by that urgency's priority when a slot frees,
 * so raising it moves the waiter up the queue (and may let it into a reserved slot at once).
 *
 * `reservedForDemand` of the `limit` slots are only ever given to demand work: prefetch and
 * background work hold at most `limit - reservedForDemand` at a time, so a demand request never
 * waits for a slot that lower-priority requests on the wire hold (it may wait for other demand).
 */
export class PrioritySemaphore {
  private active = 0;
  private readonly waiting: { urgency: Urgency; go: () => void; unlisten: () => void }[] = [];

  constructor(readonly limit: number, readonly reservedForDemand = 0) {
    if (!Number.isSafeInteger(limit) || limit < 1 || !Number.isSafeInteger(reservedForDemand) || reservedForDemand < 0 || reservedForDemand >= limit) {
      throw new RangeError(`PrioritySemaphore: need 0 <= reservedForDemand (${reservedForDemand}) < limit (${limit})`);
    }
  }

  /** Whether work of this priority may take a slot now. */
  private mayStart(priority: Priority): boolean {
    return this.active < (priority === 'demand' ? this.limit : this.limit - this.reservedForDemand);
  }

  /** Wait for a slot; resolves with the function that gives it back (idempotent). */
  async acquire(priority: Priority | Urgency): Promise<() => void> {
    const urgency = typeof priority === 'string' ? new Urgency(priority) : priority;
    if (this.waiting.length === 0 && this.mayStart(urgency.priority)) {
      this.active++;
      return this.releaser();
    }
    await new Promise<void>((go) => {
      // a raise may let this waiter into a reserved slot before any slot frees
      const unlisten = urgency.onRaise(() => this.dispatch());
      this.waiting.push({ urgency, go, unlisten });
      this.dispatch();
    });
    return this.releaser();
  }

  /** Waiters now queued (for tests and statistics). */
  get queued(): number {
    return this.waiting.length;
  }

  /** Slots now held. */
  get inUse(): number {
    return this.active;
  }

  /** Start the most urgent waiters (priorities may have been raised since they queued), first come first, while they may start. */
  private dispatch(): void {
    for (;;) {
      // `waiting` is in arrival order: the first of the lowest rank wins
      let best = -1;
      let bestRank = Number.POSITIVE_INFINITY;
      this.waiting.forEach((w, i) => {
        const rank = RANK[w.urgency.priority];
        if (rank < bestRank) {
          best = i;
          bestRank = rank;
        }
      });
      if (best < 0) return;
      const w = this.waiting[best] as (typeof this.waiting)[number];
      if (!this.mayStart(w.urgency.priority)) return;
      this.waiting.splice(best, 1);
      w.unlisten();
      this.active++;
      w.go();
    }
  }

  private releaser(): () => void {
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.active--;
      this.dispatch();
    };
  }
}
