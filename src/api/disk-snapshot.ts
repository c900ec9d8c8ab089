/**
 * A disk snapshot of a running VM (docs/architecture.md, "Data flow of a snapshot"): sync and
 * freeze the guest's root file system, copy the overlay's dirty chunks aside, thaw (the guest is
 * frozen only for the copy), then push them as a delta of the disk the VM booted from. A failed
 * push leaves the tag as it was and the VM running.
 */
import { randomBytes } from 'node:crypto';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { ChunkCache } from '../cache/chunk-cache.js';
import { copyBootProfile } from '../cache/boot-profile.js';
import { inheritBootProfile } from '../cache/profile-inheritance.js';
import { pushSnapshot, readDirtyBitmap, removeStaging, seedChunks, stageDirtyChunks } from '../disk/snapshot.js';
import { SlipwayError } from '../errors.js';
import type { AgentClient } from '../guest/agent-client.js';
import { formatRef, type ImageRef } from '../oci/ref.js';
import type { ServedDisk } from '../serve/backend.js';
import type { BackgroundWork } from '../util/background.js';
import type { Logger } from '../util/log.js';
import { logProgress } from '../util/progress.js';
import type { SnapshotResult } from './schemas.js';

export interface DiskSnapshotDeps {
  cache: ChunkCache;
  logger: Logger;
  /** where staged chunks wait for their push: outside the VM's work directory (a delete may follow) */
  stagingDir: string;
  timeouts: { syncMs: number; freezeMs: number };
  /** where the work after the answer is kept, for the daemon to wait for when it closes */
  background?: BackgroundWork;
}

export interface DiskSnapshotVm {
  id: string;
  served: ServedDisk;
  /** the VM's agent, connected */
  agent(): Promise<AgentClient>;
  /** the thaw failed (or its answer was lost): thaw again on the next agent connection */
  thawLater(): void;
}

/**
 * Snapshot `vm`'s disk into `parsed` (a tag). Resolves with what was pushed and how long each step
 * took; the snapshot's own chunks then go into this host's tier 1 in the background. Errors:
 * CONFLICT for a read-only disk, the agent's errors (sync, freeze), the registry's.
 */
export async function snapshotDisk(deps: DiskSnapshotDeps, vm: DiskSnapshotVm, parsed: ImageRef & { tag: string }): Promise<SnapshotResult> {
  const log = deps.logger.child({ vm: vm.id, snapshot: formatRef(parsed) });
  const t0 = performance.now();
  const staging = join(deps.stagingDir, `${vm.id}-${randomBytes(4).toString('hex')}.staging`);
  let seeding: Promise<unknown> | undefined;
  try {
    await mkdir(deps.stagingDir, { recursive: true, mode: 0o700 });
    const overlayDir = vm.served.overlayDir;
    if (!overlayDir) throw new SlipwayError('CONFLICT', `VM ${vm.id} has a read-only disk: nothing to snapshot`);
    const agent = await vm.agent();
    const base = vm.served.disk.artifact;
    await agent.sync({ timeoutMs: deps.timeouts.syncMs });
    let tFrozen = performance.now();
    let dirty;
    try {
      // inside the try: a freeze whose answer is lost may still have frozen the guest
      await agent.fsfreeze('/', false, { timeoutMs: deps.timeouts.freezeMs });
      tFrozen = performance.now();
      dirty = await readDirtyBitmap(join(overlayDir, 'dirty'), base.index);
      await stageDirtyChunks(join(overlayDir, 'data'), dirty, staging);
    } finally {
      await agent.fsfreeze('/', true, { timeoutMs: deps.timeouts.freezeMs }).catch((err: unknown) => {
        // thawing something not frozen fails harmlessly; anything else: thaw on the next connection
        log.error('could not thaw the guest file system; will again on the next agent connection', { error: (err as Error).message });
        vm.thawLater();
      });
    }
    const tThawed = performance.now();
    log.info('snapshot staged', { dirtyChunks: dirty.chunks.length, frozenMs: Math.round(tThawed - tFrozen) });
    const target = await deps.cache.targets.open(parsed);
    const result = await pushSnapshot({
      base, baseTarget: vm.served.disk.origin, staging, dirty, target, tag: parsed.tag, pool: deps.cache.pool,
      annotations: { 'org.opencontainers.image.created': new Date().toISOString() },
      onProgress: logProgress((m, f) => log.info(m, f)),
    });
    const tDone = performance.now();
    const out: SnapshotResult = {
      ref: formatRef(parsed), digest: result.manifest.digest, base: base.manifestDescriptor.digest, dirtyChunks: result.dirtyChunks, newChunks: result.newChunks, uploadedBytes: result.uploadedBytes,
      timings: { quiesceMs: Math.round(tFrozen - t0), stageMs: Math.round(tThawed - tFrozen), pushMs: Math.round(tDone - tThawed), totalMs: Math.round(tDone - t0) },
    };
    log.info('snapshot pushed', { ...out });
    // the snapshot boots with its base's boot profile (its chunks are where the base's are), in
    // the background: the answer does not wait for two more registry round trips
    // (a snapshot pushed to another repository than its base's reads the base's profile there:
    // it is copied along, as the base's blobs were)
    const baseOrigin = vm.served.disk.origin;
    deps.background?.add((async () => {
      if (baseOrigin.name !== target.name) await copyBootProfile(baseOrigin, target, base.manifestDescriptor.digest);
      return inheritBootProfile(target, result, result.dedupedAgainst);
    })().then(
      (p) => { if (p) log.info('snapshot given its base\'s boot profile', { from: p.from, chunks: p.chunks, unchangedChunks: p.unchangedChunks }); },
      (err: unknown) => log.warn('could not give the snapshot its base\'s boot profile; its first boot records one', { error: err instanceof Error ? err.message : String(err) }),
    ));
    // after the answer: the snapshot's own chunks go into this host's tier 1, so booting it here
    // fetches nothing (the staging file goes when that is done)
    const cache = deps.cache;
    seeding = seedChunks(staging, dirty, cache.pool, (hex, data) => cache.putChunk(hex, data))
      .then((n) => log.info('snapshot chunks kept in the host cache', { chunks: n }), (err: unknown) => log.warn('could not keep the snapshot chunks in the host cache', { error: (err as Error).message }))
      .finally(() => removeStaging(staging));
    deps.background?.add(seeding);
    return out;
  } catch (err) {
    log.warn('snapshot failed', { error: (err as Error).message });
    throw err;
  } finally {
    if (!seeding) await removeStaging(staging);
  }
}
