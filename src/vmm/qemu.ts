/**
 * The QEMU driver: q35 with shared memfd memory (vhost-user needs guest memory it can map), direct
 * kernel boot through qboot, KVM where slipway's guest kernel is known to run under it and TCG
 * otherwise (src/vmm/accel.ts), the VM watched over QMP while it boots, the boot config as
 * fw_cfg item `opt/slipway/config`, and the agent over vhost-vsock where the host has it (through
 * the slipway-vsock-connect helper, Node having no AF_VSOCK) or a virtio-serial port on a Unix
 * socket otherwise.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, openSync, closeSync, statSync } from 'node:fs';
import { rm, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { join } from 'node:path';
import { Duplex } from 'node:stream';
import { randomBytes } from 'node:crypto';
import { SlipwayError } from '../errors.js';
import { FW_CFG_NAME, checkKernelCmdline } from '../guest/boot-config.js';
import type { AgentEndpoint, BootFailure, MemorySnapshotOps, RunningVm, VmExit, VmmDriver, VmSpec } from './driver.js';
import { fileTail } from '../util/file-tail.js';
import { processExit, processHasArgument, processRunning, terminateProcess } from '../util/process.js';
import { envVar, loadConfig } from '../config.js';
import { chooseAccel, recordFallback, type Accel, type AccelVerdict } from './accel.js';
import { classifyEnd } from './boot-failure.js';
import { QmpClient } from './qmp.js';
import { QemuMemoryOps } from './qemu-migration.js';

/** The QEMU binary: $SLIPWAY_QEMU, else qemu-system-x86_64 on PATH (read when asked, not at import). */
export function qemuBinary(env: NodeJS.ProcessEnv = process.env): string {
  return envVar('SLIPWAY_QEMU', env) || 'qemu-system-x86_64';
}
/** qboot: a minimal firmware that jumps straight to the kernel (SeaBIOS spends far longer). */
const QBOOT = '/usr/share/qemu/qboot.rom';
export const AGENT_PORT_NAME = 'org.slipway.agent';

/**
 * The kernel command line: the seed's quiet line, with the KVM clock hints only under KVM.
 * `loglevel=1`, not the seed's 0: the console then shows only KERN_EMERG lines, which a normal
 * boot has none of, but a panic can raise the level to print itself (console_verbose() leaves a
 * level of 0 at 0, so under loglevel=0 a panic is silent and looks like a bare reset).
 */
export function kernelCmdline(accel: Accel, extra?: string): string {
  // no_timer_check everywhere: under TCG on a loaded host the kernel's IO-APIC timer check can see
  // too few ticks and panic ("IO-APIC + timer doesn't work!"), seen with ten guests on two cores
  const parts = ['console=ttyS0', 'quiet', 'loglevel=1', 'panic=-1', 'reboot=t', 'no_timer_check'];
  if (accel === 'kvm') parts.push('tsc=reliable', 'clocksource=kvm-clock');
  if (extra) parts.push(extra);
  return parts.join(' ');
}

/** The vsock port slipway-agent listens on (docs/agent-protocol.md). */
const AGENT_VSOCK_PORT = 1024;

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

export function qemuArgs(spec: VmSpec, accel: Accel, opts: QemuOptions & { guestCid?: number } = {}): string[] {
  const mem = `${spec.memoryMiB}M`;
  const cmdline = kernelCmdline(accel, [spec.cmdline, spec.bootConfigVia === 'cmdline' ? `slipway.config=${Buffer.from(spec.bootConfig).toString('base64')}` : undefined].filter(Boolean).join(' ') || undefined);
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
    '-kernel', spec.kernel.bzImage,
    '-initrd', spec.initramfs,
    '-append', cmdline,
    '-serial', spec.console === false ? 'none' : `file:${join(spec.workDir, 'console.log')}`,
    '-qmp', `unix:${join(spec.workDir, 'qmp.sock')},server=on,wait=off`,
  ];
  if ((opts.agentTransport ?? 'virtio-serial') === 'vsock') {
    if (opts.guestCid === undefined) throw new SlipwayError('INVALID_ARGUMENT', 'the vsock agent transport needs a guest CID');
    args.push('-device', `vhost-vsock-pci,guest-cid=${opts.guestCid}`);
  } else {
    args.push(
      '-device', 'virtio-serial-pci,id=vser',
      '-chardev', `socket,id=agent,path=${join(spec.workDir, 'agent.sock')},server=on,wait=off`,
      '-device', `virtserialport,bus=vser.0,chardev=agent,name=${AGENT_PORT_NAME}`,
    );
  }
  if (spec.bootConfigVia !== 'cmdline') args.push('-fw_cfg', `name=${FW_CFG_NAME},file=${join(spec.workDir, 'boot-config')}`);
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
      args.push('-chardev', `socket,id=vu${i},path=${d.socket},reconnect=1`);
      args.push('-device', `vhost-user-blk-pci,chardev=vu${i},num-queues=${Math.min(spec.cpus, 4)}`);
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
const DEAD_STATES: Record<string, BootFailure['code']> = { 'internal-error': 'VMM_INTERNAL_ERROR', 'guest-panicked': 'GUEST_PANICKED', shutdown: 'GUEST_POWERED_OFF' };

