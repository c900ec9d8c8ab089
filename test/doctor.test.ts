/**
 * `slipway doctor`: a table for people and JSON for scripts, describing this host as it is (real
 * QEMU asked over QMP, real /dev and /sys), with a stand-in Cloud Hypervisor (it says it is one)
 * where the real one cannot run.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { chmodSync, existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { buildKernel } from '../src/guest/build.js';
import { renderChecks } from '../src/cli/doctor-command.js';
import { hugepagesCheck, type Check, type DoctorReport } from '../src/doctor/checks.js';
import { kvmDeviceUsable } from '../src/vmm/accel.js';
import { tempDir } from './helpers/images.js';
import { runCli } from './helpers/run-cli.js';

const HERE = new URL('.', import.meta.url).pathname;
const PVM = existsSync('/sys/module/kvm_pvm');

beforeAll(async () => {
  await buildKernel();
}, 1_800_000);

function check(report: DoctorReport, id: string): Check {
  const c = report.checks.find((x) => x.id === id);
  if (!c) throw new Error(`no check ${id} in ${report.checks.map((x) => x.id).join(', ')}`);
  return c;
}

describe('slipway doctor', () => {
  it('--json: QEMU and the features slipway uses, the accelerator with its reason, devices, the cache, credentials', async () => {
    const cacheDir = tempDir('slipway-doctor-cache-');
    const docker = tempDir('slipway-doctor-docker-');
    writeFileSync(join(docker, 'config.json'), JSON.stringify({ auths: { 'registry.example.com': { auth: Buffer.from('user:s3cret-password').toString('base64') } }, credHelpers: { '123.dkr.ecr.us-east-1.amazonaws.com': 'ecr-login' } }));
    const r = await runCli(['doctor', '--json', '--cache-dir', cacheDir], { DOCKER_CONFIG: docker, REGISTRY_AUTH_FILE: undefined, XDG_RUNTIME_DIR: undefined, SLIPWAY_ACCEL: undefined, SLIPWAY_CLOUD_HYPERVISOR: join(cacheDir, 'no-such-binary') });
    expect(r.code, r.stderr).toBe(0);
    const report = JSON.parse(r.stdout) as DoctorReport;
    expect(check(report, 'qemu')).toMatchObject({ status: 'ok', value: expect.stringMatching(/qemu-system-x86_64 \d+\.\d+/) });
    expect(check(report, 'qemu.vhost-user-blk').status).toBe('ok');
    expect(check(report, 'qemu.vmgenid').status).toBe('ok');
    expect(check(report, 'qemu.x-ignore-shared').status).toBe('ok');
    // QEMU 7.2 (Debian 12) has neither mapped-ram nor the file: migration target: each "no" says so and why it matters
    const mapped = check(report, 'qemu.mapped-ram');
    if (mapped.status === 'no') expect(mapped.consequence).toBeTruthy();
    expect(['ok', 'no']).toContain(check(report, 'vhost-vsock').status);
    expect(check(report, 'fuse').status).toBe(existsSync('/dev/fuse') ? 'ok' : 'no');
    expect(check(report, 'guest.kernel').status).toBe('ok');
    expect(check(report, 'cache.free-space').value).toContain(cacheDir);
    // a missing cloud-hypervisor is a "no" with its consequence and fix
    expect(check(report, 'cloud-hypervisor')).toMatchObject({ status: 'no', consequence: expect.stringContaining('QEMU'), fix: expect.stringContaining('cloud-hypervisor') });
    // credentials: the file and the hosts it covers, never the secret
    const creds = check(report, 'registry.credentials');
    expect(creds.value).toContain('registry.example.com');
    expect(creds.value).toContain('credHelpers for 123.dkr.ecr.us-east-1.amazonaws.com');
    expect(r.stdout).not.toContain('s3cret-password');
    expect(r.stdout).not.toContain(Buffer.from('user:s3cret-password').toString('base64'));
    expect(['kvm', 'tcg']).toContain(report.accel.accel);
    if (PVM) {
      expect(report.accel).toMatchObject({ accel: 'tcg', kvmModules: expect.arrayContaining(['kvm_pvm']) });
      expect(report.accel.reason).toContain('kvm_pvm');
      expect(check(report, 'accel')).toMatchObject({ status: 'no', value: expect.stringContaining('kvm_pvm'), fix: expect.stringContaining('kvm_intel') });
    }
  }, 120_000);

  it('asks a Cloud Hypervisor binary for its version and features (vmm.ping) and names fw_cfg', async () => {
    const dir = tempDir('slipway-doctor-ch-');
    mkdirSync(dir, { recursive: true });
    const bin = join(dir, 'cloud-hypervisor');
    writeFileSync(bin, `#!/bin/sh\n# FAKE cloud-hypervisor for tests\nexport FAKE_CH_FEATURES=kvm,fw_cfg\nexec '${process.execPath}' '${join(HERE, 'helpers', 'fake-cloud-hypervisor.mjs')}' "$@"\n`);
    chmodSync(bin, 0o755);
    const r = await runCli(['doctor', '--json', '--cache-dir', tempDir('slipway-doctor-cache-')], { SLIPWAY_CLOUD_HYPERVISOR: bin });
    expect(r.code, r.stderr).toBe(0);
    const report = JSON.parse(r.stdout) as DoctorReport;
    expect(check(report, 'cloud-hypervisor')).toMatchObject({ status: 'ok', value: expect.stringContaining('v0.0.0-fake') });
    expect(check(report, 'cloud-hypervisor.fw_cfg').status).toBe('ok');
  }, 120_000);

  it('the table: every check on a line, a "no" followed by what follows from it and its fix', async () => {
    const r = await runCli(['doctor', '--cache-dir', tempDir('slipway-doctor-cache-')]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^check\s+ok\s+found$/m);
    expect(r.stdout).toMatch(/^QEMU\s+yes\s+\S*qemu-system-x86_64/m);
    expect(r.stdout).toMatch(/^slipway will use: qemu with (kvm|tcg) \(/m);
    const fixed = renderChecks([
      { id: 'a', what: 'thing', status: 'ok', value: 'present' },
      { id: 'b', what: 'other thing', status: 'no', value: 'missing', consequence: 'it is slower', fix: 'install it' },
    ]);
    expect(fixed).toBe([
      'check        ok   found',
      '-----------  ---  ' + '-'.repeat(82),
      'thing        yes  present',
      'other thing  NO   missing',
      '                  so: it is slower',
      '                  fix: install it',
      '',
    ].join('\n'));
  }, 120_000);
});

describe('a missing /dev/kvm, said for what it is', () => {
  it('with a KVM module loaded it is a missing device node; with none, a missing module', () => {
    const dir = tempDir('slipway-kvm-node-');
    const missing = join(dir, 'kvm');
    const loaded = kvmDeviceUsable(missing, ['kvm_pvm']);
    expect(loaded).toEqual({ ok: false, why: `${missing} does not exist although kvm_pvm is loaded (no device node: a container started without it?)` });
    const two = kvmDeviceUsable(missing, ['kvm_amd', 'kvm_intel']);
    expect(two.ok ? '' : two.why).toMatch(/although kvm_amd, kvm_intel are loaded/);
    expect(kvmDeviceUsable(missing, [])).toEqual({ ok: false, why: `${missing} does not exist (no KVM module loaded, or nested virtualisation off)` });
    // a regular file is no device
    writeFileSync(missing, '');
    expect(kvmDeviceUsable(missing, ['kvm_intel'])).toEqual({ ok: false, why: `${missing} is not a character device` });
  });
});

describe('the hugepages check', () => {
  const mountedLine = 'hugetlbfs /dev/hugepages hugetlbfs rw,relatime,pagesize=2M 0 0\n';
  it.each([
    ['none reserved, not mounted', 'HugePages_Total: 0\nHugePages_Free: 0\n', '', 'no', 'sysctl vm.nr_hugepages=N and mount -t hugetlbfs none /dev/hugepages'],
    ['none reserved, mounted', 'HugePages_Total: 0\nHugePages_Free: 0\n', mountedLine, 'no', 'sysctl vm.nr_hugepages=N'],
    ['reserved, not mounted', 'HugePages_Total: 512\nHugePages_Free: 512\n', '', 'no', 'mount -t hugetlbfs none /dev/hugepages'],
    ['reserved and mounted', 'HugePages_Total: 512\nHugePages_Free: 500\n', mountedLine, 'ok', undefined],
  ] as const)('%s: %s, its fix names only what is missing', (_name, meminfo, mounts, status, fix) => {
    const c = hugepagesCheck(meminfo, mounts);
    expect(c.status).toBe(status);
    expect(c.fix).toBe(fix);
  });
});
