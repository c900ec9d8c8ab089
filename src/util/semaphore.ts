export type Priority = 'demand' | 'prefetch' | 'background';

const RANK: Record<Priority, number> = { demand: 0, prefetch: 1, background: 2 };

/**
 * A counting semaphore whose waiters are served by priority, then in arrival order: a guest's
 * read (demand) overtakes boot-profile prefetch, which overtakes a background fill.
 */
export class PrioritySemaphore {
  private active = 0;
  private readonly waiting: { rank: number; seq: number; go: () => void }[] = [];
  private seq = 0;

  constructor(readonly limit: number) {}

  async acquire(priority: Priority): Promise<() => void> {
    if (this.active < this.limit) {
      this.active++;
      return this.releaser();
    }
    await new Promise<void>((go) => {
      const entry = { rank: RANK[priority], seq: this.seq++, go };
      let i = this.waiting.length;
      while (i > 0 && (this.waiting[i - 1] as typeof entry).rank > entry.rank) i--;
      this.waiting.splice(i, 0, entry);
    });
    return this.releaser();
  }

  private releaser(): () => void {
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const next = this.waiting.shift();
      if (next) next.go();
      else this.active--;
    };
  }
}
