/**
 * The daemon's VMs: boot one from an image (its disk served lazily by a detached slipway-blk,
 * its VMM detached too), run commands through its agent, snapshot its disk into a registry,
 * delete it; and after a daemon restart, adopt every VM an earlier daemon left running. The HTTP
 * layer (app.ts) only validates and translates; everything a VM is lives here and in state.ts.
 */
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { ChunkCache } from '../cache/chunk-cache.js';
import { manifestRefusedAsDisk } from '../cache/open-disk.js';
import { SlipwayError, isSlipwayError } from '../errors.js';
import { AgentClient, waitForAgent } from '../guest/agent-client.js';
import { bootVm } from '../vmm/boot.js';
import { GUEST_MARK, checkRequestRef, digestRef, toInfo } from './vm-records.js';
import { renderBootConfig, type BootConfig } from '../guest/boot-config.js';
import { guestArtifacts } from '../guest/build.js';
import { parseRef } from '../oci/ref.js';
import { adoptDisk, serveDisk, type ServedDisk } from '../serve/backend.js';
import type { BackgroundWork } from '../util/background.js';
import type { Logger } from '../util/log.js';
import { processesWithArgument, terminateProcess } from '../util/process.js';
import type { NetSpec, RunningVm, VmmDriver, VmSpec } from '../vmm/driver.js';
import { driverFor } from '../vmm/drivers.js';
import { canWaitForBackends } from '../vmm/qemu.js';
import { checkShape } from '../disk/memory-snapshot.js';
import { adoptRam, servedRamFile, stopLeftoverRam, type ServedRam } from '../serve/ram-backend.js';
import { afterLazyRestore, applyRestoredIdentity, createRamFile, openMemorySnapshot, restoreFigures, prepareRestore, ramFileOf, ramOverlayOf, removeStagedRamCopies, restoresLazily, takeMemorySnapshot, vmShape, type OpenedMemorySnapshot, type RestorePlan, type SnapshotVm } from './memory-snapshots.js';
import type { Histogram, Counter } from './metrics.js';
import { snapshotDisk } from './disk-snapshot.js';
import { BootAdmission } from './vm-admission.js';
import type { CreateVmRequest, ExecRequest, MemorySnapshotResult, RestoreFigures, SnapshotResult, VmInfo } from './schemas.js';
import type { StateStore, VmRecord } from './state.js';

export interface VmLimits {
  /** VMs booting at once; further boots wait */
  maxConcurrentBoots: number;
  /** boots waiting for a slot; beyond that a boot is refused (LIMIT_EXCEEDED) */
  maxQueuedBoots: number;
  /** VMs this daemon runs at most */
  maxVms: number;
  /** how long a guest has to reach its agent */
  bootTimeoutMs: number;
}

export const DEFAULT_LIMITS: VmLimits = { maxConcurrentBoots: 4, maxQueuedBoots: 64, maxVms: 64, bootTimeoutMs: 180_000 };

export interface VmMetrics {
  boots: Counter;
  bootPhases: Histogram;
  snapshots: Counter;
  snapshotBytes: Counter;
  backendErrors: Counter;
}

interface LiveVm {
  record: VmRecord;
  vm: RunningVm;
  served: ServedDisk;
  agent: AgentClient | undefined;
  connecting: Promise<AgentClient> | undefined;
  busy: 'snapshot' | 'delete' | undefined;
  /** the removal in progress, which a second delete waits for */
  removing?: Promise<void>;
  /** adopted: an earlier daemon may have died between freezing the guest's file system and thawing it */
  thawOnConnect?: boolean;
  /** the spec it was started with (not known for a VM adopted after a restart) */
  spec?: VmSpec;
  /** the memory snapshot it was restored from or last snapshotted into: the next one's RAM dedup base */
  memoryParent?: SnapshotVm['parent'];
  /** lazy memory: the server of this VM's RAM (a restore) */
  ram?: ServedRam;
  /** a lazy restore records its working set until its first exec has answered: told here */
  firstExecDone?: (why: 'exec' | 'gone') => void;
}

const GUEST_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

