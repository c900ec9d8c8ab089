/**
 * The API's request bodies, as zod schemas: strict (an unknown field is an error), bounded (every
 * string, list and number has a limit), and the source of the OpenAPI document's schemas.
 */
import { z } from 'zod';

const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]{0,127}$/;

export const MAX_BODY_BYTES = 64 * 1024;
/** exec's stdin travels in the body, so exec may send more */
export const MAX_EXEC_BODY_BYTES = 2 * 1024 * 1024;

const envSchema = z
  .record(z.string().regex(ENV_NAME, 'an environment variable name: letters, digits and _, not starting with a digit'), z.string().max(8192))
  .refine((e) => Object.keys(e).length <= 128, 'at most 128 variables');

const imageRef = z.string().min(1).max(512).describe('a registry reference (host/repo:tag or @sha256:...) or an embedded-store name (name:tag); never oci:<dir>');

/** A VM's vCPUs and RAM (MiB) as the API takes them; the CLI checks its flags against the same. */
export const VM_SHAPE_BOUNDS = { cpus: { min: 1, max: 64 }, memoryMiB: { min: 64, max: 1024 * 1024 } } as const;

export const CreateVmBody = z
  .object({
    image: imageRef,
    cpus: z.number().int().min(VM_SHAPE_BOUNDS.cpus.min).max(VM_SHAPE_BOUNDS.cpus.max).optional(),
    memoryMiB: z.number().int().min(VM_SHAPE_BOUNDS.memoryMiB.min).max(VM_SHAPE_BOUNDS.memoryMiB.max).optional(),
    env: envSchema.optional(),
    vmm: z.enum(['qemu', 'cloud-hypervisor']).optional(),
    net: z.enum(['none', 'user']).optional(),
    prefetch: z.enum(['all', 'profile', 'none']).optional().describe('what the disk backend fetches besides the guest\'s misses: the boot profile (default), the whole disk at low priority, or nothing'),
    memoryLoading: z.enum(['lazy', 'eager']).optional().describe('restoring a memory snapshot: load RAM on demand over FUSE (the default where the host allows it) or whole before resuming'),
  })
  .strict();

export const ExecBody = z
  .object({
    argv: z.array(z.string().min(1).max(65536)).min(1).max(1024),
    env: envSchema.optional(),
    cwd: z.string().startsWith('/').max(4096).optional(),
    stdin: z.string().max(1024 * 1024).optional().describe('sent to the command, then closed (UTF-8)'),
    timeoutMs: z.number().int().min(1).max(24 * 3600 * 1000).optional().describe('the command is killed (SIGKILL) after this long'),
  })
  .strict();

export const SnapshotBody = z.object({
  ref: imageRef.describe('where to push the snapshot: a reference with a tag'),
  memory: z.boolean().optional().describe('also the VM\'s memory and device state: a memory snapshot that resumes where the VM was (docs/snapshots.md)'),
}).strict();

export const PrefetchBody = z.object({ image: imageRef }).strict();

export const VmId = z.string().regex(/^[0-9a-f]{12}$/, 'a VM id: 12 hex digits');

/** The API's types, shared by the daemon (vms.ts) and the client (src/client). */
export type CreateVmRequest = z.infer<typeof CreateVmBody>;
export type ExecRequest = z.infer<typeof ExecBody>;

export interface VmInfo {
  id: string;
  image: string;
  /** the manifest digest the image resolved to */
  digest: string | null;
  status: 'booting' | 'running' | 'stopping';
  createdAt: string;
  cpus: number;
  memoryMiB: number;
  vmm: 'qemu' | 'cloud-hypervisor';
  accel: 'kvm' | 'tcg' | null;
  /** host boot phases, ms each, in the order they ran */
  timings: Record<string, number>;
  /** the guest's marks from slipway-init, ms since its kernel started (init_start, root_mounted, agent_started, ...) */
  guestTimings: Record<string, number>;
  /** a memory snapshot's restore (in the create answer only): how its RAM was loaded by its first exec */
  restore?: RestoreFigures;
}

/** What a restore had loaded by its first exec (docs/snapshots.md). */
export interface RestoreFigures {
  memoryLoading: 'lazy' | 'eager';
  /** chunks in the working-set profile it restored with (0: none; this restore recorded one) */
  workingSetChunks: number;
  /** RAM chunks fetched from the registry by the first exec, and their size (bytes each) */
  ramChunksFetched: number;
  ramChunkBytes: number;
  /** RAM chunks the guest (and slipway-blk) had touched by the first exec (lazy only) */
  ramChunksTouched?: number;
}

/** A memory snapshot: `<ref>` (device state), `<ref>.disk` and `<ref>.ram` (docs/snapshots.md). */
export interface MemorySnapshotResult {
  ref: string;
  /** the memory snapshot manifest, and the disk and RAM manifests it names */
  digest: string;
  disk: string;
  ram: string;
  ramUploadedBytes: number;
  diskUploadedBytes: number;
  deviceStateBytes: number;
  /** pausedMs: how long the vCPUs were stopped; pushMs: the uploads after they ran again */
  timings: { pausedMs: number; pushMs: number; totalMs: number };
}

export interface SnapshotResult {
  ref: string;
  digest: string;
  base: string;
  dirtyChunks: number;
  newChunks: number;
  uploadedBytes: number;
  timings: { quiesceMs: number; stageMs: number; pushMs: number; totalMs: number };
}


/** The first problem with a body, as `field: what is wrong` (the field path dotted). */
export function describeIssue(error: z.ZodError): { field: string; message: string } {
  const issue = error.issues[0];
  if (!issue) return { field: '', message: 'invalid body' };
  if (issue.code === 'unrecognized_keys') {
    const key = issue.keys[0] ?? '';
    const field = [...issue.path, key].join('.');
    return { field, message: `${field}: unknown field` };
  }
  const field = issue.path.join('.') || '(body)';
  return { field, message: `${field}: ${issue.message}` };
}

export { z };
