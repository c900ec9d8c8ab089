/**
 * The agent over vhost-vsock under QEMU: the transport choice, QEMU's arguments for each, the
 * host helper (guest/vsock-connect.c) and, where /dev/vhost-vsock is usable, a real guest reached
 * over vsock. That last test is skipped, with the reason printed, on hosts without vhost-vsock
 * (the README says so); the virtio-serial fallback is what every other QEMU test here uses.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { main } from '../src/cli/main.js';
import { buildGuest, buildKernel } from '../src/guest/build.js';
import { runInVm } from '../src/vmm/run.js';
import { detectAgentTransport, QemuDriver, qemuArgs, randomGuestCid } from '../src/vmm/qemu.js';
import type { VmmDriver, VmSpec } from '../src/vmm/driver.js';
import { captureIO } from './helpers/cli.js';
import { tempDir } from './helpers/images.js';

const work = tempDir('slipway-vsocktest-');
let helper: string;

function spec(over: Partial<VmSpec> = {}): VmSpec {
  return {
    id: 't', workDir: work, cpus: 1, memoryMiB: 256, kernel: { bzImage: '/k/bzImage', vmlinux: '/k/vmlinux' }, initramfs: '/k/initramfs',
    disks: [], bootConfig: '', net: { mode: 'none' }, ...over,
  };
}

beforeAll(async () => {
  helper = (await buildGuest()).vsockConnect;
}, 600_000);

describe('agent transport', () => {
  it('vsock: a vhost-vsock device with the guest CID and no virtio-serial port', () => {
    const args = qemuArgs(spec(), 'tcg', { agentTransport: 'vsock', guestCid: 123456 });
    expect(args).toContain('vhost-vsock-pci,guest-cid=123456');
    expect(args.join(' ')).not.toContain('virtserialport');
    expect(() => qemuArgs(spec(), 'tcg', { agentTransport: 'vsock' })).toThrow(/guest CID/);
  });

  it('virtio-serial: the agent port on a Unix socket and no vsock device', () => {
    const args = qemuArgs(spec(), 'tcg', { agentTransport: 'virtio-serial' }).join(' ');
    expect(args).toContain(`socket,id=agent,path=${join(work, 'agent.sock')}`);
    expect(args).toContain('virtserialport,bus=vser.0,chardev=agent,name=org.slipway.agent');
    expect(args).not.toContain('vhost-vsock');
  });

  it('is vsock exactly when /dev/vhost-vsock is a character device that opens read-write, and can be forced', () => {
    const saved = process.env.SLIPWAY_AGENT_TRANSPORT;
    try {
      delete process.env.SLIPWAY_AGENT_TRANSPORT;
      // `test -c` first: a plain `<>` redirection would create a regular file where the device is missing
      const opens = spawnSync('sh', ['-c', 'test -c /dev/vhost-vsock && exec 3<>/dev/vhost-vsock']).status === 0;
      expect(detectAgentTransport()).toBe(opens ? 'vsock' : 'virtio-serial');
      process.env.SLIPWAY_AGENT_TRANSPORT = 'virtio-serial';
      expect(detectAgentTransport()).toBe('virtio-serial');
      process.env.SLIPWAY_AGENT_TRANSPORT = 'vsock';
      expect(detectAgentTransport()).toBe('vsock');
    } finally {
      if (saved === undefined) delete process.env.SLIPWAY_AGENT_TRANSPORT;
      else process.env.SLIPWAY_AGENT_TRANSPORT = saved;
    }
  });

  it('guest CIDs are never the reserved 0-2 nor the last two values', () => {
    for (let i = 0; i < 10_000; i++) {
      const cid = randomGuestCid();
      expect(cid).toBeGreaterThanOrEqual(3);
      expect(cid).toBeLessThan(0xffff_fffe);
    }
  });
});

describe('slipway-vsock-connect', () => {
  it('rejects bad arguments with exit 2 and a usage line', () => {
    for (const args of [[], ['3'], ['x', '1024'], ['3', '-1'], ['3', '4294967296'], ['3', '1024', 'extra'], ['3', '10x']]) {
      const r = spawnSync(helper, args, { encoding: 'utf8' });
      expect(r.status, args.join(' ')).toBe(2);
      expect(r.stderr).toMatch(/usage: slipway-vsock-connect CID PORT/);
    }
  });

  it('a connection that fails exits 1 naming the CID, the port and the reason', () => {
    // no guest has this CID: the kernel refuses, times out, or has no vsock transport at all
    const r = spawnSync(helper, ['4000000001', '1024'], { encoding: 'utf8', input: 'x', timeout: 30_000 });
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/slipway-vsock-connect: (connect to 4000000001:1024|socket\(AF_VSOCK\)): \S/);
  });
});

const vsockSkip = detectAgentTransport() === 'vsock' ? '' : 'no usable /dev/vhost-vsock on this host (load the vhost_vsock module to run it)';
if (vsockSkip) process.stderr.write(`[vsock.test] real vhost-vsock boot skipped: ${vsockSkip}\n`);

describe('a guest reached over vhost-vsock', () => {
  let disk: string;
  beforeAll(async () => {
    if (vsockSkip) return;
    await buildKernel();
    disk = join(work, 'root.img');
    expect(await main(['rootfs', 'build', '--from', 'busybox', '-o', disk], captureIO())).toBe(0);
  }, 1_800_000);

  it.skipIf(vsockSkip !== '')(`boots, and the agent answers over vsock with no virtio-serial port${vsockSkip ? ` (skipped: ${vsockSkip})` : ''}`, async () => {
    let qemuCommand = '';
    const qemu = new QemuDriver({ agentTransport: 'vsock' });
    const driver: VmmDriver = {
      name: 'qemu',
      async start(s) {
        const vm = await qemu.start(s);
        qemuCommand = readFileSync(join(s.workDir, 'qemu.args'), 'utf8');
        return vm;
      },
      adopt: (...args) => qemu.adopt(...args),
    };
    let out = '';
    const r = await runInVm({ disks: [{ kind: 'file', path: disk }], argv: ['cat', '/etc/os-release'], driver, stdout: (d) => void (out += d.toString()) });
    expect(r.exitCode).toBe(0);
    expect(out).toContain('slipway busybox');
    expect(qemuCommand).toMatch(/vhost-vsock-pci,guest-cid=\d+/);
    expect(qemuCommand).not.toContain('virtserialport');
  }, 600_000);
});
