/**
 * Whether a guest booting under KVM gets anywhere. A KVM that cannot run an ordinary guest kernel
 * does not always stop it: kvm_pvm (a hypervisor for PVM guest kernels) stops it with a KVM
 * internal error on some hosts (the boot watch's VMM_INTERNAL_ERROR), and on others leaves its
 * vCPU in the kernel's decompressor with no error at all. Seen on this project's machines on
 * 2026-12-01: 3 s after QEMU's start, RIP=0x220aa0d (a physical address of the decompressor),
 * CR4=0x20, nothing on the console, QMP status `running`; the same kernel under TCG reaches its
 * init in about a second, and under a working KVM leaves the decompressor in milliseconds.
 *
 * So a boot under KVM is watched until its boot processor is past the kernel's early code: in the
 * kernel proper (RIP in the upper canonical half, where x86-64 Linux maps its text) or in user
 * space (CPL 3). Still short of that KVM_PROGRESS_MS after the VMM's start is a KVM that cannot run
 * the guest, as an internal error is. A guest merely very slow in its early code (a starved host)
 * looks the same from here: under a forced KVM the boot fails all the same, and an automatic
 * choice is only turned to TCG for the host once a probe boot confirms it (QemuDriver.accelFailed).
 */
import type { QmpClient } from './qmp.js';

/** How long a boot under KVM has to get past the kernel's early code (a working KVM takes milliseconds). */
export const KVM_PROGRESS_MS = 5_000;
/** How often the registers are read meanwhile. */
const POLL_MS = 250;
/** The start of the upper canonical half of x86-64 virtual addresses, where the kernel runs. */
const KERNEL_HALF = 0xffff_8000_0000_0000n;

export interface BootProcessor {
  rip: bigint;
  cpl: number;
  halted: boolean;
}

/**
 * The boot processor's RIP, CPL and HLT from HMP `info registers` (QEMU's x86 text, target/i386's
 * x86_cpu_dump_state: `RIP=<16 hex> RFL=... CPL=<n> II=<0|1> A20=<0|1> SMM=<0|1> HLT=<0|1>` in
 * long mode, `EIP=<8 hex> EFL=...` in real and protected mode: the firmware and the kernel's 32-bit
 * entry), or undefined when the text has none of them.
 */
export function parseRegisters(text: string): BootProcessor | undefined {
  const rip = /\bRIP=([0-9a-f]{16})\b/i.exec(text)?.[1] ?? /\bEIP=([0-9a-f]{8})\b/i.exec(text)?.[1];
  const cpl = /\bCPL=(\d)\b/.exec(text)?.[1];
  const hlt = /\bHLT=([01])\b/.exec(text)?.[1];
  if (rip === undefined || cpl === undefined || hlt === undefined) return undefined;
  return { rip: BigInt(`0x${rip}`), cpl: Number(cpl), halted: hlt === '1' };
}

/**
 * Past the kernel's early code: the kernel proper or user space. A halt elsewhere is not (the
 * decompressor's error() and dead firmware halt at low addresses; the kernel idles in its own text).
 */
export function pastEarlyBoot(p: BootProcessor): boolean {
  return p.rip >= KERNEL_HALF || p.cpl === 3;
}

/**
 * Read the registers over `qmp` (`human-monitor-command`) every 250 ms until the boot processor
 * is past the kernel's early code. Resolves with undefined then, or as soon as the registers
 * cannot be read (a VMM without HMP, QMP closed: no verdict), or on `signal`; with what was last
 * seen (`RIP=0x... CPL 0`) when `ms` have passed since `startedAt` (performance.now() ms: the
 * VMM's start) without it.
 */
export async function watchKvmProgress(qmp: Pick<QmpClient, 'execute'>, ms = KVM_PROGRESS_MS, signal?: AbortSignal, startedAt = performance.now()): Promise<string | undefined> {
  const deadline = startedAt + ms;
  for (;;) {
    if (signal?.aborted) return undefined;
    let p: BootProcessor | undefined;
    try {
      p = parseRegisters(await qmp.execute<string>('human-monitor-command', { 'command-line': 'info registers' }));
    } catch {
      return undefined;
    }
    if (!p || pastEarlyBoot(p)) return undefined;
    const now = performance.now();
    if (now >= deadline) return `${Math.round(now - startedAt)} ms after the VMM's start the guest's boot processor is still at RIP=0x${p.rip.toString(16)} (CPL ${p.cpl}${p.halted ? ', halted' : ''}), short of the kernel proper: this KVM does not run the guest (or runs it far too slowly)`;
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
}
