/**
 * Which accelerator QEMU uses on this host, decided once and kept: KVM only where slipway's own
 * guest kernel has been seen to run under it, TCG otherwise.
 *
 * A /dev/kvm that opens, and even a vCPU that QEMU can create, do not prove that a guest runs:
 * `kvm_pvm` (a hypervisor for guests built as PVM guests) passes both, then stops an ordinary
 * kernel in its first instructions with a KVM internal error. So the choice is, in order:
 * 1. `SLIPWAY_ACCEL=kvm|tcg` forces one (source `forced`);
 * 2. a verdict cached in `<cacheDir>/accel.json` for this host's identity (source `cache`);
 * 3. inspection: no usable /dev/kvm, or a KVM module known not to run ordinary guests (source
 *    `inspection`);
 * 4. a probe boot: the guest kernel under KVM with no root disk must reach its "cannot mount root"
 *    panic (source `probe`).
 * A boot that dies with an internal error under an automatic KVM choice records `tcg` (source
 * `fallback`, see recordFallback), so the next boot goes straight to TCG.
 *
 * The host identity is the host kernel release, the loaded KVM modules, whether /dev/kvm may be
 * opened read-write (a container given the device node later), the QEMU binary and the guest
 * kernel (each by path, size and mtime): a change of any of them decides again. The guest
 * kernel's sha256 is recorded with a decision (hashing 10 MB on every boot would cost ~25 ms).
 */
