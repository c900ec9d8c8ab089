/**
 * Memory snapshots on Cloud Hypervisor (src/vmm/ch-snapshot.ts, src/api/memory-snapshots.ts,
 * src/disk/memory-snapshot.ts), against the Cloud Hypervisor stand-in
 * (test/helpers/fake-cloud-hypervisor.mjs, which says it is one: Cloud Hypervisor cannot be
 * installed on these machines) and a real docker-registry.
 *
 * The stand-in runs no guest: it pretends its guest has RAM of the configured size holding a few
 * markers, writes them into memory-ranges at vm.snapshot with state.json and config.json, and
 * checks them at vm.restore (size, markers, sha256; the files config.json names), refusing what CH
 * would refuse with an HTTP error; every request body it gets is checked against the vendored
 * OpenAPI document. The "guest agent" is a real slipway-agent on the host. So what is tested here
 * is slipway's side: the requests and their order, the files, the artifact in a registry, a
 * restore on a host with an empty cache rebuilding memory-ranges chunk for chunk, config.json
 * made to name the new VM's files, the restore mode by version, and refusals. Whether a real CH
 * restores its guest from these files is not (see docs/snapshots.md).
 *
 * Not through the daemon: the stand-in's agent runs on the host, and a restore's first step in the
 * daemon sets the clone's host name through it (the host's own, here). The daemon's code for
 * snapshots and restores (takeMemorySnapshot, openMemorySnapshot, prepareRestore) is called here
 * directly, as src/api/vms.ts calls it.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, openSync, readFileSync, readSync, closeSync, rmSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { ChunkCache } from '../src/cache/chunk-cache.js';
import { main } from '../src/cli/main.js';
import { loadConfig } from '../src/config.js';
import {
  checkShape, loadMemorySnapshot, MEDIA_TYPE_CH_CONFIG, MEDIA_TYPE_CH_STATE, MEDIA_TYPE_MEMORY_SNAPSHOT_CONFIG, MEDIA_TYPE_QEMU_DEVICE_STATE,
  pushMemorySnapshot, type MemorySnapshotConfig, type VmShape,
} from '../src/disk/memory-snapshot.js';
import { isSlipwayError } from '../src/errors.js';
import { AgentClient, waitForAgent } from '../src/guest/agent-client.js';
import { renderBootConfig } from '../src/guest/boot-config.js';
import { sha256Digest } from '../src/oci/digest.js';
import { parseRef } from '../src/oci/ref.js';
import type { ImageManifest } from '../src/oci/types.js';
import { ensureBackendBuilt, serveDisk, type ServedDisk } from '../src/serve/backend.js';
import { openMemorySnapshot, prepareRestore, RAM_CHUNK_BYTES, takeMemorySnapshot, vmShape } from '../src/api/memory-snapshots.js';
import { silentLogger } from '../src/util/log.js';
import { processesWithArgument, terminateProcess } from '../src/util/process.js';
import { bootVm } from '../src/vmm/boot.js';
import { chDevices, chooseRestoreMode, relocateChConfig } from '../src/vmm/ch-snapshot.js';
import { buildVmConfig, chKernelCmdline, CloudHypervisorDriver } from '../src/vmm/cloud-hypervisor.js';
import type { RunningVm, VmSpec } from '../src/vmm/driver.js';
import { PROJECT_ROOT } from '../src/guest/build.js';
import { captureIO } from './helpers/cli.js';
import { loadChApiSpec, validateRequestBody } from './helpers/ch-openapi.mjs';
import { tempDir, makeSparse } from './helpers/images.js';
import { startRegistry, type TestRegistry } from './helpers/registry.js';
import { fakeCloudHypervisorBinary, readFakeChLog, type FakeCloudHypervisor } from './helpers/vmm-stand-ins.js';

const STAND_IN = 'Cloud Hypervisor stand-in';
const root = tempDir('slipway-ch-memsnap-');
const MEMORY_MIB = 128;
const doc = loadChApiSpec();
let registry: TestRegistry;
let baseRef: string;
const caches: ChunkCache[] = [];
const served: ServedDisk[] = [];
const vms: RunningVm[] = [];
let n = 0;

/** the stand-in's kernel and initramfs: files it checks exist (it boots nothing), hashed for the shape */
const kernelDir = join(root, 'kernel');
const kernel = { vmlinux: join(kernelDir, 'vmlinux'), bzImage: join(kernelDir, 'bzImage') };
const initramfs = join(kernelDir, 'initramfs.cpio');