/**
 * How long the agent may take to answer: the guest is not trusted to answer at all, and nothing
 * the daemon does may hang on it (a sync of a large dirty page cache is the slow one).
 */
const AGENT_TIMEOUTS = { spawnMs: 30_000, syncMs: 120_000, freezeMs: 60_000, shutdownMs: 5_000 };

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new SlipwayError('AGENT_PROTOCOL', `the guest agent did not answer ${what} within ${ms} ms`, { context: { reason: 'timeout' } })), ms);
  });
  return Promise.race([p, expired]).finally(() => clearTimeout(timer));
}

export class VmManager {
  private readonly live = new Map<string, LiveVm>();
  /** VMs left running by an earlier daemon that this one could not adopt */
  private readonly unadopted = new Set<string>();
  /** failed backend chunk fetches of VMs already removed */
  private missFailuresOfRemoved = 0;
  private readonly admission: BootAdmission;

  private get stagingDir(): string {
    return join(this.deps.stateDir, 'staging');
  }

  constructor(private readonly deps: { cache: ChunkCache; state: StateStore; logger: Logger; metrics: VmMetrics; limits: VmLimits; stateDir: string; cacheDir: string; drivers?: Partial<Record<VmRecord['vmm'], VmmDriver>>; background?: BackgroundWork }) {
    this.admission = new BootAdmission(deps.limits);
  }

  private readonly drivers = new Map<VmRecord['vmm'], VmmDriver>();

  private driver(name: VmRecord['vmm']): VmmDriver {
    const given = this.deps.drivers?.[name];
    if (given) return given;
    let d = this.drivers.get(name);
    if (!d) {
      d = driverFor(name, { cacheDir: this.deps.cacheDir, onAccelDecided: (v) => this.deps.logger.info(`accel: ${v.accel} (${v.reason})`, { accel: v.accel, reason: v.reason, source: v.source, decideMs: v.decideMs }) });
      this.drivers.set(name, d);
    }
    return d;
  }

  get counts(): { running: number; booting: number; queued: number } {
    return { running: [...this.live.values()].filter((l) => l.record.status === 'running').length, ...this.admission.counts };
  }

  /** Chunk fetches for backends that failed (each one an I/O error in a guest), over the daemon's life. */
  missFailures(): number {
    let n = this.missFailuresOfRemoved;
    for (const l of this.live.values()) n += l.served.miss.stats.failures;
    return n;
  }

  list(): VmInfo[] {
    return this.deps.state.all().map(toInfo);
  }

  get(id: string): VmInfo {
    const r = this.deps.state.get(id);
    if (!r) throw new SlipwayError('VM_NOT_FOUND', `no VM ${JSON.stringify(id)}`);
    return toInfo(r);
  }

