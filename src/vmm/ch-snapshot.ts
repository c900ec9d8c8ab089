/**
 * Memory snapshots on Cloud Hypervisor (docs/snapshots.md, "Cloud Hypervisor"), over its REST API
 * (ch-api.ts; vendor/cloud-hypervisor/cloud-hypervisor.yaml; CH's docs/snapshot_restore.md):
 *
 *   PUT vm.pause, vm.resume
 *   PUT vm.snapshot  VmSnapshotConfig `{destination_url: "file://<dir>"}`, a paused VM into an
 *                    existing directory: `config.json` (its VmConfig), `state.json` (vCPUs and
 *                    devices) and `memory-ranges` (its RAM, the guest memory ranges one after
 *                    another: as many bytes as it has RAM; sparse from v52 on, pages never touched
 *                    left as holes). CH creates each file new: the directory must hold none of them.
 *   PUT vm.restore   RestoreConfig `{source_url: "file://<dir>", memory_restore_mode?}`, into a CH
 *                    started with no VM; the VM it creates from config.json is paused until
 *                    vm.resume.
 *
 * `memory_restore_mode: "OnDemand"` (v52 on: userfaultfd, each page read from memory-ranges when
 * the guest first touches it, so the VM runs before its RAM is read) where the binary's version
 * has it, else the field is left out, which is `Copy` on every version (memory-ranges read whole
 * first). OnDemand is strict in CH: where userfaultfd cannot be had the restore fails rather than
 * copying. Not sent: `prefault` (refused with OnDemand), `resume` (v52 on only: vm.resume is sent
 * instead, which every version has).
 *
 * config.json names the snapshotted VM's files (its vhost-user and vsock sockets, its console, the
 * kernel, initramfs and fw_cfg items): before vm.restore it is rewritten to name the new VM's
 * (relocateChConfig), as CH's docs allow ("it could be modified between the snapshot and restore
 * phases"), and refused if it still names the old VM's directory anywhere.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readFile, stat, writeFile } from 'node:fs/promises';
import { dirname, isAbsolute, join } from 'node:path';
import { promisify } from 'node:util';
import type { VmShape } from '../disk/memory-snapshot.js';
import { SlipwayError } from '../errors.js';
import { guestKernelDigest } from './accel.js';
import { chApi, type VmmPing } from './ch-api.js';
import type { MemorySnapshotOps, RestoredMemory, SavedVmState, VmSpec } from './driver.js';

const run = promisify(execFile);

/** What vm.snapshot writes into its directory (CH's names). */
export const CH_SNAPSHOT_FILES = { config: 'config.json', state: 'state.json', memory: 'memory-ranges' } as const;

/** The first Cloud Hypervisor with `memory_restore_mode` (its v52.0 release notes: userfaultfd demand-paged restore). */
export const CH_ON_DEMAND_RESTORE_SINCE = 52;

export type ChMemoryRestoreMode = 'Copy' | 'OnDemand';
/** How a restore loads RAM: `auto` (OnDemand where the version has it, else Copy) or one of CH's modes. */
export type ChMemoryRestoreChoice = 'auto' | ChMemoryRestoreMode;

/** vm.snapshot writes all of RAM, and a Copy restore reads it: minutes for a large guest on a slow disk. */
const SNAPSHOT_TIMEOUT_MS = 600_000;

type Json = Record<string, unknown>;

