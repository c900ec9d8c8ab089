/**
 * Builds what boots inside a VM: the guest kernel (kernel/build.sh), the static init and agent
 * (guest/Makefile), and the initramfs holding them. Every output is cached outside the repository
 * under a key of its inputs, so a second build is instant.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildCacheRoot } from '../config.js';
import { SlipwayError } from '../errors.js';
import { writeFileAtomic } from '../util/atomic-file.js';
import { buildCpio, S_IFCHR, S_IFDIR, S_IFREG, type CpioEntry } from './cpio.js';

/** The repository (or installed package) root: kernel/ and guest/ live there. */
export const PROJECT_ROOT = fileURLToPath(new URL('../../', import.meta.url));


export interface KernelArtifacts {
  vmlinux: string;
  bzImage: string;
  config: string;
}

export interface GuestArtifacts {
  initramfs: string;
  init: string;
  agent: string;
  /** runs on the host: the host end of the agent's vsock transport under QEMU's vhost-vsock */
  vsockConnect: string;
}

/** Run a command, passing each stderr line to `onLine`; resolve with stdout. */
function run(cmd: string, args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv; onLine?: (line: string) => void; what: string }): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd: opts.cwd, env: opts.env ?? process.env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderrTail = '';
    let partial = '';
    child.stdout.on('data', (d: Buffer) => {
      stdout += d.toString();
    });
    child.stderr.on('data', (d: Buffer) => {
      const text = partial + d.toString();
      const lines = text.split('\n');
      partial = lines.pop() ?? '';
      for (const l of lines) {
        stderrTail = `${stderrTail}${l}\n`.slice(-4000);
        opts.onLine?.(l);
      }
    });
    child.on('error', (err) => reject(new SlipwayError('IO_ERROR', `${opts.what}: cannot run ${cmd}: ${err.message}`, { cause: err })));
    child.on('close', (code) => {
      if (partial) opts.onLine?.(partial);
      if (code === 0) resolve(stdout);
      else reject(new SlipwayError('BUILD_FAILED', `${opts.what} failed (exit ${code}):\n${stderrTail}${partial}`));
    });
  });
}

let kernelOnce: Promise<KernelArtifacts> | undefined;
let guestOnce: Promise<GuestArtifacts> | undefined;

/** The kernel and initramfs, found or built once per process (a run asks for them on its hot path). */
export function guestArtifacts(): Promise<{ kernel: KernelArtifacts; guest: GuestArtifacts }> {
  kernelOnce ??= buildKernel();
  guestOnce ??= buildGuest();
  const both = Promise.all([kernelOnce, guestOnce]).then(([kernel, guest]) => ({ kernel, guest }));
  both.catch(() => {
    kernelOnce = undefined;
    guestOnce = undefined;
  });
  return both;
}

/** Build (or find cached) the guest kernel; progress lines go to `onLine`. */
export async function buildKernel(opts: { onLine?: (line: string) => void } = {}): Promise<KernelArtifacts> {
  const out = await run('bash', [join(PROJECT_ROOT, 'kernel', 'build.sh')], { what: 'kernel build', ...(opts.onLine ? { onLine: opts.onLine } : {}) });
  const last = out.trim().split('\n').at(-1) ?? '';
  try {
    const parsed = JSON.parse(last) as KernelArtifacts;
    return { vmlinux: parsed.vmlinux, bzImage: parsed.bzImage, config: parsed.config };
  } catch {
    throw new SlipwayError('BUILD_FAILED', `kernel build printed no result: ${last}`);
  }
}

function guestSourcesKey(): string {
  const dir = join(PROJECT_ROOT, 'guest');
  const hash = createHash('sha256');
  for (const f of readdirSync(dir).filter((n) => n.endsWith('.c') || n.endsWith('.h') || n === 'Makefile').sort()) {
    hash.update(f).update(readFileSync(join(dir, f)));
  }
  return hash.digest('hex').slice(0, 16);
}

/** Build (or find cached) the static init and agent, and the initramfs holding them. */
export async function buildGuest(opts: { onLine?: (line: string) => void } = {}): Promise<GuestArtifacts> {
  const dir = join(buildCacheRoot(), 'guest', guestSourcesKey());
  const init = join(dir, 'slipway-init');
  const agent = join(dir, 'slipway-agent');
  const vsockConnect = join(dir, 'slipway-vsock-connect');
  const initramfs = join(dir, 'initramfs.cpio');
  if (existsSync(initramfs) && existsSync(init) && existsSync(agent) && existsSync(vsockConnect)) return { initramfs, init, agent, vsockConnect };
  await mkdir(dir, { recursive: true });
  opts.onLine?.(`guest: building init and agent into ${dir}`);
  await run('make', ['-s', '-C', join(PROJECT_ROOT, 'guest'), `OUT=${dir}`, `${dir}/slipway-init`, `${dir}/slipway-agent`, vsockConnect], { what: 'guest build', ...(opts.onLine ? { onLine: opts.onLine } : {}) });
  await writeFileAtomic(initramfs, initramfsImage(init, agent, []));
  opts.onLine?.(`guest: initramfs ${initramfs}`);
  return { initramfs, init, agent, vsockConnect };
}

/**
 * The initramfs: init, the agent, the directories init mounts on, /dev/console (the kernel opens
 * it before init runs; devtmpfs is mounted over /dev afterwards), and optional kernel modules that
 * init loads in order (for distribution kernels; slipway's kernel needs none).
 */
export function initramfsImage(init: string, agent: string, modules: string[]): Buffer {
  const dirEntry = (path: string): CpioEntry => ({ path, mode: S_IFDIR | 0o755 });
  const entries: CpioEntry[] = [
    ...['dev', 'proc', 'sys', 'run', 'tmp', 'newroot', 'slipway'].map(dirEntry),
    { path: 'dev/console', mode: S_IFCHR | 0o600, rdevMajor: 5, rdevMinor: 1 },
    { path: 'dev/null', mode: S_IFCHR | 0o666, rdevMajor: 1, rdevMinor: 3 },
    { path: 'init', mode: S_IFREG | 0o755, data: readFileSync(init) },
    { path: 'slipway/agent', mode: S_IFREG | 0o755, data: readFileSync(agent) },
  ];
  if (modules.length > 0) entries.push(dirEntry('slipway/modules'));
  modules.forEach((m, i) => {
    const name = m.split('/').at(-1) ?? m;
    entries.push({ path: `slipway/modules/${String(i).padStart(3, '0')}-${name}`, mode: S_IFREG | 0o644, data: readFileSync(m) });
  });
  return buildCpio(entries);
}