  /** Boot a VM and answer when its agent is ready, with the phase timings. */
  async create(req: CreateVmRequest, signal?: AbortSignal): Promise<VmInfo> {
    const image = checkRequestRef(req.image, 'image');
    const unreserve = this.admission.reserve(this.deps.state.all().length);
    let release: () => void;
    try {
      release = await this.admission.slot(signal);
    } catch (err) {
      unreserve();
      throw err;
    }
    const id = randomBytes(6).toString('hex');
    const workDir = join(this.deps.stateDir, 'vms', id);
    const log = this.deps.logger.child({ vm: id });
    const record: VmRecord = {
      id, image, digest: null, status: 'booting', createdAt: Date.now(), cpus: req.cpus ?? 1, memoryMiB: req.memoryMiB ?? 512, vmm: req.vmm ?? 'qemu',
      workDir, vmmPid: null, backendPid: null, accel: null, agent: null, timings: {}, env: req.env ?? {},
    };
    const timings: Record<string, number> = {};
    let last = performance.now();
    const phase = (name: string): void => {
      const now = performance.now();
      timings[name] = Math.round(now - last);
      this.deps.metrics.bootPhases.observe({ phase: name }, (now - last) / 1000);
      last = now;
    };
    let served: ServedDisk | undefined;
    let vm: RunningVm | undefined;
    let agent: AgentClient | undefined;
    let restore: RestorePlan | undefined;
    let figures: RestoreFigures | undefined;
    let firstExecDone: ((why: 'exec' | 'gone') => void) | undefined;
    /** a restore's RAM and disk being made ready (served and restore set when it settles) */
    let settling: Promise<void> | undefined;
    /** a lazy QEMU restore started while they are (VmSpec.waitForBackends) */
    let early = false;
    try {
      await mkdir(workDir, { recursive: true, mode: 0o700 });
      this.deps.state.insert(record);
      unreserve(); // the row counts from here
      const { kernel, guest } = await guestArtifacts();
      // a restore's disk is not booted: no boot profile is fetched or recorded for it
      const diskSocket = join(workDir, 'blk.sock');
      const serve = (ref: string, restoring = false): Promise<ServedDisk> => serveDisk({
        cache: this.deps.cache, ref, socket: diskSocket, workDir, readWrite: true, detached: true, queues: Math.min(record.cpus, 4),
        openOptions: restoring ? { useProfile: false, recordProfileIfMissing: false } : { recordProfileIfMissing: true }, ...(req.prefetch ? { prefetch: req.prefetch } : {}),
      });
      let opened: OpenedMemorySnapshot | undefined;
      try {
        served = await serve(image);
      } catch (err) {
        // not a disk: a memory snapshot (docs/snapshots.md) is restored; anything else fails as it did
        if (!isSlipwayError(err, 'NOT_A_SLIPWAY_DISK')) throw err;
        opened = await openMemorySnapshot(this.deps.cache, parseRef(image), manifestRefusedAsDisk(err)).catch((again: unknown) => {
          throw isSlipwayError(again, 'NOT_A_SLIPWAY_DISK') ? err : again;
        });
        const shape = opened.snapshot.config.shape;
        record.cpus = req.cpus ?? shape.cpus;
        record.memoryMiB = req.memoryMiB ?? shape.memoryMiB;
        // the VMM it was taken with, unless asked otherwise (then the shape check refuses it)
        record.vmm = req.vmm ?? shape.vmm;
        this.deps.state.update(id, { cpus: record.cpus, memoryMiB: record.memoryMiB, vmm: record.vmm });
        // the RAM and the disk are made ready side by side; a lazy QEMU restore starts QEMU
        // meanwhile (it waits for them: VmSpec.waitForBackends), anything else after them
        const making = Promise.allSettled([prepareRestore(this.deps.cache, opened, id, workDir, log, req.memoryLoading), serve(opened.diskRef, true)]);
        settling = (async () => {
          const [ram, disk] = await making;
          // (what did start is stopped by the failure path below)
          if (ram.status === 'fulfilled') restore = ram.value;
          if (disk.status === 'fulfilled') served = disk.value;
          if (disk.status === 'rejected') throw disk.reason;
          if (ram.status === 'rejected') throw ram.reason;
          phase('memory_fetched');
        })();
        settling.catch(() => undefined);
        early = record.vmm === 'qemu' && restoresLazily(opened, req.memoryLoading) && canWaitForBackends();
        if (!early) await settling;
      }
      const backendUp = (disk: ServedDisk): void => {
        // once: a restore started early gets here from each start it tries (KVM, then TCG)
        if ('backend_up' in timings) return;
        record.digest = disk.disk.digest;
        this.deps.state.update(id, { digest: record.digest, backendPid: disk.pid });
        phase('backend_up');
      };
      if (served && !early) backendUp(served);
      const shape = opened?.snapshot.config.shape;
      // a restored VM keeps the network it was snapshotted with (the device set must match)
      const wantNet = shape ? (shape.devices.includes('virtio-net-pci') ? 'user' : 'none') : req.net;
      const net: NetSpec = wantNet === 'user' ? { mode: 'user' } : { mode: 'none' };
      const bootConfig: Partial<BootConfig> = { hostname: `vm-${id}`, ...(req.env ? { env: req.env } : {}), ...(wantNet === 'user' ? { net: [{ name: 'eth0', address: '10.0.2.15/24', gateway: '10.0.2.2' }], dns: ['10.0.2.3'] } : {}) };
      const spec: VmSpec = {
        id, workDir, cpus: record.cpus, memoryMiB: record.memoryMiB, kernel, initramfs: guest.initramfs, disks: [{ kind: 'vhost-user', socket: diskSocket }],
        bootConfig: renderBootConfig(bootConfig as BootConfig), net, console: true, detached: true, vsockConnect: guest.vsockConnect,
        memoryFile: early ? servedRamFile(workDir) : restore?.ramFile ?? ramFileOf(id), vmgenid: true, ...(opened ? { incoming: true } : {}),
        ...(early || restore?.ram ? { memoryOnDemand: true } : {}), ...(early ? { waitForBackends: true } : {}),
      };
      if (!opened) await createRamFile(ramFileOf(id));
      if (opened) checkShape(opened.snapshot.config.shape, await vmShape(spec, this.driver(record.vmm)));
      const booted = await bootVm(this.driver(record.vmm), spec, {
        agentDeadlineMs: this.deps.limits.bootTimeoutMs,
        onStarted: (started) => {
          vm = started;
          record.vmmPid = started.pid;
          record.accel = started.accel;
          record.agent = started.agentEndpoint;
          this.deps.state.update(id, { vmmPid: started.pid, accel: started.accel, agent: started.agentEndpoint });
          if (!('vmm_started' in timings)) phase('vmm_started');
        },
        notice: (message) => log.warn(message, {}),
        ...(opened ? { afterStart: async (started: RunningVm) => {
          if (!started.memory) throw new SlipwayError('VMM_ERROR', `${record.vmm} cannot restore a memory snapshot here`);
          // started early: the RAM and the disk are ready before the device state goes in
          if (early) {
            await settling;
            if (served) backendUp(served);
          }
          if (!restore) throw new SlipwayError('VMM_ERROR', 'the restore was not prepared');
          const restored = await started.memory.restore(restore.stateDir);
          log.info('restore: device state loaded', { vmm: record.vmm, memory: restored.memory, startedEarly: early });
        } } : {}),
      });
      if (!served) throw new SlipwayError('VMM_ERROR', 'the VM started without its disk served');
      const plan = restore;
      vm = booted.vm;
      agent = booted.client;
      phase('agent_ready');
      if (plan) {
        // a clone is its own VM: its own host name, and the time now
        await withTimeout(applyRestoredIdentity(agent, `vm-${id}`, log), AGENT_TIMEOUTS.spawnMs, 'SET_HOSTNAME and SET_TIME');
        phase('identity');
        figures = await restoreFigures(plan);
        // lazy memory: the working set until the first exec becomes the snapshot's profile; the
        // rest of the RAM loads in the background after it
        const firstExec = new Promise<'exec' | 'gone'>((r) => (firstExecDone = r));
        afterLazyRestore(plan, this.deps.cacheDir, log, firstExec);
      }
      // the guest's own marks (ms since its kernel started), as `slipway run --timings` shows them
      // (a restore's guest marks are those of the boot it was snapshotted after: not asked)
      const pong = plan ? undefined : await withTimeout(agent.ping(), AGENT_TIMEOUTS.spawnMs, 'PING').catch(() => undefined);
      for (const [k, ns] of Object.entries(pong?.phases ?? {})) timings[`${GUEST_MARK}${k}`] = Math.round(ns / 1e4) / 100;
      // the first boot of a disk leaves its boot profile next to it, for every later cold boot
      if (served.disk.recordingProfile) {
        void served.disk.saveProfile().catch((err: unknown) => log.warn('could not store the boot profile', { error: (err as Error).message }));
      }
      record.status = 'running';
      record.timings = timings;
      this.deps.state.update(id, { status: 'running', timings });
      const l: LiveVm = { record, vm, served, agent, connecting: undefined, busy: undefined, spec, ...(plan?.ram ? { ram: plan.ram } : {}), ...(firstExecDone ? { firstExecDone } : {}), ...(plan ? { memoryParent: { target: plan.target, config: plan.snapshot.config, digest: plan.snapshot.manifest.digest } } : {}) };
      this.live.set(id, l);
      this.watch(l);
      this.deps.metrics.boots.inc({ result: 'ok' });
      log.info('vm booted', { image, digest: record.digest, timings });
      if (signal?.aborted) {
        // nobody is left to learn this VM's id: it would only count against the limit
        log.warn('the client went away during the boot; removing the vm', {});
        await this.remove(l);
        throw new SlipwayError('ABORTED', 'the client went away during the boot');
      }
      return { ...toInfo(record), ...(figures ? { restore: figures } : {}) };
    } catch (caught) {
      // (a restore started early may have its RAM and disk still coming: they are stopped too)
      await settling?.catch(() => undefined);
      // a restore whose guest touched RAM that could not be loaded (a corrupted pack, the registry
      // gone) stops its VMM: the reason is the RAM's, not the VMM's exit
      const ramError = restore?.ram?.miss.lastError;
      const err = isSlipwayError(ramError) ? ramError : caught;
      this.deps.metrics.boots.inc({ result: 'failed' });
      firstExecDone?.('gone');
      log.warn('vm boot failed', { image, error: (err as Error).message });
      agent?.close();
      await vm?.kill(500).catch(() => undefined);
      await served?.close().catch(() => undefined);
      await restore?.ram?.close().catch(() => undefined);
      await restore?.ram?.disk.close().catch(() => undefined);
      await rm(workDir, { recursive: true, force: true });
      await rm(ramFileOf(id), { force: true });
      this.deps.state.delete(id);
      throw err;
    } finally {
      unreserve();
      release();
    }
  }