import { envVar } from '../config.js';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { accessSync, closeSync, constants as fsConstants, existsSync, openSync, readFileSync, statSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { release, tmpdir } from 'node:os';
import { join } from 'node:path';
import { SlipwayError } from '../errors.js';
import { GUEST_SERIAL_CONSOLE } from '../guest/abi.js';
import { writeFileAtomic } from '../util/atomic-file.js';
import { fileTail } from '../util/file-tail.js';
import { attachedCommand, whichBinary } from '../util/which.js';
import { KVM_PROGRESS_MS, watchKvmProgress } from './kvm-progress.js';
import { QmpClient } from './qmp.js';

export type Accel = 'kvm' | 'tcg';
export type AccelSource = 'forced' | 'cache' | 'inspection' | 'probe' | 'fallback';

export interface HostIdentity {
  hostKernel: string;
  /** KVM modules loaded (kvm_intel, kvm_amd, kvm_pvm), sorted; empty without KVM */
  kvmModules: string[];
  /** whether /dev/kvm is a character device this process may open read-write, by its mode (a device node given to a container later decides again) */
  kvmDevice: boolean;
  qemu: FileIdentity;
  guestKernel: FileIdentity;
}

export interface FileIdentity {
  path: string;
  size: number;
  mtimeMs: number;
}

export interface AccelVerdict {
  accel: Accel;
  /** why, in words: "kvm_pvm cannot run this guest kernel" */
  reason: string;
  source: AccelSource;
  /** milliseconds spent deciding in this process (0 when forced or cached) */
  decideMs: number;
}

interface StoredVerdict {
  version: 1;
  host: HostIdentity;
  /** sha256 of the guest kernel the verdict was decided with */
  guestKernelSha256: string;
  accel: Accel;
  reason: string;
  source: Exclude<AccelSource, 'forced' | 'cache'>;
  decidedAt: string;
}

/** KVM modules whose guests must be built for them: they do not run slipway's ordinary kernel. */
const KVM_MODULES_WITHOUT_ORDINARY_GUESTS: Record<string, string> = {
  kvm_pvm: 'kvm_pvm runs only PVM guest kernels, not this ordinary guest kernel',
};

const KNOWN_KVM_MODULES = ['kvm_intel', 'kvm_amd', 'kvm_pvm'];

const TRANSIENT_OPEN_ERRORS = new Set(['EMFILE', 'ENFILE', 'EINTR', 'EAGAIN', 'ENOMEM']);

/**
 * Whether `path` is a character device this process may open read-write, by its mode alone (no
 * descriptor taken, so no transient failure): the verdict's key. kvmDeviceUsable opens it.
 */
function kvmDeviceAccessible(path: string): boolean {
  try {
    if (!statSync(path).isCharacterDevice()) return false;
    accessSync(path, fsConstants.R_OK | fsConstants.W_OK);
    return true;
  } catch {
    return false;
  }
}

/** The KVM modules this host has loaded, from /sys/module (`sysRoot` for tests). */
export function loadedKvmModules(sysRoot = '/sys'): string[] {
  return KNOWN_KVM_MODULES.filter((m) => existsSync(join(sysRoot, 'module', m))).sort();
}

/**
 * Whether /dev/kvm is a character device this process can open read-write; `modules`, the KVM
 * modules loaded (`loadedKvmModules`), tell a missing device node apart from a missing module.
 */
export function kvmDeviceUsable(path = '/dev/kvm', modules: string[] = loadedKvmModules()): { ok: true } | { ok: false; why: string; transient?: true } {
  try {
    if (!statSync(path).isCharacterDevice()) return { ok: false, why: `${path} is not a character device` };
    closeSync(openSync(path, 'r+'));
    return { ok: true };
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    // out of descriptors or memory, interrupted: says nothing about the device
    if (code && TRANSIENT_OPEN_ERRORS.has(code)) return { ok: false, why: `${path} could not be opened just now (${code})`, transient: true };
    if (code !== 'ENOENT') return { ok: false, why: `${path} cannot be opened read-write (${code ?? (err as Error).message})` };
    return { ok: false, why: modules.length > 0 ? `${path} does not exist although ${modules.join(', ')} ${modules.length > 1 ? 'are' : 'is'} loaded (no device node: a container started without it?)` : `${path} does not exist (no KVM module loaded, or nested virtualisation off)` };
  }
}

const kernelDigests = new Map<string, string>();

/** sha256 of a guest kernel image, computed once per process and path+mtime. */
export async function guestKernelDigest(bzImage: string): Promise<string> {
  const st = statSync(bzImage);
  const key = `${bzImage}:${st.size}:${st.mtimeMs}`;
  let d = kernelDigests.get(key);
  if (!d) {
    d = `sha256:${createHash('sha256').update(await readFile(bzImage)).digest('hex')}`;
    kernelDigests.set(key, d);
  }
  return d;
}


function fileIdentity(path: string): FileIdentity {
  const st = statSync(path);
  return { path, size: st.size, mtimeMs: st.mtimeMs };
}

/**
 * This host as the verdict is keyed (`sysRoot` and `kvmDevice` for tests). Errors: VMM_ERROR when
 * QEMU is missing; IO_ERROR-like fs errors for a missing kernel.
 */
export function hostIdentity(qemuBinary: string, bzImage: string, sysRoot = '/sys', kvmDevice = '/dev/kvm'): HostIdentity {
  const path = whichBinary(qemuBinary);
  if (!path) throw new SlipwayError('VMM_ERROR', `cannot find ${qemuBinary} (install qemu-system-x86)`);
  return { hostKernel: release(), kvmModules: loadedKvmModules(sysRoot), kvmDevice: kvmDeviceAccessible(kvmDevice), qemu: fileIdentity(path), guestKernel: fileIdentity(bzImage) };
}

function sameHost(a: HostIdentity, b: HostIdentity): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

export function verdictPath(cacheDir: string): string {
  return join(cacheDir, 'accel.json');
}

/** The cached verdict for this host, if any (a malformed or other host's file counts as none). */
export function readVerdict(cacheDir: string, host: HostIdentity): StoredVerdict | undefined {
  try {
    const v = JSON.parse(readFileSync(verdictPath(cacheDir), 'utf8')) as Partial<StoredVerdict>;
    if (v.version !== 1 || (v.accel !== 'kvm' && v.accel !== 'tcg') || typeof v.reason !== 'string' || !v.host || !sameHost(v.host, host)) return undefined;
    return v as StoredVerdict;
  } catch {
    return undefined;
  }
}

async function storeVerdict(cacheDir: string, host: HostIdentity, accel: Accel, reason: string, source: StoredVerdict['source']): Promise<void> {
  const v: StoredVerdict = { version: 1, host, guestKernelSha256: await guestKernelDigest(host.guestKernel.path), accel, reason, source, decidedAt: new Date().toISOString() };
  // not fsynced: a verdict torn by a crash reads as none, and is reached again
  await writeFileAtomic(verdictPath(cacheDir), `${JSON.stringify(v, null, 2)}\n`, { durable: false });
}

/** What inspection alone says: a reason to use TCG, or undefined when KVM may work (probe it). */
export function inspectKvm(modules: string[], device: ReturnType<typeof kvmDeviceUsable>): string | undefined {
  const unfit = modules.map((m) => KVM_MODULES_WITHOUT_ORDINARY_GUESTS[m]).find((why) => why !== undefined);
  if (!device.ok) return unfit ? `${device.why}; and ${unfit}` : device.why;
  return unfit;
}

export interface ProbeResult {
  ok: boolean;
  /** what was seen: "reached the kernel's root-mount panic in 412 ms", "QMP status internal-error" */
  detail: string;
  ms: number;
}

/**
 * Boot the guest kernel under `accel` with no initramfs and no disk: a kernel that runs reaches
 * its "VFS: Unable to mount root fs" panic and, with panic=-1 and -no-reboot, QEMU exits. A VM
 * that stops (QMP status internal-error, say), or does not get there within `timeoutMs`, fails;
 * under KVM, so does one still in its early code after KVM_PROGRESS_MS (kvm-progress.ts), unless
 * `watchProgress` is false (the confirmation of a boot that made no progress: the whole
 * `timeoutMs` then). Nothing is left running.
 */
export async function probeBoot(qemuBinary: string, bzImage: string, accel: Accel, timeoutMs = 20_000, opts: { watchProgress?: boolean } = {}): Promise<ProbeResult> {
  const t0 = performance.now();
  const dir = await mkdtemp(join(tmpdir(), 'slipway-accel-probe-'));
  const consolePath = join(dir, 'console.log');
  const qmpPath = join(dir, 'qmp.sock');
  // attached: a probe whose starter is killed goes with it
  const [file, argv] = attachedCommand(qemuBinary, [
    '-machine', `q35,accel=${accel}`, '-cpu', accel === 'kvm' ? 'host' : 'max', '-m', '128', '-smp', '1',
    '-nodefaults', '-no-user-config', '-display', 'none', '-vga', 'none', '-no-reboot',
    '-kernel', bzImage, '-append', `console=${GUEST_SERIAL_CONSOLE} panic=-1 loglevel=3 no_timer_check`,
    '-serial', `file:${consolePath}`, '-qmp', `unix:${qmpPath},server=on,wait=off`,
  ]);
  const child = spawn(file, argv, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => {
    stderr = (stderr + d.toString()).slice(-2000);
  });
  const exited = new Promise<number | null>((resolve) => {
    child.once('exit', (code) => resolve(code));
    child.once('error', () => resolve(-1));
  });
  let qmp: QmpClient | undefined;
  const stopped = new Promise<string>((resolve) => {
    const attach = async (): Promise<void> => {
      while (!existsSync(qmpPath)) {
        if (await Promise.race([exited.then(() => true), new Promise<false>((r) => setTimeout(() => r(false), 10))])) return;
      }
      qmp = await QmpClient.connect(qmpPath);
      const check = async (): Promise<void> => {
        const s = await qmp?.execute<{ status: string }>('query-status');
        if (s && ['internal-error', 'guest-panicked', 'io-error'].includes(s.status)) resolve(`QMP status ${s.status}`);
      };
      qmp.onEvent((e) => {
        if (e.event === 'STOP') void check().catch(() => undefined);
      });
      await check();
      // a KVM that leaves the guest in its early code without an error (kvm-progress.ts)
      if (accel === 'kvm' && opts.watchProgress !== false) {
        const stuck = await watchKvmProgress(qmp, Math.min(KVM_PROGRESS_MS, timeoutMs), undefined, t0);
        if (stuck) resolve(`no progress under KVM: ${stuck}`);
      }
    };
    attach().catch(() => undefined);
  });
  const timer = new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), timeoutMs).unref());
  try {
    const outcome = await Promise.race([exited.then((code) => ({ code })), stopped.then((why) => ({ why })), timer]);
    const ms = Math.round(performance.now() - t0);
    const console = fileTail(consolePath, 4000);
    if (typeof outcome === 'object' && 'code' in outcome) {
      if (/Kernel panic - not syncing: VFS: Unable to mount root fs/.test(console)) return { ok: true, detail: `the guest kernel reached its root-mount panic in ${ms} ms`, ms };
      return { ok: false, detail: `qemu exited (code ${outcome.code}) before the guest kernel reached its root-mount panic: ${(stderr.trim() || console.trim()).slice(-300)}`, ms };
    }
    if (outcome === 'timeout') return { ok: false, detail: `the guest kernel did not reach its root-mount panic within ${timeoutMs} ms`, ms };
    const said = stderr.trim().split('\n')[0] ?? '';
    return { ok: false, detail: said ? `${outcome.why}: ${said}` : outcome.why, ms };
  } finally {
    qmp?.close();
    child.kill('SIGKILL');
    await exited;
    await rm(dir, { recursive: true, force: true });
  }
}

