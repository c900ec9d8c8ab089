/**
 * The binary formats shared by the C programs and the TypeScript host, pinned by the golden files
 * in test/fixtures/ (README.md there says what each holds). Each format is checked on both sides
 * against the same bytes:
 * - the agent protocol: the host's encoders write the request frames and its decoders read the
 *   reply frames; on the guest side guest/test/wire.c (`make -C guest check`) parses and builds
 *   them with agent_proto.c, and the real agent (ASan build) answers each request with its reply;
 * - the miss protocol: the real miss server answers the FETCH with the replies; slipway-blk's side
 *   is vhost-user-blk/test/fixtures.c (`make -C vhost-user-blk/test fixtures`), which also checks
 * - the disk map (written by src/serve/disk-map.ts, read by slipway-blk) and the overlay's dirty
 *   bitmap (written by slipway-blk, read by src/disk/snapshot.ts).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { FrameDecoder, MessageType, agentError, encodeFrame, encodeString, encodeStringList, i32, u32, u64 } from '../src/guest/agent-protocol.js';
import { encodeDiskMap } from '../src/serve/disk-map.js';
import { startMissServer } from '../src/serve/miss-server.js';
import { readDirtyBitmap } from '../src/disk/snapshot.js';
import { HOLE, type ChunkIndex, type IndexEntry } from '../src/disk/format.js';
import type { DiskArtifact } from '../src/disk/artifact.js';
import type { LazyDisk } from '../src/cache/lazy-disk.js';
import { silentLogger } from '../src/util/log.js';
import { isSlipwayError } from '../src/errors.js';
import { tempDir } from './helpers/temp-dirs.js';

const ROOT = fileURLToPath(new URL('../', import.meta.url));
const FIXTURES = join(ROOT, 'test', 'fixtures');
const fixture = (name: string): Buffer => readFileSync(join(FIXTURES, name));
const work = tempDir('slipway-fixtures-');


/** The agent fixtures: each request as the host encodes it, and the reply the agent gives. */
const AGENT_EXCHANGES = [
  {
    request: 'agent-exec-request.bin',
    encode: () => encodeFrame(MessageType.EXEC, 0, 0x0a0b0c0d, Buffer.concat([encodeStringList(['/bin/sh', '-c', 'exit 3'], 'argv'), encodeStringList(['SLIPWAY_FIXTURE=1'], 'env'), encodeString('/', 'cwd')])),
    // STARTED (a pid, which differs every run) comes first
    reply: 'agent-exit-reply.bin',
    framesBefore: 1,
  },
  { request: 'agent-signal-request.bin', encode: () => encodeFrame(MessageType.SIGNAL, 0, 0x01020304, i32(15)), reply: 'agent-error-reply.bin', framesBefore: 0 },
  {
    request: 'agent-write-file-request.bin',
    encode: () => encodeFrame(MessageType.WRITE_FILE, 0, 0x105, Buffer.concat([encodeString('/dev/null', 'path'), u32(0o644), u64(4096), Buffer.from('golden\n')])),
    reply: 'agent-ok-reply.bin',
    framesBefore: 0,
  },
  {
    request: 'agent-read-file-request.bin',
    encode: () => encodeFrame(MessageType.READ_FILE, 0, 0x106, Buffer.concat([encodeString('/dev/null', 'path'), u64(0), u32(1_048_576)])),
    reply: 'agent-data-reply.bin',
    framesBefore: 0,
  },
] as const;