  /** When a VM's VMM or backend exits on its own, the VM is gone: clean up after it. */
  private watch(l: LiveVm): void {
    const id = l.record.id;
    const failed = (err: unknown): void => this.deps.logger.error('removing a vm', { vm: id, error: (err as Error).message });
    void l.vm.exited.then(() => {
      if (this.live.get(id) !== l || l.busy === 'delete') return;
      this.deps.logger.warn('vm exited on its own; removing it', { vm: id });
      return this.remove(l);
    }).catch(failed);
    void l.served.exited.then(() => {
      if (this.live.get(id) !== l || l.busy === 'delete') return;
      this.deps.metrics.backendErrors.inc({ kind: 'backend_exit' });
      this.deps.logger.warn('the disk backend of a vm exited; stopping the vm', { vm: id, log: l.served.log().slice(-2000) });
      return this.remove(l);
    }).catch(failed);
  }

  private liveVm(id: string): LiveVm {
    const l = this.live.get(id);
    if (l) return l;
    if (this.deps.state.get(id)) throw new SlipwayError('CONFLICT', `VM ${id} is not running (it is booting or being removed)`);
    throw new SlipwayError('VM_NOT_FOUND', `no VM ${JSON.stringify(id)}`);
  }

  /** The VM's agent connection, made again when it failed (after a daemon restart, say). */
  private async agentOf(l: LiveVm): Promise<AgentClient> {
    if (l.agent && !l.agent.failure) return l.agent;
    l.agent?.close();
    l.agent = undefined;
    l.connecting ??= waitForAgent(async () => new AgentClient(await l.vm.connectAgent()), 30_000).then(async (c) => {
      if (l.thawOnConnect) {
        // thawing a file system that is not frozen fails harmlessly (EINVAL)
        await c.fsfreeze('/', true).then(() => this.deps.logger.warn('thawed a guest file system an earlier daemon left frozen', { vm: l.record.id }), () => undefined);
        l.thawOnConnect = false;
      }
      l.agent = c;
      return c;
    }).finally(() => void (l.connecting = undefined));
    return l.connecting;
  }

