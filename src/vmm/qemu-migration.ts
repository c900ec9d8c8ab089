/**
 * Device state in and out of a QEMU VM over QMP, for memory snapshots (docs/snapshots.md).
 *
 * QEMU 7.2 has no `file:` migration target and no `mapped-ram`; what works with a vhost-user-blk
 * disk is guest RAM in a shared file (`memory-backend-file,share=on` on tmpfs) plus the
 * `x-ignore-shared` capability: the migration stream then carries only device state (a few
 * hundred KB) and the RAM file is the memory image. Saving: `stop`, `migrate` to `exec:cat > F`,
 * wait for `completed`. Loading: a QEMU started with `-S -incoming defer` and the same machine,
 * devices and RAM size, `migrate-incoming` on a unix socket the file is streamed into, wait until
 * the state is in, `cont`.
 * (qemu/qemu docs/devel/migration; qapi/migration.json for the commands and states.)
 */
import { readFile, rm, stat } from 'node:fs/promises';
import { connect } from 'node:net';
import { dirname, join } from 'node:path';
import { SlipwayError } from '../errors.js';
import type { MemorySnapshotOps, SavedVmState } from './driver.js';
import type { QmpClient } from './qmp.js';

/** The device-state file in a saved state's directory (the artifact's one state layer). */
export const QEMU_DEVICE_STATE_FILE = 'device-state';

interface MigrationInfo {
  status?: string;
  'error-desc'?: string;
}

/** `exec:` runs through /bin/sh: only paths slipway made (no quotes, no shell metacharacters) go in. */
function shellSafePath(path: string): string {
  if (!/^[A-Za-z0-9_./-]+$/.test(path)) throw new SlipwayError('INVALID_ARGUMENT', `device state path ${JSON.stringify(path)} has characters a shell would read`);
  return path;
}

async function enableIgnoreShared(qmp: QmpClient): Promise<void> {
  await qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'x-ignore-shared', state: true }] });
}

/** Poll `query-migrate` until it is completed (resolves) or failed/cancelled (VMM_ERROR), for at most `timeoutMs`. */
async function waitForMigration(qmp: QmpClient, what: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const info = await qmp.execute<MigrationInfo>('query-migrate');
    if (info.status === 'completed') return;
    if (info.status === 'failed' || info.status === 'cancelled') {
      throw new SlipwayError('VMM_ERROR', `${what}: migration ${info.status}${info['error-desc'] ? `: ${info['error-desc']}` : ''}`);
    }
    if (Date.now() > deadline) throw new SlipwayError('VMM_ERROR', `${what}: migration still ${info.status ?? 'not started'} after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

/**
 * Send `file` into the unix socket at `sock` (a migration stream to a QEMU listening there), within
 * `timeoutMs`. Resolves once the bytes are written or the connection has ended, whichever first:
 * QEMU closes its end as soon as it has read the stream's end, which may be before this side's
 * shutdown completes, and whether the state loaded is QEMU's to say (the caller asks it; a QEMU
 * that fails the load exits). Rejects when QEMU cannot be reached, or does not take the bytes or
 * close in time (the connection is then destroyed).
 */
async function sendFile(file: string, sock: string, timeoutMs: number): Promise<void> {
  const data = await readFile(file);
  const conn = connect(sock);
  conn.on('data', () => undefined); // QEMU sends nothing back; nothing is kept
  let timer: NodeJS.Timeout | undefined;
  let connected = false;
  try {
    await new Promise<void>((resolve, reject) => {
      timer = setTimeout(() => reject(new Error(`QEMU did not take the device state within ${timeoutMs} ms`)), timeoutMs);
      conn.on('error', (err) => (connected ? resolve() : reject(err)));
      conn.once('close', () => resolve());
      conn.once('connect', () => {
        connected = true;
        conn.end(data, () => resolve());
      });
    });
  } catch (err) {
    conn.destroy();
    throw err;
  } finally {
    clearTimeout(timer);
    conn.destroySoon();
  }
}

/** Memory-snapshot operations on one QEMU VM (its RAM must be a shared file: VmSpec.memoryFile). */
export class QemuMemoryOps implements MemorySnapshotOps {
  readonly vmm = 'qemu' as const;

  constructor(private readonly qmp: () => Promise<QmpClient>, private readonly memoryFile: string) {}

  /** Stop the vCPUs (QMP `stop`); I/O in flight completes first (vhost-user GET_VRING_BASE). */
  async pause(): Promise<void> {
    await (await this.qmp()).execute('stop');
  }

  /** Run again after a pause or a save (`cont`). */
  async resume(): Promise<void> {
    await (await this.qmp()).execute('cont');
  }

  /** A paused VM's device state into `dir/device-state`; its RAM is the memory file itself (live). */
  async save(dir: string): Promise<SavedVmState> {
    const file = join(dir, QEMU_DEVICE_STATE_FILE);
    await this.saveDeviceState(file);
    return { files: [file], ram: { file: this.memoryFile, live: true } };
  }

  /** Load `dir/device-state` into a VM started with `incoming` (its RAM the memory file, already written), then run it. */
  async restore(dir: string): Promise<{ memory: 'shared-file' }> {
    await this.loadDeviceState(join(dir, QEMU_DEVICE_STATE_FILE));
    return { memory: 'shared-file' };
  }

  /**
   * Write a paused VM's device state to `file` (RAM left out: x-ignore-shared). Resolves with its
   * size in bytes. Errors: VMM_ERROR with QEMU's words when the migration fails.
   */
  async saveDeviceState(file: string, timeoutMs = 60_000): Promise<{ bytes: number }> {
    const qmp = await this.qmp();
    await enableIgnoreShared(qmp);
    await qmp.execute('migrate', { uri: `exec:cat > ${shellSafePath(file)}` });
    await waitForMigration(qmp, 'saving device state', timeoutMs);
    return { bytes: (await stat(file)).size };
  }

  /**
   * Load device state into a VM started with `incoming` (paused, `-incoming defer`), then run it.
   * Errors: VMM_ERROR when QEMU refuses the state (another machine shape, a corrupt file).
   */
  async loadDeviceState(file: string, timeoutMs = 60_000): Promise<void> {
    const qmp = await this.qmp();
    await enableIgnoreShared(qmp);
    // the state goes in over a unix socket QEMU listens on (no shell and no `cat` forked by a QEMU
    // whose page tables span the guest's RAM and its translation buffer)
    // (a name no longer than the agent's socket's: the work directory's limit stays the boot's)
    const sock = join(dirname(file), 'state.sock');
    await rm(sock, { force: true });
    const deadline = Date.now() + timeoutMs;
    await qmp.execute('migrate-incoming', { uri: `unix:${sock}` });
    await sendFile(file, sock, timeoutMs).catch((err: unknown) => {
      // QEMU went away or closed the stream: its exit (and what it said) is the boot watch's to report
      throw new SlipwayError('VMM_ERROR', `loading device state: sending ${file} to QEMU: ${(err as Error).message}`);
    }).finally(() => rm(sock, { force: true }));
    // the destination is `inmigrate` until the state is in, then `paused` (it was started with -S);
    // a state QEMU cannot load ends the process, which the boot watch reports
    for (;;) {
      const { status } = await qmp.execute<{ status: string }>('query-status');
      if (status === 'paused' || status === 'prelaunch') break;
      if (status !== 'inmigrate') throw new SlipwayError('VMM_ERROR', `loading device state: the VM is ${status}`);
      if (Date.now() > deadline) throw new SlipwayError('VMM_ERROR', `loading device state: still in migration after ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 2));
    }
    await qmp.execute('cont');
  }
}
