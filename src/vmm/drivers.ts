/**
 * The VMM drivers by name, for the CLI and the daemon alike.
 */
import type { AccelVerdict } from './accel.js';
import { CloudHypervisorDriver } from './cloud-hypervisor.js';
import type { VmmDriver } from './driver.js';
import { QemuDriver } from './qemu.js';

export type VmmName = VmmDriver['name'];

export const VMM_NAMES: readonly VmmName[] = ['qemu', 'cloud-hypervisor'];

export interface DriverOptions {
  /** where QEMU's accelerator verdict is kept (default: the chunk cache's directory) */
  cacheDir?: string;
  /** told of an accelerator verdict decided (not read from the cache) in this process */
  onAccelDecided?: (verdict: AccelVerdict) => void;
}

/** A driver for `name`. Errors: none (an unknown name is a type error; parse with parseVmmName). */
export function driverFor(name: VmmName, opts: DriverOptions = {}): VmmDriver {
  return name === 'qemu' ? new QemuDriver(opts) : new CloudHypervisorDriver();
}

/** `qemu` or `cloud-hypervisor`, else undefined. */
export function parseVmmName(text: string): VmmName | undefined {
  return (VMM_NAMES as readonly string[]).includes(text) ? (text as VmmName) : undefined;
}
