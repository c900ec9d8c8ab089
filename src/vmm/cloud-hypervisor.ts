/**
 * The Cloud Hypervisor driver. CH is started bare (`--api-socket` only) and configured over its
 * REST API (HTTP/1.1 on that Unix socket, base path /api/v1; the OpenAPI description is
 * vendor/cloud-hypervisor/cloud-hypervisor.yaml):
 *
 *   GET  vmm.ping       version and compiled-in features ("fw_cfg" decides how the config travels)
 *   PUT  vm.create      the whole VmConfig (buildVmConfig)
 *   PUT  vm.boot
 *   ...
 *   PUT  vm.shutdown, PUT vmm.shutdown   (kill), then signals if CH does not leave
 *   PUT  vm.pause, vm.snapshot, vm.resume; vm.restore into a CH started with no VM (a restore,
 *        VmSpec.incoming): memory snapshots, in ch-snapshot.ts
 *
 * The guest boots its PVH entry point (vmlinux) directly, with shared memory (vhost-user backends
 * map it), virtio-blk disks (files, or vhost-user sockets), an optional TAP, virtio-rng, and a
 * virtio-vsock device whose host side is CH's "hybrid vsock": a Unix socket on which the host
 * writes `CONNECT <port>\n` and CH answers `OK <host port>\n` once the guest accepted
 * (agent-connect.ts); the agent listens on the guest ABI's vsock port (src/guest/abi.ts). The
 * process itself (spawned detached or not, adopted, signalled) is vmm-process.ts's, as QEMU's is.
 *
 * The boot config goes in the fw_cfg item `opt/slipway/config` (`payload.fw_cfg_config`, present
 * only in CH builds with the `fw_cfg` cargo feature and not described in the OpenAPI file), else
 * as `slipway.config=<base64>` on the kernel command line.
 */
import { envVar } from '../config.js';
import { existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Duplex } from 'node:stream';
import { SlipwayError } from '../errors.js';
import { guestKernelCmdline } from '../guest/abi.js';
import { FW_CFG_NAME, checkKernelCmdline } from '../guest/boot-config.js';
import type { AdoptTarget, AgentEndpoint, BootFailure, MemorySnapshotOps, RunningVm, VmExit, VmmDriver, VmSpec } from './driver.js';
import type { VmShape } from '../disk/memory-snapshot.js';
import { connectAgentEndpoint } from './agent-connect.js';
import { classifyEnd } from './boot-failure.js';
import { fileTail } from '../util/file-tail.js';
import { VmmProcess } from './vmm-process.js';
import { chApi, chApiRequest, chPing, type VmmPing } from './ch-api.js';
import { ChMemoryOps, chBinaryVersion, chShape, type ChMemoryRestoreChoice } from './ch-snapshot.js';

export { hybridVsockConnect } from './agent-connect.js';
export { CH_API_BASE, chApi, chApiRequest, chPing, type ChResponse, type VmmPing } from './ch-api.js';

/** The guest's vsock context id: 3 is the first one free for guests (0-2 are reserved). */
export const GUEST_CID = 3;

export function defaultCloudHypervisorBinary(env: NodeJS.ProcessEnv = process.env): string {
  return envVar('SLIPWAY_CLOUD_HYPERVISOR', env) || 'cloud-hypervisor';
}

/** Where the driver keeps its files inside the VM's work directory. */
export function chPaths(workDir: string): { apiSocket: string; vsockSocket: string; console: string; bootConfig: string; vmConfig: string; output: string } {
  return {
    output: join(workDir, 'cloud-hypervisor.log'),
    apiSocket: join(workDir, 'ch-api.sock'),
    vsockSocket: join(workDir, 'vsock.sock'),
    console: join(workDir, 'console.log'),
    bootConfig: join(workDir, 'boot-config'),
    vmConfig: join(workDir, 'ch-vm-config.json'),
  };
}

export function cloudHypervisorArgs(spec: VmSpec): string[] {
  return ['--api-socket', `path=${chPaths(spec.workDir).apiSocket}`];
}

/** Refuse what CH cannot do before anything is started. */
export function checkSpec(spec: VmSpec): void {
  if (spec.net.mode === 'user') {
    throw new SlipwayError('INVALID_ARGUMENT', "network mode 'user' (user-mode networking, QEMU's slirp) is not supported by Cloud Hypervisor: use --net tap:<ifname> or --net none, or the qemu driver", { context: { net: 'user', vmm: 'cloud-hypervisor' } });
  }
  if (!Number.isInteger(spec.cpus) || spec.cpus < 1 || spec.cpus > 254) throw new SlipwayError('INVALID_ARGUMENT', `cpus must be 1 to 254 for Cloud Hypervisor (got ${spec.cpus})`);
  if (!Number.isInteger(spec.memoryMiB) || spec.memoryMiB < 1) throw new SlipwayError('INVALID_ARGUMENT', `memory must be a positive number of MiB (got ${spec.memoryMiB})`);
}

