/**
 * Root disk images users boot from: a tiny busybox system, a Debian minbase (debootstrap), or an
 * OCI container image (its layers applied in order, whiteouts honoured), each made into an ext4
 * filesystem image by mke2fs -d (no loop devices, no root mounts).
 */
import { execFile } from 'node:child_process';
import { mkdtemp, mkdir, rm, symlink, writeFile, readdir, stat, rename } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, relative, resolve, sep } from 'node:path';
import { promisify } from 'node:util';
import { pipeline } from 'node:stream/promises';
import { createWriteStream } from 'node:fs';
import { SlipwayError } from '../errors.js';
import type { Targets } from '../oci/open.js';
import { parseRef, refReference } from '../oci/ref.js';
import { isIndexMediaType, type Descriptor, type ImageIndex, type ImageManifest } from '../oci/types.js';

const exec = promisify(execFile);
const MiB = 1 << 20;

export interface RootfsOptions {
  from: string;
  output: string;
  sizeBytes?: number;
  targets?: Targets;
  onLine?: (line: string) => void;
  /** Debian suite for --from debian */
  suite?: string;
  mirror?: string;
}

const BASE_DIRS = ['bin', 'sbin', 'usr/bin', 'usr/sbin', 'etc', 'dev', 'proc', 'sys', 'run', 'tmp', 'root', 'var/tmp', 'home', 'mnt'];

async function du(dir: string): Promise<number> {
  const { stdout } = await exec('du', ['-sb', dir]);
  return Number(stdout.split('\t')[0]);
}

/** Turn a directory tree into an ext4 image of `sizeBytes` (default: contents + 50% + 32 MiB). */
export async function makeExt4(staging: string, output: string, sizeBytes?: number, label = 'slipway-root'): Promise<number> {
  const used = await du(staging);
  const size = sizeBytes ?? Math.ceil((used * 1.5 + 32 * MiB) / MiB) * MiB;
  if (size < used) throw new SlipwayError('INVALID_ARGUMENT', `--size ${size} is smaller than the ${used} bytes the root filesystem holds`);
  const tmp = `${output}.tmp-${process.pid}`;
  try {
    await exec('truncate', ['-s', String(size), tmp]);
    await exec('mkfs.ext4', ['-q', '-F', '-L', label, '-E', 'root_owner=0:0', '-d', staging, tmp], { maxBuffer: 16 * MiB });
    await rename(tmp, output);
  } catch (err) {
    await rm(tmp, { force: true });
    if (err instanceof SlipwayError) throw err;
    throw new SlipwayError('BUILD_FAILED', `mkfs.ext4 -d ${staging} ${output}: ${(err as { stderr?: string }).stderr ?? (err as Error).message}`, { cause: err });
  }
  return size;
}

async function ensureBaseDirs(root: string): Promise<void> {
  for (const d of BASE_DIRS) await mkdir(join(root, d), { recursive: true });
}

/** A busybox system: the static busybox, its applets as symlinks, and the few files programs expect. */
export async function stageBusybox(root: string): Promise<void> {
  await ensureBaseDirs(root);
  const busybox = '/bin/busybox';
  try {
    await stat(busybox);
  } catch {
    throw new SlipwayError('BUILD_FAILED', `${busybox} not found: install Debian's busybox-static`);
  }
  await exec('cp', [busybox, join(root, 'bin', 'busybox')]);
  const { stdout } = await exec(busybox, ['--list-full']);
  for (const applet of stdout.split('\n').filter(Boolean)) {
    if (applet === 'bin/busybox') continue;
    const path = join(root, applet);
    await mkdir(dirname(path), { recursive: true });
    await symlink(relative(dirname(path), join(root, 'bin', 'busybox')), path).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'EEXIST') throw err;
    });
  }
  await writeFile(join(root, 'etc', 'os-release'), 'NAME="slipway busybox"\nID=slipway-busybox\nPRETTY_NAME="slipway busybox root"\nVERSION_ID=1\n');
  await writeFile(join(root, 'etc', 'passwd'), 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n');
  await writeFile(join(root, 'etc', 'group'), 'root:x:0:\ntty:x:5:\nnogroup:x:65534:\n');
  await writeFile(join(root, 'etc', 'hostname'), 'slipway\n');
  await writeFile(join(root, 'etc', 'hosts'), '127.0.0.1 localhost\n');
  await writeFile(join(root, 'etc', 'resolv.conf'), '');
}

async function stageDebian(root: string, opts: RootfsOptions): Promise<void> {
  const suite = opts.suite ?? 'bookworm';
  const mirror = opts.mirror ?? 'http://deb.debian.org/debian';
  opts.onLine?.(`rootfs: debootstrap --variant=minbase ${suite} (a few minutes)`);
  try {
    await exec('debootstrap', ['--variant=minbase', suite, root, mirror], { maxBuffer: 64 * MiB });
  } catch (err) {
    throw new SlipwayError('BUILD_FAILED', `debootstrap ${suite} from ${mirror} failed: ${((err as { stderr?: string }).stderr ?? (err as Error).message).slice(-2000)}`, { cause: err });
  }
  await ensureBaseDirs(root);
}

