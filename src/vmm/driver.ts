/**
 * One interface for virtual machine monitors: QEMU (src/vmm/qemu.ts) and Cloud Hypervisor
 * (src/vmm/cloud-hypervisor.ts). A driver turns a `VmSpec` into a running VM process and hands
 * back a way to reach the guest agent; everything else is shared: the process (vmm-process.ts),
 * the guest ABI (src/guest/abi.ts), the agent's transports (agent-connect.ts), booting and
 * failure codes (boot.ts, boot-failure.ts). test/vmm-contract.test.ts runs one suite against both.
 */
import type { Duplex } from 'node:stream';
import type { Accel, AccelVerdict } from './accel.js';

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
  /**
   * Guest RAM in this file (on tmpfs), mapped shared: what a memory snapshot reads and a restore
   * writes. Without it QEMU's RAM is an anonymous memfd.
   */
  memoryFile?: string;
  /**
   * `memoryFile` is served on demand (slipway-ramfs, a lazy restore): the VMM must not have the
   * kernel read huge pages' worth around every fault of it (QEMU: libslipway-nohugepage.so)
   */
  memoryOnDemand?: boolean;
  /**
   * Start the VMM before `memoryFile` and the vhost-user disk's socket are there: it waits for
   * them (QEMU: libslipway-restore-wait.so, `restoreWaitLibrary()`; a lazy restore whose RAM and
   * disk are made ready while QEMU starts). One vhost-user disk at most.
   */
  waitForBackends?: boolean;
  /** a vmgenid device (the guest reseeds its RNG when the generation ID changes, as it does on a restore) */
  vmgenid?: boolean;
  /**
   * A restore: start waiting for saved state (MemorySnapshotOps.restore) instead of booting. QEMU
   * starts paused with `-incoming defer`; Cloud Hypervisor starts with no VM (no vm.create, no
   * vm.boot): vm.restore creates it from the snapshot's config.
   */
  incoming?: boolean;
  /** the host helper that connects to a guest's vsock port (guest/vsock-connect.c), for QEMU's vhost-vsock */
  vsockConnect?: string;
  /**
   * Run the VMM in its own session with its output in files of workDir, so that it outlives the
   * process that started it (the daemon adopts it again after a restart).
   */
  detached?: boolean;
  /** the accelerator to use, deciding nothing (a boot again under TCG after a KVM internal error) */
  accel?: Accel;
}

/** How the host reaches a VM's agent: recorded by the daemon so that a VM can be adopted again. */
export type AgentEndpoint = { transport: 'virtio-serial'; socket: string } | { transport: 'vsock'; cid: number } | { transport: 'hybrid-vsock'; socket: string };

export interface VmExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/**
 * Why a VM will never reach its agent, seen by the VMM driver while it boots (docs/errors.md):
 * - VMM_INTERNAL_ERROR: the VMM stopped the VM (QMP status internal-error: KVM could not run it);
 * - GUEST_PANICKED: the guest kernel panicked (pvpanic, or its console says so);
 * - GUEST_POWERED_OFF: the guest powered itself off (slipway-init does on a fatal error);
 * - GUEST_RESET: the guest reset itself (a triple fault, or a reboot) and the VMM ended;
 * - VMM_EXITED: the VMM process ended without any of the above.
 */
export type BootFailureCode = 'VMM_INTERNAL_ERROR' | 'GUEST_PANICKED' | 'GUEST_POWERED_OFF' | 'GUEST_RESET' | 'VMM_EXITED';

export interface BootFailure {
  code: BootFailureCode;
  /** what the VMM said, in words: "QMP status internal-error", "exit code 1" */
  detail: string;
  /** the accelerator itself failed the guest (a KVM internal error, a KVM QEMU could not open) */
  accelFault?: boolean;
}

/**
 * A paused VM's state, as `MemorySnapshotOps.save` left it in a directory: what a memory snapshot
 * stores (docs/snapshots.md).
 */
export interface SavedVmState {
  /**
   * The device-state files, in the order the memory-snapshot artifact keeps them as layers
   * (src/disk/memory-snapshot.ts, STATE_LAYERS): QEMU `device-state` (its migration stream, RAM
   * left out); Cloud Hypervisor `state.json`, then `config.json`.
   */
  files: string[];
  /**
   * The RAM image, as many bytes as the VM has RAM. `live`: the VM's own memory (QEMU's shared
   * memory file, VmSpec.memoryFile), to be copied before the VM resumes; not live: a file the VMM
   * wrote into the directory (Cloud Hypervisor's `memory-ranges`), no longer the VM's.
   */
  ram: { file: string; live: boolean };
}