/**
 * `payload.fw_cfg_config`, as CH's serde struct `FwCfgConfig` spells it (vmm/src/vm_config.rs, and
 * the API type in newer versions): five booleans and `items: { item_list: [{ name, file }] }`.
 * Every boolean is sent: in the versions that have `#[serde(default)]` a missing one means true,
 * in the older ones a missing one is an error. The kernel, command line and initramfs are loaded
 * by CH itself (PVH direct boot), so they are not copied into fw_cfg too; no e820 or ACPI tables
 * are added to it either (those are for firmware; the kernel gets its own from CH).
 */
export function fwCfgConfig(bootConfigPath: string): { e820: boolean; kernel: boolean; cmdline: boolean; initramfs: boolean; acpi_tables: boolean; items: { item_list: { name: string; file: string }[] } } {
  return {
    e820: false,
    kernel: false,
    cmdline: false,
    initramfs: false,
    acpi_tables: false,
    items: { item_list: [{ name: FW_CFG_NAME, file: bootConfigPath }] },
  };
}

/** The kernel command line: the shared quiet line with KVM hints, plus the config when not in fw_cfg. */
export function chKernelCmdline(spec: VmSpec, opts: { fwCfg: boolean }): string {
  const line = guestKernelCmdline({ accel: 'kvm', extra: spec.cmdline, bootConfig: opts.fwCfg ? undefined : spec.bootConfig });
  checkKernelCmdline(line);
  return line;
}

/** Whether the boot config goes through fw_cfg: asked for (the default) and compiled into this CH. */
export function useFwCfg(spec: VmSpec, features: readonly string[]): boolean {
  return spec.bootConfigVia !== 'cmdline' && features.includes('fw_cfg');
}

/**
 * The body of `PUT /api/v1/vm.create` (components.schemas.VmConfig, plus `payload.fw_cfg_config`
 * when `fwCfg`). Pure: it reads no file and starts nothing.
 */
export function buildVmConfig(spec: VmSpec, opts: { fwCfg: boolean }): Record<string, unknown> {
  checkSpec(spec);
  const paths = chPaths(spec.workDir);
  const queues = Math.min(spec.cpus, 4);
  const payload: Record<string, unknown> = {
    kernel: spec.kernel.vmlinux,
    initramfs: spec.initramfs,
    cmdline: chKernelCmdline(spec, opts),
  };
  if (opts.fwCfg) payload.fw_cfg_config = fwCfgConfig(paths.bootConfig);
  const memory: Record<string, unknown> = { size: spec.memoryMiB * 1024 * 1024, shared: true };
  if (spec.hugepages) memory.hugepages = true;
  const disks = spec.disks.map((d) => {
    const disk: Record<string, unknown> =
      d.kind === 'file'
        ? { path: d.path, num_queues: queues }
        : { vhost_user: true, vhost_socket: d.socket, num_queues: queues, queue_size: 128 };
    if (d.readOnly) disk.readonly = true;
    return disk;
  });
  const config: Record<string, unknown> = {
    cpus: { boot_vcpus: spec.cpus, max_vcpus: spec.cpus },
    memory,
    payload,
    rng: { src: '/dev/urandom' },
    vsock: { cid: GUEST_CID, socket: paths.vsockSocket },
    serial: spec.console ? { mode: 'File', file: paths.console } : { mode: 'Off' },
    console: { mode: 'Off' },
  };
  if (disks.length > 0) config.disks = disks;
  if (spec.net.mode === 'tap') config.net = [{ tap: spec.net.ifname }];
  return config;
}

// ---- the running VM ----

/** `state` of a vm.info answer (VmInfo in CH's OpenAPI document), undefined when malformed. */
function vmState(body: string): string | undefined {
  try {
    const state = (JSON.parse(body) as { state?: unknown }).state;
    return typeof state === 'string' ? state : undefined;
  } catch {
    return undefined;
  }
}

/** How often a booting VM's state and console are looked at (CH has no event stream on its API). */
const BOOT_POLL_MS = 100;

/** What a CH VM needs besides its process: the same for one started and one adopted. */
interface ChVmContext {
  workDir: string;
  /** the serial console is in workDir/console.log */
  console: boolean;
}

class CloudHypervisorVm implements RunningVm {
  readonly accel = 'kvm' as const;
  readonly agentEndpoint: AgentEndpoint;
  private failureWatch: Promise<BootFailure> | undefined;
  private killing: Promise<VmExit> | undefined;
  private watching = true;
  private readonly paths: ReturnType<typeof chPaths>;
  private memoryOps: MemorySnapshotOps | undefined;

