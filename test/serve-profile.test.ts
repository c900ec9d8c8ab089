/**
 * `slipway serve` records a disk's boot profile on its first boot and stores it beside the disk:
 * the real CLI (bin/slipway.js, the build in dist/), the real slipway-blk, a real docker-registry
 * behind a recording proxy, and the C test frontend replaying a boot-like trace of reads as a guest
 * would. A second serve on a fresh cache (another host) fetches the profile's chunks before the
 * guest asks; a host that cannot push keeps the profile itself and says so once.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fetchBootProfile, localProfilePath, pushBootProfile, type BootProfile } from '../src/cache/boot-profile.js';
import { planProfileRuns } from '../src/cache/fetch-ahead.js';
import { main } from '../src/cli/main.js';
import { openDiskArtifact, type DiskArtifact } from '../src/disk/artifact.js';
import { HOLE } from '../src/disk/format.js';
import { PROJECT_ROOT } from '../src/guest/build.js';
import { copyImage } from '../src/oci/copy.js';
import { Targets } from '../src/oci/open.js';
import { parseRef } from '../src/oci/ref.js';
import { startChaosProxy, type ChaosProxy } from './helpers/chaos-proxy.js';
import { captureIO } from './helpers/cli.js';
import { within } from './helpers/cache-checks.js';
import { processRunning } from '../src/util/process.js';
import { startFaultProxy } from './helpers/fault-proxy.js';
import { tempDir } from './helpers/images.js';
import { startRegistry, type TestRegistry } from './helpers/registry.js';

const FRONTEND = join(PROJECT_ROOT, 'vhost-user-blk', 'build', 'vub-frontend');
const CHUNK = 64 << 10;
const DISK_BYTES = 32 << 20;
const work = tempDir('slipway-serveprof-');
const trace = join(work, 'boot-reads.txt');
let registry: TestRegistry;
let proxy: ChaosProxy;
const targets = new Targets();
const children: ChildProcess[] = [];

/**
 * A 32 MiB disk with data in some places and holes between, and a boot-like trace of reads:
 * runs of a few sequential 4-16 KiB reads, jumps between them, some chunks read twice.
 */
function makeDiskAndTrace(): string {
  const file = join(work, 'disk.img');
  const image = Buffer.alloc(DISK_BYTES);
  for (const [from, to] of [[0, 6], [40, 90], [150, 220], [300, 380], [420, 500]] as const) randomBytes((to - from) * CHUNK).copy(image, from * CHUNK);
  writeFileSync(file, image);
  const reads: string[] = [];
  let seed = 7;
  const rand = (n: number): number => {
    seed = (seed * 1103515245 + 12345) % 2147483648;
    return seed % n;
  };
  for (const start of [0, 41, 160, 2, 305, 60, 430, 161, 200, 44, 470, 310]) {
    let at = start * CHUNK + rand(8) * 4096;
    for (let i = 0; i < 3 + rand(6); i++) {
      const len = 4096 * (1 + rand(4));
      reads.push(`${at} ${len}`);
      at += len + (rand(3) === 0 ? CHUNK : 0);
    }
  }
  writeFileSync(trace, `${reads.join('\n')}\n`);
  return file;
}

/** The chunks the trace reads, in first-read order. */
function traceChunks(disk: DiskArtifact): number[] {
  const order: number[] = [];
  for (const line of readFileSync(trace, 'utf8').trim().split('\n')) {
    const [off, len] = line.split(' ').map(Number) as [number, number];
    for (let n = Math.floor(off / CHUNK); n <= Math.floor((off + len - 1) / CHUNK); n++) if (!order.includes(n) && disk.index.map[n] !== HOLE) order.push(n);
  }
  return order;
}

interface Serve {
  child: ChildProcess;
  socket: string;
  /** JSON log lines so far */
  lines: Record<string, unknown>[];
  /** resolves with the first log line whose msg is `msg` */
  line(msg: string): Promise<Record<string, unknown>>;
  /** SIGTERM, then the exit code */
  stop(): Promise<number | null>;
}

