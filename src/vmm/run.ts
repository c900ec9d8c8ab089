/**
 * Run one command in a fresh VM and tear everything down: the engine behind `slipway run`.
 * Phases are timed (`--timings`); the VM, its sockets and its work directory are removed on every
 * path out, including a failed boot and SIGINT.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { AgentClient } from '../guest/agent-client.js';
import { renderBootConfig, type BootConfig } from '../guest/boot-config.js';
import { guestArtifacts } from '../guest/build.js';
import type { DiskSpec, NetSpec, RunningVm, VmmDriver } from './driver.js';
import { QemuDriver } from './qemu.js';
import { bootVm } from './boot.js';

export interface RunOptions {
  disks: DiskSpec[];
  argv: string[];
  env?: Record<string, string>;
  cwd?: string;
  hostname?: string;
  cpus?: number;
  memoryMiB?: number;
  /** guest memory from hugetlbfs (/dev/hugepages) */
  hugepages?: boolean;
  net?: NetSpec;
  driver?: VmmDriver;
  /** seconds the guest has to reach its agent (TCG is slow) */
  bootTimeoutMs?: number;
  /** leave the VM running after the command: the result's `kept` stops it */
  keep?: boolean;
  stdout?: (data: Buffer) => void;
  stderr?: (data: Buffer) => void;
  stdin?: NodeJS.ReadableStream;
  signal?: AbortSignal;
  /** extra boot config (disks, services, sysctls) */
  bootConfig?: Partial<BootConfig>;
  bootConfigVia?: 'fw_cfg' | 'cmdline';
  onPhase?: (name: string, ms: number) => void;
  /** one line for people: the accelerator's fallback ("accel: kvm ... failed; booting again under tcg") */
  notice?: (message: string) => void;
  /** extra kernel command line for the guest */
  kernelArgs?: string;
  /** called once the agent answers, before the command runs */
  onAgentReady?: () => void;
}

/** A VM left running after its command (`keep`): stop() shuts it down and removes its work directory. */
export interface KeptVm {
  pid: number;
  workDir: string;
  agentEndpoint: RunningVm['agentEndpoint'];
  /** resolves when the VMM exits (the guest powered off, or it was stopped) */
  exited: Promise<unknown>;
  stop(): Promise<void>;
}

export interface RunResult {
  exitCode: number;
  signal: number;
  phasesMs: Record<string, number>;
  guestPhasesMs: Record<string, number>;
  accel: 'kvm' | 'tcg';
  /** why that accelerator (src/vmm/accel.ts) */
  accelReason?: string;
  /** with `keep`: the VM, still running */
  kept?: KeptVm;
}

/** Shut a VM down through its agent (then kill it after 5 s), close the agent, remove its work directory. */
async function teardown(vm: RunningVm | undefined, client: AgentClient | undefined, workDir: string): Promise<void> {
  if (client && vm) {
    await client.shutdown(false).catch(() => undefined);
    const exited = await Promise.race([vm.exited, new Promise<undefined>((r) => setTimeout(() => r(undefined), 5000).unref())]);
    if (!exited) await vm.kill();
  } else if (vm) {
    await vm.kill(500);
  }
  client?.close();
  await rm(workDir, { recursive: true, force: true });
}

const USER_NET: BootConfig['net'] = [{ name: 'eth0', address: '10.0.2.15/24', gateway: '10.0.2.2' }];

export async function runInVm(opts: RunOptions): Promise<RunResult> {
  const phases: Record<string, number> = {};
  let last = Date.now();
  const phase = (name: string): void => {
    const now = Date.now();
    phases[name] = now - last;
    opts.onPhase?.(name, now - last);
    last = now;
  };
  const { kernel, guest } = await guestArtifacts();
  phase('artifacts');
  const workDir = await mkdtemp(join(tmpdir(), 'slipway-vm-'));
  const id = randomBytes(4).toString('hex');
  const net = opts.net ?? { mode: 'none' };
  const bootConfig = renderBootConfig({
    hostname: opts.hostname ?? `vm-${id}`,
    ...(net.mode === 'user' ? { net: USER_NET, dns: ['10.0.2.3'] } : {}),
    ...(opts.env ? { env: opts.env } : {}),
    ...opts.bootConfig,
  });
  const driver = opts.driver ?? new QemuDriver();
  let vm: RunningVm | undefined;
  let client: AgentClient | undefined;
  let kept = false;
  const abort = (): void => {
    void vm?.kill(500);
  };
  opts.signal?.addEventListener('abort', abort, { once: true });
  try {
    const booted = await bootVm(driver, {
      id, workDir, cpus: opts.cpus ?? 1, memoryMiB: opts.memoryMiB ?? 512, kernel, initramfs: guest.initramfs,
      disks: opts.disks, bootConfig, net, console: true, hugepages: opts.hugepages === true, vsockConnect: guest.vsockConnect,
      ...(opts.bootConfigVia ? { bootConfigVia: opts.bootConfigVia } : {}),
      ...(opts.kernelArgs ? { cmdline: opts.kernelArgs } : {}),
    }, {
      agentDeadlineMs: opts.bootTimeoutMs ?? 180_000,
      onStarted: (started) => {
        vm = started;
        if (!('vmm_started' in phases)) phase('vmm_started');
      },
      ...(opts.notice ? { notice: opts.notice } : {}),
      ...(opts.signal ? { signal: opts.signal } : {}),
    });
    vm = booted.vm;
    client = booted.client;
    const pong = await client.ping();
    phase('agent_ready');
    opts.onAgentReady?.();
    const guestPhasesMs = Object.fromEntries(Object.entries(pong.phases).map(([k, ns]) => [k, ns / 1e6]));
    const result = await client.exec(opts.argv, {
      ...(opts.env ? { env: Object.entries({ PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', ...opts.env }).map(([k, v]) => `${k}=${v}`) } : {}),
      ...(opts.cwd ? { cwd: opts.cwd } : {}),
      ...(opts.stdin ? { stdin: opts.stdin as unknown as import('node:stream').Readable } : {}),
      ...(opts.stdout ? { onStdout: opts.stdout } : {}),
      ...(opts.stderr ? { onStderr: opts.stderr } : {}),
    });
    phase('exec');
    const base = { exitCode: result.exitCode, signal: result.signal, phasesMs: phases, guestPhasesMs, accel: vm.accel, ...(vm.accelVerdict ? { accelReason: vm.accelVerdict.reason } : {}) };
    if (!opts.keep) return base;
    kept = true;
    const keptVm = vm;
    // a virtio-serial agent port takes one connection at a time: leave it free for the user
    client.close();
    const stop = async (): Promise<void> => {
      const again = await Promise.race([
        keptVm.connectAgent().then((d) => new AgentClient(d), () => undefined),
        new Promise<undefined>((r) => setTimeout(() => r(undefined), 2000).unref()),
      ]);
      await teardown(keptVm, again, workDir);
    };
    let stopping: Promise<void> | undefined;
    return { ...base, kept: { pid: keptVm.pid, workDir, agentEndpoint: keptVm.agentEndpoint, exited: keptVm.exited, stop: () => (stopping ??= stop()) } };
  } finally {
    opts.signal?.removeEventListener('abort', abort);
    if (!kept) {
      await teardown(vm, client, workDir);
      phase('teardown');
    }
  }
}