  constructor(private readonly proc: VmmProcess, private readonly ctx: ChVmContext) {
    this.paths = chPaths(ctx.workDir);
    this.agentEndpoint = { transport: 'hybrid-vsock', socket: this.paths.vsockSocket };
  }

  get pid(): number {
    return this.proc.pid;
  }

  get exited(): Promise<VmExit> {
    return this.proc.exited;
  }

  /** Memory snapshots (ch-snapshot.ts): for a VM this driver started, once its API answered; not for an adopted one. */
  get memory(): MemorySnapshotOps | undefined {
    return this.memoryOps;
  }

  /** Called by the driver once CH's API answered (its ping and the VmConfig built for the VM). */
  enableMemory(ops: MemorySnapshotOps): void {
    this.memoryOps = ops;
  }

  /** Watched from the first time it is asked for (a boot asks; an adopted VM seldom does). */
  get failure(): Promise<BootFailure> {
    this.failureWatch ??= this.watch();
    return this.failureWatch;
  }

  /**
   * Until the agent answers (bootDone): `vm.info`'s state (Shutdown: the guest powered off) and
   * the console (a panic line: CH reboots a panicking guest, so it would panic in a loop); at any
   * time, the process's exit, read with the console (CH exits when its guest powers off).
   */
  private watch(): Promise<BootFailure> {
    return new Promise<BootFailure>((resolve) => {
      void this.exited.then((exit) => {
        const end = classifyEnd({ console: this.consoleTail(), exit });
        resolve(end.code === 'VMM_EXITED' && exit.code === 0 ? { code: 'GUEST_POWERED_OFF', detail: 'cloud-hypervisor ended as it does when its guest powers off' } : end);
      });
      const poll = async (): Promise<void> => {
        while (this.watching && !this.proc.exit) {
          await new Promise((r) => setTimeout(r, BOOT_POLL_MS).unref());
          const panic = classifyEnd({ console: this.consoleTail() });
          if (panic.code === 'GUEST_PANICKED') return resolve(panic);
          const info = await chApiRequest(this.paths.apiSocket, 'GET', 'vm.info', undefined, 1000).catch(() => undefined);
          if (info?.status === 200 && vmState(info.body) === 'Shutdown') return resolve({ code: 'GUEST_POWERED_OFF', detail: 'vm.info state Shutdown' });
        }
      };
      if (!this.proc.adopted) void poll();
    });
  }

  bootDone(): void {
    this.watching = false;
  }

  connectAgent(): Promise<Duplex> {
    return connectAgentEndpoint(this.agentEndpoint);
  }

  consoleTail(bytes = 4000): string {
    const text = this.ctx.console ? fileTail(this.paths.console, bytes) : '';
    const out = this.proc.output().trim();
    return out ? `${text}\n[cloud-hypervisor] ${out}` : text;
  }

  /** Ask CH to stop the VM and itself; then SIGTERM, then SIGKILL, `graceMs` apart. */
  kill(graceMs = 2000): Promise<VmExit> {
    this.watching = false;
    if (this.proc.exit) return Promise.resolve(this.proc.exit);
    this.killing ??= this.stop(graceMs);
    return this.killing;
  }

  private async stop(graceMs: number): Promise<VmExit> {
    const api = this.paths.apiSocket;
    const apiMs = Math.max(200, Math.min(graceMs, 2000));
    // only a CH that is still this VM's is asked (an adopted pid may have been reused, its socket stale)
    if (existsSync(api) && this.proc.isOurs()) {
      // vm.shutdown answers an error when no VM was booted: that is fine, vmm.shutdown follows.
      await chApiRequest(api, 'PUT', 'vm.shutdown', undefined, apiMs).catch(() => undefined);
      if (!this.proc.exit) await chApiRequest(api, 'PUT', 'vmm.shutdown', undefined, apiMs).catch(() => undefined);
      const exit = await this.proc.exitWithin(graceMs);
      if (exit) return exit;
    }
    return this.proc.terminate(graceMs);
  }
}

export interface CloudHypervisorDriverOptions {
  /** the cloud-hypervisor binary (default: $SLIPWAY_CLOUD_HYPERVISOR, else `cloud-hypervisor` on PATH) */
  binary?: string;
  /** how long to wait for the API socket to answer (default 10 s) */
  apiTimeoutMs?: number;
  /** how a restore loads RAM (default `auto`: OnDemand where the binary's version has it, else Copy; ch-snapshot.ts) */
  memoryRestoreMode?: ChMemoryRestoreChoice;
}

export class CloudHypervisorDriver implements VmmDriver {
  readonly name = 'cloud-hypervisor' as const;
  readonly binary: string;
  private readonly apiTimeoutMs: number;
  private readonly memoryRestoreMode: ChMemoryRestoreChoice;
  private binaryVersion: Promise<string> | undefined;

