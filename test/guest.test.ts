/**
 * The guest for real: slipway's kernel, init and agent booting under QEMU (TCG here, KVM where it
 * works) through `slipway run --disk`, with a busybox root disk made by `slipway rootfs build`.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { main } from '../src/cli/main.js';
import { buildGuest, buildKernel } from '../src/guest/build.js';
import { stageBusybox, makeExt4 } from '../src/guest/rootfs.js';
import { sha256Digest } from '../src/oci/digest.js';
import { OciLayoutStore } from '../src/oci/layout/layout-store.js';
import { MEDIA_TYPE_OCI_MANIFEST } from '../src/oci/types.js';
import { runInVm } from '../src/vmm/run.js';
import { captureIO } from './helpers/cli.js';
import { startRegistry, type TestRegistry } from './helpers/registry.js';
import { tempDir } from './helpers/images.js';

const work = tempDir('slipway-guest-');
const disk = join(work, 'busybox.img');
let registry: TestRegistry;

async function run(args: string[]): Promise<{ code: number; out: string; err: string }> {
  const io = captureIO();
  const code = await main(['run', '--disk', disk, ...args], io);
  return { code, out: io.out, err: io.err };
}

beforeAll(async () => {
  // the kernel build is cached outside the repository (the first one takes minutes)
  await buildKernel({ onLine: (l) => process.stderr.write(`${l}\n`) });
  await buildGuest();
  const io = captureIO();
  expect(await main(['rootfs', 'build', '--from', 'busybox', '-o', disk], io), io.err).toBe(0);
  registry = await startRegistry();
}, 1_800_000);
afterAll(async () => registry?.stop());

describe('booting slipway guests under QEMU', () => {
  it('runs date through the agent and returns its output and exit status', async () => {
    const r = await run(['--', 'sh', '-c', 'date -u +%Y; exit 3']);
    expect(r.code, r.err).toBe(3);
    expect(r.out.trim()).toBe(String(new Date().getUTCFullYear()));
  });

  it('sets the hostname given in the fw_cfg boot config, and passes the environment', async () => {
    const r = await run(['--hostname', 'fwcfg-host', '--env', 'GREETING=hello there', '--', 'sh', '-c', 'hostname; echo "$GREETING"; cat /sys/firmware/qemu_fw_cfg/by_name/opt/slipway/config/raw | grep hostname']);
    expect(r.code, r.err).toBe(0);
    expect(r.out.split('\n')).toEqual(['fwcfg-host', 'hello there', 'hostname=fwcfg-host', '']);
  });

  it('puts the static address from the config on the interface', async () => {
    const r = await run(['--net', 'user', '--', 'sh', '-c', 'ip -4 addr show eth0; ip route; cat /etc/resolv.conf']);
    expect(r.code, r.err).toBe(0);
    expect(r.out).toContain('inet 10.0.2.15/24');
    expect(r.out).toContain('default via 10.0.2.2');
    expect(r.out).toContain('nameserver 10.0.2.3');
  });

  it('reaps zombies: an orphan that exits is gone, not left as Z', async () => {
    const script = [
      'sh -c "sleep 0.3 & echo \\$!" > /tmp/orphan',
      'sleep 1.5',
      'pid=$(cat /tmp/orphan)',
      'test -e /proc/$pid && echo "orphan $pid still there: $(cat /proc/$pid/stat)"',
      'for s in /proc/[0-9]*/stat; do read -r p c st rest < $s 2>/dev/null; [ "$st" = Z ] && echo "zombie $p $c"; done',
      'echo checked',
    ].join('; ');
    const r = await run(['--', 'sh', '-c', script]);
    expect(r.code, r.err).toBe(0);
    expect(r.out.trim()).toBe('checked');
  });

  it('without a root disk, init says so on the console and powers off (the run fails with why)', async () => {
    const started = Date.now();
    const err = await runInVm({ disks: [], argv: ['true'], bootTimeoutMs: 120_000 }).catch((e: unknown) => e);
    expect((err as { code?: string }).code).toBe('GUEST_POWERED_OFF');
    expect((err as Error).message).toContain('root disk /dev/vda not found');
    expect((err as Error).message).toContain('powering off');
    expect(Date.now() - started).toBeLessThan(60_000);
  });

  it('a container image pushed with skopeo to the local registry becomes a bootable disk (layers in order, whiteouts honoured)', async () => {
    // Build a two-layer OCI image: a busybox root, then a layer that deletes /etc/hosts (whiteout),
    // empties /opt/old (opaque whiteout) and adds /etc/motd.
    const l1 = join(work, 'l1');
    await stageBusybox(l1);
    mkdirSync(join(l1, 'opt', 'old'), { recursive: true });
    writeFileSync(join(l1, 'opt', 'old', 'gone.txt'), 'lower layer');
    const l2 = join(work, 'l2');
    mkdirSync(join(l2, 'etc'), { recursive: true });
    mkdirSync(join(l2, 'opt', 'old'), { recursive: true });
    writeFileSync(join(l2, 'etc', 'motd'), 'from layer two\n');
    writeFileSync(join(l2, 'etc', '.wh.hosts'), '');
    writeFileSync(join(l2, 'opt', 'old', '.wh..wh..opq'), '');
    writeFileSync(join(l2, 'opt', 'old', 'new.txt'), 'upper layer');
    const layout = new OciLayoutStore(join(work, 'image-layout'));
    await layout.init();
    const layers = [];
    for (const dir of [l1, l2]) {
      const tgz = join(work, `${dir.split('/').pop()}.tar.gz`);
      execFileSync('tar', ['-czf', tgz, '-C', dir, '--numeric-owner', '--owner=0', '--group=0', '.']);
      const data = (await import('node:fs')).readFileSync(tgz);
      const desc = { mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: sha256Digest(data), size: data.byteLength };
      await layout.pushBlob(desc, data);
      layers.push(desc);
    }
    const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [] }, config: {} }));
    const cdesc = { mediaType: 'application/vnd.oci.image.config.v1+json', digest: sha256Digest(config), size: config.byteLength };
    await layout.pushBlob(cdesc, config);
    await layout.pushManifest(Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MEDIA_TYPE_OCI_MANIFEST, config: cdesc, layers })), MEDIA_TYPE_OCI_MANIFEST, 'v1');
    const ref = `${registry.host}/images/ci:v1`;
    execFileSync('skopeo', ['copy', '--dest-tls-verify=false', `oci:${join(work, 'image-layout')}:v1`, `docker://${ref}`], { stdio: 'pipe' });

    const out = join(work, 'from-image.img');
    const io = captureIO();
    expect(await main(['rootfs', 'build', '--from', ref, '-o', out], io), io.err).toBe(0);
    const io2 = captureIO();
    const code = await main(['run', '--disk', out, '--', 'sh', '-c', 'cat /etc/motd; ls /opt/old; test -e /etc/hosts && echo hosts-present; cat /etc/os-release | head -1'], io2);
    expect(code, io2.err).toBe(0);
    expect(io2.out.split('\n')).toEqual(['from layer two', 'new.txt', 'NAME="slipway busybox"', '']);
  });

  it('makes ext4 images of a staged tree that boot read-write (writes persist on the disk file)', async () => {
    const dir = join(work, 'rw');
    await stageBusybox(dir);
    const img = join(work, 'rw.img');
    await makeExt4(dir, img);
    const io = captureIO();
    expect(await main(['run', '--disk', img, '--', 'sh', '-c', 'echo persisted > /root/note; sync'], io), io.err).toBe(0);
    const io2 = captureIO();
    expect(await main(['run', '--disk', img, '--', 'cat', '/root/note'], io2), io2.err).toBe(0);
    expect(io2.out).toBe('persisted\n');
  });
});