function dir(what: string): string {
  const d = join(root, `${++n}-${what}`);
  mkdirSync(d, { recursive: true });
  return d;
}

async function newCache(): Promise<ChunkCache> {
  const cache = await ChunkCache.open({ config: loadConfig({}, { cacheDir: dir('cache') }), logger: silentLogger });
  caches.push(cache);
  return cache;
}

function standIn(version?: string): FakeCloudHypervisor {
  return fakeCloudHypervisorBinary(dir('ch-bin'), { FAKE_CH_FEATURES: 'kvm,fw_cfg', ...(version ? { FAKE_CH_VERSION: version } : {}) });
}

function chSpec(workDir: string, over: Partial<VmSpec> = {}): VmSpec {
  return {
    id: 'chmem', workDir, cpus: 2, memoryMiB: MEMORY_MIB, kernel, initramfs, disks: [{ kind: 'file', path: join(kernelDir, 'root.img') }],
    bootConfig: renderBootConfig({ hostname: 'ch-memsnap' }), net: { mode: 'none' }, console: true, ...over,
  };
}

async function agentOf(vm: RunningVm): Promise<AgentClient> {
  return waitForAgent(async () => new AgentClient(await vm.connectAgent()), 15_000);
}

async function echo(vm: RunningVm, word: string): Promise<string> {
  const client = await agentOf(vm);
  try {
    return (await client.exec(['echo', word])).stdout.toString();
  } finally {
    await client.close();
  }
}

/** Every request the stand-in got: answered 2xx (unless `allowErrors`), and its body valid against the vendored OpenAPI document; the list, vm.info polls left out. */
function checkRequests(log: string, opts: { allowErrors?: boolean } = {}): string[] {
  const requests = readFakeChLog(log).filter((e) => e.method && e.endpoint);
  for (const r of requests) {
    const what = `${r.method} ${r.endpoint}`;
    expect(validateRequestBody(doc, r.method ?? '', r.endpoint ?? '', r.body, { fwCfgFeature: true }), what).toEqual([]);
    // (a vm.info poll before vm.restore finds no VM yet: 404, as CH answers)
    if (!opts.allowErrors && r.endpoint !== 'vm.info') expect(r.status, `${what}: ${r.error ?? ''}`).toBeLessThan(300);
  }
  // the driver's boot watch polls vm.info until the agent answers: when, is the machine's business
  return requests.filter((r) => r.endpoint !== 'vm.info').map((r) => `${r.method} ${r.endpoint} ${r.status}`);
}

async function errorOf(p: Promise<unknown>): Promise<unknown> {
  return p.then(() => {
    throw new Error('expected a rejection');
  }, (err: unknown) => err);
}

beforeAll(async () => {
  // the host build of the agent (the stand-in's "guest"), and slipway-blk for the daemon's disk path
  execFileSync('make', ['-s', '-C', join(PROJECT_ROOT, 'guest')], { stdio: 'inherit' });
  await ensureBackendBuilt();
  mkdirSync(kernelDir, { recursive: true });
  writeFileSync(kernel.vmlinux, 'not a real vmlinux (the Cloud Hypervisor stand-in boots nothing)\n');
  writeFileSync(kernel.bzImage, 'not a real bzImage\n');
  writeFileSync(initramfs, 'not a real initramfs\n');
  writeFileSync(join(kernelDir, 'root.img'), 'not a real disk\n');
  registry = await startRegistry();
  const disk = makeSparse(join(root, 'root.img'), 8 << 20, [{ offset: 0, length: 65536 }, { offset: 3 << 20, length: 8192 }]);
  baseRef = `${registry.host}/chmem/root:v1`;
  expect(await main(['push', disk, baseRef, '--progress=none'], captureIO())).toBe(0);
}, 600_000);