/** The linux/amd64 image manifest of a reference (an index is resolved to its amd64 entry). */
async function imageManifest(targets: Targets, refText: string): Promise<{ manifest: ImageManifest; fetchBlob: (d: Descriptor) => Promise<NodeJS.ReadableStream> }> {
  const ref = parseRef(refText);
  const target = await targets.open(ref);
  let fetched = await target.fetchManifest(refReference(ref));
  if (isIndexMediaType(fetched.descriptor.mediaType)) {
    const index = JSON.parse(fetched.body.toString('utf8')) as ImageIndex;
    const pick = index.manifests.find((m) => m.platform?.os === 'linux' && m.platform.architecture === 'amd64') ?? index.manifests[0];
    if (!pick) throw new SlipwayError('INVALID_ARGUMENT', `${refText}: image index lists no manifests`);
    fetched = await target.fetchManifest(pick.digest);
  }
  const manifest = JSON.parse(fetched.body.toString('utf8')) as ImageManifest;
  if (!Array.isArray(manifest.layers)) throw new SlipwayError('INVALID_ARGUMENT', `${refText}: not a container image manifest`);
  return { manifest, fetchBlob: (d) => target.fetchBlobStream(d) };
}

function tarFlagFor(mediaType: string): string[] {
  if (mediaType.endsWith('+zstd') || mediaType.endsWith('.zstd')) return ['--zstd'];
  if (mediaType.endsWith('+gzip') || mediaType.endsWith('.gzip') || mediaType.endsWith('tar.gzip') || mediaType === 'application/vnd.docker.image.rootfs.diff.tar.gzip') return ['-z'];
  return [];
}

/** Inside `root`, or refuse: a layer must not name paths outside the filesystem it builds. */
function inside(root: string, path: string): string {
  const full = resolve(root, path);
  if (full !== root && !full.startsWith(root + sep)) throw new SlipwayError('INVALID_ARGUMENT', `layer names a path outside the root: ${path}`);
  return full;
}

/**
 * Apply one layer (OCI image-spec layer.md): first its whiteouts (`.wh.<name>` deletes <name>;
 * `.wh..wh..opq` empties its directory of lower-layer content), then its other entries.
 */
async function applyLayer(root: string, tarPath: string, mediaType: string): Promise<void> {
  const flags = tarFlagFor(mediaType);
  const { stdout } = await exec('tar', [...flags, '-tf', tarPath], { maxBuffer: 256 * MiB });
  for (const raw of stdout.split('\n').filter(Boolean)) {
    const entry = raw.replace(/^\.\//, '').replace(/\/$/, '');
    const base = entry.split('/').at(-1) ?? '';
    if (!base.startsWith('.wh.')) continue;
    const dir = entry.slice(0, entry.length - base.length);
    if (base === '.wh..wh..opq') {
      const full = inside(root, dir || '.');
      for (const child of await readdir(full).catch(() => [] as string[])) await rm(join(full, child), { recursive: true, force: true });
    } else {
      await rm(inside(root, dir + base.slice(4)), { recursive: true, force: true });
    }
  }
  await exec('tar', [...flags, '-xpf', tarPath, '-C', root, '--numeric-owner', '--no-same-permissions', '--same-owner', '--exclude=.wh.*', '--exclude=*/.wh.*'], { maxBuffer: 64 * MiB });
}

async function stageContainerImage(root: string, opts: RootfsOptions, scratch: string): Promise<void> {
  if (!opts.targets) throw new SlipwayError('INVALID_ARGUMENT', 'a container image needs registry access');
  const { manifest, fetchBlob } = await imageManifest(opts.targets, opts.from);
  let n = 0;
  for (const layer of manifest.layers) {
    n++;
    opts.onLine?.(`rootfs: layer ${n}/${manifest.layers.length} ${layer.digest} (${layer.size} bytes)`);
    const tarPath = join(scratch, `layer-${n}.tar`);
    await pipeline(await fetchBlob(layer), createWriteStream(tarPath));
    await applyLayer(root, tarPath, layer.mediaType);
    await rm(tarPath, { force: true });
  }
  await ensureBaseDirs(root);
}

/** Build a root disk image; returns its size in bytes. */
export async function buildRootfs(opts: RootfsOptions): Promise<{ output: string; sizeBytes: number }> {
  const scratch = await mkdtemp(join(tmpdir(), 'slipway-rootfs-'));
  const root = join(scratch, 'root');
  try {
    await mkdir(root);
    if (opts.from === 'busybox') await stageBusybox(root);
    else if (opts.from === 'debian') await stageDebian(root, opts);
    else await stageContainerImage(root, opts, scratch);
    opts.onLine?.(`rootfs: making ext4 image ${opts.output}`);
    const sizeBytes = await makeExt4(root, opts.output, opts.sizeBytes);
    return { output: opts.output, sizeBytes };
  } finally {
    await rm(scratch, { recursive: true, force: true });
  }
}