function isObject(v: unknown): v is Json {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function arrayOf(v: unknown): unknown[] {
  return Array.isArray(v) ? v : [];
}

function fileUrl(dir: string): string {
  if (!isAbsolute(dir)) throw new SlipwayError('INVALID_ARGUMENT', `a Cloud Hypervisor snapshot directory must be an absolute path (got ${JSON.stringify(dir)})`);
  // CH takes the path after file:// as it is (no percent-decoding)
  return `file://${dir}`;
}

/** The major version of a CH from its ping (`version` is the crate's, "52.0.0"; `build_version` git's, "v52.0-3-g..."), undefined when neither says. */
export function chMajorVersion(ping: Pick<VmmPing, 'version' | 'build_version'>): number | undefined {
  for (const v of [ping.version, ping.build_version]) {
    const m = /^v?(\d+)\.\d+/.exec(v ?? '');
    if (m?.[1]) return Number(m[1]);
  }
  return undefined;
}

/**
 * The memory_restore_mode for this CH: OnDemand where its version has it (or where asked), Copy
 * otherwise. Errors: INVALID_ARGUMENT when OnDemand is asked of a version known not to have it.
 */
export function chooseRestoreMode(ping: Pick<VmmPing, 'version' | 'build_version'>, choice: ChMemoryRestoreChoice = 'auto'): ChMemoryRestoreMode {
  const major = chMajorVersion(ping);
  const hasOnDemand = major !== undefined && major >= CH_ON_DEMAND_RESTORE_SINCE;
  if (choice === 'Copy') return 'Copy';
  if (choice === 'OnDemand') {
    if (major !== undefined && !hasOnDemand) throw new SlipwayError('INVALID_ARGUMENT', `memory_restore_mode OnDemand needs Cloud Hypervisor v${CH_ON_DEMAND_RESTORE_SINCE} or later; this one is ${ping.version}`);
    return 'OnDemand';
  }
  return hasOnDemand ? 'OnDemand' : 'Copy';
}

/** `cloud-hypervisor --version`'s version ("v52.0"), what a snapshot's shape records. Errors: VMM_ERROR. */
export async function chBinaryVersion(binary: string): Promise<string> {
  let out: string;
  try {
    const r = await run(binary, ['--version'], { timeout: 10_000 });
    out = `${r.stdout}${r.stderr}`;
  } catch (err) {
    throw new SlipwayError('VMM_ERROR', `cannot run ${binary} --version: ${(err as Error).message}`, { cause: err });
  }
  const version = /cloud-hypervisor\s+(\S+)/i.exec(out)?.[1];
  if (!version) throw new SlipwayError('VMM_ERROR', `${binary} --version did not say a version: ${out.trim().slice(0, 200)}`);
  return version;
}

/** The devices of a VmConfig in CH's order (what state.json describes), for the VM's shape. */
export function chDevices(config: Json): string[] {
  const list = (v: unknown): Json[] => arrayOf(v).filter(isObject);
  const devices: string[] = list(config.disks).map((d) => (d.vhost_user === true ? 'vhost-user-blk' : 'virtio-blk'));
  devices.push(...list(config.net).map(() => 'virtio-net'));
  if (isObject(config.rng)) devices.push('virtio-rng');
  if (isObject(config.vsock)) devices.push('virtio-vsock');
  for (const [name, device] of [['serial', 'serial'], ['console', 'virtio-console']] as const) {
    const c = config[name];
    if (isObject(c) && c.mode !== 'Off') devices.push(`${device}:${String(c.mode)}`);
  }
  return devices;
}

/**
 * The shape a memory snapshot of `spec` on Cloud Hypervisor records, and a restore must match:
 * `config` is the VmConfig the driver builds for it, `vmmVersion` the binary's.
 */
export async function chShape(spec: VmSpec, config: Json, vmmVersion: string): Promise<VmShape> {
  return {
    vmm: 'cloud-hypervisor', vmmVersion, machine: process.arch === 'arm64' ? 'aarch64' : 'x86_64', cpus: spec.cpus, memoryMiB: spec.memoryMiB,
    devices: chDevices(config), kernel: await guestKernelDigest(spec.kernel.vmlinux), initramfs: await guestKernelDigest(spec.initramfs),
  };
}

/** Where in `v` a string names something under `dir` (JSON paths), for the check after relocating. */
function pathsUnder(v: unknown, dir: string, at = '$'): string[] {
  if (typeof v === 'string') return v === dir || v.startsWith(`${dir}/`) ? [at] : [];
  if (Array.isArray(v)) return v.flatMap((x, i) => pathsUnder(x, dir, `${at}[${i}]`));
  if (isObject(v)) return Object.entries(v).flatMap(([k, x]) => pathsUnder(x, dir, `${at}.${k}`));
  return [];
}

/**
 * A snapshot's config.json made to name this VM's files: `fresh` is the VmConfig this VM would be
 * created with (buildVmConfig). Rewritten: the payload's kernel and initramfs, its fw_cfg items'
 * files (by name), each disk's path or vhost-user socket (by position), each TAP's name, the vsock
 * socket, and the serial and console files. Everything else (memory, CPUs, device ids) is the
 * snapshot's. Errors: INVALID_ARGUMENT when the device lists differ, or when the result still
 * names the snapshotted VM's work directory (the directory of its vsock socket) anywhere.
 */
export function relocateChConfig(saved: unknown, fresh: Json): Json {
  if (!isObject(saved)) throw new SlipwayError('CORRUPT_INDEX', 'the Cloud Hypervisor snapshot\'s config.json is not a JSON object');
  const out: Json = structuredClone(saved);
  const refuse = (why: string): SlipwayError => new SlipwayError('INVALID_ARGUMENT', `cannot restore the Cloud Hypervisor snapshot into this VM: ${why}`, { context: { field: 'image' } });
  const oldVsock = isObject(out.vsock) && typeof out.vsock.socket === 'string' ? out.vsock.socket : undefined;

  const payload = out.payload;
  const freshPayload = fresh.payload;
  if (isObject(payload) && isObject(freshPayload)) {
    for (const k of ['kernel', 'initramfs'] as const) if (typeof freshPayload[k] === 'string' && k in payload) payload[k] = freshPayload[k];
    const items = (c: unknown): Json[] => (isObject(c) && isObject(c.items) && Array.isArray(c.items.item_list) ? c.items.item_list.filter(isObject) : []);
    const freshItems = items(freshPayload.fw_cfg_config);
    for (const item of items(payload.fw_cfg_config)) {
      const mine = freshItems.find((f) => f.name === item.name);
      if (mine && typeof mine.file === 'string' && typeof item.file === 'string') item.file = mine.file;
    }
  }
  for (const key of ['disks', 'net'] as const) {
    const was = arrayOf(out[key]);
    const now = arrayOf(fresh[key]);
    if (was.length !== now.length) throw refuse(`the snapshot has ${was.length} ${key === 'disks' ? 'disk(s)' : 'network device(s)'}, this VM ${now.length}`);
    was.forEach((w, i) => {
      const n = now[i];
      if (!isObject(w) || !isObject(n)) throw refuse(`${key}[${i}] is not an object`);
      for (const field of ['path', 'vhost_socket', 'tap'] as const) {
        if (typeof n[field] !== 'string') continue;
        if (w[field] === undefined || w[field] === null) throw refuse(`${key}[${i}]: the snapshot's has no ${field}, this VM's has one`);
        w[field] = n[field];
      }
    });
  }
  if (isObject(out.vsock) && isObject(fresh.vsock)) out.vsock.socket = fresh.vsock.socket;
  for (const key of ['serial', 'console'] as const) {
    const w = out[key];
    const n = fresh[key];
    if (!isObject(w) || typeof w.file !== 'string') continue;
    if (!isObject(n) || typeof n.file !== 'string') throw refuse(`the snapshot's ${key} is a file, this VM's is not`);
    w.file = n.file;
  }
  if (oldVsock) {
    const oldDir = dirname(oldVsock);
    const left = oldDir === '/' ? [] : pathsUnder(out, oldDir);
    if (left.length > 0) throw refuse(`its config.json still names the snapshotted VM's directory ${oldDir} at ${left.join(', ')}`);
  }
  return out;
}

/** What a CH VM's memory operations need to know of it. */
export interface ChMemoryContext {
  /** the API socket */
  apiSocket: string;
  /** its ping at start: the version decides the restore mode */
  ping: VmmPing;
  /** the VmConfig the driver built for it (its files: what a restored config.json is made to name) */
  config: Json;
  restoreMode: ChMemoryRestoreChoice;
}

/** Memory-snapshot operations on one Cloud Hypervisor VM that its driver started. */
export class ChMemoryOps implements MemorySnapshotOps {
  readonly vmm = 'cloud-hypervisor' as const;

  constructor(private readonly ctx: ChMemoryContext) {}

  async pause(): Promise<void> {
    await chApi(this.ctx.apiSocket, 'PUT', 'vm.pause');
  }

  async resume(): Promise<void> {
    await chApi(this.ctx.apiSocket, 'PUT', 'vm.resume');
  }

  /**
   * A paused VM into `dir` (vm.snapshot): state.json and config.json are its device state, and
   * memory-ranges its RAM image (CH's, not live). Errors: CONFLICT when `dir` already holds one
   * of CH's files; VMM_ERROR with CH's words, or when CH said yes but a file is missing.
   */
  async save(dir: string): Promise<SavedVmState> {
    const url = fileUrl(dir);
    const files = Object.values(CH_SNAPSHOT_FILES).map((f) => join(dir, f));
    const there = files.filter((f) => existsSync(f));
    if (there.length > 0) throw new SlipwayError('CONFLICT', `${there.join(', ')} exists: Cloud Hypervisor writes its snapshot files new`);
    await chApi(this.ctx.apiSocket, 'PUT', 'vm.snapshot', { destination_url: url }, SNAPSHOT_TIMEOUT_MS);
    for (const f of files) {
      await stat(f).catch((err: unknown) => {
        throw new SlipwayError('VMM_ERROR', `cloud-hypervisor vm.snapshot succeeded but wrote no ${f}: ${(err as Error).message}`);
      });
    }
    return { files: [join(dir, CH_SNAPSHOT_FILES.state), join(dir, CH_SNAPSHOT_FILES.config)], ram: { file: join(dir, CH_SNAPSHOT_FILES.memory), live: false } };
  }

  /**
   * Restore the snapshot in `dir` (config.json, state.json, memory-ranges) into this CH, started
   * with no VM (VmSpec.incoming), then run it: config.json made to name this VM's files first,
   * OnDemand where the version has it. Errors: INVALID_ARGUMENT (another device list, a directory
   * left in config.json), CORRUPT_INDEX (config.json not an object), VMM_ERROR with CH's words.
   */
  async restore(dir: string): Promise<{ memory: RestoredMemory }> {
    const url = fileUrl(dir);
    const configPath = join(dir, CH_SNAPSHOT_FILES.config);
    let saved: unknown;
    try {
      saved = JSON.parse(await readFile(configPath, 'utf8'));
    } catch (err) {
      throw new SlipwayError('CORRUPT_INDEX', `the Cloud Hypervisor snapshot's ${configPath} cannot be read as JSON: ${(err as Error).message}`, { cause: err });
    }
    await writeFile(configPath, `${JSON.stringify(relocateChConfig(saved, this.ctx.config))}\n`, { mode: 0o600 });
    const mode = chooseRestoreMode(this.ctx.ping, this.ctx.restoreMode);
    // Copy is CH's default: left out, the body is one every version takes
    await chApi(this.ctx.apiSocket, 'PUT', 'vm.restore', { source_url: url, ...(mode === 'OnDemand' ? { memory_restore_mode: mode } : {}) }, SNAPSHOT_TIMEOUT_MS);
    await chApi(this.ctx.apiSocket, 'PUT', 'vm.resume');
    return { memory: mode === 'OnDemand' ? 'on-demand' : 'copy' };
  }
}
