/**
 * slipway-blk with QEMU as a real frontend: a guest running slipway's kernel boots from a busybox
 * disk served from the local registry with an empty cache (the backend built with ASan and UBSan),
 * reads files whose checksums match the image, writes files that survive a guest restart and a
 * backend restart (QEMU reconnects). 1 MiB O_DIRECT reads (scattered pages: requests of seg_max
 * segments behind indirect tables) read right. A read parked on a missing chunk completes exactly
 * once across a backend killed with SIGKILL (in-flight tracking). Also a short run of each
 * libFuzzer target.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { appendFileSync, copyFileSync, existsSync, mkdirSync, readFileSync, renameSync, statSync } from 'node:fs';
import { createServer, type Socket } from 'node:net';
import { createInterface } from 'node:readline';
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
  const workDir = tempDir('slipway-vub-vm-');
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

/** A chunk cache of its own, empty. */
function freshCache(): Promise<ChunkCache> {
  return ChunkCache.open({ config: loadConfig({}, { cacheDir: tempDir('slipway-vub-cache-') }), logger: silentLogger });
}

/** The image served read-only from `cache` by the sanitizer build of slipway-blk, on work/NAME.sock. */
async function serveReadOnly(cache: ChunkCache, name: string): Promise<{ socket: string; served: ServedDisk }> {
  const socket = join(work, `${name}.sock`);
  const served = await serveDisk({ cache, ref, socket, workDir: join(work, `serve-${name}`), readWrite: false, binary: ASAN_BACKEND, env: ASAN_ENV });
  return { socket, served };
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

  it('1 MiB O_DIRECT reads of the whole disk (requests of up to seg_max scattered pages) read what the image holds', async () => {
    const cache = await freshCache();
    const { socket, served } = await serveReadOnly(cache, 'segmax');
    let booted: { vm: RunningVm; client: AgentClient } | undefined;
    try {
      booted = await bootOn(socket);
      const { client } = booted;
      const size = statSync(join(work, 'root.img')).size;
      // scatter the guest's free pages (8192 one-page tmpfs files, every other one removed), so that
      // dd's 1 MiB buffer is scattered pages: the guest cuts each read into requests of seg_max (126)
      // segments, which it puts behind indirect tables
      await sh(client, 'mkdir -p /dev/shm/frag && cd /dev/shm/frag && i=0; while [ $i -lt 8192 ]; do echo > $i; i=$((i+1)); done; rm -f *[02468]');
      const got = await sh(client, `dd if=/dev/vda bs=1M count=${Math.ceil(size / (1 << 20))} iflag=direct 2>/dev/null | md5sum; dmesg | grep -c 'I/O error' || true`);
      const want = createHash('md5').update(readFileSync(join(work, 'root.img'))).digest('hex');
      expect(got).toBe(`${want}  -\n0\n`);
    } finally {
      if (booted) await stop(booted.vm, booted.client);
      await served.close();
      await cache.close();
    }
    noSanitizerReports(served.log());
  });

  it('a read parked on a missing chunk completes exactly once across a backend killed with SIGKILL (QEMU reconnects)', async () => {
    // the root disk plus 1 MiB of random bytes behind the filesystem, which boot never reads; 64 KiB chunks
    const file = join(work, 'root-tail.img');
    copyFileSync(join(work, 'root.img'), file);
    appendFileSync(file, randomBytes((1 << 20) + (65536 - (statSync(file).size % 65536)) % 65536));
    const tailRef = `oci:${join(work, 'layout-tail')}:v1`;
    const io = captureIO();
    expect(await main(['push', file, tailRef, '--chunk-size', '64K', '--progress=none'], io), io.err).toBe(0);
    const chunk = statSync(file).size / 65536 - 4; // in the random tail
    const cache = await freshCache();
    const serveDir = join(work, 'serve-tail');
    // every chunk local (the test frontend reads the disk through a first backend), then one goes missing
    const warm = await serveDisk({ cache, ref: tailRef, socket: join(work, 'tail-warm.sock'), workDir: serveDir, readWrite: false, binary: ASAN_BACKEND, env: ASAN_ENV });
    execFileSync('make', ['-s', '-C', VUB, 'test-frontend'], { stdio: 'inherit' });
    const verify = spawn(join(VUB, 'build', 'vub-frontend'), ['verify', warm.socket, file], { stdio: 'ignore' });
    expect(await new Promise((resolve) => verify.once('exit', resolve))).toBe(0);
    const map = join(serveDir, 'disk.map');
    const digest = readFileSync(map).subarray(32 + chunk * 33 + 1, 32 + (chunk + 1) * 33).toString('hex');
    const chunkFile = join(cache.chunkDir, digest.slice(0, 2), digest);
    const aside = join(work, 'tail-chunk');
    renameSync(chunkFile, aside);
    // a daemon that takes FETCH requests and never answers; it says when the one for our chunk came
    const held: Socket[] = [];
    let fetched: () => void = () => undefined;
    const fetchedChunk = new Promise<void>((resolve) => (fetched = resolve));
    const silent = createServer((c) => {
      held.push(c);
      c.on('data', (d: Buffer) => {
        if (d.length >= 16 && Number(d.readBigUInt64LE(8)) === chunk) fetched();
      });
    });
    const missSocket = join(work, 'tail-miss.sock');
    await new Promise<void>((resolve) => silent.listen(missSocket, resolve));
    const socket = join(work, 'tail.sock');
    const args = ['--socket', socket, '--map', map, '--chunk-dir', cache.chunkDir, '--daemon-socket', missSocket, '--overlay', join(work, 'tail-overlay')];
    const logs: string[] = [];
    const start = async (): Promise<{ kill: (sig: NodeJS.Signals) => void; exited: Promise<unknown>; log: () => string }> => {
      const child = spawn(ASAN_BACKEND, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...ASAN_ENV } });
      let log = '';
      child.stderr.on('data', (d: Buffer) => {
        log += d.toString();
      });
      const exited = new Promise((resolve) => child.once('exit', resolve));
      await new Promise<void>((resolve) => createInterface({ input: child.stdout }).once('line', () => resolve()));
      return { kill: (sig) => child.kill(sig), exited, log: () => log };
    };
    let backend = await start();
    let booted: { vm: RunningVm; client: AgentClient } | undefined;
    try {
      booted = await bootOn(socket);
      const { client } = booted;
      const skip = (chunk * 65536) / 4096;
      // the parked read, in the background; then reads that complete while it waits
      await sh(client, `(dd if=/dev/vda of=/root/parked bs=4096 skip=${skip} count=1 iflag=direct 2>/dev/null; echo $? > /root/parked.rc) >/dev/null 2>&1 &`);
      await fetchedChunk;
      await sh(client, 'dd if=/dev/vda of=/dev/null bs=4096 count=64 iflag=direct 2>/dev/null');
      backend.kill('SIGKILL');
      await backend.exited;
      logs.push(backend.log());
      renameSync(aside, chunkFile);
      backend = await start();
      // QEMU reconnects and hands the in-flight region back: the parked read runs again, once
      const out = await sh(client, 'i=0; while [ ! -s /root/parked.rc ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; cat /root/parked.rc && md5sum < /root/parked; dmesg | grep -c "is not a head" || true');
      const want = createHash('md5').update(readFileSync(file).subarray(chunk * 65536, chunk * 65536 + 4096)).digest('hex');
      expect(out).toBe(`0\n${want}  -\n0\n`);
      expect(backend.log()).toMatch(/1 requests were in flight/);
    } finally {
      if (booted) await stop(booted.vm, booted.client);
      backend.kill('SIGTERM');
      await backend.exited;
      logs.push(backend.log());
      for (const c of held) c.destroy();
      silent.close();
      await warm.close();
      await cache.close();
    }
    for (const l of logs) noSanitizerReports(l);
  });

  it('a read-only disk refuses writes: the guest sees an I/O error', async () => {
    const cache = await freshCache();
    const { socket, served } = await serveReadOnly(cache, 'ro');
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
    const corpus = tempDir(`slipway-${target}-`);
    // a crash input is kept where the build is (the corpus goes with the test's temp dirs)
    const artifacts = join(VUB, 'build', 'fuzz', 'artifacts');
    mkdirSync(artifacts, { recursive: true });
    const seeds = join(VUB, 'fuzz', 'corpus', target === 'fuzz_message' ? 'message' : 'virtq');
    const out = execFileSync(join(VUB, 'build', 'fuzz', target), ['-max_total_time=15', '-print_final_stats=1', `-artifact_prefix=${artifacts}/${target}-`, corpus, seeds], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).toString();
    expect(out).not.toMatch(/ERROR:|runtime error/);
  }, 120_000);
});
