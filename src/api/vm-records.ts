/**
 * What the daemon says about a VM and takes from a request, apart from managing it (vms.ts): the
 * API's view of a state row (host phases and the guest's marks apart), and request references.
 */
import { SlipwayError } from '../errors.js';
import { formatRef, parseRef } from '../oci/ref.js';
import type { VmInfo } from './schemas.js';
import type { VmRecord } from './state.js';

/** Guest marks are kept with the host phases under this prefix (one JSON column in the state database). */
export const GUEST_MARK = 'guest:';

export function toInfo(r: VmRecord): VmInfo {
  const timings: Record<string, number> = {};
  const guestTimings: Record<string, number> = {};
  for (const [k, v] of Object.entries(r.timings)) {
    if (k.startsWith(GUEST_MARK)) guestTimings[k.slice(GUEST_MARK.length)] = v;
    else timings[k] = v;
  }
  return { id: r.id, image: r.image, digest: r.digest, status: r.status, createdAt: new Date(r.createdAt).toISOString(), cpus: r.cpus, memoryMiB: r.memoryMiB, vmm: r.vmm, accel: r.accel, timings, guestTimings };
}

/** A reference from a request: registries and the embedded store's names, never a host path. */
export function checkRequestRef(text: string, field: string): string {
  if (text.startsWith('oci:')) throw new SlipwayError('INVALID_ARGUMENT', `${field}: oci:<dir> names a host directory, which a request may not; use a registry reference or an embedded-store name`);
  try {
    parseRef(text);
  } catch (err) {
    throw new SlipwayError('INVALID_ARGUMENT', `${field}: ${(err as Error).message}`);
  }
  return text;
}

/** The image with its tag replaced by the digest it resolved to: an adopted VM's disk is the one it booted. */
export function digestRef(image: string, digest: string): string {
  const { tag: _tag, ...ref } = parseRef(image);
  return formatRef({ ...ref, digest });
}
