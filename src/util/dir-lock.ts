import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { SlipwayError } from '../errors.js';
import { processAlive } from './process.js';


/**
 * Run `fn` holding a lock made of a directory (mkdir is atomic on every local filesystem). The
 * holder's pid is written inside, so a lock left by a process that died is broken, not waited on.
 */
export async function withDirLock<T>(lockDir: string, fn: () => Promise<T>, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (let attempt = 0; ; attempt++) {
    try {
      await mkdir(lockDir);
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const holder = Number.parseInt(await readFile(join(lockDir, 'pid'), 'utf8').catch(() => ''), 10);
      if (Number.isInteger(holder) && holder > 0 && !processAlive(holder)) {
        await rm(lockDir, { recursive: true, force: true });
        continue;
      }
      if (Date.now() > deadline) throw new SlipwayError('IO_ERROR', `timed out after ${timeoutMs} ms waiting for lock ${lockDir} (held by pid ${holder || 'unknown'})`);
      await sleep(Math.min(5 + attempt * 5, 100));
    }
  }
  try {
    await writeFile(join(lockDir, 'pid'), String(process.pid));
    return await fn();
  } finally {
    await rm(lockDir, { recursive: true, force: true });
  }
}
