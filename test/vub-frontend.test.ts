/**
 * slipway-blk driven by the C test frontend (vhost-user-blk/test): memfd guest memory, its own
 * virtqueues. Data checks against the raw image (the disk fetched lazily from an empty cache),
 * every malformed case, reconnect, and overlapping writes on two queues. The backend is the
 * AddressSanitizer + UndefinedBehaviorSanitizer build and must report nothing.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { createServer, type Socket } from 'node:net';
import { createInterface } from 'node:readline';
import { join } from 'node:path';
import { ChunkCache } from '../src/cache/chunk-cache.js';
import { loadConfig } from '../src/config.js';
import { main } from '../src/cli/main.js';
import { PROJECT_ROOT } from '../src/guest/build.js';
import { serveDisk, type ServedDisk } from '../src/serve/backend.js';
import { startMissServer } from '../src/serve/miss-server.js';
import { silentLogger } from '../src/util/log.js';
import { captureIO } from './helpers/cli.js';
import { makeExt4, tempDir } from './helpers/images.js';

const VUB = join(PROJECT_ROOT, 'vhost-user-blk');
const FRONTEND = join(VUB, 'build', 'vub-frontend');
const ASAN_BACKEND = join(VUB, 'build', 'asan', 'slipway-blk');
const ASAN_ENV = { ASAN_OPTIONS: 'detect_leaks=1:halt_on_error=1', UBSAN_OPTIONS: 'print_stacktrace=1:halt_on_error=1' };
const work = tempDir('slipway-vubfe-');
const image = join(work, 'disk.img');
const layoutRef = `oci:${join(work, 'layout')}:v1`;
const served: ServedDisk[] = [];
const caches: ChunkCache[] = [];

/** Run the frontend without blocking: the miss server answering the backend lives in this process. */
async function frontend(args: string[]): Promise<{ code: number; json: Record<string, unknown>; stderr: string }> {
  const child = spawn(FRONTEND, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => {
    stdout += d.toString();
  });
  child.stderr.on('data', (d: Buffer) => {
    stderr += d.toString();
  });
  const code = await new Promise<number>((resolve) => child.once('close', (c) => resolve(c ?? -1)));
  let json: Record<string, unknown> = {};
  try {
    json = JSON.parse(stdout.trim().split('\n').at(-1) ?? '{}') as Record<string, unknown>;
  } catch {
    json = { unparsed: stdout };
  }
  return { code, json, stderr };
}

async function newCache(): Promise<ChunkCache> {
  const cache = await ChunkCache.open({ config: loadConfig({}, { cacheDir: tempDir('slipway-vubfe-cache-') }), logger: silentLogger });
  caches.push(cache);
  return cache;
}

async function serve(name: string, opts: { readWrite: boolean; queues: number; cache?: ChunkCache; ref?: string }): Promise<ServedDisk> {
  const cache = opts.cache ?? (await newCache());
  const s = await serveDisk({ cache, ref: opts.ref ?? layoutRef, socket: join(work, `${name}.sock`), workDir: join(work, name), readWrite: opts.readWrite, queues: opts.queues, binary: ASAN_BACKEND, env: ASAN_ENV });
  served.push(s);
  return s;
}

/** An 8 MiB disk of random bytes (every chunk a file, no holes) pushed to its own layout. */
async function randomDisk(name: string): Promise<{ file: string; ref: string }> {
  const file = join(work, `${name}.img`);
  writeFileSync(file, randomBytes(8 << 20));
  const ref = `oci:${join(work, `layout-${name}`)}:v1`;
  const io = captureIO();
  expect(await main(['push', file, ref, '--chunk-size', '64K', '--progress=none'], io), io.err).toBe(0);
  return { file, ref };
}

/** slipway-blk (the sanitizer build) started directly: its process, its log, and its exit. */
/**
 * A random disk served read-only as NAME-warm and read through once (every chunk local), then
 * chunk 5's file moved aside (to `aside`): a backend started on `map` misses that chunk.
 */
