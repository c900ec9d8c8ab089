/**
 * A writer for the "newc" cpio format the kernel unpacks as its initramfs. Written here rather
 * than by cpio(1) so that device nodes (/dev/console) and ownership are set without root, and
 * the archive is byte-for-byte reproducible (fixed inode numbers and mtimes).
 */
export interface CpioEntry {
  path: string;
  /** file type and permission bits, e.g. 0o100755 for an executable, 0o40755 for a directory */
  mode: number;
  data?: Buffer;
  /** for symlinks: the target */
  linkTarget?: string;
  /** for device nodes */
  rdevMajor?: number;
  rdevMinor?: number;
}

export const S_IFDIR = 0o040000;
export const S_IFREG = 0o100000;
export const S_IFLNK = 0o120000;
export const S_IFCHR = 0o020000;

function hex8(n: number): string {
  return n.toString(16).padStart(8, '0');
}

function pad4(len: number): Buffer {
  return Buffer.alloc((4 - (len % 4)) % 4);
}

function record(ino: number, e: { path: string; mode: number; body: Buffer; rdevMajor: number; rdevMinor: number; nlink: number }): Buffer[] {
  const name = Buffer.from(`${e.path}\0`);
  const header = Buffer.from(
    `070701${hex8(ino)}${hex8(e.mode)}${hex8(0)}${hex8(0)}${hex8(e.nlink)}${hex8(0)}${hex8(e.body.byteLength)}${hex8(0)}${hex8(0)}${hex8(e.rdevMajor)}${hex8(e.rdevMinor)}${hex8(name.byteLength)}${hex8(0)}`,
    'ascii',
  );
  const headerAndName = header.byteLength + name.byteLength;
  return [header, name, pad4(headerAndName), e.body, pad4(e.body.byteLength)];
}

export function buildCpio(entries: CpioEntry[]): Buffer {
  const parts: Buffer[] = [];
  let ino = 1;
  for (const e of entries) {
    const path = e.path.replace(/^\/+/, '');
    const body = e.linkTarget !== undefined ? Buffer.from(e.linkTarget) : (e.data ?? Buffer.alloc(0));
    parts.push(...record(ino++, { path, mode: e.mode, body, rdevMajor: e.rdevMajor ?? 0, rdevMinor: e.rdevMinor ?? 0, nlink: (e.mode & S_IFDIR) === S_IFDIR ? 2 : 1 }));
  }
  parts.push(...record(0, { path: 'TRAILER!!!', mode: 0, body: Buffer.alloc(0), rdevMajor: 0, rdevMinor: 0, nlink: 1 }));
  const out = Buffer.concat(parts);
  return Buffer.concat([out, Buffer.alloc((512 - (out.byteLength % 512)) % 512)]);
}
