/**
 * A boot config never shrinks silently: the host refuses what slipway-init would have to cut (its
 * limits are init's, read from guest/init.c), the drivers refuse a kernel command line the kernel
 * would cut, and init itself refuses an entry over its limits or a config cut short. Real QEMU
 * guests (TCG here) for what reaches the guest.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { main } from '../src/cli/main.js';
import { BOOT_CONFIG_LIMITS, KERNEL_CMDLINE_MAX_BYTES, renderBootConfig } from '../src/guest/boot-config.js';
import { buildGuest, buildKernel, PROJECT_ROOT, type GuestArtifacts, type KernelArtifacts } from '../src/guest/build.js';
import { isSlipwayError } from '../src/errors.js';
import { bootVm } from '../src/vmm/boot.js';
import { QemuDriver, qemuArgs } from '../src/vmm/qemu.js';
import { runInVm } from '../src/vmm/run.js';
import type { VmSpec } from '../src/vmm/driver.js';
import { captureIO } from './helpers/cli.js';
import { tempDir } from './helpers/images.js';

const work = tempDir('slipway-guestabi-');
let disk: string;
let kernel: KernelArtifacts;
let guest: GuestArtifacts;

function initDefine(name: string): number {
  const src = readFileSync(join(PROJECT_ROOT, 'guest', 'init.c'), 'utf8');
  const m = new RegExp(`^#define ${name} \\(?([0-9* ]+)\\)?$`, 'm').exec(src);
  if (!m?.[1]) throw new Error(`guest/init.c defines no ${name}`);
  return m[1].split('*').map((x) => Number(x.trim())).reduce((a, b) => a * b, 1);
}

function refused(fn: () => unknown, words: RegExp): void {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  expect(isSlipwayError(err, 'INVALID_ARGUMENT'), String(err)).toBe(true);
  expect((err as Error).message).toMatch(words);
}

function spec(bootConfig: string, extra: Partial<VmSpec> = {}): VmSpec {
  return {
    id: 'abi', workDir: tempDir('slipway-guestabi-vm-'), cpus: 1, memoryMiB: 256, kernel, initramfs: guest.initramfs,
    disks: [{ kind: 'file', path: disk }], bootConfig, net: { mode: 'none' }, console: true, ...extra,
  };
}

beforeAll(async () => {
  kernel = await buildKernel();
  guest = await buildGuest();
  disk = join(work, 'root.img');
  expect(await main(['rootfs', 'build', '--from', 'busybox', '-o', disk], captureIO())).toBe(0);
}, 1_800_000);

describe('the boot config\'s limits', () => {
  it('are slipway-init\'s own (guest/init.c)', () => {
    const L = BOOT_CONFIG_LIMITS;
    expect(L.configBytes).toBe(initDefine('CONFIG_MAX_BYTES'));
    expect(L.lineBytes).toBe(initDefine('LINE_BYTES') - 1);
    expect(L.env).toBe(initDefine('MAX_ENV'));
    expect(L.envBytes).toBe(initDefine('ENV_BYTES') - 1);
    expect(L.services).toBe(initDefine('MAX_SERVICES'));
    expect(L.serviceBytes).toBe(initDefine('SERVICE_BYTES') - 1);
    expect(L.sysctls).toBe(initDefine('MAX_SYSCTLS'));
    expect(L.sysctlBytes).toBe(initDefine('SYSCTL_BYTES') - 1);
    expect(L.dns).toBe(initDefine('MAX_DNS'));
    expect(L.disks).toBe(initDefine('MAX_DISKS'));
    expect(L.ifaces).toBe(initDefine('MAX_IFACES'));
  });

  it('are checked on the host, each refusal naming the entry and the limit; the config ends with its entry count', () => {
    const L = BOOT_CONFIG_LIMITS;
    refused(() => renderBootConfig({ env: { TOKEN: 'x'.repeat(L.envBytes) } }), /env TOKEN is 4101 bytes, over the limit of 4095/);
    refused(() => renderBootConfig({ env: Object.fromEntries(Array.from({ length: L.env + 1 }, (_, i) => [`V${i}`, '1'])) }), /env has 129 entries, over the limit of 128/);
    refused(() => renderBootConfig({ services: ['x'.repeat(L.serviceBytes + 1)] }), /service 1 is 4096 bytes/);
    refused(() => renderBootConfig({ services: Array.from({ length: L.services + 1 }, () => 'true') }), /services has 33 entries/);
    refused(() => renderBootConfig({ sysctls: { 'net.core.somaxconn': 'y'.repeat(250) } }), /sysctl net.core.somaxconn is 269 bytes, over the limit of 255/);
    refused(() => renderBootConfig({ dns: ['1.1.1.1', '1.0.0.1', '8.8.8.8', '8.8.4.4', '9.9.9.9'] }), /dns has 5 entries/);
    refused(() => renderBootConfig({ env: Object.fromEntries(Array.from({ length: 20 }, (_, i) => [`BIG${i}`, 'z'.repeat(4000)])) }), /as a whole is \d+ bytes, over the limit of 65536/);
    const text = renderBootConfig({ hostname: 'h', env: { A: '1', B: '2' }, services: ['true'] });
    expect(text).toBe('version=1\nhostname=h\nservice=true\nenv=A=1\nenv=B=2\nend=5\n');
  });

  it('a kernel command line over the kernel\'s limit is refused before boot (twelve 150-byte env entries in command-line mode)', () => {
    const env = Object.fromEntries(Array.from({ length: 12 }, (_, i) => [`E${i}`, String(i).padStart(150, 'v')]));
    const config = renderBootConfig({ hostname: 'cmd', env });
    refused(() => qemuArgs(spec(config, { bootConfigVia: 'cmdline' }), 'tcg'), new RegExp(`kernel command line would be \\d+ bytes, over the kernel's ${KERNEL_CMDLINE_MAX_BYTES}`));
    // through fw_cfg the same config is fine
    expect(qemuArgs(spec(config), 'tcg')).toContain('-fw_cfg');
  });
});

describe('what reaches the guest (real QEMU)', () => {
  it('through fw_cfg: 128 env entries and a 4,000-byte value arrive whole', async () => {
    const env: Record<string, string> = Object.fromEntries(Array.from({ length: 127 }, (_, i) => [`K${i}`, `value-${i}`]));
    env.LONG = 'L'.repeat(4000);
    const out: Buffer[] = [];
    const r = await runInVm({ disks: [{ kind: 'file', path: disk }], argv: ['sh', '-c', 'env | grep -c "^K[0-9]*=value-"; printf %s "$LONG" | wc -c'], bootConfig: { env }, stdout: (b) => out.push(b), bootTimeoutMs: 120_000 });
    expect(r.exitCode).toBe(0);
    expect(Buffer.concat(out).toString().split(/\s+/).filter(Boolean)).toEqual(['127', '4000']);
  }, 180_000);

  it('through the command line: a config that fits arrives whole, every env entry', async () => {
    const env = Object.fromEntries(Array.from({ length: 8 }, (_, i) => [`E${i}`, String(i).padStart(100, 'v')]));
    const out: Buffer[] = [];
    const r = await runInVm({ disks: [{ kind: 'file', path: disk }], argv: ['sh', '-c', 'env | grep -c "^E[0-9]=v"'], bootConfig: { env }, bootConfigVia: 'cmdline', stdout: (b) => out.push(b), bootTimeoutMs: 120_000 });
    expect(r.exitCode).toBe(0);
    expect(Buffer.concat(out).toString().trim()).toBe('8');
  }, 180_000);

  it('init refuses an entry over its limit (a config written past the host\'s checks): GUEST_POWERED_OFF, saying which', async () => {
    const config = `version=1\nenv=BIG=${'b'.repeat(5000)}\nend=2\n`;
    const err = await bootVm(new QemuDriver(), spec(config), { agentDeadlineMs: 120_000 }).catch((e: unknown) => e);
    expect(isSlipwayError(err, 'GUEST_POWERED_OFF'), String(err)).toBe(true);
    expect((err as Error).message).toContain('config: env too long (5004 bytes, at most 4095)');
  }, 180_000);

  it('init refuses a command-line config cut short (no end= line): GUEST_POWERED_OFF, saying so', async () => {
    const config = 'version=1\nhostname=cut\nenv=A=1\n';
    const err = await bootVm(new QemuDriver(), spec(config, { bootConfigVia: 'cmdline' }), { agentDeadlineMs: 120_000 }).catch((e: unknown) => e);
    expect(isSlipwayError(err, 'GUEST_POWERED_OFF'), String(err)).toBe(true);
    expect((err as Error).message).toContain('slipway.config has no end= line');
  }, 180_000);
});
