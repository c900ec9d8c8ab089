/**
 * Memory snapshots end to end (real daemons, a real docker-registry, QEMU TCG guests): a VM paused
 * into the registry resumes on another host with an empty cache where it was (a background
 * process, a tmpfs file, a dirty page cache), clones of one snapshot are each their own VM, and
 * what goes wrong (a corrupted RAM pack, another shape, a registry that refuses the push) is
 * refused without leaving anything half done.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { main } from '../src/cli/main.js';
import { buildGuest, buildKernel } from '../src/guest/build.js';
import type { Vm } from '../src/client/index.js';
import { captureIO } from './helpers/cli.js';
import { startTestDaemon, type TestDaemon } from './helpers/daemon.js';
import { startFaultProxy } from './helpers/fault-proxy.js';
import { tempDir } from './helpers/images.js';
import { startRegistry, type TestRegistry } from './helpers/registry.js';
import { runCli } from './helpers/run-cli.js';
import { lazyMemorySupport } from '../src/serve/ram-backend.js';
import { processesWithArgument } from '../src/util/process.js';

const work = tempDir('slipway-memsnap-');
let registry: TestRegistry;
const daemons: TestDaemon[] = [];
let base: string;

async function daemon(env: Record<string, string> = {}): Promise<TestDaemon> {
  const d = await startTestDaemon({ dir: tempDir('slipway-memsnap-d-'), env });
  daemons.push(d);
  return d;
}

async function sh(d: TestDaemon, id: string, script: string): Promise<string> {
  const r = await d.client.exec(id, { argv: ['sh', '-c', script] });
  expect(r.exitCode, `${script}: ${r.stderr.toString()}`).toBe(0);
  return r.stdout.toString();
}

/** RAM files this test's VMs left on /dev/shm */
function ramFiles(vms: string[]): string[] {
  return readdirSync('/dev/shm').filter((n) => vms.some((id) => n.includes(id)));
}

beforeAll(async () => {
  await buildKernel();
  await buildGuest();
  registry = await startRegistry();
  const root = join(work, 'root.img');
  expect(await main(['rootfs', 'build', '--from', 'busybox', '-o', root], captureIO())).toBe(0);
  base = `${registry.host}/mem/root:v1`;
  expect(await main(['push', root, base, '--progress=none'], captureIO())).toBe(0);
}, 1_800_000);

afterAll(async () => {
  for (const d of daemons) await d.dispose();
  await registry?.stop();
});

