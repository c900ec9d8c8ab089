/** The index codec: round trip, and every malformed field an untrusted registry could send is refused. */
import { describe, expect, it } from 'vitest';
import { createHash } from 'node:crypto';
import { decodeIndex, encodeIndex, FLAG_ZSTD, HOLE, MEDIA_TYPE_DISK_PACK, type ChunkIndex } from '../src/disk/format.js';
import { maxStoredChunkBytes } from '../src/disk/chunk-codec.js';

const digest = (s: string) => createHash('sha256').update(s).digest();

function sample(): ChunkIndex {
  return {
    sizeBytes: 3 * 65536 + 1024,
    chunkSizeBytes: 65536,
    chunkCount: 4,
    packs: [{ mediaType: MEDIA_TYPE_DISK_PACK, digest: `sha256:${'c'.repeat(64)}`, size: 70000 }],
    entries: [
      { digest: digest('a'), pack: 0, offset: 0, storedLength: 1000, flags: FLAG_ZSTD },
      { digest: digest('b'), pack: 0, offset: 1000, storedLength: 1024, flags: 0 },
    ],
    map: Uint32Array.from([0, HOLE, 0, 1]),
  };
}

const decode = (b: Buffer) => decodeIndex(b, maxStoredChunkBytes);

describe('chunk index codec', () => {
  it('round-trips', () => {
    const idx = sample();
    const back = decode(encodeIndex(idx));
    expect(back.sizeBytes).toBe(idx.sizeBytes);
    expect([...back.map]).toEqual([...idx.map]);
    expect(back.entries.map((e) => e.digest.toString('hex'))).toEqual(idx.entries.map((e) => e.digest.toString('hex')));
    expect(back.packs).toEqual(idx.packs);
  });

  const cases: [string, (b: Buffer) => Buffer][] = [
    ['bad magic', (b) => { b[0] = 0x41; return b; }],
    ['truncated', (b) => b.subarray(0, b.length - 1)],
    ['trailing bytes', (b) => Buffer.concat([b, Buffer.alloc(4)])],
    ['chunk count that does not fit the size', (b) => { b.writeUInt32LE(5, 24); return b; }],
    ['disk size not whole sectors', (b) => { b.writeBigUInt64LE(BigInt(3 * 65536 + 1000), 16); return b; }],
    ['chunk size out of range', (b) => { b.writeUInt32LE(40, 12); return b; }],
    ['entry naming a pack that does not exist', (b) => { b.writeUInt32LE(7, 48 + 40 + 32); return b; }],
    ['entry running past its pack', (b) => { b.writeUInt32LE(69500, 48 + 40 + 36); return b; }],
    ['zero stored length', (b) => { b.writeUInt32LE(0, 48 + 40 + 40); return b; }],
    ['unknown flags', (b) => { b.writeUInt32LE(6, 48 + 40 + 44); return b; }],
    ['raw entry whose length differs from its chunk', (b) => { b.writeUInt32LE(0, 48 + 40 + 48 + 44); b.writeUInt32LE(900, 48 + 40 + 40); b.writeUInt32LE(0, 48 + 40 + 44); return b; }],
    ['map slot naming a missing entry', (b) => { b.writeUInt32LE(9, b.length - 4); return b; }],
    ['unknown version', (b) => { b.writeUInt32LE(2, 8); return b; }],
  ];
  it.each(cases)('refuses %s', (_name, mutate) => {
    expect(() => decode(mutate(encodeIndex(sample())))).toThrowError(expect.objectContaining({ code: expect.stringMatching(/CORRUPT_INDEX|UNSUPPORTED_FORMAT_VERSION|INVALID_ARGUMENT/) }) as Error);
  });
});
