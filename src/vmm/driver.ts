/**
 * One interface for virtual machine monitors: QEMU (src/vmm/qemu.ts) and, later, Cloud
 * Hypervisor. A driver turns a `VmSpec` into a running VM process and hands back a way to reach
 * the guest agent; everything else (config, agent protocol, teardown) is shared.
 */
import type { Duplex } from 'node:stream';

export type DiskSpec =
  | { kind: 'file'; path: string; readOnly?: boolean; format?: 'raw' }
  | { kind: 'vhost-user'; socket: string; readOnly?: boolean };

export type NetSpec = { mode: 'none' } | { mode: 'user'; hostForwards?: { hostPort: number; guestPort: number }[] } | { mode: 'tap'; ifname: string };

export interface VmSpec {
  id: string;
  /** a private directory for sockets, logs and config files; removed at teardown */
  workDir: string;
  cpus: number;
  memoryMiB: number;
  kernel: { bzImage: string; vmlinux: string };
  initramfs: string;
  /** extra kernel command line (the driver adds its own defaults) */
  cmdline?: string;
  /** the root disk first */
  disks: DiskSpec[];
  /** the boot config text for slipway-init */
  bootConfig: string;
  /** how the config reaches init: fw_cfg (default) or base64 on the kernel command line */
  bootConfigVia?: 'fw_cfg' | 'cmdline';
  net: NetSpec;
  /** keep the guest's serial console in workDir/console.log (off unless asked, as in the seed) */
  console?: boolean;
  /** hugetlbfs-backed memory (vhost-user needs shared memory either way) */
  hugepages?: boolean;
  /** the host helper that connects to a guest's vsock port (guest/vsock-connect.c), for QEMU's vhost-vsock */
  vsockConnect?: string;
  /**
   * Run the VMM in its own session with its output in files of workDir, so that it outlives the
   * process that started it (the daemon adopts it again after a restart).
   */
  detached?: boolean;
}

/** How the host reaches a VM's agent: recorded by the daemon so that a VM can be adopted again. */
export type AgentEndpoint = { transport: 'virtio-serial'; socket: string } | { transport: 'vsock'; cid: number } | { transport: 'hybrid-vsock'; socket: string };

export interface VmExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface RunningVm {
  readonly pid: number;
  readonly accel: 'kvm' | 'tcg';
  readonly agentEndpoint: AgentEndpoint;
  /** Open a byte stream to the guest agent (it may not answer until the guest has booted). */
  connectAgent(): Promise<Duplex>;
  /** Resolves when the VMM process exits. */
  readonly exited: Promise<VmExit>;
  /** The guest console so far (empty when the console is off). */
  consoleTail(bytes?: number): string;
  /** Stop the VMM process: SIGTERM, then SIGKILL after `graceMs`. */
  kill(graceMs?: number): Promise<VmExit>;
}

export interface VmmDriver {
  readonly name: 'qemu' | 'cloud-hypervisor';
  start(spec: VmSpec): Promise<RunningVm>;
  /**
   * A VMM started detached by an earlier process, found running again; undefined when `pid` is
   * gone or is no longer that VM's (its arguments do not name `spec.workDir`).
   */
  adopt(pid: number, spec: VmSpec, accel: 'kvm' | 'tcg', endpoint: AgentEndpoint): RunningVm | undefined;
}
