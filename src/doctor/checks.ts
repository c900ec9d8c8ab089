/**
 * `slipway doctor`: what this host offers and what slipway will use, each "no" with its
 * consequence and its fix. Every check looks at the host as it is (files, devices, QEMU's own
 * answers over QMP); none changes anything, except that the accelerator verdict is decided and
 * cached as a first boot would (src/vmm/accel.ts).
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statfsSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chooseAccel, inspectKvm, kvmDeviceUsable, loadedKvmModules, type AccelVerdict } from '../vmm/accel.js';
import { whichBinary } from '../util/which.js';
import { detectAgentTransport, qemuBinary } from '../vmm/qemu.js';
import { chPing, defaultCloudHypervisorBinary } from '../vmm/cloud-hypervisor.js';
import { authFilePaths } from '../oci/registry/credentials.js';
import { buildCacheRoot, envVar, kernelCacheRoot } from '../config.js';

export type CheckStatus = 'ok' | 'no' | 'info';

export interface Check {
  /** stable id for scripts: "qemu.vhost-user-blk" */
  id: string;
  /** what is checked, for people */
  what: string;
  status: CheckStatus;
  /** what was found */
  value: string;
  /** for a "no": what slipway does without it, and how to get it */
  consequence?: string;
  fix?: string;
}

export interface DoctorReport {
  checks: Check[];
  accel: (AccelVerdict & { kvmModules: string[] }) | { accel: 'unknown'; reason: string; kvmModules: string[] };
}

/** Run a command; resolve with its stdout and stderr (never rejects: a missing binary is an empty answer with code -1). */
function capture(cmd: string, args: string[], input?: string, timeoutMs = 10_000): Promise<{ code: number; out: string }> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'], timeout: timeoutMs });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    child.on('error', () => resolve({ code: -1, out }));
    child.on('close', (code) => resolve({ code: code ?? -1, out }));
    child.stdin.end(input ?? '');
  });
}

/** QEMU's migration capabilities, asked over QMP of a machine-less QEMU (`query-migrate-capabilities`). */
async function qemuMigrationCapabilities(qemu: string): Promise<string[]> {
  const script = ['{"execute":"qmp_capabilities"}', '{"execute":"query-migrate-capabilities"}', '{"execute":"quit"}', ''].join('\n');
  const { out } = await capture(qemu, ['-machine', 'none', '-nodefaults', '-display', 'none', '-S', '-qmp', 'stdio'], script);
  for (const line of out.split('\n')) {
    try {
      const msg = JSON.parse(line) as { return?: unknown };
      if (Array.isArray(msg.return)) return (msg.return as { capability?: string }[]).map((c) => String(c.capability));
    } catch {
      // not a JSON line
    }
  }
  return [];
}

function versionAtLeast(version: string, major: number, minor: number): boolean {
  const m = /(\d+)\.(\d+)/.exec(version);
  if (!m) return false;
  return Number(m[1]) > major || (Number(m[1]) === major && Number(m[2]) >= minor);
}

async function qemuChecks(): Promise<Check[]> {
  const path = whichBinary(qemuBinary());
  if (!path) {
    return [{ id: 'qemu', what: 'QEMU', status: 'no', value: `${qemuBinary()} not found`, consequence: 'no VM boots with the qemu driver', fix: 'apt-get install qemu-system-x86 (or set SLIPWAY_QEMU)' }];
  }
  const version = (/version (\S+)/.exec((await capture(path, ['--version'])).out)?.[1]) ?? 'unknown';
  const devices = (await capture(path, ['-device', 'help'])).out;
  const caps = await qemuMigrationCapabilities(path);
  const has = (d: string): boolean => new RegExp(`name "${d}"`).test(devices);
  const checks: Check[] = [{ id: 'qemu', what: 'QEMU', status: 'ok', value: `${path} ${version}` }];
  const feature = (id: string, what: string, ok: boolean, value: string, consequence: string, fix: string): void => {
    checks.push(ok ? { id, what, status: 'ok', value } : { id, what, status: 'no', value, consequence, fix });
  };
  feature('qemu.vhost-user-blk', 'vhost-user-blk device', has('vhost-user-blk-pci'), has('vhost-user-blk-pci') ? 'vhost-user-blk-pci' : 'missing', 'disks cannot be served lazily by slipway-blk', 'a QEMU built with vhost-user (Debian\'s is)');
  const fwCfg = /-fw_cfg/.test((await capture(path, ['-help'])).out);
  feature('qemu.fw_cfg', 'fw_cfg boot config', fwCfg, fwCfg ? '-fw_cfg' : 'missing', 'the boot config goes on the kernel command line, where it has a size limit', 'a QEMU with fw_cfg (every x86 build)');
  feature('qemu.vmgenid', 'vmgenid device', has('vmgenid'), has('vmgenid') ? 'vmgenid' : 'missing', 'clones of a memory snapshot are not told to reseed their random numbers', 'QEMU 2.12 or later');
  feature('qemu.x-ignore-shared', 'migration: x-ignore-shared', caps.includes('x-ignore-shared'), caps.includes('x-ignore-shared') ? 'yes' : 'no', 'a memory snapshot would copy all of RAM through the migration stream', 'QEMU 4.0 or later');
  feature('qemu.background-snapshot', 'migration: background-snapshot', caps.includes('background-snapshot'), caps.includes('background-snapshot') ? 'yes' : 'no', 'a memory snapshot pauses the VM for the whole save', 'QEMU 6.0 or later');
  const mapped = caps.includes('mapped-ram');
  feature('qemu.mapped-ram', 'migration: mapped-ram', mapped, mapped ? 'yes' : 'no', 'RAM is saved through a shared RAM file and x-ignore-shared instead', 'QEMU 9.0 or later');
  const fileTarget = versionAtLeast(version, 8, 2);
  feature('qemu.migrate-file', 'migration: file: target', fileTarget, fileTarget ? 'yes' : `no (QEMU ${version})`, 'device state is saved through exec:/fd: instead', 'QEMU 8.2 or later');
  return checks;
}

