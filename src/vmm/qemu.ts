/**
 * The QEMU driver: q35 with shared memfd memory (vhost-user needs guest memory it can map), direct
 * kernel boot through qboot, KVM where slipway's guest kernel is known to run under it and TCG
 * otherwise (src/vmm/accel.ts), the VM watched over QMP while it boots, the boot config as
 * fw_cfg item `opt/slipway/config`, and the agent over vhost-vsock where the host has it (through
 * the slipway-vsock-connect helper, Node having no AF_VSOCK) or a virtio-serial port on a Unix
 * socket otherwise (agent-connect.ts). The process itself (spawned detached or not, adopted,
 * signalled) is vmm-process.ts's; the kernel command line and port names are the guest ABI's
 * (src/guest/abi.ts).
 */
import { existsSync, openSync, closeSync, realpathSync, statSync } from 'node:fs';
import { rm, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import type { Duplex } from 'node:stream';
import { randomBytes } from 'node:crypto';
import { SlipwayError } from '../errors.js';
import { AGENT_SERIAL_PORT_NAME, guestKernelCmdline } from '../guest/abi.js';
import { FW_CFG_NAME, checkKernelCmdline } from '../guest/boot-config.js';
import { PROJECT_ROOT } from '../guest/build.js';
import type { AdoptTarget, AgentEndpoint, BootFailure, MemorySnapshotOps, RunningVm, VmExit, VmmDriver, VmSpec } from './driver.js';
import { fileTail } from '../util/file-tail.js';
import { envVar, loadConfig } from '../config.js';
import { chooseAccel, probeBoot, recordFallback, type Accel, type AccelVerdict } from './accel.js';
import { KVM_PROGRESS_MS, watchKvmProgress } from './kvm-progress.js';
import { connectAgentEndpoint } from './agent-connect.js';
import { classifyEnd } from './boot-failure.js';
import { QmpClient } from './qmp.js';
import { QemuMemoryOps } from './qemu-migration.js';
import { VmmProcess } from './vmm-process.js';

/** The QEMU binary: $SLIPWAY_QEMU, else qemu-system-x86_64 on PATH (read when asked, not at import). */
export function qemuBinary(env: NodeJS.ProcessEnv = process.env): string {
  return envVar('SLIPWAY_QEMU', env) || 'qemu-system-x86_64';
}
/** qboot: a minimal firmware that jumps straight to the kernel (SeaBIOS spends far longer). */
const QBOOT = '/usr/share/qemu/qboot.rom';
/** Where QEMU keeps its files in the VM's work directory. */
export function qemuPaths(workDir: string): { qmp: string; agent: string; console: string; bootConfig: string; args: string; stderr: string } {
  return {
    qmp: join(workDir, 'qmp.sock'),
    agent: join(workDir, 'agent.sock'),
    console: join(workDir, 'console.log'),
    bootConfig: join(workDir, 'boot-config'),
    args: join(workDir, 'qemu.args'),
    stderr: join(workDir, 'qemu.stderr'),
  };
}

export type AgentTransport = 'vsock' | 'virtio-serial';

/**
 * vhost-vsock when /dev/vhost-vsock is a character device that opens read-write (the vhost_vsock
 * module is loaded and ours to use), virtio-serial otherwise. SLIPWAY_AGENT_TRANSPORT=vsock|virtio-serial forces one.
 */
export function detectAgentTransport(): AgentTransport {
  const forced = envVar('SLIPWAY_AGENT_TRANSPORT');
  if (forced === 'vsock' || forced === 'virtio-serial') return forced;
  try {
    if (!statSync('/dev/vhost-vsock').isCharacterDevice()) return 'virtio-serial';
    closeSync(openSync('/dev/vhost-vsock', 'r+'));
    return 'vsock';
  } catch {
    return 'virtio-serial';
  }
}

/** A guest context id for vhost-vsock: unique on the host, so random in [3, 2^32 - 2). */
export function randomGuestCid(): number {
  return 3 + randomBytes(4).readUInt32LE(0) % (0xffff_fffe - 3);
}

export interface QemuOptions {
  /** q35 (default) or pc (i440fx); microvm fails at SET_MEM_TABLE with vhost-user on QEMU 7.2 */
  machine?: 'q35' | 'pc';
  /** qboot (default, when installed) or QEMU's default SeaBIOS */
  firmware?: 'qboot' | 'seabios';
  /** how the host reaches the agent (default: detectAgentTransport()) */
  agentTransport?: AgentTransport;
}

/**
 * The arguments that attach the vhost-user-blk export at `socket` as device `id`: a chardev that
 * reconnects when the backend restarts, and a vhost-user-blk-pci device with `queues` queues. QEMU
 * 7.2 also needs q35 and guest memory shared with the backend, as `qemuArgs` sets them.
 */
export function vhostUserBlkArgs(id: string, socket: string, queues: number): string[] {
  return ['-chardev', `socket,id=${id},path=${socket},reconnect=1`, '-device', `vhost-user-blk-pci,chardev=${id},num-queues=${queues}`];
}

export function qemuArgs(spec: VmSpec, accel: Accel, opts: QemuOptions & { guestCid?: number } = {}): string[] {
  const mem = `${spec.memoryMiB}M`;
  const paths = qemuPaths(spec.workDir);
  const cmdline = guestKernelCmdline({ accel, extra: spec.cmdline, bootConfig: spec.bootConfigVia === 'cmdline' ? spec.bootConfig : undefined });
  checkKernelCmdline(cmdline);
  const backend = spec.hugepages
    ? `memory-backend-file,id=mem,size=${mem},mem-path=/dev/hugepages,share=on,prealloc=off`
    : spec.memoryFile
      ? `memory-backend-file,id=mem,size=${mem},mem-path=${spec.memoryFile},share=on,prealloc=off`
      : `memory-backend-memfd,id=mem,size=${mem},share=on`;
  const args = [
    '-name', `slipway-${spec.id}`,
    '-machine', `${opts.machine ?? 'q35'},accel=${accel},memory-backend=mem`,
    '-cpu', accel === 'kvm' ? 'host' : 'max',
    '-smp', String(spec.cpus),
    '-m', mem,
    '-object', backend,
    '-nodefaults', '-no-user-config', '-display', 'none', '-vga', 'none', '-no-reboot',
    // a restore's guest is already running its kernel, in its RAM: QEMU need not read the
    // kernel and initramfs (their fw_cfg entries are read by the firmware at boot only)
    ...(spec.incoming ? [] : ['-kernel', spec.kernel.bzImage, '-initrd', spec.initramfs, '-append', cmdline]),
    '-serial', spec.console === false ? 'none' : `file:${paths.console}`,
    '-qmp', `unix:${paths.qmp},server=on,wait=off`,
  ];
  if ((opts.agentTransport ?? 'virtio-serial') === 'vsock') {
    if (opts.guestCid === undefined) throw new SlipwayError('INVALID_ARGUMENT', 'the vsock agent transport needs a guest CID');
    args.push('-device', `vhost-vsock-pci,guest-cid=${opts.guestCid}`);
  } else {
    args.push(
      '-device', 'virtio-serial-pci,id=vser',
      '-chardev', `socket,id=agent,path=${paths.agent},server=on,wait=off`,
      '-device', `virtserialport,bus=vser.0,chardev=agent,name=${AGENT_SERIAL_PORT_NAME}`,
    );
  }
  if (spec.bootConfigVia !== 'cmdline' && !spec.incoming) args.push('-fw_cfg', `name=${FW_CFG_NAME},file=${paths.bootConfig}`);
  // qboot cannot run QEMU's ACPI table loader commands that vmgenid needs (the guest hangs before
  // its kernel prints anything): a VM with vmgenid boots through SeaBIOS
  if ((opts.firmware ?? 'qboot') === 'qboot' && !spec.vmgenid && existsSync(QBOOT)) args.push('-bios', QBOOT);
  if (spec.vmgenid) args.push('-device', 'vmgenid,guid=auto');
  // a restore: paused, device state loaded over QMP (migrate-incoming), then `cont`
  if (spec.incoming) args.push('-S', '-incoming', 'defer');
  spec.disks.forEach((d, i) => {
    if (d.kind === 'file') {
      args.push('-drive', `file=${d.path},if=none,id=disk${i},format=raw,cache=writeback,discard=unmap${d.readOnly ? ',readonly=on' : ''}`);
      args.push('-device', `virtio-blk-pci,drive=disk${i},num-queues=${Math.min(spec.cpus, 4)}`);
    } else {
      args.push(...vhostUserBlkArgs(`vu${i}`, d.socket, Math.min(spec.cpus, 4)));
    }
  });
  if (spec.net.mode === 'user') {
    const fwd = (spec.net.hostForwards ?? []).map((f) => `,hostfwd=tcp:127.0.0.1:${f.hostPort}-:${f.guestPort}`).join('');
    args.push('-netdev', `user,id=net0${fwd}`, '-device', 'virtio-net-pci,netdev=net0');
  } else if (spec.net.mode === 'tap') {
    args.push('-netdev', `tap,id=net0,ifname=${spec.net.ifname},script=no,downscript=no,vhost=on`, '-device', 'virtio-net-pci,netdev=net0');
  }
  return args;
}

/** Whether QEMU's words say it could not use KVM at all ("Could not access KVM kernel module", "failed to initialize kvm"). */
function kvmUnusable(stderr: string): boolean {
  return /KVM kernel module|initiali[sz]e kvm|kvm.*(not supported|permission denied)/i.test(stderr);
}

/** QMP run states that a VM does not leave by itself (qapi/run-state.json). */
/** How long a VM stopped with internal-error waits for QEMU's KVM error line on stderr. */
const KVM_LINE_WAIT_MS = 250;
const DEAD_STATES: Record<string, BootFailure['code']> = { 'internal-error': 'VMM_INTERNAL_ERROR', 'guest-panicked': 'GUEST_PANICKED', shutdown: 'GUEST_POWERED_OFF' };

/** What a QEMU VM needs besides its process: the same for one started and one adopted. */
interface QemuVmContext {
  workDir: string;
  accel: Accel;
  agentEndpoint: AgentEndpoint;
  /** the host's slipway-vsock-connect, for an agent over vhost-vsock */
  vsockConnect?: string | undefined;
  /** the guest's RAM file (VmSpec.memoryFile): memory snapshots */
  memoryFile?: string | undefined;
  accelVerdict?: AccelVerdict | undefined;
  /** a fresh boot under KVM: watched until it is past the kernel's early code (kvm-progress.ts) */
  watchKvmProgress?: boolean;
}

class QemuVm implements RunningVm {
  readonly failure: Promise<BootFailure>;
  readonly accel: Accel;
  readonly accelVerdict?: AccelVerdict;
  readonly agentEndpoint: AgentEndpoint;
  readonly memory: MemorySnapshotOps | undefined;
  private readonly paths: ReturnType<typeof qemuPaths>;
  private qmp: QmpClient | undefined;
  private qmpConnecting: Promise<QmpClient> | undefined;

  /** A QEMU we started is watched over QMP while it boots; an adopted one only by its exit. */
  constructor(private readonly proc: VmmProcess, private readonly ctx: QemuVmContext) {
    this.accel = ctx.accel;
    if (ctx.accelVerdict) this.accelVerdict = ctx.accelVerdict;
    this.agentEndpoint = ctx.agentEndpoint;
    this.paths = qemuPaths(ctx.workDir);
    this.failure = proc.adopted ? this.exited.then((exit) => classifyEnd({ console: this.consoleTail(), exit })) : this.watch();
    this.memory = ctx.memoryFile ? new QemuMemoryOps(() => this.monitor(), ctx.memoryFile) : undefined;
  }

  get pid(): number {
    return this.proc.pid;
  }

  get exited(): Promise<VmExit> {
    return this.proc.exited;
  }

  /**
   * The QMP connection: the boot watch's, or a new one (an adopted VM, or after it closed). QEMU's
   * monitor serves one client at a time, so there is only ever one connection (or one attempt).
   */
  private async monitor(): Promise<QmpClient> {
    const current = await this.qmpConnecting?.catch(() => undefined);
    if (current && !current.isClosed) return current;
    this.qmpConnecting = QmpClient.connect(this.paths.qmp);
    this.qmp = await this.qmpConnecting;
    return this.qmp;
  }

  /**
   * Watch a VM we started: over QMP, a STOP into a state it cannot leave (internal-error,
   * guest-panicked), GUEST_PANICKED, and the SHUTDOWN reason; then the process's exit, read
   * together with the last SHUTDOWN reason and the console. The state is queried once after
   * connecting, since events sent before the connection are lost.
   */
  private watch(): Promise<BootFailure> {
    const startedAt = performance.now();
    return new Promise<BootFailure>((resolve) => {
      let shutdownReason: string | undefined;
      const check = async (qmp: QmpClient): Promise<void> => {
        const s = await qmp.execute<{ status: string }>('query-status');
        const code = DEAD_STATES[s.status];
        if (code === 'VMM_INTERNAL_ERROR') resolve({ code, detail: `QMP status internal-error${await this.kvmErrorLineWithin(KVM_LINE_WAIT_MS)}`, accelFault: this.accel === 'kvm' });
        else if (code === 'GUEST_PANICKED') resolve(classifyEnd({ console: this.consoleTail(), shutdownReason: 'guest-panic' }));
      };
      let client: QmpClient | undefined;
      this.qmpConnecting = QmpClient.connect(this.paths.qmp, {
        onEvent: (e) => {
          if (e.event === 'SHUTDOWN' && typeof e.data.reason === 'string') shutdownReason = e.data.reason;
          else if (e.event === 'GUEST_PANICKED') resolve(classifyEnd({ console: this.consoleTail(), shutdownReason: 'guest-panic' }));
          else if (e.event === 'STOP' && client) void check(client).catch(() => undefined);
        },
      });
      const attached = this.qmpConnecting.then(async (qmp) => {
        client = qmp;
        this.qmp = qmp;
        await check(qmp);
        return qmp;
      }).catch(() => undefined);
      // a KVM that leaves the guest where it started, without an error (kvm-progress.ts)
      if (this.ctx.watchKvmProgress) {
        void attached.then(async (qmp) => {
          const stuck = qmp ? await watchKvmProgress(qmp, KVM_PROGRESS_MS, undefined, startedAt) : undefined;
          if (stuck) resolve({ code: 'VMM_INTERNAL_ERROR', detail: `no progress under KVM: ${stuck}`, accelFault: true });
        });
      }
      void this.exited.then(async (exit) => {
        // the SHUTDOWN event may still be in flight when the exit is seen: wait for QMP to close
        const qmp = await attached;
        if (qmp) await Promise.race([qmp.closed, new Promise((r) => setTimeout(r, 500).unref())]);
        const end = classifyEnd({ console: this.consoleTail(), shutdownReason, exit });
        // QEMU that could not use KVM at all ("Could not access KVM kernel module")
        const said = this.proc.output();
        resolve(end.code === 'VMM_EXITED' && this.accel === 'kvm' && kvmUnusable(said) ? { ...end, accelFault: true, detail: `${end.detail}: ${said.trim().split('\n').at(-1) ?? ''}` } : end);
      });
    });
  }

  /**
   * QEMU's first stderr line about a KVM failure ("KVM internal error. Suberror: 1"), as
   * ` (<line>)`, or '' when none has come within `ms`. QEMU writes it before it stops the VM, but
   * the line (its stderr) and the STOP (QMP) come over different descriptors, read in either order.
   */
  private async kvmErrorLineWithin(ms: number): Promise<string> {
    const deadline = performance.now() + ms;
    for (;;) {
      const line = this.proc.output().split('\n').find((l) => /KVM/i.test(l));
      if (line) return ` (${line.trim()})`;
      if (performance.now() >= deadline) return '';
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  connectAgent(): Promise<Duplex> {
    return connectAgentEndpoint(this.agentEndpoint, this.ctx.vsockConnect);
  }

  consoleTail(bytes = 4000): string {
    const text = fileTail(this.paths.console, bytes);
    const err = this.proc.output().trim();
    return err ? `${text}\n[qemu] ${err}` : text;
  }

  release(): void {
    this.qmp?.close();
    void this.qmpConnecting?.then((q) => q.close(), () => undefined);
  }

  async kill(graceMs = 2000): Promise<VmExit> {
    this.qmp?.close();
    // only while the pid is still this VM's QEMU (an adopted pid may have been reused)
    return this.proc.terminate(graceMs);
  }
}

export interface QemuDriverOptions extends QemuOptions {
  /** the QEMU binary (default: $SLIPWAY_QEMU, else qemu-system-x86_64 on PATH) */
  binary?: string;
  /** where the accelerator verdict is kept (default: the chunk cache's directory) */
  cacheDir?: string;
  /** called once per process with a verdict that was decided rather than read from the cache */
  onAccelDecided?: (verdict: AccelVerdict) => void;
}

/** How long QEMU has to create its QMP socket. */
const START_TIMEOUT_MS = 10_000;

/** libslipway-nohugepage.so, built with slipway-blk (vhost-user-blk/Makefile). */
export function noHugepageLibrary(): string {
  return join(PROJECT_ROOT, 'vhost-user-blk', 'build', 'libslipway-nohugepage.so');
}

/**
 * What keeps QEMU from advising huge pages on a RAM file served on demand (VmSpec.memoryOnDemand):
 * libslipway-nohugepage.so preloaded (vhost-user-blk/nohugepage.c), told the file's path as the
 * kernel shows it in /proc/<pid>/maps. Without the library built, nothing: the restore works, and
 * every fault of the RAM reads 4 MiB around it.
 */
export function noHugepageEnv(memoryFile: string): Record<string, string> {
  const lib = noHugepageLibrary();
  if (!preloadable(lib)) return {};
  return { LD_PRELOAD: lib, SLIPWAY_NO_HUGEPAGE_FILE: realPathSoFar(memoryFile) };
}

/**
 * `path` with the real path of its deepest part that exists: what /proc/<pid>/maps will show for
 * it once it is there (a RAM file QEMU is started before, waitForBackends, under a directory
 * reached through a symbolic link).
 */
function realPathSoFar(path: string): string {
  const rest: string[] = [];
  for (let at = path; ; at = dirname(at)) {
    try {
      return join(realpathSync(at), ...rest);
    } catch {
      if (dirname(at) === at) return path;
      rest.unshift(basename(at));
    }
  }
}

/** libslipway-restore-wait.so, built with slipway-blk (vhost-user-blk/Makefile). */
export function restoreWaitLibrary(): string {
  return join(PROJECT_ROOT, 'vhost-user-blk', 'build', 'libslipway-restore-wait.so');
}

/** Every library a QEMU may be given preloaded (noHugepageLibrary, restoreWaitLibrary). */
export function qemuPreloadLibraries(): string[] {
  return [noHugepageLibrary(), restoreWaitLibrary()];
}

/** Whether a library can be preloaded from its path (built; LD_PRELOAD splits its list at spaces and colons). */
function preloadable(lib: string): boolean {
  return existsSync(lib) && !/[\s:]/.test(lib);
}

/** Whether QEMU can be started before its RAM file and disk socket are there (VmSpec.waitForBackends). */
export function canWaitForBackends(): boolean {
  return preloadable(restoreWaitLibrary());
}

/**
 * The environment of a QEMU for `spec`: the preloaded libraries its RAM and start need
 * (noHugepageEnv; libslipway-restore-wait.so told the RAM file and the vhost-user socket to wait
 * for, vhost-user-blk/restore-wait.c), after any LD_PRELOAD of the daemon's own.
 */
function qemuEnv(spec: VmSpec): Record<string, string> | undefined {
  const preload: string[] = [];
  const env: Record<string, string> = {};
  if (spec.memoryOnDemand && spec.memoryFile) {
    const nohuge = noHugepageEnv(spec.memoryFile);
    if (nohuge.LD_PRELOAD) preload.push(nohuge.LD_PRELOAD);
    Object.assign(env, nohuge);
  }
  if (spec.waitForBackends) {
    const socket = spec.disks.find((d) => d.kind === 'vhost-user');
    if (!canWaitForBackends()) throw new SlipwayError('INVALID_ARGUMENT', `waitForBackends needs ${restoreWaitLibrary()} (make -C vhost-user-blk)`);
    preload.push(restoreWaitLibrary());
    Object.assign(env, spec.memoryFile ? { SLIPWAY_WAIT_FILE: spec.memoryFile } : {}, socket?.kind === 'vhost-user' ? { SLIPWAY_WAIT_SOCKET: socket.socket } : {});
  }
  if (preload.length === 0) return undefined;
  return { ...env, LD_PRELOAD: [...preload, process.env.LD_PRELOAD].filter((p) => p !== undefined && p !== '').join(' ') };
}

export class QemuDriver implements VmmDriver {
  readonly name = 'qemu' as const;

  readonly binary: string;

  constructor(private readonly options: QemuDriverOptions = {}) {
    this.binary = options.binary ?? qemuBinary();
  }

  private accelOptions(spec: VmSpec): { cacheDir: string; qemuBinary: string; bzImage: string } {
    return { cacheDir: this.options.cacheDir ?? loadConfig().cacheDir, qemuBinary: this.binary, bzImage: spec.kernel.bzImage };
  }

  /** The accelerator for this VM: the spec's, else this host's verdict (src/vmm/accel.ts). */
  async accelFor(spec: VmSpec): Promise<AccelVerdict> {
    if (spec.accel) return { accel: spec.accel, reason: 'chosen by the caller', source: 'forced', decideMs: 0 };
    const verdict = await chooseAccel(this.accelOptions(spec));
    if (verdict.source === 'inspection' || verdict.source === 'probe') this.options.onAccelDecided?.(verdict);
    return verdict;
  }

  /**
   * An automatic KVM failed a guest. An internal error is KVM's for sure: TCG is recorded for this
   * host. A guest with no progress may only have been starved (kvm-progress.ts): a probe boot
   * under KVM, given its whole 20 s, decides; TCG is recorded only when it fails too.
   */
  async accelFailed(spec: VmSpec, detail: string): Promise<boolean> {
    if (/no progress under KVM/.test(detail)) {
      const probe = await probeBoot(this.binary, spec.kernel.bzImage, 'kvm', 20_000, { watchProgress: false });
      if (probe.ok) return false;
    }
    await recordFallback(this.accelOptions(spec), detail);
    return true;
  }

  async start(spec: VmSpec): Promise<RunningVm> {
    const verdict = await this.accelFor(spec);
    const accel = verdict.accel;
    const paths = qemuPaths(spec.workDir);
    await writeFile(paths.bootConfig, spec.bootConfig);
    // a socket left by an earlier QEMU in this directory (a boot again under TCG) is not ours
    await rm(paths.qmp, { force: true });
    const transport = this.options.agentTransport ?? detectAgentTransport();
    const guestCid = transport === 'vsock' ? randomGuestCid() : undefined;
    const args = qemuArgs(spec, accel, { ...this.options, agentTransport: transport, ...(guestCid !== undefined ? { guestCid } : {}) });
    await writeFile(paths.args, `${this.binary} ${args.map((a) => JSON.stringify(a)).join(' ')}\n`);
    const env = qemuEnv(spec);
    const proc = await VmmProcess.spawn({
      binary: this.binary, args, workDir: spec.workDir, detached: spec.detached === true, outputFile: paths.stderr, output: 'stderr', installHint: 'install qemu-system-x86',
      ...(env ? { env } : {}),
    });
    // QEMU creates its QMP socket while it starts; wait for it, or for QEMU to give up.
    const started = await proc.waitForSocket(paths.qmp, START_TIMEOUT_MS);
    if ('exited' in started) {
      const { exited } = started;
      const said = proc.output().trim();
      throw new SlipwayError('VMM_EXITED', `qemu exited at start (${exited.signal ? `signal ${exited.signal}` : `exit code ${exited.code}`}): ${said || 'it said nothing'}`, { context: { accel, accelSource: verdict.source, accelFault: accel === 'kvm' && kvmUnusable(said) } });
    }
    if ('timedOut' in started) {
      proc.signal('SIGKILL');
      await proc.exited;
      throw new SlipwayError('VMM_ERROR', `qemu did not create its sockets within 10 s: ${proc.output().trim()}`);
    }
    const agentEndpoint: AgentEndpoint = guestCid !== undefined ? { transport: 'vsock', cid: guestCid } : { transport: 'virtio-serial', socket: paths.agent };
    return new QemuVm(proc, { workDir: spec.workDir, accel, agentEndpoint, vsockConnect: spec.vsockConnect, memoryFile: spec.memoryFile, accelVerdict: verdict, watchKvmProgress: accel === 'kvm' && spec.incoming !== true });
  }

  /**
   * A QEMU started detached by an earlier daemon, found running again: `target.pid` must still be
   * a process with the work directory among its arguments (else it is someone else's, after pid
   * reuse). Its agent is reached as recorded: over vsock by CID, else the virtio-serial socket.
   */
  adopt(target: AdoptTarget): RunningVm | undefined {
    const paths = qemuPaths(target.workDir);
    const proc = VmmProcess.adopt(target.pid, target.workDir, paths.stderr);
    if (!proc) return undefined;
    const agentEndpoint: AgentEndpoint = target.agent.transport === 'vsock' ? target.agent : { transport: 'virtio-serial', socket: paths.agent };
    return new QemuVm(proc, { workDir: target.workDir, accel: target.accel, agentEndpoint, vsockConnect: target.vsockConnect });
  }
}
