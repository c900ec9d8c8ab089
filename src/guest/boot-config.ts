/**
 * The boot config slipway-init reads (docs/guest.md): `key=value` lines, delivered as the fw_cfg
 * item `opt/slipway/config`, or base64 in `slipway.config=` on the kernel command line.
 */
import { SlipwayError } from '../errors.js';

export const FW_CFG_NAME = 'opt/slipway/config';

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

export function renderBootConfig(c: BootConfig): string {
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
  return `${lines.join('\n')}\n`;
}
