/**
 * slipway push and pull of a 1 GiB ext4 image about half full of real files, against uploading
 * and downloading the same file as one raw blob with curl (sha256 included), same registry, one run.
 */
import { execFileSync } from 'node:child_process';
import { rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { startRegistry } from '../test/helpers/registry.js';
import { BENCH_DIR, dropCaches, halfFullImage, median, report, timed } from './lib.js';

const RUNS = Number(process.env.SLIPWAY_BENCH_RUNS ?? 3);
const slipway = (args: string[]) => execFileSync('node', [join(process.cwd(), 'bin', 'slipway.js'), ...args, '--progress=none'], { encoding: 'utf8' });

async function main(): Promise<void> {
  const img = halfFullImage();
  const sizeBytes = statSync(img).size;
  const registry = await startRegistry();
  const base = `http://${registry.host}`;
  const out = join(BENCH_DIR, 'out.img');
  const t = { rawUp: [] as number[], rawDown: [] as number[], push: [] as number[], pull: [] as number[] };
  let storedBytes = 0;
  let uploadedBytes = 0;
  try {
    for (let run = 0; run < RUNS; run++) {
      // raw: hash, then one monolithic upload of the whole file
      dropCaches();
      t.rawUp.push((await timed(() => {
        const digest = `sha256:${execFileSync('sha256sum', [img], { encoding: 'utf8' }).split(' ')[0]}`;
        const loc = execFileSync('curl', ['-sS', '-D', '-', '-o', '/dev/null', '-X', 'POST', `${base}/v2/raw/r${run}/blobs/uploads/`], { encoding: 'utf8' })
          .split('\r\n').find((l) => l.toLowerCase().startsWith('location:'))?.slice(9).trim() ?? '';
        const url = new URL(loc, base);
        url.searchParams.set('digest', digest);
        execFileSync('curl', ['-sS', '-f', '-X', 'PUT', '-H', 'content-type: application/octet-stream', '-T', img, url.toString()]);
        return digest;
      })).ms);
      dropCaches();
      t.rawDown.push((await timed(() => {
        const digest = `sha256:${execFileSync('sha256sum', [img], { encoding: 'utf8' }).split(' ')[0]}`;
        rmSync(out, { force: true });
        execFileSync('curl', ['-sS', '-f', '-o', out, `${base}/v2/raw/r${run}/blobs/${digest}`]);
        execFileSync('sha256sum', [out]);
      })).ms);
      dropCaches();
      const pushed = await timed(() => JSON.parse(slipway(['push', img, `${registry.host}/bench/disk${run}:v1`])) as { storedBytes: number; uploadedBytes: number });
      t.push.push(pushed.ms);
      storedBytes = pushed.value.storedBytes;
      uploadedBytes = pushed.value.uploadedBytes;
      dropCaches();
      rmSync(out, { force: true });
      t.pull.push((await timed(() => slipway(['pull', `${registry.host}/bench/disk${run}:v1`, out]))).ms);
    }
    const cmp = execFileSync('cmp', [img, out]).toString();
    if (cmp !== '') throw new Error('pulled image differs');
  } finally {
    await registry.stop();
    rmSync(out, { force: true });
  }
  const m = { rawUp: median(t.rawUp), rawDown: median(t.rawDown), push: median(t.push), pull: median(t.pull) };
  report(`push/pull of a ${sizeBytes >> 20} MiB half-full ext4 image, medians of ${RUNS} (local docker-registry)`, [
    { name: 'raw upload (sha256sum + curl PUT)', ms: Math.round(m.rawUp), bytesSent: sizeBytes },
    { name: 'slipway push', ms: Math.round(m.push), bytesSent: uploadedBytes, ratio: (m.push / m.rawUp).toFixed(2), target: '<= 0.5' },
    { name: 'raw download (curl GET + sha256sum)', ms: Math.round(m.rawDown), bytesSent: sizeBytes },
    { name: 'slipway pull', ms: Math.round(m.pull), bytesSent: storedBytes, ratio: (m.pull / m.rawDown).toFixed(2), target: '<= 1.2' },
    { name: 'stored bytes', ms: '', bytesSent: storedBytes, ratio: (storedBytes / sizeBytes).toFixed(3), target: 'of image size' },
  ], 'push-pull');
}

await main();
