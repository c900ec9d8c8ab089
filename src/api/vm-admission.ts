/**
 * Admission of new VMs (docs/api.md, "Creating a VM"): at most `maxVms` VMs (rows in the state,
 * plus creates past the count whose row is not written yet), and at most `maxConcurrentBoots`
 * booting at once, first come first served, with at most `maxQueuedBoots` waiting.
 */
import { SlipwayError } from '../errors.js';

export interface AdmissionLimits {
  maxConcurrentBoots: number;
  maxQueuedBoots: number;
  maxVms: number;
}

export class BootAdmission {
  private booting = 0;
  /** creates past the VM-count check whose row is not written yet */
  private reserved = 0;
  private readonly queue: (() => void)[] = [];

  constructor(private readonly limits: AdmissionLimits) {}

  get counts(): { booting: number; queued: number } {
    return { booting: this.booting, queued: this.queue.length };
  }

  /**
   * Count a new VM against maxVms, `rows` being the VMs the state holds: counted and reserved at
   * once, so concurrent creates cannot all slip under the limit. Returns the release of the
   * reservation (idempotent), for when the VM's row is written or the create fails.
   * Errors: LIMIT_EXCEEDED.
   */
  reserve(rows: number): () => void {
    if (rows + this.reserved >= this.limits.maxVms) throw new SlipwayError('LIMIT_EXCEEDED', `this daemon runs at most ${this.limits.maxVms} VMs`);
    this.reserved++;
    let held = true;
    return () => {
      if (held) this.reserved--;
      held = false;
    };
  }

  /**
   * A boot slot: at most maxConcurrentBoots at once, first come first served. A released slot is
   * handed straight to the next waiter (never free for a moment, for a newcomer to take). Resolves
   * with the slot's release (idempotent). Errors: LIMIT_EXCEEDED when maxQueuedBoots already
   * wait; ABORTED when `signal` fires while waiting.
   */
  async slot(signal?: AbortSignal): Promise<() => void> {
    if (this.booting >= this.limits.maxConcurrentBoots) {
      if (this.queue.length >= this.limits.maxQueuedBoots) throw new SlipwayError('LIMIT_EXCEEDED', `${this.booting} VMs are booting and ${this.queue.length} wait: over the limit of ${this.limits.maxQueuedBoots} queued boots`);
      await new Promise<void>((resolve, reject) => {
        const waiter = (): void => {
          signal?.removeEventListener('abort', onAbort);
          resolve();
        };
        const onAbort = (): void => {
          const i = this.queue.indexOf(waiter);
          if (i >= 0) this.queue.splice(i, 1);
          reject(new SlipwayError('ABORTED', 'the client went away while its boot waited'));
        };
        signal?.addEventListener('abort', onAbort, { once: true });
        this.queue.push(waiter);
      });
    } else {
      this.booting++;
    }
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const next = this.queue.shift();
      if (next) next();
      else this.booting--;
    };
  }
}
