/**
 * Fetch claims (src/cache/fetch-claims.ts) on real files: where they live (tmpfs, one directory
 * per cache directory whatever path opens it; next to the cache where the tmpfs directory is not
 * the user's alone, checked again when it has to be made again), that a marker that is not a
 * regular file does not stall a claim, and that a release removes only the claimer's own marker. The claims' part
 * in fetching (one process fetches, the others wait) is test/cache-claims.test.ts's.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { claimsDirOf, FetchClaims } from '../src/cache/fetch-claims.js';
import { tempDir } from './helpers/images.js';

const HEX = 'ab'.repeat(32);
const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const c of cleanups.splice(0).reverse()) c();
});

/** A cache directory of its own, removed after the test with its claims directory. */
function cacheDir(): string {
  const dir = tempDir('slipway-claims-unit-');
  const claims = claimsDirOf(dir);
  cleanups.push(() => {
    rmSync(claims, { recursive: true, force: true });
    rmSync(dir, { recursive: true, force: true });
  });
  return dir;
}

function open(dir: string): FetchClaims {
  const c = new FetchClaims(dir);
  cleanups.push(() => c.close());
  return c;
}

describe('where fetch claims live', () => {
  it.runIf(existsSync('/dev/shm'))('on tmpfs, one directory per cache directory, whatever path opens it', () => {
    const dir = cacheDir();
    const link = join(tempDir('slipway-claims-link-'), 'cache');
    symlinkSync(dir, link);
    cleanups.push(() => rmSync(join(link, '..'), { recursive: true, force: true }));
    expect(claimsDirOf(dir).startsWith('/dev/shm/slipway-claims-')).toBe(true);
    expect(claimsDirOf(link)).toBe(claimsDirOf(dir));
    expect(claimsDirOf(cacheDir())).not.toBe(claimsDirOf(dir));
    // a claim made through one path is seen through the other
    const a = open(dir);
    const b = open(link);
    expect(a.claim(HEX)).toBe(true);
    expect(b.claim(HEX)).toBe(false);
    expect(b.claimedElsewhere(HEX)).toBe(true);
    expect(existsSync(join(dir, 'inflight'))).toBe(false);
  });

  it.runIf(existsSync('/dev/shm'))('next to the cache when the tmpfs directory is not the user\'s alone', () => {
    const dir = cacheDir();
    const shared = claimsDirOf(dir);
    mkdirSync(shared, { recursive: true });
    chmodSync(shared, 0o777);
    const c = open(dir);
    expect(c.claim(HEX)).toBe(true);
    expect(readdirSync(shared)).toEqual([]);
    expect(readdirSync(join(dir, 'inflight'))).toEqual([HEX]);
  });

  it.runIf(existsSync('/dev/shm'))('a directory removed under an open claimer is made and checked again: one another user could have made is not used', () => {
    const dir = cacheDir();
    const a = open(dir);
    const shared = claimsDirOf(dir);
    rmSync(shared, { recursive: true });
    // what another local user could put there in the meantime
    mkdirSync(shared);
    chmodSync(shared, 0o777);
    expect(a.claim(HEX)).toBe(true);
    expect(readdirSync(shared)).toEqual([]);
    expect(readdirSync(join(dir, 'inflight'))).toEqual([HEX]);
  });

  it.runIf(existsSync('/dev/shm'))('the last claimer to close leaves no empty directory on tmpfs; one still open makes and checks it again', () => {
    const dir = cacheDir();
    const a = open(dir);
    const b = open(dir);
    b.close();
    expect(existsSync(claimsDirOf(dir))).toBe(false);
    expect(a.claim(HEX)).toBe(true);
    expect(existsSync(join(claimsDirOf(dir), HEX))).toBe(true);
    // not empty: left for the claim's release
    a.close();
    expect(existsSync(claimsDirOf(dir))).toBe(true);
  });

  it('a marker that is not a regular file (a FIFO) neither stalls nor blocks a claim', () => {
    const dir = cacheDir();
    const a = open(dir);
    const marker = join(claimsDirOf(dir), HEX);
    execFileSync('mkfifo', [marker]);
    expect(a.claimedElsewhere(HEX)).toBe(false);
    expect(a.claim(HEX)).toBe(true);
    expect(statSync(marker).isFile()).toBe(true);
  });
});

describe('releasing a claim', () => {
  it('removes the claimer\'s own marker', () => {
    const dir = cacheDir();
    const a = open(dir);
    const b = open(dir);
    expect(a.claim(HEX)).toBe(true);
    a.release(HEX);
    expect(existsSync(join(claimsDirOf(dir), HEX))).toBe(false);
    expect(b.claim(HEX)).toBe(true);
  });

  it('leaves a marker another claimer took over (the slow claimer finishing late)', () => {
    const dir = cacheDir();
    const slow = open(dir);
    const other = open(dir);
    expect(slow.claim(HEX)).toBe(true);
    other.takeOver(HEX);
    const marker = join(claimsDirOf(dir), HEX);
    const taken = readFileSync(marker, 'utf8');
    slow.release(HEX);
    expect(readFileSync(marker, 'utf8')).toBe(taken);
    expect(slow.claimedElsewhere(HEX)).toBe(true);
    other.release(HEX);
    expect(existsSync(marker)).toBe(false);
  });

  it('of a chunk never claimed does nothing', () => {
    const dir = cacheDir();
    const a = open(dir);
    const b = open(dir);
    expect(b.claim(HEX)).toBe(true);
    a.release(HEX);
    expect(a.claimedElsewhere(HEX)).toBe(true);
  });
});

describe('claims directories left behind', () => {
  it.runIf(existsSync('/dev/shm'))('a process opening its first cache removes the empty ones that are the user\'s alone; one with a marker, or open to others, stays', () => {
    const name = (what: string): string => `/dev/shm/slipway-claims-test-${what}-${process.pid}-${Date.now()}`;
    const empty = name('empty');
    const held = name('held');
    const shared = name('shared');
    for (const d of [empty, held, shared]) {
      mkdirSync(d, { mode: 0o700 });
      cleanups.push(() => rmSync(d, { recursive: true, force: true }));
    }
    writeFileSync(join(held, HEX), '1:1:left');
    chmodSync(shared, 0o777);
    // a fresh process: the sweep runs once per process, and this one has opened caches already
    const dir = cacheDir();
    const script = `import { FetchClaims } from ${JSON.stringify(join(process.cwd(), 'src', 'cache', 'fetch-claims.ts'))}; new FetchClaims(${JSON.stringify(dir)}).close();`;
    execFileSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { stdio: 'pipe' });
    expect(existsSync(empty)).toBe(false);
    expect(readdirSync(held)).toEqual([HEX]);
    expect(existsSync(shared)).toBe(true);
  });
});