describe('the agent protocol (test/fixtures/agent-*.bin)', () => {
  it('the host encodes every request to the golden bytes', () => {
    for (const x of AGENT_EXCHANGES) expect(x.encode().equals(fixture(x.request)), x.request).toBe(true);
  });

  it('the host decodes every reply', () => {
    const decoder = new FrameDecoder();
    const frames = decoder.push(Buffer.concat(['agent-exit-reply.bin', 'agent-error-reply.bin', 'agent-ok-reply.bin', 'agent-data-reply.bin'].map(fixture)));
    expect(frames.map((f) => [f.type, f.flags, f.id, f.payload.length])).toEqual([
      [MessageType.EXIT, 0, 0x0a0b0c0d, 8], [MessageType.ERROR, 0, 0x01020304, 39], [MessageType.OK, 0, 0x105, 0], [MessageType.DATA, 0, 0x106, 0],
    ]);
    const [exit, error] = frames;
    if (!exit || !error) throw new Error('the replies did not decode');
    expect([exit.payload.readInt32LE(0), exit.payload.readInt32LE(4)]).toEqual([3, 0]);
    const err = agentError(error, 'SIGNAL');
    expect(isSlipwayError(err, 'AGENT_ERROR')).toBe(true);
    expect(err.context).toMatchObject({ errno: 3, errnoName: 'ESRCH' });
    expect(err.message).toBe('guest agent: SIGNAL: no process with id 16909060 (ESRCH)');
  });

  it('the guest parses every request and builds every reply to the golden bytes (guest/test/wire.c)', () => {
    const out = execFileSync('make', ['-s', '-C', join(ROOT, 'guest'), 'check'], { encoding: 'utf8', stdio: 'pipe' });
    expect(out).toMatch(/every agent fixture matches/);
  });

  describe('the real agent (ASan build) answers each golden request with its golden reply', () => {
    let agent: ChildProcess;
    let stderr = '';
    const sockPath = join(work, 'agent.sock');

    beforeAll(async () => {
      execFileSync('make', ['-s', '-C', join(ROOT, 'guest'), 'asan'], { stdio: 'pipe' });
      agent = spawn(join(ROOT, 'guest', 'build', 'asan', 'slipway-agent'), ['--no-vsock', '--no-serial', '--no-shutdown-signal', '--listen-unix', sockPath], {
        stdio: ['ignore', 'ignore', 'pipe'],
        env: { ...process.env, ASAN_OPTIONS: 'detect_leaks=1:halt_on_error=0' },
      });
      agent.stderr?.setEncoding('utf8');
      agent.stderr?.on('data', (d: string) => {
        stderr += d;
      });
      for (let i = 0; i < 200; i++) {
        const sock = await new Promise<Socket | undefined>((resolve) => {
          const s = connect(sockPath);
          s.once('connect', () => resolve(s));
          s.once('error', () => resolve(undefined));
        });
        if (sock) {
          sock.destroy();
          return;
        }
        await new Promise((r) => setTimeout(r, 50));
      }
      throw new Error(`the agent did not listen on ${sockPath}: ${stderr}`);
    });

    afterAll(async () => {
      if (agent && agent.exitCode === null) {
        agent.kill('SIGTERM');
        await once(agent, 'exit');
      }
      expect(stderr).not.toMatch(/ERROR: (AddressSanitizer|LeakSanitizer)|runtime error/);
    });

    /** Send `request` on a new connection and return the raw frames that come back, `count` of them. */
    async function exchange(request: Buffer, count: number): Promise<Buffer[]> {
      const sock = connect(sockPath);
      await once(sock, 'connect');
      let buffered = Buffer.alloc(0);
      const frames: Buffer[] = [];
      const done = new Promise<Buffer[]>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no ${count} frames in 10 s; got ${frames.length}`)), 10_000);
        sock.on('data', (d: Buffer) => {
          buffered = Buffer.concat([buffered, d]);
          while (buffered.length >= 12 && buffered.length >= 12 + buffered.readUInt32LE(0)) {
            const len = 12 + buffered.readUInt32LE(0);
            frames.push(buffered.subarray(0, len));
            buffered = buffered.subarray(len);
          }
          if (frames.length >= count) {
            clearTimeout(timer);
            resolve(frames);
          }
        });
        sock.on('error', reject);
      });
      sock.write(request);
      try {
        return await done;
      } finally {
        sock.destroy();
      }
    }

    for (const x of AGENT_EXCHANGES) {
      it(`${x.request} -> ${x.reply}`, async () => {
        const frames = await exchange(fixture(x.request), x.framesBefore + 1);
        if (x.framesBefore === 1) {
          const started = frames[0];
          expect(started?.readUInt16LE(4)).toBe(MessageType.STARTED);
          expect(started?.readUInt32LE(0)).toBe(4);
        }
        expect(frames[x.framesBefore]?.toString('hex')).toBe(fixture(x.reply).toString('hex'));
      });
    }
  });
});

describe('the miss protocol (test/fixtures/miss-*.bin)', () => {
  const CHUNK = 0x1_0000_0203;

  it('the daemon answers the golden FETCH with the golden replies (src/serve/miss-server.ts)', async () => {
    // the miss server reads only the disk's index, readChunk and reference: a stand-in for one
    // chunk far into a large disk, so that both words of the 64-bit chunk number are used
    const map = new Proxy(new Uint32Array(0), { get: (target, key) => (key === String(CHUNK) ? 0 : Reflect.get(target, key)) });
    const index = { sizeBytes: 2 ** 40, chunkSizeBytes: 65536, chunkCount: 2 ** 33, packs: [], map, entries: [{ digest: Buffer.alloc(32, 7), pack: 0, offset: 0, storedLength: 1, flags: 0 }] } as ChunkIndex;
    const disk = { reference: 'fixture', artifact: { index } as DiskArtifact, readChunk: async () => Buffer.alloc(16) } as Pick<LazyDisk, 'reference' | 'artifact' | 'readChunk'> as LazyDisk;
    const puts = [true, false]; // the first put fits tier 1, the second finds it full: ENOSPC
    const sockPath = join(work, 'miss.sock');
    const server = await startMissServer(sockPath, disk, { logger: silentLogger, has: () => false, putChunk: async () => puts.shift() ?? false, chunkPath: (hex) => join(work, 'no-chunks', hex) });
    try {
      const sock = connect(sockPath);
      await once(sock, 'connect');
      const replies: Buffer[] = [];
      let buffered = Buffer.alloc(0);
      const got = (n: number): Promise<void> => new Promise((resolve) => {
        const check = (): void => {
          while (buffered.length >= 16) {
            replies.push(buffered.subarray(0, 16));
            buffered = buffered.subarray(16);
          }
          if (replies.length >= n) {
            sock.off('data', onData);
            resolve();
          }
        };
        const onData = (d: Buffer): void => {
          buffered = Buffer.concat([buffered, d]);
          check();
        };
        sock.on('data', onData);
        check();
      });
      sock.write(fixture('miss-fetch-request.bin'));
      await got(1);
      sock.write(fixture('miss-fetch-request.bin'));
      await got(2);
      sock.destroy();
      expect(replies.map((r) => r.toString('hex'))).toEqual([fixture('miss-reply-ok.bin').toString('hex'), fixture('miss-reply-enospc.bin').toString('hex')]);
      expect(server.stats.requests).toBe(2);
    } finally {
      await server.close();
    }
  });

  it('no bytes back is OK only while the file is there: one removed since (tier 1 had no room for its row) is written again, or ENOSPC', async () => {
    const map = new Proxy(new Uint32Array(0), { get: (target, key) => (key === String(CHUNK) ? 0 : Reflect.get(target, key)) });
    const index = { sizeBytes: 2 ** 40, chunkSizeBytes: 65536, chunkCount: 2 ** 33, packs: [], map, entries: [{ digest: Buffer.alloc(32, 7), pack: 0, offset: 0, storedLength: 1, flags: 0 }] } as ChunkIndex;
    // a file-only read gets no bytes (its file was put in place), a read for bytes gets them
    const disk = { reference: 'fixture', artifact: { index } as DiskArtifact, readChunk: async (_n: number, _p?: unknown, fileOnly?: boolean) => (fileOnly ? Buffer.alloc(0) : Buffer.alloc(16)) } as Pick<LazyDisk, 'reference' | 'artifact' | 'readChunk'> as LazyDisk;
    const file = join(work, 'chunk-file');
    const puts: Buffer[] = [];
    const sockPath = join(work, 'miss-empty.sock');
    const server = await startMissServer(sockPath, disk, { logger: silentLogger, has: () => false, putChunk: async (_hex, data) => (puts.push(data), false), chunkPath: () => file });
    try {
      const sock = connect(sockPath);
      await once(sock, 'connect');
      const reply = async (): Promise<string> => {
        sock.write(fixture('miss-fetch-request.bin'));
        const [d] = (await once(sock, 'data')) as [Buffer];
        return d.toString('hex');
      };
      writeFileSync(file, 'a chunk');
      expect(await reply()).toBe(fixture('miss-reply-ok.bin').toString('hex'));
      expect(puts).toEqual([]);
      rmSync(file);
      expect(await reply()).toBe(fixture('miss-reply-enospc.bin').toString('hex'));
      expect(puts.map((b) => b.length)).toEqual([16]);
      sock.destroy();
    } finally {
      await server.close();
    }
  });

  it('slipway-blk encodes the FETCH and decodes the replies; reads the disk map and writes and reads the dirty bitmap (vhost-user-blk/test/fixtures.c)', () => {
    const out = execFileSync('make', ['-s', '-C', join(ROOT, 'vhost-user-blk', 'test'), 'fixtures'], { encoding: 'utf8', stdio: 'pipe' });
    expect(out).toMatch(/every slipway-blk fixture matches/);
  });
});

describe('the disk map and the overlay (test/fixtures/disk-map.bin, overlay-dirty.bin)', () => {
  // 11 chunks of 64 KiB, the last one 4 KiB; chunks 1 and 10 hold one chunk, 4 another, the rest are holes
  const geometry = { sizeBytes: 10 * 65536 + 4096, chunkSizeBytes: 65536, chunkCount: 11 };

  it('the host writes the golden disk map (src/serve/disk-map.ts)', () => {
    const entry = (digest: Buffer): IndexEntry => ({ digest, pack: 0, offset: 0, storedLength: 1, flags: 0 });
    const map = new Uint32Array(geometry.chunkCount).fill(HOLE);
    map[1] = 0;
    map[4] = 1;
    map[10] = 0;
    const digest = (from: number): Buffer => Buffer.from(Array.from({ length: 32 }, (_, i) => from + i));
    const index = { ...geometry, packs: [], entries: [entry(digest(0)), entry(digest(0xa0))], map } as ChunkIndex;
    expect(encodeDiskMap({ index } as DiskArtifact).toString('hex')).toBe(fixture('disk-map.bin').toString('hex'));
  });

  it('the host reads the golden dirty bitmap as chunks 0, 3 and 10 (src/disk/snapshot.ts)', async () => {
    const dirty = await readDirtyBitmap(join(FIXTURES, 'overlay-dirty.bin'), geometry);
    expect(dirty).toEqual({ ...geometry, chunks: [0, 3, 10] });
  });
});