function deviceCheck(id: string, what: string, path: string, consequence: string, fix: string): Check {
  const usable = kvmDeviceUsable(path);
  return usable.ok ? { id, what, status: 'ok', value: `${path} opens read-write` } : { id, what, status: 'no', value: usable.why, consequence, fix };
}

/** A file's text, or '' when it cannot be read. */
function textOf(path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return '';
  }
}

/**
 * Whether `--hugepages` can work: pages reserved (`HugePages_Total` in /proc/meminfo) and
 * hugetlbfs mounted on /dev/hugepages (/proc/mounts); the fix names only what is missing.
 */
export function hugepagesCheck(meminfo = textOf('/proc/meminfo'), mounts = textOf('/proc/mounts')): Check {
  const total = Number(/HugePages_Total:\s+(\d+)/.exec(meminfo)?.[1] ?? 0);
  const free = Number(/HugePages_Free:\s+(\d+)/.exec(meminfo)?.[1] ?? 0);
  const mounted = mounts.split('\n').some((l) => l.split(' ')[1] === '/dev/hugepages' && l.split(' ')[2] === 'hugetlbfs');
  const value = `${total} reserved, ${free} free; /dev/hugepages ${mounted ? 'mounted' : 'not mounted'}`;
  if (total > 0 && mounted) return { id: 'hugepages', what: 'hugepages (--hugepages)', status: 'ok', value };
  return { id: 'hugepages', what: 'hugepages (--hugepages)', status: 'no', value, consequence: '--hugepages fails; guest memory uses ordinary pages (the default)', fix: [total > 0 ? '' : 'sysctl vm.nr_hugepages=N', mounted ? '' : 'mount -t hugetlbfs none /dev/hugepages'].filter((f) => f !== '').join(' and ') };
}

function userfaultfdCheck(): Check {
  if (existsSync('/dev/userfaultfd')) return { id: 'userfaultfd', what: 'userfaultfd', status: 'ok', value: '/dev/userfaultfd' };
  // (absent on older kernels)
  const unpriv = textOf('/proc/sys/vm/unprivileged_userfaultfd').trim();
  const root = process.getuid?.() === 0;
  if (root || unpriv === '1') return { id: 'userfaultfd', what: 'userfaultfd', status: 'ok', value: `the userfaultfd(2) system call (${root ? 'root' : 'vm.unprivileged_userfaultfd=1'})` };
  return { id: 'userfaultfd', what: 'userfaultfd', status: 'no', value: 'no /dev/userfaultfd and not root', consequence: 'memory of a restored VM cannot be loaded on demand through userfaultfd', fix: 'a kernel with /dev/userfaultfd (5.11+), or run as root' };
}

