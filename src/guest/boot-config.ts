/**
 * The boot config slipway-init reads (docs/guest.md): `key=value` lines, delivered as the fw_cfg
 * item `opt/slipway/config`, or base64 in `slipway.config=` on the kernel command line.
 */
import { SlipwayError } from '../errors.js';

/** the fw_cfg item's name: the guest ABI's (src/guest/abi.ts) */
export { FW_CFG_NAME } from './abi.js';

/**
 * What slipway-init holds (guest/init.c's #defines, checked by test/guest-abi.test.ts): a config
 * over any of these is refused here, before a boot, rather than cut by init. Bytes are UTF-8.
 */
export const BOOT_CONFIG_LIMITS = {
  /** the whole config through fw_cfg (CONFIG_MAX_BYTES) */
  configBytes: 64 * 1024,
  /** one `key=value` line (LINE_BYTES - 1) */
  lineBytes: 8191,
  disks: 16, ifaces: 8, dns: 4, sysctls: 64, services: 32, env: 128,
  /** device and mount point (127), file system type (31), mount options (127) */
  deviceBytes: 127, fstypeBytes: 31, optionsBytes: 127,
  /** `NAME=value` of one env entry (ENV_BYTES - 1), one service command (SERVICE_BYTES - 1), `key=value` of a sysctl (SYSCTL_BYTES - 1), a dns address (63) */
  envBytes: 4095, serviceBytes: 4095, sysctlBytes: 255, dnsBytes: 63,
} as const;

/** x86's COMMAND_LINE_SIZE is 2048 with its NUL: longer command lines are cut by the kernel without a word. */
export const KERNEL_CMDLINE_MAX_BYTES = 2047;

/**
 * Refuse a kernel command line the kernel would cut. Errors: INVALID_ARGUMENT naming its length,
 * the limit, and what to do (the boot config through fw_cfg has no such limit).
 */
export function checkKernelCmdline(cmdline: string): void {
  const n = Buffer.byteLength(cmdline);
  if (n > KERNEL_CMDLINE_MAX_BYTES) {
    throw new SlipwayError('INVALID_ARGUMENT', `the kernel command line would be ${n} bytes, over the kernel's ${KERNEL_CMDLINE_MAX_BYTES}: the kernel would cut it (and the boot config in it); pass the boot config through fw_cfg, or give fewer or shorter env, service and sysctl entries`, { context: { bytes: n, limit: KERNEL_CMDLINE_MAX_BYTES } });
  }
}

export interface NetConfig {
  name: string;
  /** a.b.c.d/prefix */
  address: string;
  gateway?: string;
}

export interface BootConfig {
  hostname?: string;
  root?: string;
  rootfstype?: string;
  rootflags?: string;
  disks?: { device: string; mountpoint: string; fstype?: string; options?: string }[];
  net?: NetConfig[];
  dns?: string[];
  sysctls?: Record<string, string>;
  services?: string[];
  env?: Record<string, string>;
  verbose?: boolean;
}

const SAFE = /^[^\n\r\0]*$/;
const HOSTNAME = /^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$/;
const IPV4 = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/;

function value(name: string, v: string): string {
  if (!SAFE.test(v)) throw new SlipwayError('INVALID_ARGUMENT', `boot config ${name}: a value cannot hold a newline or NUL`);
  return v;
}

function ipv4(name: string, v: string): string {
  const m = IPV4.exec(v);
  if (!m || m.slice(1).some((o) => Number(o) > 255)) throw new SlipwayError('INVALID_ARGUMENT', `boot config ${name}: ${JSON.stringify(v)} is not an IPv4 address`);
  return v;
}

function over(what: string, detail: string): SlipwayError {
  return new SlipwayError('INVALID_ARGUMENT', `boot config: ${what} ${detail}; slipway-init would refuse it`, { context: { field: what } });
}

function bytesAtMost(what: string, v: string, max: number): void {
  const n = Buffer.byteLength(v);
  if (n > max) throw over(what, `is ${n} bytes, over the limit of ${max}`);
}

function countAtMost(what: string, n: number, max: number): void {
  if (n > max) throw over(what, `has ${n} entries, over the limit of ${max}`);
}

/**
 * The boot config as slipway-init reads it, ending with `end=<entries>` so that init can tell a
 * config cut short. Errors: INVALID_ARGUMENT naming the entry that is malformed or over one of
 * BOOT_CONFIG_LIMITS (nothing is ever cut or dropped).
 */