/** `slipway serve` as a user's scheduler would start it, its JSON log parsed as it comes. */
async function serve(name: string, ref: string, cacheDir: string, extra: string[] = []): Promise<Serve> {
  const socket = join(work, `${name}.sock`);
  const child = spawn(process.execPath, [join(PROJECT_ROOT, 'bin', 'slipway.js'), 'serve', ref, '--socket', socket, '--cache-dir', cacheDir, ...extra], {
    // its work directory under this file's own: one a killed serve leaves goes with the file's
    stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, HOME: work, TMPDIR: work, DOCKER_CONFIG: join(work, 'no-docker'), XDG_CONFIG_HOME: join(work, 'no-config') },
  });
  children.push(child);
  const lines: Record<string, unknown>[] = [];
  let text = '';
  const watchers: { msg: string; resolve: (l: Record<string, unknown>) => void }[] = [];
  createInterface({ input: child.stderr as NodeJS.ReadableStream }).on('line', (line) => {
    let l: Record<string, unknown>;
    try {
      l = JSON.parse(line) as Record<string, unknown>;
    } catch {
      text = (text + line + '\n').slice(-4000);
      return;
    }
    lines.push(l);
    for (const w of watchers.filter((x) => x.msg === l.msg)) {
      watchers.splice(watchers.indexOf(w), 1);
      w.resolve(l);
    }
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const s: Serve = {
    child, socket, lines,
    line(msg) {
      const seen = lines.find((l) => l.msg === msg);
      return seen ? Promise.resolve(seen) : new Promise((resolve) => watchers.push({ msg, resolve }));
    },
    async stop() {
      child.kill('SIGTERM');
      return within(30_000, exited, `slipway serve ${name} exit`);
    },
  };
  await within(30_000, Promise.race([s.line('serving'), exited.then((code) => Promise.reject(new Error(`serve exited ${code}: ${JSON.stringify(lines)} ${text}`)))]), `slipway serve ${name}`);
  return s;
}

/** The C frontend replays the trace against the export, one read at a time, as a booting guest reads. */
async function replay(socket: string): Promise<void> {
  const child = spawn(FRONTEND, ['replay', socket, trace], { stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  child.stderr.on('data', (d: Buffer) => {
    err += d.toString();
  });
  const code = await new Promise<number | null>((resolve) => child.once('close', resolve));
  expect(code, err).toBe(0);
}

const blobGets = (p: ChaosProxy): number => p.requests.filter((r) => r.kind === 'blob' && r.method === 'GET' && r.range !== undefined).length;

beforeAll(async () => {
  registry = await startRegistry();
  proxy = await startChaosProxy({ target: registry.host });
  const file = makeDiskAndTrace();
  const io = captureIO();
  expect(await main(['push', file, `${registry.host}/serve/disk:v1`, '--chunk-size', '64K', '--progress=none'], io), io.err).toBe(0);
  expect(await main(['push', file, `${registry.host}/serve/ro:v1`, '--chunk-size', '64K', '--progress=none'], io), io.err).toBe(0);
  expect(existsSync(FRONTEND), 'make -C vhost-user-blk test-frontend').toBe(true);
}, 120_000);

afterAll(async () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  await targets.close();
  await proxy?.stop();
  await registry?.stop();
});

describe('slipway serve: boot profiles', () => {
  it('the first boot of a fresh disk stores its profile in the registry; a second host fetches its chunks before the guest asks', async () => {
    const ref = `${proxy.host}/serve/disk:v1`;
    const origin = await targets.open(parseRef(`${registry.host}/serve/disk:v1`));
    const artifact = await openDiskArtifact(origin, 'v1');
    expect(await fetchBootProfile(origin, artifact.manifestDescriptor.digest)).toBeUndefined();

    // host 1: an empty cache, no profile; the guest boots (the trace), then the export closes
    const first = await serve('first', ref, tempDir('slipway-serveprof-c1-'), ['--profile-quiet-ms', '600000']);
    const serving = await first.line('serving');
    expect(serving.recordingProfile).toBe(true);
    // what a VMM adds to attach the export, naming this socket
    expect(serving.connect).toEqual({
      qemu: expect.stringContaining(`-chardev socket,id=slipway0,path=${first.socket},reconnect=1 -device vhost-user-blk-pci,chardev=slipway0`) as unknown,
      cloudHypervisor: expect.stringContaining(`--disk vhost_user=true,socket=${first.socket},`) as unknown,
    });
    await replay(first.socket);
    expect(await first.stop()).toBe(0);
    const stored = first.lines.find((l) => l.msg === 'boot profile stored');
    expect(stored, JSON.stringify(first.lines)).toMatchObject({ where: 'registry' });
    // speculation fetched chunks around the misses, and the boot did read some of them
    const firstStats = first.lines.find((l) => l.msg === 'stopped') as { disk: { speculatedChunks: number; speculatedRead: number } };
    expect(firstStats.disk.speculatedChunks).toBeGreaterThan(0);
    expect(firstStats.disk.speculatedRead).toBeGreaterThan(0);
    expect(firstStats.disk.speculatedRead).toBeLessThan(firstStats.disk.speculatedChunks);

    // the profile is beside the disk: exactly the chunks the boot read (the speculated chunks it
    // never read are not in it), the first one first; a guess the boot read is listed where it was
    // guessed, which is no later than where it was read
    const profile = (await fetchBootProfile(origin, artifact.manifestDescriptor.digest)) as BootProfile;
    expect(profile.disk).toBe(artifact.manifestDescriptor.digest);
    const read = traceChunks(artifact);
    expect([...profile.chunks].sort((x, y) => x - y)).toEqual([...read].sort((x, y) => x - y));
    expect(profile.chunks[0]).toBe(read[0]);

    // host 2: a fresh cache; the profile's chunks come before the guest asks for anything
    proxy.clearLog();
    const second = await serve('second', ref, tempDir('slipway-serveprof-c2-'), ['--profile-quiet-ms', '600000']);
    expect((await second.line('serving')).profile).toMatchObject({ chunks: profile.chunks.length, from: 'registry' });
    const prefetched = await within(30_000, second.line('boot profile prefetched'), 'the profile prefetch');
    expect(prefetched.fetchedChunks).toBe(new Set(profile.chunks.map((n) => artifact.index.map[n])).size);
    // in as many requests as the profile's chunks make runs as a boot profile's are planned, and nothing else
    const runs = planProfileRuns(artifact.index, [...new Map(profile.chunks.map((n) => [artifact.index.map[n] as number, n])).entries()].map(([entry, chunk]) => ({ entry, chunk })));
    expect(blobGets(proxy)).toBe(runs.length);
    await replay(second.socket);
    // the boot found every chunk it read already local: no miss, no further request
    expect(blobGets(proxy)).toBe(runs.length);
    expect(await second.stop()).toBe(0);
    const secondStats = second.lines.find((l) => l.msg === 'stopped') as { misses: { requests: number } };
    expect(secondStats.misses.requests).toBe(0);
    // the profile covered the boot: nothing to refine, nothing stored again
    expect(second.lines.find((l) => l.msg === 'boot profile stored')).toBeUndefined();
  }, 120_000);

  it('a host that cannot push keeps the profile in its cache, says so once, and its later boots use it', async () => {
    // every upload refused, as with read-only credentials
    const refusing = await startFaultProxy({ target: registry.host, mode: '500', passBlobPuts: 0, failManifestPuts: true });
    try {
      const ref = `${refusing.host}/serve/ro:v1`;
      const cacheDir = tempDir('slipway-serveprof-ro-');
      const first = await serve('ro1', ref, cacheDir, ['--profile-quiet-ms', '600000']);
      await replay(first.socket);
      expect(await first.stop()).toBe(0);
      const warned = first.lines.filter((l) => l.msg === 'could not store the boot profile in the registry; keeping it on this host, where later boots of this disk use it');
      expect(warned, JSON.stringify(first.lines)).toHaveLength(1);
      expect(existsSync(warned[0]?.path as string)).toBe(true);
      const digest = warned[0]?.digest as string;
      expect(warned[0]?.path).toBe(localProfilePath(cacheDir, digest));

      const again = await serve('ro2', ref, cacheDir, ['--profile-quiet-ms', '600000']);
      expect((await again.line('serving')).profile).toMatchObject({ from: 'local' });
      await replay(again.socket);
      expect(await again.stop()).toBe(0);
      expect(again.lines.filter((l) => String(l.msg).startsWith('could not store'))).toEqual([]);
    } finally {
      await refusing.stop();
    }
  }, 120_000);

  it('a backend does not outlive its slipway serve, even one killed with SIGKILL', async () => {
    const s = await serve('orphan', `${registry.host}/serve/ro:v1`, tempDir('slipway-serveprof-o-'), ['--prefetch', 'none']);
    const pid = (await s.line('serving')).backendPid as number;
    expect(Number.isSafeInteger(pid) && processRunning(pid)).toBe(true);
    // `tail --pid` exits when that process has (it is no child of ours to wait for)
    const watch = spawn('tail', [`--pid=${pid}`, '-s', '0.05', '-f', '/dev/null'], { stdio: 'ignore' });
    const gone = new Promise<void>((resolve) => watch.once('exit', () => resolve()));
    s.child.kill('SIGKILL');
    await within(15_000, gone, 'the backend\'s exit after its owner was killed');
    expect(processRunning(pid)).toBe(false);
  }, 60_000);

  it('stores the profile once the guest has been quiet, while the export stays open', async () => {
    const ref = `${registry.host}/serve/disk:v1`;
    // a fresh tag of the same disk has the same digest and so the same profile, and `slipway copy`
    // takes the profile along: the disk alone, copied under another name
    await copyImage({ src: await targets.open(parseRef(ref)), srcReference: 'v1', dst: await targets.open(parseRef(`${registry.host}/serve/quiet:v1`)), dstTag: 'v1' });
    const s = await serve('quiet', `${registry.host}/serve/quiet:v1`, tempDir('slipway-serveprof-q-'), ['--profile-quiet-ms', '300']);
    await replay(s.socket);
    const stored = await within(30_000, s.line('boot profile stored'), 'the profile stored after the guest went quiet');
    expect(stored.where).toBe('registry');
    expect(s.child.exitCode).toBeNull();
    expect(await s.stop()).toBe(0);
  }, 120_000);

  it('a profile that lacks chunks the boot read is replaced by one with them; a profile that covers the boot is kept', async () => {
    const direct = `${registry.host}/serve/refine:v1`;
    const origin = await targets.open(parseRef(direct));
    await copyImage({ src: await targets.open(parseRef(`${registry.host}/serve/disk:v1`)), srcReference: 'v1', dst: origin, dstTag: 'v1' });
    const artifact = await openDiskArtifact(origin, 'v1');
    const read = traceChunks(artifact);
    // a worse profile: the first half of what the boot reads (a recording cut short)
    const half = read.slice(0, Math.floor(read.length / 2));
    await pushBootProfile(origin, artifact.manifestDescriptor, { formatVersion: 1, disk: artifact.manifestDescriptor.digest, chunkSizeBytes: CHUNK, chunks: half });

    const a = await serve('refine-a', direct, tempDir('slipway-serveprof-ra-'), ['--profile-quiet-ms', '600000']);
    expect((await a.line('serving')).profile).toMatchObject({ chunks: half.length, from: 'registry' });
    await within(30_000, a.line('boot profile prefetched'), 'the profile prefetch');
    await replay(a.socket);
    expect(await a.stop()).toBe(0);
    // the boot missed the chunks the profile lacks: the profile is stored again with them, the old
    // ones first and in their order
    expect(a.lines.find((l) => l.msg === 'boot profile stored'), JSON.stringify(a.lines)).toMatchObject({ where: 'registry' });
    const refined = (await fetchBootProfile(origin, artifact.manifestDescriptor.digest)) as BootProfile;
    expect(refined.chunks.slice(0, half.length)).toEqual(half);
    for (const n of read) expect(refined.chunks).toContain(n);

    // a boot the refined profile covers stores nothing
    const b = await serve('refine-b', direct, tempDir('slipway-serveprof-rb-'), ['--profile-quiet-ms', '600000']);
    await within(30_000, b.line('boot profile prefetched'), 'the profile prefetch');
    await replay(b.socket);
    expect(await b.stop()).toBe(0);
    expect(b.lines.find((l) => l.msg === 'boot profile stored')).toBeUndefined();
    expect((b.lines.find((l) => l.msg === 'stopped') as { misses: { requests: number } }).misses.requests).toBe(0);
  }, 120_000);
});
