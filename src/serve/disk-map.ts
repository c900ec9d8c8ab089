/**
 * The disk map slipway-blk reads (docs/vhost-user-blk.md): per chunk, whether it is a hole and
 * the sha256 that names its file in the cache's tier 1.
 */
import type { DiskArtifact } from '../disk/artifact.js';
import { HOLE, type IndexEntry } from '../disk/format.js';
import { writeFileAtomic } from '../util/atomic-file.js';

const HEADER_BYTES = 32;
const ENTRY_BYTES = 33;

export function encodeDiskMap(disk: DiskArtifact): Buffer {
  const { index } = disk;
  const buf = Buffer.alloc(HEADER_BYTES + index.chunkCount * ENTRY_BYTES);
  buf.write('SLWYMAP1', 0, 'ascii');
  buf.writeUInt32LE(1, 8);
  buf.writeUInt32LE(Math.log2(index.chunkSizeBytes), 12);
  buf.writeBigUInt64LE(BigInt(index.sizeBytes), 16);
  buf.writeBigUInt64LE(BigInt(index.chunkCount), 24);
  for (let n = 0; n < index.chunkCount; n++) {
    const e = index.map[n] as number;
    if (e === HOLE) continue;
    const at = HEADER_BYTES + n * ENTRY_BYTES;
    buf[at] = 1;
    (index.entries[e] as IndexEntry).digest.copy(buf, at + 1);
  }
  return buf;
}

export async function writeDiskMap(disk: DiskArtifact, path: string): Promise<void> {
  await writeFileAtomic(path, encodeDiskMap(disk));
}