/** How a restored VM's RAM is loaded: mapped from the memory file (QEMU), or by the VMM from its memory image, whole before it runs (`copy`) or page by page on first touch (`on-demand`: Cloud Hypervisor's userfaultfd restore). */
export type RestoredMemory = 'shared-file' | 'copy' | 'on-demand';

/**
 * What a VMM offers for memory snapshots, the same for every driver (QEMU:
 * src/vmm/qemu-migration.ts over QMP; Cloud Hypervisor: src/vmm/ch-snapshot.ts over its REST API).
 * Taking one: `pause`, `save` into an empty directory, copy what must be copied while paused (a
 * live RAM image, the disk's overlay), `resume`. Restoring one: start a VM with `VmSpec.incoming`
 * (QEMU: paused, waiting for device state, its RAM the memory file already written; Cloud
 * Hypervisor: the VMM with no VM), put the saved files back into a directory, `restore` it.
 */
export interface MemorySnapshotOps {
  /** the VMM whose state this is: a restore needs the same one (VmShape.vmm) */
  readonly vmm: 'qemu' | 'cloud-hypervisor';
  /** stop the vCPUs; I/O in flight completes first */
  pause(): Promise<void>;
  resume(): Promise<void>;
  /** a paused VM's state into `dir` (an existing empty directory); the VM stays paused */
  save(dir: string): Promise<SavedVmState>;
  /**
   * Load the state saved in `dir` into a VM started with `incoming`, then run it. QEMU reads
   * `dir/device-state` (its RAM is VmSpec.memoryFile); Cloud Hypervisor reads `config.json`,
   * `state.json` and `memory-ranges` (its RAM image) from `dir`, `config.json` first made to
   * name this VM's files instead of the snapshotted VM's.
   */
  restore(dir: string): Promise<{ memory: RestoredMemory }>;
}

export interface RunningVm {
  readonly pid: number;
  readonly accel: Accel;
  /** how the accelerator was chosen (absent for an adopted VM) */
  readonly accelVerdict?: AccelVerdict;
  readonly agentEndpoint: AgentEndpoint;
  /** Open a byte stream to the guest agent (it may not answer until the guest has booted). */
  connectAgent(): Promise<Duplex>;
  /** Resolves when the VMM process exits. */
  readonly exited: Promise<VmExit>;
  /**
   * Resolves (never rejects) as soon as the VM is seen to have failed for good: stopped with an
   * internal error, panicked, powered off, reset, or its VMM gone. Pending while it runs.
   */
  readonly failure: Promise<BootFailure>;
  /** memory snapshots, where the VMM and this VM allow them (QEMU: RAM in VmSpec.memoryFile; Cloud Hypervisor: a VM this driver started) */
  readonly memory?: MemorySnapshotOps;
  /** The agent answered: watching that only a boot needs (polling) may stop. */
  bootDone?(): void;
  /** The guest console so far (empty when the console is off), then the VMM's stderr. */
  consoleTail(bytes?: number): string;
  /** Stop the VMM process: SIGTERM, then SIGKILL after `graceMs`. */
  kill(graceMs?: number): Promise<VmExit>;
  /**
   * Let go of this process's connections to a VM that runs on (the daemon is going away, a later
   * one adopts it): its VMM's monitor. The VM is not touched.
   */
  release?(): void;
}

/**
 * What taking a detached VMM back needs, all of it recorded when it started (the daemon's state
 * row): no more than this, so an adopted VM is never half a `VmSpec`.
 */
export interface AdoptTarget {
  /** the VMM's pid */
  pid: number;
  /** the VM's work directory: among the VMM's arguments (how the pid is known to be still this VM's), and where its sockets and logs are */
  workDir: string;
  /** the accelerator it was started under */
  accel: Accel;
  /** how its agent was reached */
  agent: AgentEndpoint;
  /** the host's slipway-vsock-connect helper, for an agent over vhost-vsock */
  vsockConnect?: string;
}

export interface VmmDriver {
  readonly name: 'qemu' | 'cloud-hypervisor';
  start(spec: VmSpec): Promise<RunningVm>;
  /**
   * A VMM started detached by an earlier process, found running again; undefined when `pid` is
   * gone or is no longer that VM's (its arguments do not name the work directory).
   */
  adopt(target: AdoptTarget): RunningVm | undefined;
  /**
   * A VM started with an automatically chosen accelerator died of it (VMM_INTERNAL_ERROR):
   * remember not to choose it again on this host, unless the driver finds the accelerator sound
   * after all. Resolves with whether it was remembered. Drivers without a choice leave this out.
   */
  accelFailed?(spec: VmSpec, detail: string): Promise<boolean>;
}