  /** Run a command; output arrives through the callbacks as it comes. */
  async exec(id: string, req: ExecRequest, out: { stdout: (b: Buffer) => void; stderr: (b: Buffer) => void }, signal?: AbortSignal): Promise<{ exitCode: number; signal: number; timedOut: boolean }> {
    const l = this.liveVm(id);
    if (l.busy === 'delete') throw new SlipwayError('CONFLICT', `VM ${id} is being deleted`);
    const agent = await this.agentOf(l);
    const proc = await withTimeout(agent.spawn(req.argv, {
      env: { PATH: GUEST_PATH, ...l.record.env, ...req.env },
      ...(req.cwd ? { cwd: req.cwd } : {}),
      ...(req.stdin !== undefined ? { stdin: req.stdin } : {}),
      onStdout: out.stdout, onStderr: out.stderr, collectOutput: false,
    }), AGENT_TIMEOUTS.spawnMs, 'EXEC');
    let timedOut = false;
    let ended = false; // timed out: the command had not ended (its output included) when the time came
    void proc.done.finally(() => (ended = true)).catch(() => undefined);
    const timer = req.timeoutMs ? setTimeout(() => {
      if (ended) return;
      timedOut = true;
      void proc.kill('SIGKILL').catch(() => undefined);
    }, req.timeoutMs) : undefined;
    const onAbort = (): void => void proc.kill('SIGKILL').catch(() => undefined);
    signal?.addEventListener('abort', onAbort, { once: true });
    try {
      const r = await proc.done;
      return { exitCode: r.exitCode, signal: r.signal, timedOut };
    } finally {
      if (timer) clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      l.firstExecDone?.('exec');
    }
  }

