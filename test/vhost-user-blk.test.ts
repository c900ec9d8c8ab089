/**
 * slipway-blk with QEMU as a real frontend: a guest running slipway's kernel boots from a busybox
 * disk served from the local registry with an empty cache (the backend built with ASan and UBSan),
 * reads files whose checksums match the image, writes files that survive a guest restart and a
 * backend restart (QEMU reconnects). Also a short run of each libFuzzer target.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ChunkCache } from '../src/cache/chunk-cache.js';
import { loadConfig } from '../src/config.js';
import { main } from '../src/cli/main.js';
import { AgentClient, waitForAgent } from '../src/guest/agent-client.js';
import { renderBootConfig } from '../src/guest/boot-config.js';
import { buildGuest, buildKernel, PROJECT_ROOT } from '../src/guest/build.js';
import { serveDisk, type ServedDisk } from '../src/serve/backend.js';
import { silentLogger } from '../src/util/log.js';
import { QemuDriver } from '../src/vmm/qemu.js';
import type { RunningVm } from '../src/vmm/driver.js';
import { captureIO } from './helpers/cli.js';
import { startRegistry, type TestRegistry } from './helpers/registry.js';
import { tempDir } from './helpers/images.js';

const VUB = join(PROJECT_ROOT, 'vhost-user-blk');
const ASAN_BACKEND = join(VUB, 'build', 'asan', 'slipway-blk');
const ASAN_ENV = { ASAN_OPTIONS: 'detect_leaks=1:abort_on_error=0:halt_on_error=1', UBSAN_OPTIONS: 'print_stacktrace=1:halt_on_error=1' };
const work = tempDir('slipway-vub-');
let registry: TestRegistry;
let ref: string;
let busyboxMd5: string;

beforeAll(async () => {
  execFileSync('make', ['-s', '-C', VUB, 'all', 'asan'], { stdio: 'inherit' });
  await buildKernel();
  await buildGuest();
  const disk = join(work, 'root.img');
  const io = captureIO();
  expect(await main(['rootfs', 'build', '--from', 'busybox', '-o', disk], io), io.err).toBe(0);
  busyboxMd5 = createHash('md5').update(readFileSync('/bin/busybox')).digest('hex');
  registry = await startRegistry();
  ref = `${registry.host}/vub/root:v1`;
  const io2 = captureIO();
  expect(await main(['push', disk, ref, '--progress=none'], io2), io2.err).toBe(0);
}, 1_800_000);
afterAll(async () => registry?.stop());

function noSanitizerReports(log: string): void {
  expect(log).not.toMatch(/ERROR: AddressSanitizer|runtime error:|ERROR: LeakSanitizer/);
}

async function bootOn(socket: string): Promise<{ vm: RunningVm; client: AgentClient; workDir: string }> {
  const kernel = await buildKernel();
  const guest = await buildGuest();
  const workDir = mkdtempSync(join(tmpdir(), 'slipway-vub-vm-'));
  const vm = await new QemuDriver().start({
    id: 'vub', workDir, cpus: 1, memoryMiB: 256, kernel, initramfs: guest.initramfs,
    disks: [{ kind: 'vhost-user', socket }], bootConfig: renderBootConfig({ hostname: 'vub' }), net: { mode: 'none' }, console: true,
  });
  const client = await Promise.race([
    waitForAgent(async () => new AgentClient(await vm.connectAgent()), 120_000),
    vm.exited.then(() => { throw new Error(`VM exited before its agent answered:\n${vm.consoleTail()}`); }),
  ]);
  return { vm, client, workDir };
}

async function sh(client: AgentClient, script: string): Promise<string> {
  const r = await client.exec(['sh', '-c', script]);
  expect(r.exitCode, r.stderr.toString()).toBe(0);
  return r.stdout.toString();
}

async function stop(vm: RunningVm, client: AgentClient): Promise<void> {
  await client.shutdown(false).catch(() => undefined);
  client.close();
  await Promise.race([vm.exited, new Promise((r) => setTimeout(r, 5000))]);
  await vm.kill(500);
}

describe('slipway-blk under QEMU', () => {
  it('boots a guest from a disk in the registry with an empty cache; file checksums match; writes survive a guest restart and a backend restart', async () => {
    const cacheDir = tempDir('slipway-vub-cache-');
    const cache = await ChunkCache.open({ config: loadConfig({}, { cacheDir }), logger: silentLogger });
    const serveDir = join(work, 'serve');
    const overlayDir = join(work, 'overlay');
    const socket = join(work, 'blk.sock');
    const serve = (): Promise<ServedDisk> => serveDisk({ cache, ref, socket, workDir: serveDir, readWrite: true, overlayDir, binary: ASAN_BACKEND, env: ASAN_ENV });
    let served = await serve();
    const logs: string[] = [];
    try {
      expect(cache.stats().disk.chunks).toBe(0);
      let { vm, client } = await bootOn(socket);
      expect((await sh(client, 'md5sum /bin/busybox')).split(' ')[0]).toBe(busyboxMd5);
      expect(await sh(client, 'cat /etc/os-release | head -1')).toBe('NAME="slipway busybox"\n');
      expect(served.miss.stats.requests).toBeGreaterThan(0);
      // a chunk's worth of new data, and a small file, then sync
      await sh(client, 'dd if=/dev/urandom of=/root/blob bs=64k count=12 2>/dev/null; md5sum /root/blob > /root/blob.md5; echo kept > /root/note; sync');
      const blobMd5 = await sh(client, 'cat /root/blob.md5');

      // the backend goes away and comes back on the same overlay: QEMU reconnects
      await served.close();
      logs.push(served.log());
      served = await serve();
      expect(await sh(client, 'echo 3 > /proc/sys/vm/drop_caches; cat /root/note; md5sum /root/blob')).toBe(`kept\n${blobMd5}`);
      await stop(vm, client);

      // a new guest on the same overlay finds the files
      ({ vm, client } = await bootOn(socket));
      expect(await sh(client, 'cat /root/note; md5sum /root/blob')).toBe(`kept\n${blobMd5}`);
      await stop(vm, client);
      expect(existsSync(join(overlayDir, 'dirty'))).toBe(true);
    } finally {
      await served.close();
      logs.push(served.log());
      await cache.close();
    }
    for (const l of logs) noSanitizerReports(l);
  });

  it('a read-only disk refuses writes: the guest sees an I/O error', async () => {
    const cache = await ChunkCache.open({ config: loadConfig({}, { cacheDir: tempDir('slipway-vub-cache-') }), logger: silentLogger });
    const socket = join(work, 'ro.sock');
    const served = await serveDisk({ cache, ref, socket, workDir: join(work, 'serve-ro'), readWrite: false, binary: ASAN_BACKEND, env: ASAN_ENV });
    try {
      const { vm, client } = await bootOn(socket);
      // init falls back to a read-only mount; a raw write to the device must fail
      const r = await client.exec(['sh', '-c', 'dd if=/dev/zero of=/dev/vda bs=4096 count=1 seek=100 oflag=direct 2>&1; echo rc=$?']);
      expect(r.stdout.toString()).toMatch(/rc=1/);
      expect((await sh(client, 'md5sum /bin/busybox')).split(' ')[0]).toBe(busyboxMd5);
      await stop(vm, client);
    } finally {
      await served.close();
      await cache.close();
    }
    noSanitizerReports(served.log());
  });
});

describe('fuzzing slipway-blk', () => {
  it.each(['fuzz_message', 'fuzz_virtq'])('%s runs clean for 15 s from its seed corpus', (target) => {
    execFileSync('make', ['-s', '-C', VUB, 'fuzz'], { stdio: 'inherit' });
    const corpus = mkdtempSync(join(tmpdir(), `slipway-${target}-`));
    const seeds = join(VUB, 'fuzz', 'corpus', target === 'fuzz_message' ? 'message' : 'virtq');
    const out = execFileSync(join(VUB, 'build', 'fuzz', target), ['-max_total_time=15', '-print_final_stats=1', `-artifact_prefix=${corpus}/`, corpus, seeds], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).toString();
    expect(out).not.toMatch(/ERROR:|runtime error/);
  }, 120_000);
});