export function renderBootConfig(c: BootConfig): string {
  const L = BOOT_CONFIG_LIMITS;
  countAtMost('disks', c.disks?.length ?? 0, L.disks);
  countAtMost('net', c.net?.length ?? 0, L.ifaces);
  countAtMost('dns', c.dns?.length ?? 0, L.dns);
  countAtMost('sysctls', Object.keys(c.sysctls ?? {}).length, L.sysctls);
  countAtMost('services', c.services?.length ?? 0, L.services);
  countAtMost('env', Object.keys(c.env ?? {}).length, L.env);
  for (const [what, v, max] of [['root', c.root, L.deviceBytes], ['rootfstype', c.rootfstype, L.fstypeBytes], ['rootflags', c.rootflags, L.optionsBytes]] as const) {
    if (v !== undefined) bytesAtMost(what, v, max);
  }
  for (const d of c.disks ?? []) {
    bytesAtMost(`disk ${d.device} device`, d.device, L.deviceBytes);
    bytesAtMost(`disk ${d.device} mount point`, d.mountpoint, L.deviceBytes);
    bytesAtMost(`disk ${d.device} fstype`, d.fstype ?? '', L.fstypeBytes);
    bytesAtMost(`disk ${d.device} options`, d.options ?? '', L.optionsBytes);
  }
  for (const d of c.dns ?? []) bytesAtMost('dns', d, L.dnsBytes);
  for (const [k, v] of Object.entries(c.sysctls ?? {})) bytesAtMost(`sysctl ${k}`, `${k}=${v}`, L.sysctlBytes);
  for (const [i, sv] of (c.services ?? []).entries()) bytesAtMost(`service ${i + 1}`, sv, L.serviceBytes);
  for (const [k, v] of Object.entries(c.env ?? {})) bytesAtMost(`env ${k}`, `${k}=${v}`, L.envBytes);
  const text = renderLines(c);
  bytesAtMost('as a whole', text, L.configBytes);
  return text;
}

function renderLines(c: BootConfig): string {
  const lines = ['version=1'];
  if (c.hostname !== undefined) {
    if (!HOSTNAME.test(c.hostname)) throw new SlipwayError('INVALID_ARGUMENT', `hostname ${JSON.stringify(c.hostname)} is not a valid host name`);
    lines.push(`hostname=${c.hostname}`);
  }
  if (c.root) lines.push(`root=${value('root', c.root)}`);
  if (c.rootfstype) lines.push(`rootfstype=${value('rootfstype', c.rootfstype)}`);
  if (c.rootflags) lines.push(`rootflags=${value('rootflags', c.rootflags)}`);
  for (const d of c.disks ?? []) {
    if (!d.mountpoint.startsWith('/') || [d.device, d.mountpoint, d.fstype ?? '', d.options ?? ''].some((f) => f.includes(':'))) {
      throw new SlipwayError('INVALID_ARGUMENT', `disk ${d.device}: mount point must be absolute and no field may hold ':'`);
    }
    lines.push(`disk=${value('disk', [d.device, d.mountpoint, d.fstype ?? '', d.options ?? ''].join(':').replace(/:+$/, ''))}`);
  }
  for (const n of c.net ?? []) {
    const [addr, prefix] = n.address.split('/');
    ipv4(`net ${n.name}`, addr ?? '');
    if (prefix !== undefined && !(/^\d+$/.test(prefix) && Number(prefix) <= 32)) throw new SlipwayError('INVALID_ARGUMENT', `net ${n.name}: bad prefix in ${n.address}`);
    if (!/^[A-Za-z0-9._-]{1,15}$/.test(n.name)) throw new SlipwayError('INVALID_ARGUMENT', `net: bad interface name ${JSON.stringify(n.name)}`);
    lines.push(`net=${n.name} ${n.address}${n.gateway ? ` ${ipv4(`net ${n.name} gateway`, n.gateway)}` : ''}`);
  }
  for (const d of c.dns ?? []) lines.push(`dns=${ipv4('dns', d)}`);
  for (const [k, v] of Object.entries(c.sysctls ?? {})) {
    if (!/^[a-z0-9_.-]+$/i.test(k) || k.includes('..')) throw new SlipwayError('INVALID_ARGUMENT', `sysctl name ${JSON.stringify(k)} is not valid`);
    lines.push(`sysctl=${k}=${value(`sysctl ${k}`, v)}`);
  }
  for (const s of c.services ?? []) lines.push(`service=${value('service', s)}`);
  for (const [k, v] of Object.entries(c.env ?? {})) {
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(k)) throw new SlipwayError('INVALID_ARGUMENT', `environment variable name ${JSON.stringify(k)} is not valid`);
    lines.push(`env=${k}=${value(`env ${k}`, v)}`);
  }
  if (c.verbose) lines.push('verbose=1');
  for (const l of lines) if (Buffer.byteLength(l) > BOOT_CONFIG_LIMITS.lineBytes) throw over(l.slice(0, l.indexOf('=')), `line is ${Buffer.byteLength(l)} bytes, over the limit of ${BOOT_CONFIG_LIMITS.lineBytes}`);
  lines.push(`end=${lines.length}`);
  return `${lines.join('\n')}\n`;
}