describe('memory snapshots', () => {
  let snapshotRef: string;
  let dataSum: string;

  it('a VM with a background process, a tmpfs file and unwritten page cache resumes on a second host with an empty cache', async () => {
    const d1 = await daemon();
    const vm = await d1.client.createVm({ image: base, memoryMiB: 256 });
    // guest memory is the daemon's alone
    expect(statSync(`/dev/shm/slipway-${vm.id}.ram`).mode & 0o777).toBe(0o600);
    dataSum = await sh(d1, vm.id, [
      // a clock far behind: the restore must step it to the host's, as it would after a long wait
      'date -s @1000000000 >/dev/null',
      'mkdir -p /tmp/t && echo kept-in-tmpfs > /tmp/t/f',
      'sleep 100000 </dev/null >/dev/null 2>&1 & echo $! > /tmp/t/pid',
      // written but not synced: in the guest's page cache only, when the snapshot is taken
      'dd if=/dev/urandom of=/root/data bs=64k count=64 2>/dev/null',
      'md5sum /root/data | cut -d" " -f1',
    ].join('; '));
    snapshotRef = `${registry.host}/mem/snap:v1`;
    const snap = await d1.client.snapshot(vm.id, snapshotRef, { memory: true });
    expect(snap.ref).toBe(snapshotRef);
    expect(snap.deviceStateBytes).toBeGreaterThan(0);
    expect(snap.timings.pausedMs).toBeLessThan(snap.timings.totalMs);
    // the VM runs on after the snapshot
    expect(await sh(d1, vm.id, 'cat /tmp/t/f')).toBe('kept-in-tmpfs\n');

    const d2 = await daemon();
    const restored = await d2.client.createVm({ image: snapshotRef });
    expect(restored.status).toBe('running');
    expect(restored.memoryMiB).toBe(256);
    expect((await d2.client.getVm(restored.id)).memoryMiB).toBe(256);
    expect(await sh(d2, restored.id, 'cat /tmp/t/f')).toBe('kept-in-tmpfs\n');
    expect(await sh(d2, restored.id, 'kill -0 $(cat /tmp/t/pid) && echo alive')).toBe('alive\n');
    expect(await sh(d2, restored.id, 'hostname')).toBe(`vm-${restored.id}\n`);
    // the host's time, not the one it was paused with (2001 in the source VM)
    const before = Math.floor(Date.now() / 1000);
    const guestNow = Number(await sh(d2, restored.id, 'date +%s'));
    expect(guestNow).toBeGreaterThanOrEqual(before - 2);
    expect(guestNow).toBeLessThanOrEqual(Math.ceil(Date.now() / 1000) + 2);
    // the page cache written back after the restore lands on the disk intact, and a write after
    // the restore persists into the next (chained) snapshot
    await sh(d2, restored.id, 'sync; echo after-restore > /root/after; sync');
    await d2.client.snapshot(restored.id, `${registry.host}/mem/snap:v1-disk2`);
    const booted = await d2.client.createVm({ image: `${registry.host}/mem/snap:v1-disk2` });
    expect(await sh(d2, booted.id, 'md5sum /root/data | cut -d" " -f1')).toBe(dataSum);
    expect(await sh(d2, booted.id, 'cat /root/after')).toBe('after-restore\n');
    for (const id of [vm.id]) await d1.client.deleteVm(id);
    for (const id of [restored.id, booted.id]) await d2.client.deleteVm(id);
    expect(ramFiles([vm.id, restored.id, booted.id])).toEqual([]);
  }, 600_000);

  it('slipway run <memory snapshot> resumes it through the daemon; without one it says so', async () => {
    const d = daemons[1] as TestDaemon;
    const through = await runCli(['run', snapshotRef, '--daemon', d.socket, '--', 'cat', '/tmp/t/f']);
    expect(through.code, through.stderr).toBe(0);
    expect(through.stdout).toBe('kept-in-tmpfs\n');
    const local = await runCli(['run', snapshotRef, '--local', '--', 'true'], { SLIPWAY_CACHE_DIR: tempDir('slipway-memsnap-cache-') });
    expect(local.code).toBe(1);
    expect(local.stderr).toContain('is a memory snapshot: it resumes through the daemon');
  }, 300_000);

  it('four clones of one snapshot at once: each answers, has its own host name and its own random numbers; the RAM was fetched once', async () => {
    const d3 = await daemon();
    const clones: Vm[] = await Promise.all([0, 1, 2, 3].map(() => d3.client.createVm({ image: snapshotRef })));
    const names = await Promise.all(clones.map((c) => sh(d3, c.id, 'hostname')));
    expect(new Set(names).size).toBe(4);
    names.forEach((n, i) => expect(n).toBe(`vm-${clones[i]?.id}\n`));
    const randoms = await Promise.all(clones.map((c) => sh(d3, c.id, 'head -c 32 /dev/urandom | od -An -tx1 | tr -d " \\n"')));
    expect(new Set(randoms).size).toBe(4);
    // every clone resumed where the snapshot was
    for (const c of clones) expect(await sh(d3, c.id, 'cat /tmp/t/f')).toBe('kept-in-tmpfs\n');
    const stats = await d3.client.cache() as { remote?: { chunks?: number }; disk?: { chunks?: number } };
    const cachedChunks = stats.disk?.chunks ?? 0;
    // fetched once: the host's chunk count did not grow fourfold over what one restore needs
    expect(stats.remote?.chunks ?? 0).toBeLessThanOrEqual(cachedChunks + 8);
    await Promise.all(clones.map((c) => d3.client.deleteVm(c.id)));
    expect(ramFiles(clones.map((c) => c.id))).toEqual([]);
  }, 600_000);

  it('a second memory snapshot of an idle VM uploads a small part of its RAM', async () => {
    const d = daemons[1] as TestDaemon;
    const vm = await d.client.createVm({ image: snapshotRef });
    const ids = [vm.id];
    try {
      const first = await d.client.snapshot(vm.id, `${registry.host}/mem/idle:v1`, { memory: true });
      const second = await d.client.snapshot(vm.id, `${registry.host}/mem/idle:v2`, { memory: true });
      // both are deltas, the first of the image the VM was restored from (it was restored lazily),
      // the second of the first: each a small part of the RAM (what the idle guest's kernel dirties
      // between them, its timers and the RNG it reseeds after a restore, may make either larger)
      expect(first.ramUploadedBytes).toBeLessThan(0.05 * 256 * (1 << 20));
      expect(second.ramUploadedBytes).toBeLessThan(0.05 * 256 * (1 << 20));
      // restored again, the chained snapshot is where it was
      const again = await d.client.createVm({ image: `${registry.host}/mem/idle:v2` });
      ids.push(again.id);
      expect(await sh(d, again.id, 'cat /tmp/t/f')).toBe('kept-in-tmpfs\n');
      expect(await sh(d, again.id, 'kill -0 $(cat /tmp/t/pid) && echo alive')).toBe('alive\n');
    } finally {
      for (const id of ids) await d.client.deleteVm(id);
    }
  }, 600_000);

  const lazy = lazyMemorySupport();
  if (!lazy.ok) console.warn(`skipping the lazy-memory case: ${lazy.why}`);
  it.skipIf(!lazy.ok)('restores are lazy here: a later restore on an empty cache fetches the recorded working set first, and little else; eager loading still restores', async () => {
    const d = await daemon();
    const vm = await d.client.createVm({ image: snapshotRef });
    const r = vm.restore;
    expect(r?.memoryLoading).toBe('lazy');
    // the first restore (the first test's) recorded the chunks it touched before its first exec
    expect(r?.workingSetChunks).toBeGreaterThan(0);
    expect(r?.ramChunksFetched).toBeGreaterThan(0);
    expect(r?.ramChunksFetched).toBeLessThanOrEqual(Math.ceil(1.5 * (r?.workingSetChunks ?? 0)));
    // QEMU maps the RAM slipway-ramfs serves without MADV_HUGEPAGE (which makes the kernel read
    // 4 MiB around every fault: libslipway-nohugepage.so), and its other memory as QEMU advises
    const qemu = processesWithArgument(join('vms', vm.id)).find((pid) => readFileSync(`/proc/${pid}/comm`, 'utf8').startsWith('qemu'));
    expect(qemu).toBeDefined();
    const maps = readFileSync(`/proc/${qemu}/smaps`, 'utf8').split(/\n(?=[0-9a-f]+-[0-9a-f]+ )/);
    const flagsOf = (m: string): string[] => (/^VmFlags:(.*)$/m.exec(m)?.[1] ?? '').trim().split(/\s+/);
    const ramMap = maps.find((m) => (m.split('\n')[0] ?? '').endsWith(join('vms', vm.id, 'ram', 'ram')));
    expect(ramMap, 'the RAM file mapping in QEMU').toBeDefined();
    expect(flagsOf(ramMap as string)).not.toContain('hg');
    expect(maps.some((m) => flagsOf(m).includes('hg')), 'QEMU still advises huge pages elsewhere (its TCG buffer)').toBe(true);
    // QEMU was started while its RAM and disk were made ready, waiting for that file and that
    // socket (libslipway-restore-wait.so; its waits: test/restore-wait.test.ts)
    const environ = readFileSync(`/proc/${qemu}/environ`, 'utf8').split('\0');
    expect(environ).toContain(`SLIPWAY_WAIT_FILE=${join(d.stateDir, 'vms', vm.id, 'ram', 'ram')}`);
    expect(environ).toContain(`SLIPWAY_WAIT_SOCKET=${join(d.stateDir, 'vms', vm.id, 'blk.sock')}`);
    expect(environ.find((e) => e.startsWith('LD_PRELOAD='))).toContain('libslipway-restore-wait.so');
    // a guest page is never seen before its chunk is loaded: what the guest wrote before the snapshot is there
    expect(await sh(d, vm.id, 'cat /tmp/t/f')).toBe('kept-in-tmpfs\n');
    expect(await sh(d, vm.id, 'md5sum /root/data | cut -d" " -f1')).toBe(dataSum);
    // a second restore on this host reads the snapshot's config and device state from its cache
    // (through a proxy that logs what reaches the registry)
    const manifest = await fetch(`http://${registry.host}/v2/mem/snap/manifests/v1`, { headers: { accept: 'application/vnd.oci.image.manifest.v1+json' } }).then((res) => res.json() as Promise<{ config: { digest: string }; layers: { digest: string }[] }>);
    const metadata = [manifest.config.digest, ...manifest.layers.map((l) => l.digest)];
    const proxy = await startFaultProxy({ target: registry.host, mode: '500', passBlobPuts: 1_000_000 });
    let eager;
    try {
      eager = await d.client.createVm({ image: snapshotRef.replace(registry.host, proxy.host), memoryLoading: 'eager' });
      expect(proxy.requests.filter((q) => q.method === 'GET' && metadata.some((m) => q.path.endsWith(`/blobs/${m}`)))).toEqual([]);
      expect(proxy.requests.some((q) => q.path.endsWith('/manifests/v1')), 'the tag is still resolved at the registry').toBe(true);
    } finally {
      await proxy.stop();
    }
    expect(eager.restore?.memoryLoading).toBe('eager');
    expect(await sh(d, eager.id, 'cat /tmp/t/f')).toBe('kept-in-tmpfs\n');
    await d.client.deleteVm(vm.id);
    await d.client.deleteVm(eager.id);
    expect(ramFiles([vm.id, eager.id])).toEqual([]);
  }, 600_000);

  it('another shape is refused: a restore asking for more memory fails with what differs, and nothing is left', async () => {
    const d = daemons[1] as TestDaemon;
    const err = await d.client.createVm({ image: snapshotRef, memoryMiB: 512 }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'INVALID_ARGUMENT' });
    expect((err as Error).message).toContain('memoryMiB: the snapshot has 256, this VM would have 512');
    expect(await d.client.listVms()).toEqual([]);
  }, 120_000);

  it.skipIf(!lazy.ok)('a lazily restored VM outlives a daemon restart: the new daemon serves its RAM again, and stopping it leaves nothing', async () => {
    const d = await daemon();
    const vm = await d.client.createVm({ image: snapshotRef });
    expect(vm.restore?.memoryLoading).toBe('lazy');
    const procs = processesWithArgument(join('vms', vm.id));
    expect(procs.length).toBe(3); // QEMU, slipway-blk, slipway-ramfs
    await d.kill();
    expect(processesWithArgument(join('vms', vm.id)).sort()).toEqual([...procs].sort());
    const again = await startTestDaemon({ dir: tempDir('slipway-memsnap-d-'), stateDir: d.stateDir, cacheDir: d.cacheDir });
    daemons.push(again);
    expect((await again.client.getVm(vm.id)).status).toBe('running');
    // all of its memory is readable: the process, the tmpfs file, the unwritten page cache's file
    expect(await sh(again, vm.id, 'cat /tmp/t/f')).toBe('kept-in-tmpfs\n');
    expect(await sh(again, vm.id, 'kill -0 $(cat /tmp/t/pid) && echo alive')).toBe('alive\n');
    expect(await sh(again, vm.id, 'md5sum /root/data | cut -d" " -f1')).toBe(dataSum);
    await again.client.deleteVm(vm.id);
    expect(processesWithArgument(join('vms', vm.id))).toEqual([]);
    expect(ramMounts().filter((m) => m.includes(vm.id))).toEqual([]);
    expect(ramFiles([vm.id])).toEqual([]);
  }, 600_000);

  it('a corrupted RAM pack in the registry: the restore is refused, nothing half restored is left running', async () => {
    const d = await daemon();
    // flip a byte in the middle of every RAM pack blob of the snapshot
    const manifest = JSON.parse(readFileSync(blobPath(await manifestDigestOf('mem/snap', 'v1.ram')), 'utf8')) as { layers: { digest: string; mediaType: string }[] };
    const packs = manifest.layers.filter((l) => l.mediaType.includes('pack'));
    expect(packs.length).toBeGreaterThan(0);
    for (const p of packs) {
      const path = blobPath(p.digest);
      const bytes = readFileSync(path);
      bytes[bytes.length >> 1] = (bytes[bytes.length >> 1] as number) ^ 0xff;
      writeFileSync(path, bytes);
    }
    const err = await d.client.createVm({ image: snapshotRef }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: expect.stringMatching(/DIGEST_MISMATCH|CORRUPT_INDEX/) });
    expect(await d.client.listVms()).toEqual([]);
    // a lazy restore leaves no RAM server, mount or RAM file behind: those of the VM this daemon
    // tried (its id from the daemon's log; other test files' VMs come and go meanwhile)
    const tried = [...new Set([...d.log().matchAll(/"vm":"([0-9a-f]{12})"/g)].map((m) => m[1] as string))];
    expect(tried.length).toBeGreaterThan(0);
    expect(ramMounts().filter((m) => m.includes(d.stateDir))).toEqual([]);
    expect(processesWithArgument(join(d.stateDir, 'vms'))).toEqual([]);
    expect(ramFiles(tried)).toEqual([]);
  }, 300_000);

  it('a corrupted disk index: a restore whose QEMU started while its disk was being served is refused, and nothing is left', async () => {
    const d = await daemon();
    const disk = JSON.parse(readFileSync(blobPath(await manifestDigestOf('mem/snap', 'v1.disk')), 'utf8')) as { layers: { digest: string; mediaType: string }[] };
    const index = disk.layers.find((l) => l.mediaType.includes('index'));
    expect(index).toBeDefined();
    const path = blobPath((index as { digest: string }).digest);
    const good = readFileSync(path);
    const bad = Buffer.from(good);
    bad[bad.length >> 1] = (bad[bad.length >> 1] as number) ^ 0xff;
    writeFileSync(path, bad);
    try {
      const err = await d.client.createVm({ image: snapshotRef }).catch((e: unknown) => e);
      expect(err).toMatchObject({ code: expect.stringMatching(/DIGEST_MISMATCH|CORRUPT_INDEX/) });
    } finally {
      writeFileSync(path, good);
    }
    expect(await d.client.listVms()).toEqual([]);
    expect(ramMounts().filter((m) => m.includes(d.stateDir))).toEqual([]);
    expect(processesWithArgument(join(d.stateDir, 'vms'))).toEqual([]);
  }, 300_000);

  it('a snapshot push the registry refuses leaves the tag as it was and the VM running', async () => {
    const proxy = await startFaultProxy({ target: registry.host, mode: '500', passBlobPuts: 1_000_000, failManifestPuts: true });
    try {
      const d = daemons[1] as TestDaemon;
      const vm = await d.client.createVm({ image: base, memoryMiB: 256 });
      const err = await d.client.snapshot(vm.id, `${proxy.host}/mem/refused:v1`, { memory: true }).catch((e: unknown) => e);
      expect(err).toMatchObject({ code: expect.stringMatching(/REGISTRY_ERROR|REGISTRY_UNREACHABLE/) });
      expect(await sh(d, vm.id, 'echo still-running')).toBe('still-running\n');
      const tags = await fetch(`http://${registry.host}/v2/mem/refused/tags/list`).then((r) => r.json() as Promise<{ tags?: string[] | null }>).catch(() => ({ tags: null }));
      expect(tags.tags ?? []).not.toContain('v1');
      await d.client.deleteVm(vm.id);
    } finally {
      await proxy.stop();
    }
  }, 300_000);
});

/** FUSE mounts of slipway-ramfs (lazy memory) on this host */
function ramMounts(): string[] {
  return readFileSync('/proc/mounts', 'utf8').split('\n').filter((l) => l.startsWith('slipway-ram ')).sort();
}

function blobPath(digest: string): string {
  const hex = digest.slice('sha256:'.length);
  return join(registry.storageDir, 'docker', 'registry', 'v2', 'blobs', 'sha256', hex.slice(0, 2), hex, 'data');
}

async function manifestDigestOf(repo: string, tag: string): Promise<string> {
  const res = await fetch(`http://${registry.host}/v2/${repo}/manifests/${tag}`, { method: 'HEAD', headers: { accept: 'application/vnd.oci.image.manifest.v1+json' } });
  const digest = res.headers.get('docker-content-digest');
  if (!digest) throw new Error(`no digest for ${repo}:${tag}`);
  return digest;
}