async function cloudHypervisorChecks(): Promise<Check[]> {
  const name = defaultCloudHypervisorBinary();
  const path = whichBinary(name);
  if (!path) {
    return [{ id: 'cloud-hypervisor', what: 'Cloud Hypervisor', status: 'no', value: `${name} not found`, consequence: '--vmm cloud-hypervisor is unavailable; VMs run on QEMU', fix: 'install a cloud-hypervisor binary (v40+) on PATH, or set SLIPWAY_CLOUD_HYPERVISOR' }];
  }
  const ping = await pingCloudHypervisor(path);
  if ('error' in ping) return [{ id: 'cloud-hypervisor', what: 'Cloud Hypervisor', status: 'no', value: `${path}: ${ping.error}`, consequence: '--vmm cloud-hypervisor fails', fix: 'a working cloud-hypervisor binary (v40+)' }];
  const fwCfg = ping.features.includes('fw_cfg');
  return [
    { id: 'cloud-hypervisor', what: 'Cloud Hypervisor', status: 'ok', value: `${path} ${ping.version} (features: ${ping.features.join(', ') || 'none'})` },
    fwCfg
      ? { id: 'cloud-hypervisor.fw_cfg', what: 'Cloud Hypervisor fw_cfg', status: 'ok', value: 'vmm.ping lists fw_cfg' }
      : { id: 'cloud-hypervisor.fw_cfg', what: 'Cloud Hypervisor fw_cfg', status: 'no', value: 'vmm.ping does not list fw_cfg', consequence: 'the boot config goes on the kernel command line, where it has a size limit', fix: 'a Cloud Hypervisor built with --features fw_cfg' },
  ];
}

/** Start the binary bare (`--api-socket`), ask `vmm.ping` for its version and features, stop it. */
async function pingCloudHypervisor(binary: string): Promise<{ version: string; features: string[] } | { error: string }> {
  const dir = mkdtempSync(join(tmpdir(), 'slipway-doctor-ch-'));
  const socket = join(dir, 'api.sock');
  const child = spawn(binary, ['--api-socket', `path=${socket}`], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-500)));
  const exited = new Promise<void>((r) => {
    child.once('exit', () => r());
    child.once('error', () => r());
  });
  try {
    const deadline = Date.now() + 5000;
    while (Date.now() < deadline) {
      if (child.exitCode !== null || child.signalCode !== null) return { error: `exited at start: ${stderr.trim()}` };
      if (existsSync(socket)) {
        try {
          const p = await chPing(socket, 2000);
          return { version: p.version, features: p.features ?? [] };
        } catch (err) {
          return { error: (err as Error).message };
        }
      }
      await Promise.race([exited, new Promise((r) => setTimeout(r, 20))]);
    }
    return { error: 'no API socket within 5 s' };
  } finally {
    child.kill('SIGKILL');
    await exited;
    rmSync(dir, { recursive: true, force: true });
  }
}

/** The newest cached guest kernel (kernel/build.sh's cache), without building one. */
export function cachedKernel(env: NodeJS.ProcessEnv = process.env): string | undefined {
  const root = kernelCacheRoot(env);
  let best: { path: string; mtime: number } | undefined;
  try {
    for (const d of readdirSync(root)) {
      const p = join(root, d, 'bzImage');
      try {
        const m = statSync(p).mtimeMs;
        if (!best || m > best.mtime) best = { path: p, mtime: m };
      } catch {
        // not a finished build
      }
    }
  } catch {
    return undefined;
  }
  return best?.path;
}

function cachedInitramfs(): string | undefined {
  const root = join(buildCacheRoot(), 'guest');
  try {
    return readdirSync(root).map((d) => join(root, d, 'initramfs.cpio')).find((p) => existsSync(p));
  } catch {
    return undefined;
  }
}

function freeSpaceCheck(cacheDir: string): Check {
  let dir = cacheDir;
  while (!existsSync(dir) && dir !== '/') dir = join(dir, '..');
  try {
    const st = statfsSync(dir);
    const free = st.bavail * st.bsize;
    const value = `${(free / 2 ** 30).toFixed(1)} GiB free at ${dir} (cache ${cacheDir})`;
    if (free < 2 * 2 ** 30) return { id: 'cache.free-space', what: 'free space for the cache', status: 'no', value, consequence: 'the chunk cache evicts early and cold boots fetch more', fix: 'free space, or set SLIPWAY_CACHE_DIR to a larger file system' };
    return { id: 'cache.free-space', what: 'free space for the cache', status: 'ok', value };
  } catch (err) {
    return { id: 'cache.free-space', what: 'free space for the cache', status: 'no', value: `cannot stat ${dir}: ${(err as Error).message}`, consequence: 'the cache may not be writable', fix: 'set SLIPWAY_CACHE_DIR to a writable directory' };
  }
}