async function diskMissingChunk5(name: string): Promise<{ file: string; cache: ChunkCache; warm: ServedDisk; map: string; chunkFile: string; aside: string }> {
  const { file, ref } = await randomDisk(name);
  const cache = await newCache();
  const warm = await serve(`${name}-warm`, { readWrite: false, queues: 1, cache, ref });
  expect((await frontend(['verify', warm.socket, file])).json.mismatches).toBe(0);
  const map = join(work, `${name}-warm`, 'disk.map');
  const digest = readFileSync(map).subarray(32 + 5 * 33 + 1, 32 + 6 * 33).toString('hex');
  const chunkFile = join(cache.chunkDir, digest.slice(0, 2), digest);
  const aside = join(work, `${name}-chunk5`);
  renameSync(chunkFile, aside);
  return { file, cache, warm, map, chunkFile, aside };
}

async function startBackend(args: string[]): Promise<{ child: ChildProcess; log: () => string; exited: Promise<number | null> }> {
  const child = spawn(ASAN_BACKEND, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...ASAN_ENV } });
  let log = '';
  child.stderr?.on('data', (d: Buffer) => {
    log += d.toString();
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  await new Promise<void>((resolve, reject) => {
    createInterface({ input: child.stdout as NodeJS.ReadableStream }).once('line', () => resolve());
    void exited.then((code) => reject(new Error(`slipway-blk exited at start (${code}): ${log}`)));
  });
  return { child, log: () => log, exited };
}

beforeAll(async () => {
  execFileSync('make', ['-s', '-C', VUB, 'all', 'asan', 'test-frontend'], { stdio: 'inherit' });
  makeExt4(image, 24, join(PROJECT_ROOT, 'node_modules', 'undici'));
  const io = captureIO();
  expect(await main(['push', image, layoutRef, '--chunk-size', '64K', '--progress=none'], io), io.err).toBe(0);
}, 300_000);

afterAll(async () => {
  for (const s of served) await s.close();
  for (const c of caches) await c.close();
  for (const s of served) expect(s.log()).not.toMatch(/ERROR: AddressSanitizer|runtime error:|ERROR: LeakSanitizer/);
});

describe('slipway-blk through the test frontend', () => {
  it('reads the whole disk right from an empty cache (several queues, indirect descriptors, two memory regions)', async () => {
    const s = await serve('verify', { readWrite: true, queues: 2 });
    const info = await frontend(['info', s.socket]);
    expect(info.code, info.stderr).toBe(0);
    expect(info.json.capacity).toBe(readFileSync(image).length / 512);
    for (const extra of [[], ['--queues', '2', '--indirect'], ['--regions', '2']]) {
      const r = await frontend(['verify', s.socket, image, ...extra]);
      expect(r.code, `${extra.join(' ')}: ${r.stderr}`).toBe(0);
      expect(r.json.mismatches).toBe(0);
    }
    expect(s.miss.stats.requests).toBeGreaterThan(0);
  });

  it('writes, flushes, discards and zeroes; reads back what was written; GET_ID answers the serial', async () => {
    const s = await serve('rw', { readWrite: true, queues: 1 });
    const data = randomBytes(64 << 10);
    const inFile = join(work, 'in.bin');
    const outFile = join(work, 'out.bin');
    writeFileSync(inFile, data);
    expect((await frontend(['write', s.socket, String(3 * 65536 + 4096), inFile])).json.status).toBe(0);
    expect((await frontend(['flush', s.socket])).json.status).toBe(0);
    expect((await frontend(['read', s.socket, String(3 * 65536 + 4096), String(data.length), outFile])).json.status).toBe(0);
    expect(readFileSync(outFile).equals(data)).toBe(true);
    expect((await frontend(['zeroes', s.socket, String(3 * 65536 + 4096), '8192'])).json.status).toBe(0);
    expect((await frontend(['discard', s.socket, String(5 * 65536), String(65536)])).json.status).toBe(0);
    expect((await frontend(['read', s.socket, String(3 * 65536 + 4096), String(data.length), outFile])).json.status).toBe(0);
    const back = readFileSync(outFile);
    expect(back.subarray(0, 8192).equals(Buffer.alloc(8192))).toBe(true);
    expect(back.subarray(8192).equals(data.subarray(8192))).toBe(true);
    expect((await frontend(['read', s.socket, String(5 * 65536), '65536', outFile])).json.status).toBe(0);
    expect(readFileSync(outFile).equals(Buffer.alloc(65536))).toBe(true);
    const id = await frontend(['getid', s.socket]);
    expect(id.code, id.stderr).toBe(0);
    expect(String(id.json.id)).toBe(s.disk.digest.slice(7, 27));
  });

  it('keeps written data across a frontend disconnect and reconnect', async () => {
    const s = await serve('reconnect', { readWrite: true, queues: 1 });
    const r = await frontend(['reconnect', s.socket]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.json.survived).toBe(true);
  });

  it('loses no write when overlapping writes race on two queues', async () => {
    const s = await serve('race', { readWrite: true, queues: 2 });
    const r = await frontend(['race', s.socket, '--chunk', '65536', '--iterations', '64']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.json.lost_writes).toBe(0);
    expect(r.json.bad_status).toBe(0);
  });

  it('a read-only disk fails writes with IOERR', async () => {
    const s = await serve('ro', { readWrite: false, queues: 1 });
    const inFile = join(work, 'ro.bin');
    writeFileSync(inFile, Buffer.alloc(4096, 1));
    expect((await frontend(['write', s.socket, '0', inFile])).json.status).toBe(1);
    expect((await frontend(['info', s.socket])).json.features).toBeDefined();
  });

  it('takes a request of exactly seg_max data segments however they lie (indirect table, ring, across two adjacent regions), refuses seg_max + 1', async () => {
    const s = await serve('segmax', { readWrite: true, queues: 1 });
    const segMax = Number((await frontend(['info', s.socket])).json.seg_max);
    expect(segMax).toBe(126);
    const outFile = join(work, 'segmax.bin');
    const want = readFileSync(image).subarray(0, segMax * 4096);
    // 126 4 KiB segments behind an indirect table (the header and status beside them), then in the ring itself
    for (const shape of [['--indirect'], ['--seg', '4096']]) {
      const r = await frontend(['read', s.socket, '0', String(segMax * 4096), outFile, ...shape]);
      expect(r.code, `${shape.join(' ')}: ${r.stderr}`).toBe(0);
      expect(readFileSync(outFile).equals(want), shape.join(' ')).toBe(true);
    }
    // each segment spans two regions (two pieces of host memory): still 126 segments
    const span = await frontend(['malformed', s.socket, 'segments-span-regions', '--regions', '2', '--adjacent']);
    expect(span.json.outcome, JSON.stringify(span.json)).toBe('ok');
    // seg_max + 1 in the ring, and behind an indirect table (a ring of 128 cannot hold them)
    for (const ring of ['256', '128']) {
      const r = await frontend(['malformed', s.socket, 'too-many-segments', '--ring', ring]);
      expect(r.json.outcome, JSON.stringify(r.json)).toBe('status-ioerr');
    }
  });

  it('refuses a chain that loops through its whole table back to its head, in the ring and behind an indirect table', async () => {
    const s = await serve('loops', { readWrite: true, queues: 1 });
    // a ring of 16: the loop is within seg_max, so only the loop bound can refuse it
    for (const c of ['loop-whole-table', 'indirect-loop-whole-table']) {
      const r = await frontend(['malformed', s.socket, c, '--ring', '16']);
      expect(r.json.alive, `${c}: ${JSON.stringify(r.json)} ${r.stderr}`).toBe(true);
      expect(['status-ioerr', 'no-status'], `${c}: ${JSON.stringify(r.json)}`).toContain(r.json.outcome);
    }
  });

  it('closes each SET_MEM_TABLE descriptor once when the new table no longer maps a started ring (and keeps serving)', async () => {
    const s = await serve('memtable', { readWrite: true, queues: 3 });
    const r = await frontend(['malformed', s.socket, 'mem-table-unmaps-ring', '--queues', '3', '--regions', '2']);
    expect(r.json.alive, `${JSON.stringify(r.json)} ${r.stderr}`).toBe(true);
    expect(['connection-closed', 'reply-nack']).toContain(r.json.outcome);
    expect(s.log()).not.toMatch(/stop eventfd: Bad file descriptor/);
    expect(s.running()).toBe(true);
  });

  it('never closes a chunk file another queue is reading: 8 queues verify the whole disk with room for one chunk file', async () => {
    // a disk of random bytes, every chunk local first (a backend on the same cache fetches them),
    // so that no queue needs a miss connection
    const { file: random, ref } = await randomDisk('fdlimit');
    const cache = await newCache();
    const warm = await serve('fdwarm', { readWrite: false, queues: 1, cache, ref });
    expect((await frontend(['verify', warm.socket, random])).json.mismatches).toBe(0);
    const s = await serve('fdlimit', { readWrite: true, queues: 8, cache, ref });
    // room for the connection, each queue's five descriptors (kick, call, err, stop, epoll set) and
    // one chunk file: every queue thread that opens one runs out while the others read theirs
    // (before the fix, the one that ran out closed them all under the readers: IOERR or wrong bytes)
    const limit = readdirSync(`/proc/${s.pid}/fd`).length + 1 + 8 * 5 + 1;
    execFileSync('prlimit', ['--pid', String(s.pid), `--nofile=${limit}:${limit}`]);
    for (let run = 0; run < 10; run++) {
      const r = await frontend(['verify', s.socket, random, '--queues', '8', '--qd', '8', '--timeout-ms', '20000']);
      expect(r.code, `run ${run}: ${JSON.stringify(r.json)} ${r.stderr}`).toBe(0);
      expect(r.json.mismatches).toBe(0);
      expect(r.json.bad_status).toBe(0);
    }
    expect(s.running()).toBe(true);
  });

  it('completes every request exactly once across a backend restart (SIGKILL with one read parked on a missing chunk)', async () => {
    // chunk 5 goes missing until the backend is restarted, and the daemon takes its FETCH and never answers
    const { file, cache, map, chunkFile, aside } = await diskMissingChunk5('restart');
    const missSocket = join(work, 'restart-miss.sock');
    const held: Socket[] = [];
    const silent = createServer((c) => held.push(c.on('data', () => undefined)));
    await new Promise<void>((resolve) => silent.listen(missSocket, resolve));
    const socket = join(work, 'restart.sock');
    const args = ['--socket', socket, '--map', map, '--chunk-dir', cache.chunkDir, '--daemon-socket', missSocket, '--overlay', join(work, 'restart-overlay')];
    const first = await startBackend(args);
    // the read of chunk 5 parks; two reads behind it complete first
    const fe = spawn(FRONTEND, ['restart', socket, file, String(5 * 65536), '--inflight'], { stdio: ['pipe', 'pipe', 'pipe'] });
    let stderr = '';
    fe.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
    const lines = createInterface({ input: fe.stdout });
    const outcome = new Promise<Record<string, unknown>>((resolve) => lines.on('line', (l) => {
      const j = JSON.parse(l) as Record<string, unknown>;
      if (j.phase === 'done') resolve(j);
    }));
    const parked = await new Promise<Record<string, unknown>>((resolve, reject) => {
      lines.once('line', (l) => resolve(JSON.parse(l) as Record<string, unknown>));
      fe.once('exit', () => reject(new Error(`vub-frontend restart ended early: ${stderr}`)));
    });
    first.child.kill('SIGKILL');
    await first.exited;
    renameSync(aside, chunkFile);
    const second = await startBackend(args);
    fe.stdin.end('restarted\n');
    const done = await outcome;
    const code = await new Promise<number | null>((resolve) => (fe.exitCode !== null ? resolve(fe.exitCode) : fe.once('exit', resolve)));
    second.child.kill('SIGTERM');
    await second.exited;
    for (const c of held) c.destroy();
    silent.close();
    // before in-flight tracking: the ring restarted at its used index, so a read that had completed
    // completed again ('not the head of a request in flight') and the parked one never did
    expect(done, `${JSON.stringify(done)} ${stderr}`).toMatchObject({ ok: true, parked_status: 0, parked_data_matches: true, next_read_ok: true });
    expect(parked).toEqual({ phase: 'parked', inflight: true });
    expect(code).toBe(0);
    expect(second.log()).toMatch(/1 requests were in flight/);
    expect(first.log() + second.log()).not.toMatch(/ERROR: AddressSanitizer|runtime error:|ERROR: LeakSanitizer/);
  });

  it('a miss while the daemon is away (a restart) waits for it: a write into part of a missing chunk completes once a daemon answers again, nothing lost', async () => {
    // chunk 5 is not local, and no daemon listens on the miss socket yet
    const { file, cache, warm, map, chunkFile, aside } = await diskMissingChunk5('away');
    const missSocket = join(work, 'away-miss.sock');
    const socket = join(work, 'away.sock');
    const backend = await startBackend(['--socket', socket, '--map', map, '--chunk-dir', cache.chunkDir, '--daemon-socket', missSocket, '--overlay', join(work, 'away-overlay')]);
    let miss: Awaited<ReturnType<typeof startMissServer>> | undefined;
    try {
      // 4 KiB into the middle of chunk 5: its old bytes are needed (copy-up), so the write waits
      const patch = randomBytes(4096);
      const patchFile = join(work, 'away-patch');
      writeFileSync(patchFile, patch);
      const at = 5 * 65536 + 8192;
      const write = frontend(['write', socket, String(at), patchFile]);
      for (let i = 0; i < 400 && !backend.log().includes('the daemon is away'); i++) await new Promise((r) => setTimeout(r, 25));
      expect(backend.log()).toContain('the daemon is away');
      // the daemon is back: the chunk can be had, and the backend asks again on its own
      renameSync(aside, chunkFile);
      miss = await startMissServer(missSocket, warm.disk, cache);
      const w = await write;
      expect(w.json, w.stderr).toMatchObject({ status: 0, bytes: 4096 });
      const out = join(work, 'away-read');
      const r = await frontend(['read', socket, String(5 * 65536), String(65536), out]);
      expect(r.json).toMatchObject({ status: 0 });
      const want = readFileSync(file).subarray(5 * 65536, 6 * 65536);
      patch.copy(want, 8192);
      expect(readFileSync(out).equals(want)).toBe(true);
      expect(backend.log()).toContain('the daemon answers again');
    } finally {
      await miss?.close();
      backend.child.kill('SIGTERM');
      await backend.exited;
    }
    expect(backend.log()).not.toMatch(/ERROR: AddressSanitizer|runtime error:|ERROR: LeakSanitizer/);
  });

  it('survives every malformed request and message, and keeps serving', async () => {
    const s = await serve('malformed', { readWrite: true, queues: 1 });
    const cases = ['desc-loop', 'desc-loop-empty', 'chain-too-long', 'index-out-of-range', 'avail-idx-jump', 'addr-outside-memory', 'addr-straddles-end',
      'indirect-bad-len', 'indirect-nested', 'too-many-segments', 'sector-out-of-range', 'len-not-512', 'header-short', 'status-not-writable',
      'msg-short', 'msg-oversize', 'msg-bad-fd-count', 'mem-table-fd-mismatch', 'queue-index-out-of-range', 'ring-size-not-pow2', 'mem-region-overflow', 'unknown-request'];
    expect(cases.length).toBeGreaterThanOrEqual(20);
    const messageLevel = new Set(['msg-short', 'msg-oversize', 'msg-bad-fd-count', 'mem-table-fd-mismatch', 'queue-index-out-of-range', 'ring-size-not-pow2', 'mem-region-overflow', 'unknown-request']);
    for (const c of cases) {
      const r = await frontend(['malformed', s.socket, c]);
      expect(r.json.alive, `${c}: ${JSON.stringify(r.json)} ${r.stderr}`).toBe(true);
      if (messageLevel.has(c)) expect(['connection-closed', 'reply-nack'], `${c}: ${JSON.stringify(r.json)}`).toContain(r.json.outcome);
      else expect(['status-ioerr', 'status-unsupp', 'no-status'], `${c}: ${JSON.stringify(r.json)}`).toContain(r.json.outcome);
    }
    expect(s.running()).toBe(true);
    const v = await frontend(['verify', s.socket, image]);
    expect(v.json.mismatches).toBe(0);
  });
});