export interface ChooseOptions {
  cacheDir: string;
  qemuBinary: string;
  bzImage: string;
  env?: NodeJS.ProcessEnv;
  /** tests: another /sys and /dev/kvm */
  sysRoot?: string;
  kvmDevice?: string;
}

/** One decision at a time per process (two boots at once must not probe twice). */
let deciding: Promise<AccelVerdict> | undefined;

/**
 * The accelerator for QEMU on this host (see the module comment for the order). Errors:
 * INVALID_ARGUMENT for a SLIPWAY_ACCEL other than kvm, tcg or auto; VMM_ERROR when QEMU is missing.
 */
export async function chooseAccel(opts: ChooseOptions): Promise<AccelVerdict> {
  const forced = envVar('SLIPWAY_ACCEL', opts.env);
  if (forced === 'kvm' || forced === 'tcg') return { accel: forced, reason: 'SLIPWAY_ACCEL', source: 'forced', decideMs: 0 };
  if (forced !== undefined && forced !== '' && forced !== 'auto') throw new SlipwayError('INVALID_ARGUMENT', `SLIPWAY_ACCEL must be kvm, tcg or auto (got ${JSON.stringify(forced)})`);
  while (deciding) await deciding.catch(() => undefined);
  const run = decide(opts);
  deciding = run;
  try {
    return await run;
  } finally {
    if (deciding === run) deciding = undefined;
  }
}