describe('boot config features', () => {
  it('reads the config from the kernel command line without fw_cfg; mounts extra disks, applies sysctls, starts services', async () => {
    const extra = join(work, 'extra.img');
    const dir = join(work, 'extra-tree');
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, 'hello.txt'), 'from the extra disk\n');
    await makeExt4(dir, extra, 16 << 20, 'extra');
    const chunks: Buffer[] = [];
    const result = await runInVm({
      disks: [{ kind: 'file', path: disk }, { kind: 'file', path: extra, readOnly: true }],
      argv: ['sh', '-c', 'sleep 0.5; hostname; cat /mnt/extra/hello.txt; cat /proc/sys/vm/swappiness; cat /tmp/service-ran; test -e /sys/firmware/qemu_fw_cfg/by_name/opt/slipway/config && echo fwcfg-present || echo no-fwcfg'],
      hostname: 'cmdline-host',
      bootConfigVia: 'cmdline',
      bootConfig: { disks: [{ device: '/dev/vdb', mountpoint: '/mnt/extra', fstype: 'ext4', options: 'ro' }], sysctls: { 'vm.swappiness': '7' }, services: ['echo started > /tmp/service-ran'] },
      stdout: (d) => chunks.push(d),
    });
    expect(result.exitCode).toBe(0);
    expect(Buffer.concat(chunks).toString().split('\n')).toEqual(['cmdline-host', 'from the extra disk', '7', 'started', 'no-fwcfg', '']);
  });
});