afterAll(async () => {
  for (const vm of vms) await vm.kill(500).catch(() => undefined);
  for (const s of served) await s.close().catch(() => undefined);
  for (const c of caches) await c.close().catch(() => undefined);
  await registry?.stop();
  // whatever a failed test left running (stand-ins, their agents) was started under `root`
  const left = processesWithArgument(root);
  for (const pid of left) await terminateProcess(pid, 1000);
  rmSync(root, { recursive: true, force: true });
  expect(left).toEqual([]);
});

describe('Cloud Hypervisor snapshot and restore requests (no process)', () => {
  it('the bodies the driver sends are valid against the vendored OpenAPI document, and a misspelt one is not', () => {
    expect(validateRequestBody(doc, 'PUT', 'vm.snapshot', { destination_url: 'file:///w/snap' })).toEqual([]);
    expect(validateRequestBody(doc, 'PUT', 'vm.restore', { source_url: 'file:///w/snap' })).toEqual([]);
    expect(validateRequestBody(doc, 'PUT', 'vm.restore', { source_url: 'file:///w/snap', memory_restore_mode: 'OnDemand' })).toEqual([]);
    expect(validateRequestBody(doc, 'PUT', 'vm.pause', undefined)).toEqual([]);
    expect(validateRequestBody(doc, 'PUT', 'vm.restore', { source_url: 'file:///w', memory_restore_mode: 'ondemand' }).join('\n')).toMatch(/memory_restore_mode: "ondemand" is not one of \["Copy","OnDemand"\]/);
    // the field is `prefault`, not `prefetch`
    expect(validateRequestBody(doc, 'PUT', 'vm.restore', { source_url: 'file:///w', prefetch: true }).join('\n')).toMatch(/property prefetch is not in the schema/);
    expect(validateRequestBody(doc, 'PUT', 'vm.restore', { memory_restore_mode: 'Copy' }).join('\n')).toMatch(/missing required property source_url/);
    expect(validateRequestBody(doc, 'PUT', 'vm.snapshot', { destination: 'file:///w' }).join('\n')).toMatch(/property destination is not in the schema/);
    expect(validateRequestBody(doc, 'PUT', 'vm.snapshot', undefined).join('\n')).toMatch(/a request body is required/);
    expect(validateRequestBody(doc, 'PUT', 'vm.pause', {}).join('\n')).toMatch(/takes no request body/);
  });

  it('chooses OnDemand from v52 on (by the crate version or the build version), Copy before, and refuses OnDemand asked of an older one', () => {
    expect(chooseRestoreMode({ version: '52.0.0' })).toBe('OnDemand');
    expect(chooseRestoreMode({ version: 'v53.1' })).toBe('OnDemand');
    expect(chooseRestoreMode({ version: 'unknown', build_version: 'v52.0-12-gabcdef' })).toBe('OnDemand');
    expect(chooseRestoreMode({ version: '51.1.0' })).toBe('Copy');
    expect(chooseRestoreMode({ version: 'v0.0.0-fake' })).toBe('Copy');
    expect(chooseRestoreMode({ version: 'custom' })).toBe('Copy');
    expect(chooseRestoreMode({ version: '53.0.0' }, 'Copy')).toBe('Copy');
    expect(chooseRestoreMode({ version: 'custom' }, 'OnDemand')).toBe('OnDemand');
    expect(() => chooseRestoreMode({ version: '51.0.0' }, 'OnDemand')).toThrow(/OnDemand needs Cloud Hypervisor v52/);
  });

  it('makes a saved config.json name the new VM\'s files, keeps the rest, and refuses what cannot be moved', () => {
    const was = chSpec('/run/slipway/vms/old', { disks: [{ kind: 'vhost-user', socket: '/run/slipway/vms/old/blk.sock' }] });
    const now = chSpec('/run/slipway/vms/new', { disks: [{ kind: 'vhost-user', socket: '/run/slipway/vms/new/blk.sock' }] });
    // CH's own config.json has more than the API body: ids, defaults
    const saved: Record<string, unknown> = { ...buildVmConfig(was, { fwCfg: true }), memory: { size: MEMORY_MIB << 20, shared: true, mergeable: false, hugepages: false }, iommu: false };
    const fresh = buildVmConfig(now, { fwCfg: true });
    const moved = relocateChConfig(saved, fresh);
    expect(JSON.stringify(moved)).not.toContain('/run/slipway/vms/old');
    expect(moved).toMatchObject({
      disks: [{ vhost_user: true, vhost_socket: '/run/slipway/vms/new/blk.sock' }], vsock: { cid: 3, socket: '/run/slipway/vms/new/vsock.sock' },
      serial: { mode: 'File', file: '/run/slipway/vms/new/console.log' }, memory: saved.memory, iommu: false,
      payload: { kernel: kernel.vmlinux, fw_cfg_config: { items: { item_list: [{ name: 'opt/slipway/config', file: '/run/slipway/vms/new/boot-config' }] } } },
    });
    expect(moved.payload).toMatchObject({ cmdline: chKernelCmdline(was, { fwCfg: true }) }); // the snapshot's, as its guest booted with it
    expect(saved).toMatchObject({ disks: [{ vhost_socket: '/run/slipway/vms/old/blk.sock' }] }); // the input is not changed
    expect(() => relocateChConfig(saved, buildVmConfig({ ...now, disks: [] }, { fwCfg: true }))).toThrow(/the snapshot has 1 disk\(s\), this VM 0/);
    expect(() => relocateChConfig({ ...saved, pmem: [{ file: '/run/slipway/vms/old/pmem.img' }] }, fresh)).toThrow(/still names the snapshotted VM's directory \/run\/slipway\/vms\/old at \$\.pmem\[0\]\.file/);
    expect(() => relocateChConfig(saved, buildVmConfig({ ...now, console: false }, { fwCfg: true }))).toThrow(/serial is a file, this VM's is not/);
    expect(() => relocateChConfig([saved], fresh)).toThrow(/not a JSON object/);
    expect(chDevices(fresh)).toEqual(['vhost-user-blk', 'virtio-rng', 'virtio-vsock', 'serial:File']);
  });
});

describe(`a VM's memory through the driver (${STAND_IN})`, () => {
  it(`pause, vm.snapshot into a directory, resume: config.json, state.json and a sparse memory-ranges of the VM's RAM size; its agent answers after; a restore into a fresh ${STAND_IN} that predates OnDemand copies (${STAND_IN})`, async () => {
    const bin = standIn();
    const first = dir('vm');
    const vm = await new CloudHypervisorDriver({ binary: bin.binary }).start(chSpec(first));
    vms.push(vm);
    expect(await echo(vm, 'before')).toBe('before\n');
    const ops = vm.memory;
    if (!ops) throw new Error('a started Cloud Hypervisor VM has memory operations');
    expect(ops.vmm).toBe('cloud-hypervisor');
    const snap = dir('saved');
    // CH snapshots only a paused VM
    expect(await errorOf(ops.save(snap))).toMatchObject({ code: 'VMM_ERROR', message: expect.stringMatching(/vm\.snapshot -> 500: .*Trying to snapshot while VM is running/) });
    await ops.pause();
    const saved = await ops.save(snap);
    expect(saved.files).toEqual([join(snap, 'state.json'), join(snap, 'config.json')]);
    expect(saved.ram).toEqual({ file: join(snap, 'memory-ranges'), live: false });
    const st = statSync(saved.ram.file);
    expect(st.size).toBe(MEMORY_MIB << 20);
    expect(st.blocks * 512).toBeLessThan(1 << 20); // sparse: the markers only
    expect(st.mode & 0o777).toBe(0o600);
    expect(JSON.parse(readFileSync(join(snap, 'state.json'), 'utf8'))).toMatchObject({ fake: expect.stringContaining('FAKE') });
    // CH writes its files new: a second snapshot into the same directory is refused before CH is asked
    expect(await errorOf(ops.save(snap))).toMatchObject({ code: 'CONFLICT' });
    await ops.resume();
    expect(await echo(vm, 'after')).toBe('after\n');
    await vm.kill();
    expect(checkRequests(bin.log, { allowErrors: true })).toEqual([
      'GET vmm.ping 200', 'PUT vm.create 204', 'PUT vm.boot 204', 'PUT vm.snapshot 500', 'PUT vm.pause 204', 'PUT vm.snapshot 204', 'PUT vm.resume 204', 'PUT vm.shutdown 204', 'PUT vmm.shutdown 204',
    ]);
    const nonce = readFakeChLog(bin.log).find((e) => e.event === 'snapshot')?.nonce;
    expect(nonce).toMatch(/^[0-9a-f]{16}$/);

    // a restore into a fresh CH (the snapshotted VM and its directory gone): no vm.create, no vm.boot
    rmSync(first, { recursive: true, force: true });
    const again = standIn();
    const second = dir('vm');
    const restored = await bootVm(new CloudHypervisorDriver({ binary: again.binary }), chSpec(second, { incoming: true }), {
      agentDeadlineMs: 15_000,
      afterStart: async (started) => {
        if (!started.memory) throw new Error('no memory operations');
        expect(await started.memory.restore(snap)).toEqual({ memory: 'copy' });
      },
    });
    vms.push(restored.vm);
    expect((await restored.client.exec(['echo', 'restored'])).stdout.toString()).toBe('restored\n');
    await restored.client.close();
    await restored.vm.kill();
    expect(checkRequests(again.log)).toEqual(['GET vmm.ping 200', 'PUT vm.restore 204', 'PUT vm.resume 204', 'PUT vm.shutdown 204', 'PUT vmm.shutdown 204']);
    const log = readFakeChLog(again.log);
    // an older CH gets no memory_restore_mode at all (Copy is its default)
    expect(log.find((e) => e.endpoint === 'vm.restore')?.body).toEqual({ source_url: `file://${snap}` });
    expect(log.find((e) => e.event === 'restored')).toMatchObject({ mode: 'Copy', nonce });
    // config.json was made to name the new VM's files
    const config = readFileSync(join(snap, 'config.json'), 'utf8');
    expect(config).toContain(join(second, 'vsock.sock'));
    expect(config).not.toContain(first);
  }, 120_000);

  it(`a snapshot directory that is corrupt or incomplete is refused by the ${STAND_IN} with an HTTP error, which the driver reports as VMM_ERROR with its words`, async () => {
    const bin = standIn('v52.0');
    const vm = await new CloudHypervisorDriver({ binary: bin.binary }).start(chSpec(dir('vm')));
    vms.push(vm);
    if (!vm.memory) throw new Error('no memory operations');
    await vm.memory.pause();
    const snap = dir('saved');
    await vm.memory.save(snap);
    await vm.kill();
    const restoreInto = async (from: string): Promise<unknown> => {
      const fresh = await new CloudHypervisorDriver({ binary: standIn('v52.0').binary }).start(chSpec(dir('vm'), { incoming: true }));
      vms.push(fresh);
      try {
        if (!fresh.memory) throw new Error('no memory operations');
        return await errorOf(fresh.memory.restore(from));
      } finally {
        await fresh.kill();
      }
    };
    // one byte of the guest's RAM changed
    const fd = openSync(join(snap, 'memory-ranges'), 'r+');
    const byte = Buffer.alloc(1);
    readSync(fd, byte, 0, 1, 5 << 20);
    writeSync(fd, Buffer.from([byte[0] === undefined ? 1 : byte[0] ^ 0xff]), 0, 1, 5 << 20);
    closeSync(fd);
    expect(await restoreInto(snap)).toMatchObject({ code: 'VMM_ERROR', message: expect.stringMatching(/vm\.restore -> 500: .*memory-ranges is corrupt: sha256/) });
    rmSync(join(snap, 'state.json'));
    expect(await restoreInto(snap)).toMatchObject({ code: 'VMM_ERROR', message: expect.stringMatching(/vm\.restore -> 500: .*state\.json: No such file or directory \(os error 2\)/) });
    expect(await restoreInto(dir('empty'))).toMatchObject({ code: 'CORRUPT_INDEX', message: expect.stringMatching(/config\.json cannot be read/) });
  }, 120_000);
});

describe(`memory snapshots through the registry (${STAND_IN}, a real docker-registry, the disk served by slipway-blk)`, () => {
  const snapRef = (): string => `${registry.host}/chmem/snap:v1`;
  let shapeTaken: VmShape | undefined;
  let nonce: string | undefined;
  let ramDigest = '';

  it(`a running ${STAND_IN} VM snapshotted into the registry: the memory-snapshot artifact with shape vmm cloud-hypervisor, CH's state.json and config.json as its two state layers, memory-ranges as its RAM image chunked like a disk; the VM runs on (${STAND_IN})`, async () => {
    const cache = await newCache();
    const work = dir('vm');
    const disk = await serveDisk({ cache, ref: baseRef, socket: join(work, 'blk.sock'), workDir: join(work, 'backend'), readWrite: true });
    served.push(disk);
    const bin = standIn('v52.0');
    const driver = new CloudHypervisorDriver({ binary: bin.binary });
    const spec = chSpec(work, { disks: [{ kind: 'vhost-user', socket: disk.socket }] });
    const vm = await driver.start(spec);
    vms.push(vm);
    expect(await echo(vm, 'running')).toBe('running\n');
    const parsed = parseRef(snapRef());
    if (!parsed.tag) throw new Error('a tag');
    const out = await takeMemorySnapshot({ cache, logger: silentLogger, stagingDir: dir('staging') }, { id: 'chmem', vm, served: disk, spec, driver }, { ...parsed, tag: parsed.tag });
    expect(out.ref).toBe(snapRef());
    expect(out.deviceStateBytes).toBeGreaterThan(0);
    // three marker pages of 128 MiB: zero chunks cost nothing
    expect(out.ramUploadedBytes).toBeLessThan(4 * RAM_CHUNK_BYTES);
    expect(await echo(vm, 'still running')).toBe('still running\n');
    nonce = readFakeChLog(bin.log).find((e) => e.event === 'snapshot')?.nonce;
    expect(checkRequests(bin.log)).toEqual(['GET vmm.ping 200', 'PUT vm.create 204', 'PUT vm.boot 204', 'PUT vm.pause 204', 'PUT vm.snapshot 204', 'PUT vm.resume 204']);

    const target = await cache.targets.open(parsed);
    const loaded = await loadMemorySnapshot(target, 'v1');
    shapeTaken = loaded.config.shape;
    ramDigest = loaded.config.ram.digest;
    expect(loaded.config.shape).toEqual(await driver.shape(spec));
    expect(loaded.config.shape).toMatchObject({ vmm: 'cloud-hypervisor', vmmVersion: 'v52.0', machine: 'x86_64', cpus: 2, memoryMiB: MEMORY_MIB, devices: ['vhost-user-blk', 'virtio-rng', 'virtio-vsock', 'serial:File'] });
    expect(loaded.state.map((l) => [l.descriptor.mediaType, l.file])).toEqual([[MEDIA_TYPE_CH_STATE, 'state.json'], [MEDIA_TYPE_CH_CONFIG, 'config.json']]);
    const stateLayer = loaded.state[0];
    if (!stateLayer) throw new Error('no state layer');
    expect(JSON.parse((await target.fetchBlob(stateLayer.descriptor)).toString())).toMatchObject({ ram: { nonce } });
    const ram = await cache.openDisk(`${target.name}@${loaded.config.ram.digest}`, { useProfile: false });
    try {
      expect(ram.artifact.index.sizeBytes).toBe(MEMORY_MIB << 20);
      expect(ram.artifact.index.chunkSizeBytes).toBe(RAM_CHUNK_BYTES);
    } finally {
      await ram.close();
    }
    await vm.kill();
    await disk.close();
  }, 180_000);

  it(`restored on a host with an empty cache into a fresh ${STAND_IN}: memory-ranges rebuilt from the registry chunk for chunk, config.json naming the new VM's files, restored OnDemand (v52), the agent answers (${STAND_IN})`, async () => {
    if (!shapeTaken || !nonce) throw new Error('the snapshot test did not run');
    const cache = await newCache();
    const work = dir('vm');
    const opened = await openMemorySnapshot(cache, parseRef(snapRef()));
    const plan = await prepareRestore(cache, opened, 'chmem2', work, silentLogger);
    expect(plan.stateDir).toBe(work);
    expect(plan.ramFile).toBe(join(work, 'memory-ranges'));
    expect(plan.ram).toBeUndefined(); // no slipway-ramfs: CH loads its RAM itself
    expect(statSync(plan.ramFile).size).toBe(MEMORY_MIB << 20);
    for (const f of ['state.json', 'config.json']) expect(existsSync(join(work, f)), f).toBe(true);
    const disk = await serveDisk({ cache, ref: opened.diskRef, socket: join(work, 'blk.sock'), workDir: join(work, 'backend'), readWrite: true });
    served.push(disk);
    const bin = standIn('v52.0');
    const driver = new CloudHypervisorDriver({ binary: bin.binary });
    const spec = chSpec(work, { incoming: true, disks: [{ kind: 'vhost-user', socket: disk.socket }] });
    checkShape(opened.snapshot.config.shape, await vmShape(spec, driver));
    const booted = await bootVm(driver, spec, {
      agentDeadlineMs: 15_000,
      afterStart: async (started) => {
        if (!started.memory) throw new Error('no memory operations');
        expect(await started.memory.restore(plan.stateDir)).toEqual({ memory: 'on-demand' });
      },
    });
    vms.push(booted.vm);
    expect((await booted.client.exec(['echo', 'restored'])).stdout.toString()).toBe('restored\n');
    await booted.client.close();
    const log = readFakeChLog(bin.log);
    expect(log.find((e) => e.endpoint === 'vm.restore')?.body).toEqual({ source_url: `file://${work}`, memory_restore_mode: 'OnDemand' });
    // the stand-in found the RAM it wrote (markers and sha256 as its state.json says) and the new VM's files
    expect(log.find((e) => e.event === 'restored')).toMatchObject({ mode: 'OnDemand', nonce, size: MEMORY_MIB << 20 });
    expect(checkRequests(bin.log)).toEqual(['GET vmm.ping 200', 'PUT vm.restore 204', 'PUT vm.resume 204']);
    const config = JSON.parse(readFileSync(join(work, 'config.json'), 'utf8')) as { disks: { vhost_socket: string }[] };
    expect(config.disks[0]?.vhost_socket).toBe(disk.socket);
    await booted.vm.kill();
    await disk.close();
  }, 180_000);

  it('a restore into another VMM or shape is refused with checkShape\'s error: QEMU, more memory, another Cloud Hypervisor version; lazy loading is refused for it', async () => {
    if (!shapeTaken) throw new Error('the snapshot test did not run');
    const taken = shapeTaken;
    const work = dir('vm');
    const spec = chSpec(work, { disks: [{ kind: 'vhost-user', socket: join(work, 'blk.sock') }] });
    const refused = async (here: Promise<VmShape>): Promise<unknown> => {
      const shape = await here;
      try {
        checkShape(taken, shape);
      } catch (err) {
        return err;
      }
      throw new Error('a shape that differs was accepted');
    };
    const driver = new CloudHypervisorDriver({ binary: standIn('v52.0').binary });
    const qemu = await refused(vmShape(spec));
    expect(isSlipwayError(qemu, 'INVALID_ARGUMENT'), String(qemu)).toBe(true);
    expect((qemu as Error).message).toMatch(/restores only into the shape it was taken in: vmm: the snapshot has "cloud-hypervisor", this VM would have "qemu"/);
    expect(await refused(driver.shape({ ...spec, memoryMiB: 256 }))).toMatchObject({ code: 'INVALID_ARGUMENT', message: expect.stringMatching(/memoryMiB: the snapshot has 128, this VM would have 256/) });
    expect(await refused(new CloudHypervisorDriver({ binary: standIn('v53.0').binary }).shape(spec))).toMatchObject({ code: 'INVALID_ARGUMENT', message: expect.stringMatching(/vmmVersion: the snapshot has "v52\.0", this VM would have "v53\.0"/) });
    expect(await refused(driver.shape({ ...spec, console: false }))).toMatchObject({ code: 'INVALID_ARGUMENT', message: expect.stringMatching(/devices: the snapshot has .*serial:File; this VM would have vhost-user-blk, virtio-rng, virtio-vsock$/) });
    const cache = await newCache();
    const opened = await openMemorySnapshot(cache, parseRef(snapRef()));
    const lazy = await errorOf(prepareRestore(cache, opened, 'chmem3', work, silentLogger, 'lazy'));
    expect(lazy).toMatchObject({ code: 'INVALID_ARGUMENT', message: expect.stringMatching(/lazy.*Cloud Hypervisor loads it on demand itself/) });
    expect(existsSync(join(work, 'memory-ranges'))).toBe(false);
  }, 120_000);

  it('the artifact: a Cloud Hypervisor snapshot is accepted only with CH\'s state layers, a QEMU one only with QEMU\'s; pushing the wrong number of layers is refused', async () => {
    const cache = await newCache();
    const parsed = parseRef(snapRef());
    const target = await cache.targets.open(parsed);
    const good = await target.fetchManifest('v1');
    const manifest = JSON.parse(good.body.toString()) as ImageManifest;
    const config = JSON.parse((await target.fetchBlob(manifest.config)).toString()) as MemorySnapshotConfig;
    expect(config.ram.digest).toBe(ramDigest);
    const push = async (tag: string, m: ImageManifest): Promise<unknown> => {
      await target.pushManifest(Buffer.from(JSON.stringify(m)), good.descriptor.mediaType, tag);
      return loadMemorySnapshot(target, tag).then(() => 'accepted', (err: unknown) => err);
    };
    // CH's layers under QEMU's media type
    const asQemu = { ...manifest, layers: manifest.layers.map((l) => ({ ...l, mediaType: MEDIA_TYPE_QEMU_DEVICE_STATE })) };
    expect(await push('bad-qemu-layers', asQemu)).toMatchObject({ code: 'CORRUPT_INDEX', message: expect.stringMatching(/not those of a cloud-hypervisor snapshot/) });
    // one layer missing
    expect(await push('bad-one-layer', { ...manifest, layers: manifest.layers.slice(0, 1) })).toMatchObject({ code: 'CORRUPT_INDEX' });
    // a config claiming QEMU over CH's layers
    const qemuConfig = Buffer.from(JSON.stringify({ ...config, shape: { ...config.shape, vmm: 'qemu' } }));
    const qemuDesc = { mediaType: MEDIA_TYPE_MEMORY_SNAPSHOT_CONFIG, digest: sha256Digest(qemuConfig), size: qemuConfig.byteLength };
    await target.pushBlob(qemuDesc, qemuConfig);
    expect(await push('bad-qemu-config', { ...manifest, config: qemuDesc })).toMatchObject({ code: 'CORRUPT_INDEX', message: expect.stringMatching(/not those of a qemu snapshot/) });
    // an unknown VMM
    const otherConfig = Buffer.from(JSON.stringify({ ...config, shape: { ...config.shape, vmm: 'firecracker' } }));
    const otherDesc = { mediaType: MEDIA_TYPE_MEMORY_SNAPSHOT_CONFIG, digest: sha256Digest(otherConfig), size: otherConfig.byteLength };
    await target.pushBlob(otherDesc, otherConfig);
    expect(await push('bad-vmm', { ...manifest, config: otherDesc })).toMatchObject({ code: 'CORRUPT_INDEX', message: expect.stringMatching(/VM shape is malformed/) });
    await expect(pushMemorySnapshot(target, 'bad-count', config, [Buffer.from('{}')])).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', message: expect.stringMatching(/has 2 state layer\(s\), not 1/) });
  }, 60_000);
});