class QemuVm implements RunningVm {
  readonly exited: Promise<VmExit>;
  readonly failure: Promise<BootFailure>;
  private exitInfo: VmExit | undefined;
  readonly agentEndpoint: AgentEndpoint;
  private qmp: QmpClient | undefined;
  private qmpConnecting: Promise<QmpClient> | undefined;
  readonly memory: MemorySnapshotOps | undefined;

  /** `child` is the QEMU we started; a pid alone is one adopted after a daemon restart. */
  constructor(private readonly child: ChildProcess | number, private readonly spec: VmSpec, readonly accel: Accel, private readonly stderr: () => string, private readonly guestCid?: number, readonly accelVerdict?: AccelVerdict) {
    this.agentEndpoint = guestCid !== undefined ? { transport: 'vsock', cid: guestCid } : { transport: 'virtio-serial', socket: join(spec.workDir, 'agent.sock') };
    this.exited = processExit(child, spec.workDir).then((e) => (this.exitInfo = e));
    this.failure = typeof child === 'number' ? this.exited.then((exit) => classifyEnd({ console: this.consoleTail(), exit })) : this.watch();
    this.memory = spec.memoryFile ? new QemuMemoryOps(() => this.monitor()) : undefined;
  }

  /**
   * The QMP connection: the boot watch's, or a new one (an adopted VM, or after it closed). QEMU's
   * monitor serves one client at a time, so there is only ever one connection (or one attempt).
   */
  private async monitor(): Promise<QmpClient> {
    const current = await this.qmpConnecting?.catch(() => undefined);
    if (current && !current.isClosed) return current;
    this.qmpConnecting = QmpClient.connect(join(this.spec.workDir, 'qmp.sock'));
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
    return new Promise<BootFailure>((resolve) => {
      let shutdownReason: string | undefined;
      const qmpPath = join(this.spec.workDir, 'qmp.sock');
      const check = async (qmp: QmpClient): Promise<void> => {
        const s = await qmp.execute<{ status: string }>('query-status');
        const code = DEAD_STATES[s.status];
        if (code === 'VMM_INTERNAL_ERROR') resolve({ code, detail: `QMP status internal-error${this.kvmErrorLine()}`, accelFault: this.accel === 'kvm' });
        else if (code === 'GUEST_PANICKED') resolve(classifyEnd({ console: this.consoleTail(), shutdownReason: 'guest-panic' }));
      };
      let client: QmpClient | undefined;
      this.qmpConnecting = QmpClient.connect(qmpPath, {
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
      void this.exited.then(async (exit) => {
        // the SHUTDOWN event may still be in flight when the exit is seen: wait for QMP to close
        const qmp = await attached;
        if (qmp) await Promise.race([qmp.closed, new Promise((r) => setTimeout(r, 500).unref())]);
        const end = classifyEnd({ console: this.consoleTail(), shutdownReason, exit });
        // QEMU that could not use KVM at all ("Could not access KVM kernel module")
        resolve(end.code === 'VMM_EXITED' && this.accel === 'kvm' && kvmUnusable(this.stderr()) ? { ...end, accelFault: true, detail: `${end.detail}: ${this.stderr().trim().split('\n').at(-1) ?? ''}` } : end);
      });
    });
  }

  /** QEMU's first stderr line about a KVM failure ("KVM internal error. Suberror: 1"), if any. */
  private kvmErrorLine(): string {
    const line = this.stderr().split('\n').find((l) => /KVM/i.test(l));
    return line ? ` (${line.trim()})` : '';
  }

  get pid(): number {
    return typeof this.child === 'number' ? this.child : (this.child.pid ?? -1);
  }

  connectAgent(): Promise<Duplex> {
    if (this.guestCid !== undefined) return this.connectVsock(this.guestCid);
    return new Promise((resolve, reject) => {
      const sock = connect(join(this.spec.workDir, 'agent.sock'));
      sock.once('connect', () => {
        sock.removeListener('error', reject);
        resolve(sock);
      });
      sock.once('error', reject);
    });
  }

  /**
   * The agent over vhost-vsock: slipway-vsock-connect relays the guest's port to its stdio. While
   * the guest is not listening yet the helper's connect fails and it exits; the stream then ends,
   * and the caller connects again (waitForAgent).
   */
  private connectVsock(cid: number): Promise<Duplex> {
    const helper = this.spec.vsockConnect;
    if (!helper) return Promise.reject(new SlipwayError('VMM_ERROR', 'no slipway-vsock-connect helper given for the vsock agent transport'));
    return new Promise((resolve, reject) => {
      const child = spawn(helper, [String(cid), String(AGENT_VSOCK_PORT)], { stdio: ['pipe', 'pipe', 'ignore'] });
      child.once('error', (e) => reject(new SlipwayError('VMM_ERROR', `cannot run ${helper}: ${e.message}`, { cause: e })));
      child.once('spawn', () => {
        const stream = Duplex.from({ readable: child.stdout, writable: child.stdin });
        // when the helper exits its stdout ends, and so does the stream
        stream.on('close', () => child.kill());
        resolve(stream);
      });
    });
  }

  consoleTail(bytes = 4000): string {
    const text = fileTail(join(this.spec.workDir, 'console.log'), bytes);
    const err = this.stderr().trim();
    return err ? `${text}\n[qemu] ${err}` : text;
  }

  async kill(graceMs = 2000): Promise<VmExit> {
    this.qmp?.close();
    if (this.exitInfo) return this.exitInfo;
    if (typeof this.child === 'number') {
      // an adopted pid is signalled only while it still is this VM's QEMU (it may be reused)
      if (processHasArgument(this.child, this.spec.workDir)) await terminateProcess(this.child, graceMs);
      return this.exited;
    }
    const child = this.child;
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
    const exit = await this.exited;
    clearTimeout(timer);
    return exit;
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

  async accelFailed(spec: VmSpec, detail: string): Promise<void> {
    await recordFallback(this.accelOptions(spec), detail);
  }

  async start(spec: VmSpec): Promise<RunningVm> {
    const verdict = await this.accelFor(spec);
    const accel = verdict.accel;
    await writeFile(join(spec.workDir, 'boot-config'), spec.bootConfig);
    // a socket left by an earlier QEMU in this directory (a boot again under TCG) is not ours
    await rm(join(spec.workDir, 'qmp.sock'), { force: true });
    const transport = this.options.agentTransport ?? detectAgentTransport();
    const guestCid = transport === 'vsock' ? randomGuestCid() : undefined;
    const args = qemuArgs(spec, accel, { ...this.options, agentTransport: transport, ...(guestCid !== undefined ? { guestCid } : {}) });
    await writeFile(join(spec.workDir, 'qemu.args'), `${this.binary} ${args.map((a) => JSON.stringify(a)).join(' ')}\n`);
    // detached: its own session, stderr in a file, so that it outlives this process
    const stderrPath = join(spec.workDir, 'qemu.stderr');
    const errFd = spec.detached ? openSync(stderrPath, 'a', 0o600) : undefined;
    const child = spawn(this.binary, args, { stdio: ['ignore', 'ignore', errFd ?? 'pipe'], detached: spec.detached === true });
    if (errFd !== undefined) {
      closeSync(errFd);
      child.unref();
    }
    let stderrText = '';
    child.stderr?.on('data', (d: Buffer) => {
      stderrText = (stderrText + d.toString()).slice(-4000);
    });
    const stderr = (): string => (errFd !== undefined ? fileTail(stderrPath, 4000) : stderrText);
    await new Promise<void>((resolve, reject) => {
      child.once('spawn', () => resolve());
      child.once('error', (err) => reject(new SlipwayError('VMM_ERROR', `cannot start ${this.binary}: ${err.message} (install qemu-system-x86)`, { cause: err })));
    });
    // QEMU creates its QMP socket while it starts; wait for it, or for QEMU to give up.
    const deadline = Date.now() + 10_000;
    const exitedEarly = processExit(child, spec.workDir);
    while (!existsSync(join(spec.workDir, 'qmp.sock'))) {
      const exited = await Promise.race([exitedEarly, new Promise<undefined>((r) => setTimeout(() => r(undefined), 20))]);
      if (exited) {
        const said = stderr().trim();
        throw new SlipwayError('VMM_EXITED', `qemu exited at start (${exited.signal ? `signal ${exited.signal}` : `exit code ${exited.code}`}): ${said || 'it said nothing'}`, { context: { accel, accelSource: verdict.source, accelFault: accel === 'kvm' && kvmUnusable(said) } });
      }
      if (Date.now() > deadline) {
        child.kill('SIGKILL');
        await exitedEarly;
        throw new SlipwayError('VMM_ERROR', `qemu did not create its sockets within 10 s: ${stderr().trim()}`);
      }
    }
    return new QemuVm(child, spec, accel, stderr, guestCid, verdict);
  }

  /**
   * A QEMU started detached by an earlier daemon, found running again: `pid` must still be a
   * QEMU with `spec.workDir` in its arguments (else it is someone else's, after pid reuse).
   */
  adopt(pid: number, spec: VmSpec, accel: Accel, endpoint: AgentEndpoint): RunningVm | undefined {
    if (!processRunning(pid) || !processHasArgument(pid, spec.workDir)) return undefined;
    return new QemuVm(pid, spec, accel, () => fileTail(join(spec.workDir, 'qemu.stderr'), 4000), endpoint.transport === 'vsock' ? endpoint.cid : undefined);
  }
}
