export type Priority = 'demand' | 'prefetch' | 'background';

const RANK: Record<Priority, number> = { demand: 0, prefetch: 1, background: 2 };

/**
 * The priority of a piece of work that may become more urgent while it waits: a prefetch that a
 * demand read comes to need is raised to demand. Waiters of a `PrioritySemaphore` are ordered by
 * their urgency's priority at the time a slot frees, not at the time they queued.
 */
export class Urgency {
  private current: Priority;

  constructor(priority: Priority) {
    this.current = priority;
  }

  get priority(): Priority {
    return this.current;
  }

  /** Make this work at least as urgent as `priority` (never less urgent than it is). */
  raise(priority: Priority): void {
    if (RANK[priority] < RANK[this.current]) this.current = priority;
  }
}

/**
 * A counting semaphore whose waiters are served by priority, then in arrival order: a guest's
 * read (demand) overtakes boot-profile prefetch, which overtakes a background fill. A waiter that
 * queued with an `Urgency` is served by that urgency's priority when a slot frees, so raising it
 * moves the waiter up the queue.
 */
export class PrioritySemaphore {
  private active = 0;
  private readonly waiting: { urgency: Urgency; go: () => void }[] = [];

  constructor(readonly limit: number) {}

  /** Wait for a slot; resolves with the function that gives it back (idempotent). */
  async acquire(priority: Priority | Urgency): Promise<() => void> {
    if (this.active < this.limit) {
      this.active++;
      return this.releaser();
    }
    const urgency = typeof priority === 'string' ? new Urgency(priority) : priority;
    await new Promise<void>((go) => {
      this.waiting.push({ urgency, go });
    });
    return this.releaser();
  }

  /** Waiters now queued (for tests and statistics). */
  get queued(): number {
    return this.waiting.length;
  }

  /** The most urgent waiter now (priorities may have been raised since it queued), first come first. */
  private takeNext(): (() => void) | undefined {
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
    return best < 0 ? undefined : this.waiting.splice(best, 1)[0]?.go;
  }

  private releaser(): () => void {
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const next = this.takeNext();
      if (next) next();
      else this.active--;
    };
  }
}
