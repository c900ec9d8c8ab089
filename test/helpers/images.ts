/** Real disk images for tests: ext4 filesystems made by mke2fs from real directories, and sparse files. */
import { execFileSync } from 'node:child_process';
import { writeFileSync, openSync, writeSync, closeSync, readFileSync } from 'node:fs';
import { createHash, randomBytes } from 'node:crypto';

export { tempDir } from './temp-dirs.js';

/** An ext4 image of `sizeMiB` holding a copy of `fromDir`. */
export function makeExt4(path: string, sizeMiB: number, fromDir: string): string {
  execFileSync('truncate', ['-s', `${sizeMiB}M`, path]);
  execFileSync('mkfs.ext4', ['-q', '-F', '-d', fromDir, path], { stdio: 'ignore' });
  return path;
}

/** A sparse file of `sizeBytes` with random data at the given offsets. */
export function makeSparse(path: string, sizeBytes: number, writes: { offset: number; length: number }[]): string {
  writeFileSync(path, '');
  execFileSync('truncate', ['-s', String(sizeBytes), path]);
  const fd = openSync(path, 'r+');
  try {
    for (const w of writes) writeSync(fd, randomBytes(w.length), 0, w.length, w.offset);
  } finally {
    closeSync(fd);
  }
  return path;
}

export function sha256File(path: string): string {
  return createHash('sha256').update(readFileSync(path)).digest('hex');
}