async function decide(opts: ChooseOptions): Promise<AccelVerdict> {
  const t0 = performance.now();
  const host = hostIdentity(opts.qemuBinary, opts.bzImage, opts.sysRoot, opts.kvmDevice);
  const cached = readVerdict(opts.cacheDir, host);
  if (cached) return { accel: cached.accel, reason: cached.reason, source: 'cache', decideMs: Math.round(performance.now() - t0) };
  const device = kvmDeviceUsable(opts.kvmDevice, host.kvmModules);
  // a device that could not be opened just now: TCG for this boot, nothing kept
  if (!device.ok && device.transient) return { accel: 'tcg', reason: `${device.why}; not kept`, source: 'inspection', decideMs: Math.round(performance.now() - t0) };
  const rejected = inspectKvm(host.kvmModules, device);
  let verdict: Omit<AccelVerdict, 'decideMs'>;
  if (rejected) verdict = { accel: 'tcg', reason: rejected, source: 'inspection' };
  else {
    const probe = await probeBoot(host.qemu.path, opts.bzImage, 'kvm');
    verdict = probe.ok ? { accel: 'kvm', reason: probe.detail, source: 'probe' } : { accel: 'tcg', reason: `kvm probe failed: ${probe.detail}`, source: 'probe' };
  }
  await storeVerdict(opts.cacheDir, host, verdict.accel, verdict.reason, verdict.source as StoredVerdict['source']);
  return { ...verdict, decideMs: Math.round(performance.now() - t0) };
}

/**
 * A boot under an automatically chosen KVM died with an internal error: record TCG for this host
 * so that later boots go straight to it.
 */
export async function recordFallback(opts: ChooseOptions, detail: string): Promise<AccelVerdict> {
  const host = hostIdentity(opts.qemuBinary, opts.bzImage, opts.sysRoot, opts.kvmDevice);
  const reason = `a guest died under kvm (${detail})`;
  await storeVerdict(opts.cacheDir, host, 'tcg', reason, 'fallback');
  return { accel: 'tcg', reason, source: 'fallback', decideMs: 0 };
}