  /**
   * Snapshot the VM's disk to `ref`: sync and freeze the guest's root file system, copy the dirty
   * chunks aside, thaw (the guest is frozen only for the copy), then push them as a delta of the
   * disk the VM booted from. A failed push leaves `ref` as it was and the VM running.
   */
  async snapshot(id: string, ref: string, opts: { memory?: boolean } = {}): Promise<SnapshotResult | MemorySnapshotResult> {
    checkRequestRef(ref, 'ref');
    const parsed = parseRef(ref);
    if (parsed.digest || !parsed.tag) throw new SlipwayError('INVALID_ARGUMENT', `ref: a snapshot is pushed to a tag (${ref} names none)`, { context: { field: 'ref' } });
    const tag = parsed.tag;
    const l = this.liveVm(id);
    if (l.busy) throw new SlipwayError('CONFLICT', `VM ${id} is busy (${l.busy} in progress)`);
    if (opts.memory) return this.memorySnapshot(l, { ...parsed, tag });
    l.busy = 'snapshot';
    try {
      const out = await snapshotDisk({ cache: this.deps.cache, logger: this.deps.logger, stagingDir: this.stagingDir, timeouts: AGENT_TIMEOUTS, ...(this.deps.background ? { background: this.deps.background } : {}) }, {
        id, served: l.served, agent: () => this.agentOf(l),
        thawLater: () => {
          l.thawOnConnect = true;
          l.agent?.close();
          l.agent = undefined;
        },
      }, { ...parsed, tag });
      this.deps.metrics.snapshots.inc({ result: 'ok' });
      this.deps.metrics.snapshotBytes.inc({}, out.uploadedBytes);
      return out;
    } catch (err) {
      this.deps.metrics.snapshots.inc({ result: 'failed' });
      throw err;
    } finally {
      if (l.busy === 'snapshot') l.busy = undefined;
    }
  }

  /** A memory snapshot (src/api/memory-snapshots.ts): the VM paused only while its state is copied aside. */
  private async memorySnapshot(l: LiveVm, parsed: Parameters<typeof takeMemorySnapshot>[2]): Promise<MemorySnapshotResult> {
    const id = l.record.id;
    if (!l.spec) throw new SlipwayError('CONFLICT', `VM ${id} was adopted after a daemon restart: its memory cannot be snapshotted (its disk can)`);
    l.busy = 'snapshot';
    try {
      await mkdir(this.stagingDir, { recursive: true, mode: 0o700 });
      const v: SnapshotVm = { id, vm: l.vm, served: l.served, spec: l.spec, driver: this.driver(l.record.vmm), ...(l.ram ? { ram: l.ram } : {}), ...(l.memoryParent ? { parent: l.memoryParent } : {}) };
      const { parent, ...out } = await takeMemorySnapshot({ cache: this.deps.cache, logger: this.deps.logger, stagingDir: this.stagingDir }, v, parsed);
      l.memoryParent = parent;
      this.deps.metrics.snapshots.inc({ result: 'ok' });
      this.deps.metrics.snapshotBytes.inc({}, out.ramUploadedBytes + out.diskUploadedBytes);
      return out;
    } catch (err) {
      this.deps.metrics.snapshots.inc({ result: 'failed' });
      this.deps.logger.warn('memory snapshot failed', { vm: id, error: (err as Error).message });
      throw err;
    } finally {
      if (l.busy === 'snapshot') l.busy = undefined;
    }
  }