  constructor(opts: CloudHypervisorDriverOptions = {}) {
    this.binary = opts.binary ?? defaultCloudHypervisorBinary();
    this.apiTimeoutMs = opts.apiTimeoutMs ?? 10_000;
    this.memoryRestoreMode = opts.memoryRestoreMode ?? 'auto';
  }

  /**
   * The shape a memory snapshot of `spec` records and a restore must match (VmShape): this
   * binary's version (`--version`), the devices of the VmConfig built for `spec`, its kernel
   * (vmlinux) and initramfs by digest. Errors: VMM_ERROR when the binary says no version.
   */
  async shape(spec: VmSpec): Promise<VmShape> {
    this.binaryVersion ??= chBinaryVersion(this.binary);
    const version = await this.binaryVersion.catch((err: unknown) => {
      this.binaryVersion = undefined;
      throw err;
    });
    return chShape(spec, buildVmConfig(spec, { fwCfg: false }), version);
  }

  async start(spec: VmSpec): Promise<RunningVm> {
    checkSpec(spec);
    const paths = chPaths(spec.workDir);
    await writeFile(paths.bootConfig, spec.bootConfig);
    const proc = await VmmProcess.spawn({
      binary: this.binary, args: cloudHypervisorArgs(spec), workDir: spec.workDir, detached: spec.detached === true, outputFile: paths.output,
      output: 'stdout+stderr', installHint: 'install Cloud Hypervisor, or set SLIPWAY_CLOUD_HYPERVISOR to its binary',
    });
    const vm = new CloudHypervisorVm(proc, { workDir: spec.workDir, console: spec.console === true });
    try {
      const ping = await this.waitForApi(proc, paths.apiSocket);
      const fwCfg = useFwCfg(spec, ping.features);
      const config = buildVmConfig(spec, { fwCfg });
      vm.enableMemory(new ChMemoryOps({ apiSocket: paths.apiSocket, ping, config, restoreMode: this.memoryRestoreMode }));
      // a restore: no VM yet; vm.restore creates it from the snapshot's config (MemorySnapshotOps.restore)
      if (!spec.incoming) {
        await writeFile(paths.vmConfig, `${JSON.stringify(config, null, 2)}\n`);
        await chApi(paths.apiSocket, 'PUT', 'vm.create', config);
        await chApi(paths.apiSocket, 'PUT', 'vm.boot');
      }
    } catch (err) {
      await vm.kill(500);
      const text = proc.output().trim();
      if (err instanceof SlipwayError && text && !err.message.includes(text)) {
        throw new SlipwayError(err.code, `${err.message}\n[cloud-hypervisor] ${text}`, { context: err.context, cause: err });
      }
      throw err;
    }
    return vm;
  }

  /**
   * A Cloud Hypervisor started detached by an earlier daemon, found running again: `target.pid`
   * must still be a process with the work directory among its arguments (else it is someone
   * else's, after pid reuse). Its agent is the hybrid vsock socket of that directory; its console
   * is read when there is one.
   */
  adopt(target: AdoptTarget): RunningVm | undefined {
    const proc = VmmProcess.adopt(target.pid, target.workDir, chPaths(target.workDir).output);
    return proc ? new CloudHypervisorVm(proc, { workDir: target.workDir, console: true }) : undefined;
  }

  /** Wait for CH to serve its API socket (or to exit trying); resolves with its ping. */
  private async waitForApi(proc: VmmProcess, socket: string): Promise<VmmPing> {
    let last: unknown;
    const started = await proc.waitForSocket(socket, this.apiTimeoutMs, async (path) => {
      try {
        return await chPing(path, 2000);
      } catch (err) {
        last = err;
        // a 4xx/5xx answer or a malformed ping will not get better by waiting
        if (err instanceof SlipwayError && (typeof err.context.status === 'number' || /not JSON|no version/.test(err.message))) throw err;
        return undefined;
      }
    });
    if ('ready' in started) return started.ready;
    if ('exited' in started) {
      const { exited } = started;
      throw new SlipwayError('VMM_EXITED', `${this.binary} exited at start (${exited.signal ? `signal ${exited.signal}` : `exit code ${exited.code}`}): ${proc.output().trim() || 'it said nothing'}`, { context: { binary: this.binary } });
    }
    throw new SlipwayError('VMM_ERROR', `${this.binary} did not answer on its API socket ${socket} within ${this.apiTimeoutMs} ms${last instanceof Error ? ` (last: ${last.message})` : ''}: ${proc.output().trim()}`, { context: { binary: this.binary }, ...(last === undefined ? {} : { cause: last }) });
  }
}
