/**
 * `slipway run <ref>` end to end under QEMU: the disk comes from the local registry through the
 * cache and slipway-blk, with an empty cache each time unless said otherwise.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { createServer, type Server } from 'node:http';
import { readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { main } from '../src/cli/main.js';
import { captureIO } from './helpers/cli.js';
import { busyboxGuest } from './helpers/guest-root.js';
import { startRegistry, type TestRegistry } from './helpers/registry.js';
import { tempDir } from './helpers/images.js';
import { runCli } from './helpers/run-cli.js';
import { AgentClient, waitForAgent } from '../src/guest/agent-client.js';
import { processesWithArgument } from '../src/util/process.js';

const work = tempDir('slipway-runtest-');
let registry: TestRegistry;
let ref: string;
let osRelease: string;

/** Runs in this file put their work directories here (TMPDIR), so other test files running at the same time cannot disturb the leftovers check. */
const runTmp = tempDir('slipway-runtmp-');

function slipwayTempDirs(): string[] {
  return readdirSync(runTmp).filter((n) => n.startsWith('slipway-run-') || n.startsWith('slipway-vm-'));
}

async function run(args: string[], env: Record<string, string> = {}): Promise<{ code: number; out: string; err: string }> {
  const r = await runCli(['run', ...args], { SLIPWAY_CACHE_DIR: tempDir('slipway-runcache-'), TMPDIR: runTmp, ...env });
  return { code: r.code, out: r.stdout, err: r.stderr };
}

beforeAll(async () => {
  const disk = await busyboxGuest(work);
  osRelease = 'NAME="slipway busybox"\nID=slipway-busybox\nPRETTY_NAME="slipway busybox root"\nVERSION_ID=1\n';
  registry = await startRegistry();
  ref = `${registry.host}/run/root:v1`;
  expect(await main(['push', disk, ref, '--progress=none'], captureIO())).toBe(0);
  const broken = join(work, 'broken.img');
  writeFileSync(broken, Buffer.alloc(8 << 20, 0x5a));
  expect(await main(['push', broken, `${registry.host}/run/broken:v1`, '--progress=none'], captureIO())).toBe(0);
}, 1_800_000);
afterAll(async () => registry?.stop());