  async delete(id: string): Promise<void> {
    const l = this.live.get(id);
    if (!l) {
      const r = this.deps.state.get(id);
      if (!r) throw new SlipwayError('VM_NOT_FOUND', `no VM ${JSON.stringify(id)}`);
      if (this.unadopted.has(id)) return this.removeUnadopted(r);
      throw new SlipwayError('CONFLICT', `VM ${id} is still booting`);
    }
    if (l.busy === 'snapshot') throw new SlipwayError('CONFLICT', `VM ${id} is being snapshotted`);
    await this.remove(l);
  }

  /**
   * Power the guest off (or kill it), stop its backend, drop its files and its row. A second call
   * waits for the first one's work; nothing here waits on the guest for long.
   */
  private remove(l: LiveVm): Promise<void> {
    l.removing ??= this.removeNow(l);
    return l.removing;
  }

  private async removeNow(l: LiveVm): Promise<void> {
    l.busy = 'delete';
    l.firstExecDone?.('gone');
    const id = l.record.id;
    try {
      this.deps.state.update(id, { status: 'stopping' });
      if (l.agent && !l.agent.failure) {
        await l.agent.shutdown(false, { timeoutMs: AGENT_TIMEOUTS.shutdownMs }).catch(() => undefined);
        const exited = await Promise.race([l.vm.exited, new Promise<undefined>((r) => setTimeout(() => r(undefined), 5000).unref())]);
        if (!exited) await l.vm.kill(500);
      } else {
        await l.vm.kill(500);
      }
    } finally {
      l.agent?.close();
      this.missFailuresOfRemoved += l.served.miss.stats.failures;
      await l.served.close().catch((err: unknown) => this.deps.logger.warn('stopping a disk backend', { vm: id, error: (err as Error).message }));
      await l.ram?.close().catch((err: unknown) => this.deps.logger.warn('stopping a RAM server', { vm: id, error: (err as Error).message }));
      await l.ram?.disk.close().catch(() => undefined);
      await stopLeftoverRam(l.record.workDir, ramOverlayOf(id)).catch(() => undefined);
      await rm(l.record.workDir, { recursive: true, force: true }).catch((err: unknown) => this.deps.logger.warn('removing a vm work directory', { vm: id, error: (err as Error).message }));
      await rm(ramFileOf(id), { force: true });
      this.live.delete(id);
      try {
        this.deps.state.delete(id);
      } catch (err) {
        this.deps.logger.error('could not delete a vm row; the next daemon will clean it up', { vm: id, error: (err as Error).message });
      }
      this.deps.logger.info('vm removed', { vm: id });
    }
  }

  /** VM `r` of an earlier daemon, all but its row: processes (`own`, by their arguments) stopped, RAM overlay, work directory and RAM file (tmpfs) removed. */
  private async removeLeftovers(r: VmRecord, own = processesWithArgument(r.workDir)): Promise<void> {
    for (const pid of own) await terminateProcess(pid, 1000);
    await stopLeftoverRam(r.workDir, ramOverlayOf(r.id)).catch(() => undefined);
    await rm(r.workDir, { recursive: true, force: true });
    await rm(ramFileOf(r.id), { force: true });
  }

  /** A VM an earlier daemon left that this one could not adopt: its own processes stopped, its files and row removed. */
  private async removeUnadopted(r: VmRecord): Promise<void> {
    await this.removeLeftovers(r);
    this.deps.state.delete(r.id);
    this.unadopted.delete(r.id);
    this.deps.logger.info('vm removed', { vm: r.id, unadopted: true });
  }

