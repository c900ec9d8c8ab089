/**
 * libslipway-restore-wait.so (vhost-user-blk/restore-wait.c) in a real QEMU: started before its
 * memory backend's file and a client chardev's socket exist, QEMU waits for them instead of
 * creating a plain file in the RAM's place (what it does unaided) or sleeping a reconnect interval;
 * past the wait it fails rather than run on a file of its own.
 * The daemon's use of it (a lazy restore started early) is test/memory-snapshot.test.ts's.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, renameSync, symlinkSync, truncateSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { join } from 'node:path';
import { ensureBackendBuilt } from '../src/serve/backend.js';
import { QmpClient } from '../src/vmm/qmp.js';
import { noHugepageEnv, qemuBinary, restoreWaitLibrary } from '../src/vmm/qemu.js';
import { tempDir } from './helpers/images.js';

const children: ChildProcess[] = [];
const servers: Server[] = [];
afterEach(() => {
  for (const c of children.splice(0)) c.kill('SIGKILL');
  for (const s of servers.splice(0)) s.close();
});

/** QEMU, paused, its RAM in `ram` (64 MiB, shared) and a virtio-serial port on a client chardev to `socket`. */
function startQemu(dir: string, env: Record<string, string>): { proc: ChildProcess; qmp: string; ram: string; socket: string; stderr: () => string } {
  const ram = join(dir, 'ram');
  const socket = join(dir, 'port.sock');
  const qmp = join(dir, 'qmp.sock');
  const proc = spawn(qemuBinary(), [
    '-machine', 'q35,accel=tcg,memory-backend=mem', '-m', '64M', '-object', `memory-backend-file,id=mem,size=64M,mem-path=${ram},share=on`,
    '-nodefaults', '-no-user-config', '-display', 'none', '-S', '-qmp', `unix:${qmp},server=on,wait=off`,
    '-chardev', `socket,id=c0,path=${socket},reconnect=1`, '-device', 'virtio-serial-pci', '-device', 'virtserialport,chardev=c0,name=slipway.test',
  ], { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, ...env } });
  children.push(proc);
  let stderr = '';
  proc.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  return { proc, qmp, ram, socket, stderr: () => stderr };
}

/** Listen on `path` (connections are held open). */
function listen(path: string): void {
  const server = createServer((conn) => conn.on('error', () => undefined));
  servers.push(server);
  server.listen(path);
}

/** What QEMU says when its first connection of a reconnecting chardev fails (chardev/char-socket.c). */
const CONNECT_FAILED = 'Unable to connect character device c0';

/** QEMU's status over QMP once its start has finished (QMP answers commands only then). */
async function statusOf(qmp: string): Promise<string> {
  while (!existsSync(qmp)) await new Promise((r) => setTimeout(r, 5));
  const client = await QmpClient.connect(qmp);
  try {
    return (await client.execute<{ status: string }>('query-status')).status;
  } finally {
    client.close();
  }
}

describe('libslipway-restore-wait.so in QEMU', () => {
  it('waits for the RAM file and the socket named, and QEMU starts once they are there', async () => {
    await ensureBackendBuilt();
    expect(existsSync(restoreWaitLibrary()), restoreWaitLibrary()).toBe(true);
    const dir = tempDir('slipway-restore-wait-');
    const q = startQemu(dir, { LD_PRELOAD: restoreWaitLibrary(), SLIPWAY_WAIT_FILE: join(dir, 'ram'), SLIPWAY_WAIT_SOCKET: join(dir, 'port.sock') });
    // QEMU's QMP socket appears before it opens its memory backend: from then on, it is waiting
    while (!existsSync(q.qmp)) await new Promise((r) => setTimeout(r, 5));
    expect(existsSync(q.ram), 'QEMU made the RAM file itself').toBe(false);
    // the RAM file appears whole, by rename (as a FUSE mount makes it appear)
    writeFileSync(`${q.ram}.new`, '');
    truncateSync(`${q.ram}.new`, 64 << 20);
    renameSync(`${q.ram}.new`, q.ram);
    listen(q.socket);
    expect(await statusOf(q.qmp)).toBe('prelaunch');
    // it maps that file (not one it made before, which the rename would have unlinked), and its
    // connection waited for the socket: it never failed
    const maps = readFileSync(`/proc/${q.proc.pid}/maps`, 'utf8').split('\n');
    expect(maps.some((l) => l.endsWith(` ${q.ram}`)), maps.filter((l) => l.includes(dir)).join('\n')).toBe(true);
    expect(q.stderr()).not.toContain(CONNECT_FAILED);
  });

  it('unaided, QEMU makes a plain file where the RAM file should be, and fails its first connection: what the waits are for', async () => {
    const dir = tempDir('slipway-restore-wait-');
    const q = startQemu(dir, {});
    while (!q.stderr().includes(CONNECT_FAILED)) await new Promise((r) => setTimeout(r, 5));
    listen(q.socket);
    expect(await statusOf(q.qmp)).toBe('prelaunch');
    expect(existsSync(q.ram)).toBe(true);
  });

  it('gives up after SLIPWAY_WAIT_MS without making the file: QEMU exits, saying it cannot open its RAM', async () => {
    const dir = tempDir('slipway-restore-wait-');
    const q = startQemu(dir, { LD_PRELOAD: restoreWaitLibrary(), SLIPWAY_WAIT_FILE: join(dir, 'ram'), SLIPWAY_WAIT_MS: '100' });
    listen(q.socket);
    const code = await new Promise<number | null>((r) => q.proc.once('exit', (c) => r(c)));
    expect(code).not.toBe(0);
    expect(q.stderr()).toMatch(/can't open backing store .*ram.*timed out/i);
    expect(existsSync(q.ram)).toBe(false);
  });

  it('the early-started QEMU\'s RAM file is named to libslipway-nohugepage.so by the path the kernel will show, symbolic links resolved', () => {
    const real = tempDir('slipway-restore-wait-');
    mkdirSync(join(real, 'vms'));
    const link = join(tempDir('slipway-restore-wait-'), 'state');
    symlinkSync(real, link);
    // the VM's work directory and its mount point do not exist yet either
    expect(noHugepageEnv(join(link, 'vms', 'abc', 'ram', 'ram')).SLIPWAY_NO_HUGEPAGE_FILE).toBe(join(real, 'vms', 'abc', 'ram', 'ram'));
  });
});
