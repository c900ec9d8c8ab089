/** Shared pieces of the benchmarks: timing, medians, the 1 GiB test image, a JSON+table report. */
import { execFileSync, execSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { constants, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { spawnDetached } from '../src/util/spawner.js';

export const BENCH_DIR = process.env.SLIPWAY_BENCH_DIR ?? '/var/tmp/slipway-bench';

/** The node flags the `slipway` executable runs with: those of bin/slipway.js's `#!/usr/bin/env -S node ...` line. */
export function slipwayNodeFlags(): string[] {
  const first = readFileSync(fileURLToPath(new URL('../bin/slipway.js', import.meta.url)), 'utf8').split('\n', 1)[0] ?? '';
  const flags = /^#!\/usr\/bin\/env -S node(.*)$/.exec(first)?.[1] ?? '';
  return flags.trim().split(/\s+/).filter((f) => f !== '');
}

/**
 * A benchmark that serves disks in its own process runs as the `slipway` executable does, under
 * its node flags (`slipwayNodeFlags`). Awaited first: when this process lacks them, runs the same
 * command again with them (passing SIGINT, SIGTERM and SIGHUP on to it) and exits with its status;
 * else resolves at once. bench/run.sh starts node with the flags, so that no first process waits
 * beside the benchmark: it has loaded the whole benchmark too, and V8 collects its heap while it
 * is idle, 50 ms of CPU or more in the middle of a timed replay (seen with `perf record -a`).
 */
export async function asSlipwayProcess(): Promise<void> {
  const flags = slipwayNodeFlags();
  const missing = flags.filter((f) => !process.execArgv.includes(f));
  if (missing.length === 0) return;
  console.error(`(running again under node ${missing.join(' ')}, the slipway executable's flags; \`node ${flags.join(' ')} --import tsx ${process.argv[1] ?? ''}\` or bench/run.sh runs without this waiting process)`);
  const again = spawn(process.execPath, [...missing, ...process.execArgv, ...process.argv.slice(1)], { stdio: 'inherit' });
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(signal, () => again.kill(signal));
  const status = await new Promise<number>((resolve) => {
    again.on('error', () => resolve(1));
    again.on('exit', (code, signal) => resolve(code ?? 128 + (signal ? (constants.signals[signal] ?? 0) : 1)));
  });
  process.exit(status);
}

export async function timed<T>(fn: () => Promise<T> | T): Promise<{ ms: number; value: T }> {
  const t0 = process.hrtime.bigint();
  const value = await fn();
  return { ms: Number(process.hrtime.bigint() - t0) / 1e6, value };
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? (s[mid] as number) : ((s[mid - 1] as number) + (s[mid] as number)) / 2;
}

export function dropCaches(): void {
  try {
    execSync('sync; echo 3 > /proc/sys/vm/drop_caches', { stdio: 'ignore' });
  } catch {
    // not root or not permitted: runs stay warm-cache, which the report says
  }
}

/**
 * A 1 GiB ext4 image about half full of real files copied from /usr (hard-linked into a staging
 * directory, so it costs no copy), built once and reused.
 */
export function halfFullImage(): string {
  mkdirSync(BENCH_DIR, { recursive: true });
  const img = join(BENCH_DIR, 'half-full-1g.img');
  if (existsSync(img)) return img;
  const stage = join(BENCH_DIR, 'stage');
  execSync(`rm -rf ${stage} && mkdir -p ${stage}`);
  const budget = 520 << 20;
  let used = 0;
  for (const dir of ['/usr/share', '/usr/bin', '/usr/include', '/usr/lib/x86_64-linux-gnu', '/usr/lib/python3', '/usr/lib/gcc']) {
    if (used >= budget || !existsSync(dir)) continue;
    const size = Number(execFileSync('du', ['-sb', dir], { encoding: 'utf8' }).split('\t')[0]);
    const dest = join(stage, dir.replaceAll('/', '_'));
    if (used + size <= budget) {
      execSync(`cp -a ${dir} ${dest}`);
      used += size;
    }
  }
  execFileSync('truncate', ['-s', '1G', img]);
  execFileSync('mkfs.ext4', ['-q', '-F', '-d', stage, img]);
  execSync(`rm -rf ${stage}`);
  return img;
}

export interface Row {
  name: string;
  [k: string]: string | number;
}

export function report(title: string, rows: Row[], outName: string): void {
  mkdirSync(join(process.cwd(), 'bench', 'out'), { recursive: true });
  writeFileSync(join(process.cwd(), 'bench', 'out', `${outName}.json`), JSON.stringify({ title, date: new Date().toISOString(), rows }, null, 2));
  console.log(`\n## ${title}\n`);
  const cols = [...new Set(rows.flatMap((r) => Object.keys(r)))];
  console.log(`| ${cols.join(' | ')} |`);
  console.log(`|${cols.map(() => '---').join('|')}|`);
  for (const r of rows) console.log(`| ${cols.map((c) => String(r[c] ?? '')).join(' | ')} |`);
}

/** Run the C test frontend (vhost-user-blk/test) and parse the JSON object it prints. */
export async function vubFrontend(binary: string, args: string[]): Promise<Record<string, number>> {
  // started through slipway-spawn, as the daemon starts a VMM: a fork of this process (which
  // serves the disk) would tax every page it writes during the replay (docs/vmm.md)
  const dir = mkdtempSync(join(tmpdir(), 'slipway-frontend-'));
  try {
    const out = join(dir, 'out');
    const err = join(dir, 'err');
    const child = await spawnDetached(binary, args, { stdout: { path: out }, stderr: { path: err } });
    const { code } = await child.exited;
    if (code !== 0) throw new Error(`${binary} ${args.join(' ')} exited ${code}: ${readFileSync(err, 'utf8').slice(-2000)}`);
    return JSON.parse(readFileSync(out, 'utf8').trim().split('\n').at(-1) as string) as Record<string, number>;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** The registry behind a delaying proxy in its own process (the network is not the daemon's CPU). */
export async function startDelayProxy(target: string, delayMs: number): Promise<{ host: string; stop(): Promise<void> }> {
  const child = spawn('node', [fileURLToPath(new URL('./delay-proxy.mjs', import.meta.url)), target, String(delayMs)], { stdio: ['ignore', 'pipe', 'inherit'] });
  const port = await new Promise<string>((resolve, reject) => {
    child.stdout?.once('data', (d: Buffer) => resolve(d.toString().trim()));
    child.once('exit', (code) => reject(new Error(`delay proxy exited (${code})`)));
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  return {
    host: `127.0.0.1:${port}`,
    stop: async () => {
      child.kill();
      await exited;
    },
  };
}