  /**
   * After a restart: every VM in the state whose VMM and backend still run is adopted again (its
   * miss server listens again where the backend looks for it; the agent is reconnected on first
   * use); anything half there (a boot the old daemon never finished, a VMM without its backend)
   * is stopped and removed.
   */
  async adoptAll(): Promise<{ adopted: string[]; removed: string[] }> {
    const adopted: string[] = [];
    const removed: string[] = [];
    // copies of snapshots an earlier daemon did not finish (their RAM copies on tmpfs too)
    await rm(this.stagingDir, { recursive: true, force: true });
    await removeStagedRamCopies(this.deps.state.all().map((r) => r.id));
    const { guest } = await guestArtifacts();
    for (const r of this.deps.state.all()) {
      let served: ServedDisk | undefined;
      let vm: RunningVm | undefined;
      try {
        if (r.status === 'running' && r.vmmPid && r.backendPid && r.agent && r.accel && r.digest) {
          served = await adoptDisk({ cache: this.deps.cache, ref: digestRef(r.image, r.digest), socket: join(r.workDir, 'blk.sock'), workDir: r.workDir, pid: r.backendPid, overlayDir: join(r.workDir, 'overlay') });
          if (served) vm = this.driver(r.vmm).adopt({ pid: r.vmmPid, workDir: r.workDir, accel: r.accel, agent: r.agent, vsockConnect: guest.vsockConnect });
        }
      } catch (err) {
        this.deps.logger.warn('could not adopt a vm', { vm: r.id, error: (err as Error).message });
      }
      // a lazily restored VM's RAM server gets its miss server back
      const ram = served && vm ? await adoptRam({ cache: this.deps.cache, workDir: r.workDir, overlayDir: ramOverlayOf(r.id) }).catch((err: unknown) => {
        this.deps.logger.warn('could not serve the RAM of an adopted vm again; it runs on from tier 1', { vm: r.id, error: (err as Error).message });
        return undefined;
      }) : undefined;
      if (served && vm) {
        const l: LiveVm = { record: r, vm, served, agent: undefined, connecting: undefined, busy: undefined, thawOnConnect: true, ...(ram ? { ram } : {}) };
        this.live.set(r.id, l);
        this.watch(l);
        adopted.push(r.id);
        void this.agentOf(l).catch((err: unknown) => this.deps.logger.warn('could not reach the agent of an adopted vm', { vm: r.id, error: (err as Error).message }));
        this.deps.logger.info('vm adopted', { vm: r.id, vmmPid: r.vmmPid, backendPid: r.backendPid });
        continue;
      }
      await served?.close().catch(() => undefined);
      // this VM's processes are found by their arguments (they name its work directory), not by
      // recorded pids: a daemon that died mid-boot had not recorded them yet, and after a reboot
      // a recorded pid may be anyone's
      const own = processesWithArgument(r.workDir);
      // (the VMM and the disk backend, and a lazily restored VM's RAM server)
      if (r.status === 'running' && own.length === (existsSync(join(r.workDir, 'ram.ref')) ? 3 : 2)) {
        // both still run, but adopting them failed (the disk could not be reopened, say): the
        // guest and its overlay are kept; a DELETE stops them, a later daemon may adopt them
        this.unadopted.add(r.id);
        this.deps.logger.error('a running vm could not be adopted; left running (DELETE removes it)', { vm: r.id });
        continue;
      }
      await this.removeLeftovers(r, own);
      this.deps.state.delete(r.id);
      removed.push(r.id);
      this.deps.logger.warn('vm left by an earlier daemon could not be adopted; removed', { vm: r.id, status: r.status });
    }
    return { adopted, removed };
  }

  /** Stop serving (the daemon is going away): VMs and backends keep running, to be adopted again; resolves with how many (not those being removed). */
  async detachAll(): Promise<number> {
    const count = [...this.live.values()].filter((l) => !l.removing).length;
    for (const l of this.live.values()) {
      l.busy = 'delete'; // no clean-up from the watchers from here on
      l.firstExecDone?.('gone'); // (its working set is not stored by a daemon going away)
      l.agent?.close();
      l.vm.release?.(); // the VMM's monitor: the VM runs on, this process lets go
      await l.served.miss.close().catch(() => undefined);
      await l.served.disk.close().catch(() => undefined);
    }
    this.live.clear();
    return count;
  }

  /** Stop and remove every VM. */
  async deleteAll(): Promise<void> {
    for (const l of [...this.live.values()]) await this.remove(l);
  }
}
