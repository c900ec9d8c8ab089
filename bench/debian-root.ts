/**
 * The Debian 12 systemd guest two benchmarks boot (bench/boot.ts's row C, and the boot whose reads
 * bench/storage-path.ts replays): Debian's cloud kernel and initrd from /boot (the package
 * linux-image-cloud-amd64, which bench/run.sh installs), and a debootstrap bookworm root with
 * slipway's agent as a systemd service, built once into BENCH_DIR.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { makeExt4 } from '../src/guest/rootfs.js';
import { BENCH_DIR } from './lib.js';

/** Debian's cloud kernel: its version, vmlinuz and initrd. Throws when the package is not installed. */
export function debianCloudKernel(): { version: string; vmlinuz: string; initrd: string } {
  const v = readdirSync('/boot').find((f) => /^vmlinuz-.*-cloud-amd64$/.test(f));
  if (!v) throw new Error('Debian cloud kernel not installed: apt-get install linux-image-cloud-amd64 (bash bench/run.sh installs it)');
  const version = v.slice('vmlinuz-'.length);
  return { version, vmlinuz: join('/boot', v), initrd: join('/boot', `initrd.img-${version}`) };
}

/** The debootstrap root's image (systemdRoot builds it). */
export const SYSTEMD_IMAGE_PATH = join(BENCH_DIR, 'debian-systemd-v2.img');
/** The reads of one boot of that image (bench/storage-path.ts records it): removed when the image is built anew. */
export const SYSTEMD_TRACE_PATH = join(BENCH_DIR, 'debian-boot-reads.txt');

/**
 * The debootstrap root as a 1 GiB ext4 image (built once, a few minutes, from deb.debian.org),
 * with `agent` (slipway-agent's path) started by systemd and the cloud kernel's modules. Building
 * it removes the trace recorded from an earlier image (SYSTEMD_TRACE_PATH).
 */
export async function systemdRoot(agent: string): Promise<string> {
  const img = SYSTEMD_IMAGE_PATH;
  if (existsSync(img)) return img;
  // the kernel's modules go into the root: fail before minutes of debootstrap, not after
  const { version } = debianCloudKernel();
  mkdirSync(BENCH_DIR, { recursive: true });
  rmSync(SYSTEMD_TRACE_PATH, { force: true });
  const root = join(BENCH_DIR, 'debian-systemd-root');
  rmSync(root, { recursive: true, force: true });
  try {
    await buildRoot(root, agent, version, img);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
  return img;
}

async function buildRoot(root: string, agent: string, version: string, img: string): Promise<void> {
  console.error('bench: debootstrap bookworm with systemd (a few minutes, once)');
  execFileSync('debootstrap', ['--variant=minbase', '--include=systemd,systemd-sysv,udev,iproute2', 'bookworm', root, 'http://deb.debian.org/debian'], { stdio: ['ignore', 'ignore', 'inherit'] });
  execFileSync('cp', [agent, join(root, 'usr/local/bin/slipway-agent')]);
  // the kernel's modules, as its Debian package would install them (udev loads virtio_console from here)
  mkdirSync(join(root, 'lib/modules'), { recursive: true });
  execFileSync('cp', ['-a', `/lib/modules/${version}`, join(root, 'lib/modules/')]);
  writeFileSync(join(root, 'etc/systemd/system/slipway-agent.service'), '[Unit]\nDescription=slipway agent\n\n[Service]\nExecStart=/usr/local/bin/slipway-agent\nRestart=always\n\n[Install]\nWantedBy=multi-user.target\n');
  mkdirSync(join(root, 'etc/systemd/system/multi-user.target.wants'), { recursive: true });
  execFileSync('ln', ['-sf', '/etc/systemd/system/slipway-agent.service', join(root, 'etc/systemd/system/multi-user.target.wants/slipway-agent.service')]);
  writeFileSync(join(root, 'etc/fstab'), '/dev/vda / ext4 rw,relatime 0 1\n');
  writeFileSync(join(root, 'etc/hostname'), 'debian\n');
  await makeExt4(root, img, 1 << 30);
}
