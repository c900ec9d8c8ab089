import { describe, expect, it } from 'vitest';
import { parseRegisters, pastEarlyBoot, watchKvmProgress } from '../src/vmm/kvm-progress.js';

/** `info registers` as QEMU 7.2 printed it under kvm_pvm on this project's machine (2026-12-01), first lines. */
const STUCK = 'RAX=0000000001000000 RBX=0000000000000000 RCX=00000000c0000080 RDX=0000000000000000\r\nRSI=0000000000013ba0 RDI=0000000000000000 RBP=0000000002228000 RSP=000000000223bf10\r\nRIP=000000000220aa0d RFL=00000087 [--S--PC] CPL=0 II=0 A20=1 SMM=0 HLT=0\r\nCR0=80050033 CR2=0000000000000000 CR3=0000000002228000 CR4=00000020\r\n';
const KERNEL = 'RIP=ffffffff81c3a2be RFL=00000246 [---Z-P-] CPL=0 II=0 A20=1 SMM=0 HLT=0\r\n';

describe('KVM progress (src/vmm/kvm-progress.ts)', () => {
  it('reads RIP, CPL and HLT from QEMU\'s register dump, and nothing from other text', () => {
    expect(parseRegisters(STUCK)).toEqual({ rip: 0x220aa0dn, cpl: 0, halted: false });
    expect(parseRegisters('RIP=00007f12deadbeef RFL=00000202 [-------] CPL=3 II=0 A20=1 SMM=0 HLT=0')).toEqual({ rip: 0x7f12deadbeefn, cpl: 3, halted: false });
    // the firmware and the kernel's 32-bit entry: QEMU prints EIP (QEMU 7.2 under kvm_pvm, 300 ms after its start)
    expect(parseRegisters('\r\nCPU#0\r\nEAX=000c0000 EBX=06feb320 ECX=000279ff EDX=00000000\r\nEIP=000ea65f EFL=00000016 [----AP-] CPL=0 II=0 A20=1 SMM=0 HLT=0\r\n')).toEqual({ rip: 0xea65fn, cpl: 0, halted: false });
    expect(parseRegisters('unknown command: info registerz')).toBeUndefined();
    expect(parseRegisters('RIP=220aa0d CPL=0 HLT=0')).toBeUndefined(); // not QEMU's 16 digits
  });

  it('the kernel proper (idle or not) and user space are past the early code; the decompressor, and a halt outside the kernel, are not', () => {
    expect(pastEarlyBoot(parseRegisters(STUCK)!)).toBe(false);
    expect(pastEarlyBoot(parseRegisters(KERNEL)!)).toBe(true);
    expect(pastEarlyBoot({ rip: 0xffffffff81c3a2ben, cpl: 0, halted: true })).toBe(true);
    expect(pastEarlyBoot({ rip: 0x401000n, cpl: 3, halted: false })).toBe(true);
    // the decompressor's error() and dead firmware halt at low addresses
    expect(pastEarlyBoot({ rip: 0x9fc00n, cpl: 0, halted: true })).toBe(false);
  });

  it('watches until the processor is past the early code, gives up on a monitor without registers, and reports one that stays', async () => {
    let calls = 0;
    const moving = { execute: async <T>(): Promise<T> => (++calls < 3 ? STUCK : KERNEL) as T };
    expect(await watchKvmProgress(moving, 5_000)).toBeUndefined();
    expect(calls).toBe(3);
    const noHmp = { execute: async <T>(): Promise<T> => Promise.reject(new Error('CommandNotFound')) as Promise<T> };
    expect(await watchKvmProgress(noHmp, 5_000)).toBeUndefined();
    const stuck = { execute: async <T>(): Promise<T> => STUCK as T };
    expect(await watchKvmProgress(stuck, 600)).toMatch(/^\d{3,4} ms after the VMM's start the guest's boot processor is still at RIP=0x220aa0d \(CPL 0\), short of the kernel proper/);
    // the window runs from the VMM's start, not from the first read
    const t0 = performance.now();
    expect(await watchKvmProgress(stuck, 600, undefined, performance.now() - 600)).toMatch(/^\d+ ms after the VMM's start/);
    expect(performance.now() - t0).toBeLessThan(300);
    const stop = new AbortController();
    stop.abort();
    expect(await watchKvmProgress(stuck, 600, stop.signal)).toBeUndefined();
  });
});
