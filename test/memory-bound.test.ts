/**
 * Push and pull stream: peak memory of the CLI stays far below the image size. The image holds
 * 640 MiB of incompressible data, so any code path that held it whole would show in the peak RSS.
 */
import { describe, expect, it } from 'vitest';
import { execFileSync, spawnSync } from 'node:child_process';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir } from './helpers/images.js';

const MiB = 1 << 20;

function peakRssMiB(args: string[]): number {
  // GNU time is not always installed; /proc/self/status VmHWM of the child is read by a wrapper instead
  const script = `
    const { spawn } = require('node:child_process');
    const child = spawn(process.execPath, ${JSON.stringify([join(process.cwd(), 'bin', 'slipway.js')])}.concat(${JSON.stringify(args)}), { stdio: ['ignore', 'ignore', 'inherit'] });
    let peak = 0;
    const fs = require('node:fs');
    const t = setInterval(() => {
      try { const m = /VmHWM:\\s+(\\d+)/.exec(fs.readFileSync('/proc/' + child.pid + '/status', 'utf8')); if (m) peak = Math.max(peak, Number(m[1])); } catch {}
    }, 20);
    child.on('exit', (code) => { clearInterval(t); console.log(JSON.stringify({ code, peakKiB: peak })); });
  `;
  const res = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8' });
  const { code, peakKiB } = JSON.parse(res.stdout.trim()) as { code: number; peakKiB: number };
  expect(code, res.stderr).toBe(0);
  return peakKiB / 1024;
}

describe('bounded memory', () => {
  it('push and pull of an image with 640 MiB of incompressible data peak well under its size', () => {
    const dir = tempDir();
    const img = join(dir, 'big.img');
    try {
      execFileSync('sh', ['-c', `head -c ${640 * MiB} /dev/urandom > ${img} && truncate -s 1G ${img}`]);
      const pushPeak = peakRssMiB(['push', img, `oci:${join(dir, 'layout')}:v1`, '--progress=none']);
      const pullPeak = peakRssMiB(['pull', `oci:${join(dir, 'layout')}:v1`, join(dir, 'out.img'), '--progress=none']);
      expect(pushPeak).toBeLessThan(320);
      expect(pullPeak).toBeLessThan(320);
      execFileSync('cmp', [img, join(dir, 'out.img')]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
