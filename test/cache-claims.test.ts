/**
 * Fetch claims (`<claims dir>/<digest>`, claimsDirOf, one process fetches a chunk, the others wait for
 * its file) never block a read for good: a claim whose pid now belongs to another process (PID 1
 * in a restarted container, a reused pid, this very process) is not honoured at all, and a claim
 * by a live process that is not fetching is honoured only until the fetch deadline. Through the
 * real docker-registry, with `slipway read` in a child process where the issue saw it.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { claimsDirOf } from '../src/cache/fetch-claims.js';
import { pushDisk } from '../src/disk/push.js';
import { parseRef } from '../src/oci/ref.js';
import { processStartTime } from '../src/util/process-identity.js';
import { chunkCacheBed, chunkHex } from './helpers/cache-bed.js';
import { chunkFiles, expectTier1Consistent, within } from './helpers/cache-checks.js';

const KiB = 1024;
const CHUNK = 64 * KiB;
const DISK_BYTES = 16 * CHUNK;
const TAG = 'v1';

const bed = chunkCacheBed('slipway-cache-claims-');
const { targets, work, freshDir, cleanups, openCache } = bed;
let image: Buffer;
let ref: string;

beforeAll(async () => {
  image = randomBytes(DISK_BYTES);
  const file = join(work, 'disk.img');
  writeFileSync(file, image);
  ref = `${bed.registry.host}/claims/disk:${TAG}`;
  await pushDisk({ file, target: await targets.open(parseRef(ref)), tag: TAG, pool: bed.pool, chunkSizeBytes: CHUNK, packSizeBytes: 4 * CHUNK });
});

/** Leave a fetch claim on chunk `n` of the disk in `cacheDir`, as a claimer would, naming `claimer`. */
function leaveClaim(cacheDir: string, hex: string, claimer: string): string {
  // (the directory goes with the last cache that closes, and another process's first cache open
  // removes it while empty: made again until the marker is in it)
  const marker = join(claimsDirOf(cacheDir), hex);
  for (;;) {
    mkdirSync(claimsDirOf(cacheDir), { recursive: true, mode: 0o700 });
    try {
      writeFileSync(marker, claimer);
      return marker;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
  }
}

describe('a fetch claim that nobody is working on never blocks a read', () => {
  const pid1Start = processStartTime(1);

  const stale: { what: string; claimer: () => string }[] = [
    { what: 'PID 1 with another start time (a restarted container)', claimer: () => `1:${Number(pid1Start ?? 0) + 12345}:0badc1a1` },
    { what: 'PID 1 in the format without a start time', claimer: () => '1:0badc1a1' },
    { what: 'this very process, by a cache that is no longer open', claimer: () => `${process.pid}:${processStartTime(process.pid) ?? '-'}:0badc1a1` },
  ];

  it.each(stale)('a claim naming $what is not honoured: the read fetches at once', async ({ claimer }) => {
    const cacheDir = freshDir();
    // a deadline far beyond the bound below: only not waiting at all passes
    const { cache } = await openCache({ cacheDir, fetchDeadlineMs: 60_000 });
    const disk = await cache.openDisk(ref);
    const n = 5;
    const marker = leaveClaim(cacheDir, chunkHex(disk, n), claimer());
    const data = await within(15_000, disk.read(n * CHUNK, CHUNK), 'read of a chunk under a stale claim');
    expect(data.equals(image.subarray(n * CHUNK, (n + 1) * CHUNK))).toBe(true);
    expect(disk.stats.tier2Chunks).toBe(1);
    // the claim was taken over, then released with the chunk stored
    expect(existsSync(marker)).toBe(false);
    expect(expectTier1Consistent(cache).chunks).toBe(1);
  });

  it('a claim by a live process that is not fetching holds `slipway read` only until the fetch deadline (2 s)', async () => {
    // a real, live, correctly identified claimer that will never fetch anything
    const sleeper: ChildProcess = spawn('sleep', ['600'], { stdio: 'ignore' });
    cleanups.push(() => sleeper.kill('SIGKILL'));
    const pid = sleeper.pid as number;
    const start = processStartTime(pid);
    expect(start).toBeDefined();
    const cacheDir = freshDir();
    const { cache } = await openCache({ cacheDir });
    const disk = await cache.openDisk(ref);
    const hexes = [0, 1, 2, 3].map((n) => chunkHex(disk, n));
    await cache.close();
    const markers = hexes.map((hex) => leaveClaim(cacheDir, hex, `${pid}:${start}:5eeb1e55`));

    const deadlineMs = 2000;
    const env: NodeJS.ProcessEnv = { PATH: process.env.PATH, HOME: work, XDG_CONFIG_HOME: join(work, 'no-config'), DOCKER_CONFIG: join(work, 'no-docker'), SLIPWAY_LOG_LEVEL: 'warn', SLIPWAY_FETCH_DEADLINE_MS: String(deadlineMs) };
    const t0 = Date.now();
    const child = await new Promise<{ code: number; stdout: Buffer; stderr: string }>((resolve) => {
      execFile(process.execPath, [join(process.cwd(), 'bin', 'slipway.js'), 'read', ref, '--offset', '0', '--length', String(4 * CHUNK), '--cache-dir', cacheDir], { env, encoding: 'buffer', maxBuffer: DISK_BYTES, timeout: 60_000 }, (err, stdout, stderr) => {
        resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr: stderr.toString() });
      });
    });
    const elapsed = Date.now() - t0;
    expect(child.code, child.stderr).toBe(0);
    expect(child.stdout.equals(image.subarray(0, 4 * CHUNK))).toBe(true);
    // the claim was honoured (the claimer is alive and is who it says), but only until the deadline
    expect(elapsed).toBeGreaterThanOrEqual(deadlineMs);
    expect(elapsed).toBeLessThan(deadlineMs + 20_000);
    expect(child.stderr).toContain('fetching regardless');
    for (const m of markers) expect(existsSync(m), `claim ${m}: ${existsSync(m) ? readFileSync(m, 'utf8') : ''}`).toBe(false);
    const files = chunkFiles(cacheDir);
    expect(files.filter((f) => !f.intact)).toEqual([]);
    expect(files.map((f) => f.name).sort()).toEqual([...hexes].sort());
  });
});