describe('slipway run <ref>', () => {
  it('from the local registry with an empty cache, prints the disk\'s /etc/os-release and exits 0, with timings', async () => {
    const before = slipwayTempDirs();
    const r = await run([ref, '--timings', '--', 'cat', '/etc/os-release']);
    expect(r.code, r.err).toBe(0);
    expect(r.out).toBe(osRelease);
    const timings = JSON.parse(r.err.trim().split('\n').at(-1) as string) as { hostMs: Record<string, number>; chunks: { remote: { chunks: number } } };
    for (const phase of ['resolve_and_backend', 'vmm_started', 'agent_ready', 'exec', 'teardown']) expect(timings.hostMs[phase]).toBeGreaterThanOrEqual(0);
    expect(timings.chunks.remote.chunks).toBeGreaterThan(0);
    expect(slipwayTempDirs()).toEqual(before);
  });

  it('passes the command\'s exit status through', async () => {
    const r = await run([ref, '--', 'sh', '-c', 'exit 42']);
    expect(r.code).toBe(42);
  });

  it('exits 127 for a command the guest does not have, naming it, as a shell does', async () => {
    const r = await run([ref, '--', 'no-such-command', '--flag']);
    expect(r.code, r.err).toBe(127);
    expect(r.err).toMatch(/error COMMAND_NOT_FOUND: command not found in the guest \(.*\): .*execve no-such-command: .*\(ENOENT\)/);
  });

  it('with --net user the guest fetches a page from an HTTP server on the host\'s loopback', async () => {
    const server: Server = createServer((_req, res) => res.end('hello from the host\n'));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const port = (server.address() as { port: number }).port;
    try {
      const r = await run([ref, '--net', 'user', '--', 'wget', '-qO-', `http://10.0.2.2:${port}/`]);
      expect(r.code, r.err).toBe(0);
      expect(r.out).toBe('hello from the host\n');
    } finally {
      server.close();
    }
  });

  it('four concurrent runs of one image all succeed', async () => {
    const results = await Promise.all([0, 1, 2, 3].map((i) => run([ref, '--hostname', `vm${i}`, '--', 'sh', '-c', 'hostname; md5sum /bin/busybox'])));
    const md5s = new Set<string>();
    results.forEach((r, i) => {
      expect(r.code, r.err).toBe(0);
      const [host, sum] = r.out.split('\n');
      expect(host).toBe(`vm${i}`);
      md5s.add((sum ?? '').split(' ')[0] ?? '');
    });
    expect(md5s.size).toBe(1);
  });

  it('a tag that does not exist: TAG_UNKNOWN naming the tags the repository has, before any VM starts', async () => {
    const before = slipwayTempDirs();
    const r = await run([`${registry.host}/run/root:nope`, '--', 'true']);
    expect(r.code).not.toBe(0);
    expect(r.err).toMatch(/error TAG_UNKNOWN: tag nope does not exist in \S*run\/root\b.*; its tags: v1\n/);
    expect(slipwayTempDirs()).toEqual(before);
  });

  it('a VM that fails to boot reports why and leaves nothing behind', async () => {
    const before = slipwayTempDirs();
    const r = await run([`${registry.host}/run/broken:v1`, '--', 'true']);
    expect(r.code).toBe(1);
    expect(r.err).toContain('GUEST_POWERED_OFF');
    expect(r.err).toContain('cannot mount root disk /dev/vda');
    expect(slipwayTempDirs()).toEqual(before);
  });

  it('SIGINT during a run stops the VM and removes everything', async () => {
    const before = slipwayTempDirs();
    const child = spawn(process.execPath, ['bin/slipway.js', 'run', ref, '--', 'sh', '-c', 'echo started; sleep 60'], {
      env: { ...process.env, SLIPWAY_CACHE_DIR: tempDir('slipway-runcache-'), TMPDIR: runTmp }, stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    child.stderr.on('data', (d: Buffer) => {
      err += d.toString();
    });
    await new Promise<void>((resolve, reject) => {
      child.stdout.on('data', (d: Buffer) => {
        out += d.toString();
        if (out.includes('started')) resolve();
      });
      child.once('exit', () => reject(new Error(`run exited early: ${err}`)));
    });
    const t0 = Date.now();
    child.kill('SIGINT');
    const code = await new Promise<number | null>((resolve) => child.once('exit', (c) => resolve(c)));
    expect(code, err).toBe(130);
    expect(Date.now() - t0).toBeLessThan(15_000);
    expect(slipwayTempDirs()).toEqual(before);
  });
});

describe('slipway run --keep', () => {
  /** run --keep in a child process; resolves once it says the VM is kept, with the agent socket it named */
  async function keepRun(argv: string[]): Promise<{ child: ReturnType<typeof spawn>; socket: string; out: () => string; err: () => string; exit: Promise<number | null> }> {
    const child = spawn(process.execPath, ['bin/slipway.js', 'run', ref, '--keep', '--', ...argv], {
      env: { ...process.env, SLIPWAY_CACHE_DIR: tempDir('slipway-runcache-'), TMPDIR: runTmp, SLIPWAY_AGENT_TRANSPORT: 'virtio-serial' }, stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    child.stdout?.on('data', (d: Buffer) => (out += d.toString()));
    const exit = new Promise<number | null>((resolve) => child.once('exit', (c) => resolve(c)));
    const socket = await new Promise<string>((resolve, reject) => {
      child.stderr?.on('data', (d: Buffer) => {
        err += d.toString();
        const m = /VM kept running: .*agent socket (\S+);/.exec(err);
        if (m?.[1]) resolve(m[1]);
      });
      void exit.then((c) => reject(new Error(`run --keep exited (${c}) before keeping the VM: ${err}`)));
    });
    return { child, socket, out: () => out, err: () => err, exit };
  }

  it('returns when the kept VM powers off, with the command\'s status, and removes everything', async () => {
    const before = slipwayTempDirs();
    const k = await keepRun(['sh', '-c', 'echo kept; exit 3']);
    try {
      // the VM still runs and answers on the socket run printed
      const client = await waitForAgent(() => AgentClient.connectUnix(k.socket, { timeoutMs: 2000 }), 30_000);
      expect((await client.exec(['cat', '/etc/os-release'])).stdout.toString()).toBe(osRelease);
      await client.shutdown(false);
      await client.close();
      expect(await k.exit, k.err()).toBe(3);
      expect(k.out()).toBe('kept\n');
      expect(k.err()).toContain('kept VM powered off');
      expect(slipwayTempDirs()).toEqual(before);
      expect(processesWithArgument(runTmp)).toEqual([]);
    } finally {
      k.child.kill('SIGKILL');
    }
  });

  it('SIGTERM stops a kept VM and removes everything (exit 130)', async () => {
    const before = slipwayTempDirs();
    const k = await keepRun(['true']);
    try {
      k.child.kill('SIGTERM');
      expect(await k.exit, k.err()).toBe(130);
      expect(k.err()).toContain('kept VM stopped');
      expect(slipwayTempDirs()).toEqual(before);
      expect(processesWithArgument(runTmp)).toEqual([]);
    } finally {
      k.child.kill('SIGKILL');
    }
  });
});

describe('concurrent runs sharing a cache directory', () => {
  it('fetch each chunk once between them', async () => {
    const shared = tempDir('slipway-sharedcache-');
    const results = await Promise.all([0, 1, 2, 3].map(() => run([ref, '--timings', '--', 'md5sum', '/bin/busybox'], { SLIPWAY_CACHE_DIR: shared })));
    let fetched = 0;
    for (const r of results) {
      expect(r.code, r.err).toBe(0);
      // chunks each run fetched and kept, and the guesses it read (fetched alongside a miss,
      // decoded when read); guesses it never read are fetched but never kept
      const { chunks } = JSON.parse(r.err.trim().split('\n').at(-1) as string) as { chunks: { remote: { chunks: number }; disk: { guessChunks: number } } };
      fetched += chunks.remote.chunks + chunks.disk.guessChunks;
    }
    const stats = captureIO();
    expect(await main(['cache', 'stats', '--cache-dir', shared], stats)).toBe(0);
    const tier1 = (JSON.parse(stats.out) as { disk: { chunks: number } }).disk.chunks;
    expect(tier1).toBeGreaterThan(0);
    expect(fetched).toBe(tier1);
  });
});

describe('hugepage-backed guest memory', () => {
  it('boots with --hugepages: the guest runs and its memory comes from hugetlbfs', async () => {
    // as root (CI and the set-up run as root): reserve 2 MiB pages and mount hugetlbfs if needed
    const { readFileSync, writeFileSync, existsSync, mkdirSync } = await import('node:fs');
    const { execFileSync } = await import('node:child_process');
    const meminfo = () => Object.fromEntries(readFileSync('/proc/meminfo', 'utf8').split('\n').map((l) => l.split(':')).filter((p) => p.length === 2).map(([k, v]) => [k, Number.parseInt(v ?? '', 10)])) as Record<string, number>;
    const before = meminfo().HugePages_Total ?? 0;
    writeFileSync('/proc/sys/vm/nr_hugepages', String(before + 160));
    if (!existsSync('/dev/hugepages')) mkdirSync('/dev/hugepages');
    if (!readFileSync('/proc/mounts', 'utf8').includes(' /dev/hugepages ')) execFileSync('mount', ['-t', 'hugetlbfs', 'hugetlbfs', '/dev/hugepages']);
    try {
      expect(meminfo().HugePages_Total).toBeGreaterThanOrEqual(before + 128);
      let minFree = Number.POSITIVE_INFINITY;
      const poll = setInterval(() => {
        minFree = Math.min(minFree, meminfo().HugePages_Free ?? Number.POSITIVE_INFINITY);
      }, 50);
      const r = await run([ref, '--hugepages', '--memory', '256M', '--', 'sh', '-c', 'cat /proc/meminfo | head -1; sleep 1']);
      clearInterval(poll);
      expect(r.code, r.err).toBe(0);
      expect(r.out).toMatch(/^MemTotal:/);
      // the guest touched its memory: free hugepages dropped while it ran
      expect(minFree).toBeLessThan(meminfo().HugePages_Total as number);
    } finally {
      writeFileSync('/proc/sys/vm/nr_hugepages', String(before));
    }
  });
});