/** Which credential sources exist (names and the hosts they cover, never secrets). */
function credentialChecks(env: NodeJS.ProcessEnv): Check {
  const found: string[] = [];
  const host = envVar('SLIPWAY_REGISTRY_HOST', env);
  if (envVar('SLIPWAY_REGISTRY_USERNAME', env) !== undefined) found.push(`SLIPWAY_REGISTRY_USERNAME${host ? ` (for ${host})` : ''}`);
  for (const p of authFilePaths(env)) {
    try {
      const cfg = JSON.parse(readFileSync(p, 'utf8')) as { auths?: Record<string, unknown>; credHelpers?: Record<string, string>; credsStore?: string };
      const hosts = Object.keys(cfg.auths ?? {});
      const helpers = Object.keys(cfg.credHelpers ?? {});
      found.push(`${p}: ${hosts.length} host(s)${hosts.length ? ` (${hosts.join(', ')})` : ''}${helpers.length ? `, credHelpers for ${helpers.join(', ')}` : ''}${cfg.credsStore ? `, credsStore ${cfg.credsStore}` : ''}`);
    } catch {
      // absent or unreadable
    }
  }
  if (found.length === 0) return { id: 'registry.credentials', what: 'registry credentials', status: 'info', value: 'none found (anonymous pulls and pushes only)', fix: 'docker login / skopeo login, or SLIPWAY_REGISTRY_USERNAME and SLIPWAY_REGISTRY_PASSWORD' };
  return { id: 'registry.credentials', what: 'registry credentials', status: 'ok', value: found.join('; ') };
}

/** Look at the host. `cacheDir` is the chunk cache's directory (where the accelerator verdict lives). */
export async function runDoctor(opts: { cacheDir: string; env?: NodeJS.ProcessEnv }): Promise<DoctorReport> {
  const env = opts.env ?? process.env;
  const checks: Check[] = [];
  checks.push(...(await qemuChecks()));
  const kvmModules = loadedKvmModules();
  const device = kvmDeviceUsable('/dev/kvm', kvmModules);
  const inspected = inspectKvm(kvmModules, device);
  checks.push(device.ok
    ? { id: 'kvm.device', what: '/dev/kvm', status: 'ok', value: `opens read-write; modules: ${kvmModules.join(', ') || 'none listed'}` }
    : { id: 'kvm.device', what: '/dev/kvm', status: 'no', value: device.why, consequence: 'guests run under TCG (emulation: boots take seconds, not milliseconds)', fix: kvmModules.length > 0 ? 'give this host (or container) the /dev/kvm device node (character device 10:232)' : 'load kvm_intel or kvm_amd; on a VM, enable nested virtualisation' });
  const kernel = cachedKernel(env);
  const initramfs = cachedInitramfs();
  let accel: DoctorReport['accel'];
  if (kernel && whichBinary(qemuBinary())) {
    const v = await chooseAccel({ cacheDir: opts.cacheDir, qemuBinary: qemuBinary(env), bzImage: kernel, env });
    accel = { ...v, kvmModules };
  } else {
    accel = { accel: 'unknown', reason: inspected ? `tcg by inspection (${inspected}); decided at the first boot` : 'decided by a probe boot at the first boot (no guest kernel built yet)', kvmModules };
  }
  checks.push(accel.accel === 'kvm'
    ? { id: 'accel', what: 'accelerator', status: 'ok', value: `kvm (${accel.reason})` }
    : { id: 'accel', what: 'accelerator', status: 'no', value: `${accel.accel} (${accel.reason})`, consequence: 'guests run under TCG: correct but many times slower than KVM', fix: inspected?.includes('kvm_pvm') ? 'a host whose KVM is kvm_intel or kvm_amd (kvm_pvm runs only PVM guest kernels)' : 'a host with a working KVM (SLIPWAY_ACCEL=kvm|tcg forces one)' });
  const transport = detectAgentTransport();
  checks.push(transport === 'vsock'
    ? { id: 'vhost-vsock', what: '/dev/vhost-vsock', status: 'ok', value: 'the agent talks over vhost-vsock' }
    : { id: 'vhost-vsock', what: '/dev/vhost-vsock', status: 'no', value: existsSync('/dev/vhost-vsock') ? 'present but not usable' : 'missing', consequence: 'the agent talks over virtio-serial instead (works the same, one more device)', fix: 'modprobe vhost_vsock' });
  checks.push(hugepagesCheck());
  checks.push(deviceCheck('fuse', '/dev/fuse', '/dev/fuse', 'memory snapshots cannot be served lazily through a FUSE RAM file', 'modprobe fuse'));
  checks.push(userfaultfdCheck());
  checks.push(...(await cloudHypervisorChecks()));
  checks.push(kernel
    ? { id: 'guest.kernel', what: 'guest kernel', status: 'ok', value: kernel }
    : { id: 'guest.kernel', what: 'guest kernel', status: 'no', value: 'not built yet', consequence: 'the first boot builds it (about 6 minutes)', fix: 'slipway kernel build' });
  checks.push(initramfs
    ? { id: 'guest.initramfs', what: 'guest initramfs', status: 'ok', value: initramfs }
    : { id: 'guest.initramfs', what: 'guest initramfs', status: 'no', value: 'not built yet', consequence: 'the first boot builds it (seconds)', fix: 'slipway guest build' });
  checks.push(freeSpaceCheck(opts.cacheDir));
  checks.push(credentialChecks(env));
  return { checks, accel };
}
