import { closeSync, openSync, readSync, statSync } from 'node:fs';

/** The last `bytes` of a file as UTF-8, or '' when it cannot be read (a log not written yet). */
export function fileTail(path: string, bytes: number): string {
  try {
    const size = statSync(path).size;
    const fd = openSync(path, 'r');
    try {
      const buf = Buffer.alloc(Math.min(bytes, size));
      readSync(fd, buf, 0, buf.length, size - buf.length);
      return buf.toString('utf8');
    } finally {
      closeSync(fd);
    }
  } catch {
    return '';
  }
}
