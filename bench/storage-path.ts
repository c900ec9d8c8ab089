/**
 * The storage path of a boot alone, free of TCG's slow CPU. The reads a Debian 12 systemd boot
 * makes of its root disk are recorded once (qemu-storage-daemon's blk_co_preadv trace event, the
 * guest booting under QEMU from that export until its agent answers), then replayed in order at
 * queue depth 1 by the C test frontend against, at 0 and 20 ms added to every registry request
 * (a delaying proxy in its own process, a fresh one for every replay), each slipway run on an
 * empty cache (a host that has never seen the disk) of its own repository copy of the disk:
 *  - the peer: the lazy set-up users build by hand, qemu-storage-daemon's http driver reading the
 *    same image as one raw blob from the same registry, copy-on-read into a local qcow2 overlay,
 *    exported as vhost-user-blk;
 *  - slipway-blk, no profile, `--prefetch none`: demand misses only;
 *  - slipway-blk, no profile, `--prefetch profile` (the default): speculation on misses. This is
 *    host 1's first boot of the disk: it records the boot profile and stores it in the registry
 *    when the export closes, exactly as `slipway serve` does;
 *  - slipway-blk, no profile, `--prefetch all`: the same plus the whole disk at background priority;
 *  - slipway-blk, the profile host 1 recorded, on host 2 (a fresh cache);
 *  - slipway-blk, a new version of the disk (v2: 16 chunks changed, 8 of them on the boot's path)
 *    pushed under a new tag after host 1's boot, booted on host 3 (a fresh cache): a disk never
 *    booted before, with the profile it inherited from v1 at push;
 *  - an upper bound: a profile built from the trace itself (the chunks the boot reads, in order)
 *    and pushed by hand; no user gets a profile that way;
 * and warm: slipway-blk with every chunk cached against qemu-storage-daemon on a local copy of
 * the file. Bytes fetched are the registry bytes of chunk requests, against the bytes the boot read;
 * requests are those chunk requests (docker-registry spends about 7 ms of CPU on each, on the same
 * 2 cores). SLIPWAY_BENCH_RUNS=n repeats the cold rows n times (default 3; medians, and each run's ratio).
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { closeSync, copyFileSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { ChunkCache } from '../src/cache/chunk-cache.js';
import { pushBootProfile } from '../src/cache/boot-profile.js';
import { loadConfig } from '../src/config.js';
import { openDiskArtifact } from '../src/disk/artifact.js';
import { HOLE } from '../src/disk/format.js';
import { AgentClient, waitForAgent } from '../src/guest/agent-client.js';
import { renderBootConfig } from '../src/guest/boot-config.js';
import { buildGuest, PROJECT_ROOT } from '../src/guest/build.js';
import { Targets } from '../src/oci/open.js';
import { parseRef } from '../src/oci/ref.js';
import { serveDisk, type PrefetchMode } from '../src/serve/backend.js';
import { silentLogger } from '../src/util/log.js';
import { QemuDriver } from '../src/vmm/qemu.js';
import { startRegistry } from '../test/helpers/registry.js';
import { asSlipwayProcess, report, startDelayProxy, type Row, vubFrontend } from './lib.js';
import { debianCloudKernel, systemdRoot, SYSTEMD_TRACE_PATH } from './debian-root.js';

const FRONTEND = join(PROJECT_ROOT, 'vhost-user-blk', 'build', 'vub-frontend');
const TRACE = SYSTEMD_TRACE_PATH;
/** The Debian systemd root whose boot is replayed (built once, as bench/boot.ts builds it). */
const SYSTEMD_IMAGE = await systemdRoot((await buildGuest()).agent);

const frontend = (args: string[]): Promise<Record<string, number>> => vubFrontend(FRONTEND, args);

async function waitForSocket(path: string, child: ChildProcess): Promise<void> {
  for (let i = 0; i < 400 && !existsSync(path); i++) {
    if (child.exitCode !== null) throw new Error(`qemu-storage-daemon exited (${child.exitCode})`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/**
 * Before a replay is timed: the last run's processes gone and the machine's dirty pages written
 * back. qemu-storage-daemon flushes its copy-on-read overlay (60+ MB) as it exits, and a run's
 * chunk files are written back over the next 30 s; either, still under way, makes every fsync of
 * the next replay wait behind it (slipway's tier-1 writes, the peer's qcow2 metadata flushes).
 */
async function quiesce(previous?: ChildProcess): Promise<void> {
  if (previous && previous.exitCode === null && previous.signalCode === null) await once(previous, 'exit');
  execFileSync('sync');
}

/**
 * A run's files (a cache directory, the peer's overlay) removed as soon as the run is over, as a
 * host reuses its memory: their page cache freed for the next run's writes. Left in place, every
 * run writes its files into memory this machine's hypervisor has never backed, which costs about
 * 1.1 ms per 512 KiB written here against 0.11 ms into pages freed before (measured with a
 * replay's chunk-file writes), for slipway's chunk files and the peer's overlay alike.
 */
function freeRunFiles(...paths: string[]): void {
  for (const p of paths) rmSync(p, { recursive: true, force: true });
}

function qsd(args: string[], sock: string): ChildProcess {
  return spawn('qemu-storage-daemon', [...args, '--export', `type=vhost-user-blk,id=e,node-name=top,addr.type=unix,addr.path=${sock},writable=off,num-queues=1`], { stdio: ['ignore', 'ignore', 'inherit'] });
}

/** Record the reads of one systemd boot (cached in BENCH_DIR). */
async function recordTrace(work: string): Promise<string> {
  if (existsSync(TRACE)) return TRACE;
  const disk = join(work, 'trace-disk.img');
  execFileSync('cp', ['--sparse=always', SYSTEMD_IMAGE, disk]);
  const sock = join(work, 'trace.sock');
  const log = join(work, 'trace.log');
  const daemon = spawn('qemu-storage-daemon', ['--blockdev', `driver=file,node-name=top,filename=${disk}`, '--trace', `enable=blk_co_preadv,file=${log}`,
    '--export', `type=vhost-user-blk,id=e,node-name=top,addr.type=unix,addr.path=${sock},writable=on,num-queues=1`], { stdio: ['ignore', 'ignore', 'inherit'] });
  await waitForSocket(sock, daemon);
  const debian = debianCloudKernel();
  const vmDir = mkdtempSync(join(tmpdir(), 'slipway-trace-vm-'));
  const vm = await new QemuDriver().start({
    id: 'trace', workDir: vmDir, cpus: 1, memoryMiB: 1024, kernel: { bzImage: debian.vmlinuz, vmlinux: '' }, initramfs: debian.initrd,
    cmdline: 'root=/dev/vda rw', disks: [{ kind: 'vhost-user', socket: sock }], bootConfig: renderBootConfig({}), net: { mode: 'none' }, console: true,
  });
  try {
    const client = await waitForAgent(async () => new AgentClient(await vm.connectAgent()), 300_000);
    client.close();
  } finally {
    await vm.kill(200);
    daemon.kill();
    rmSync(vmDir, { recursive: true, force: true });
  }
  const reads = readFileSync(log, 'utf8').split('\n').map((l) => /blk_co_preadv .*offset (\d+) bytes (\d+)/.exec(l)).filter((m): m is RegExpExecArray => m !== null).map((m) => `${m[1]} ${m[2]}`);
  writeFileSync(TRACE, `${reads.join('\n')}\n`);
  return TRACE;
}

/**
 * The rows of several runs as one: each numeric column's median, the ratio as the median of the
 * runs' ratios (each to the peer of its own run), and every run's ratio in `ratios`.
 */
function mergeRuns(perRun: Row[][]): Row[] {
  if (perRun.length <= 1) return perRun[0] ?? [];
  const mid = (xs: number[]): number => {
    const s = [...xs].sort((a, b) => a - b);
    return s.length % 2 ? (s[s.length >> 1] as number) : ((s[s.length / 2 - 1] as number) + (s[s.length / 2] as number)) / 2;
  };
  return (perRun[0] as Row[]).map((first, i) => {
    const same = perRun.map((rs) => rs[i] as Row);
    const out: Row = { name: first.name.replace(/\(\d+ chunks\)/, '(recorded per run)') };
    for (const [k, v] of Object.entries(first)) {
      if (k === 'name') continue;
      const xs = same.map((r) => Number(r[k]));
      out[k] = typeof v === 'number' || (v !== '' && xs.every(Number.isFinite)) ? (k === 'ratio' ? mid(xs).toFixed(3) : k === 'fetchedPerRead' ? mid(xs).toFixed(2) : Math.round(mid(xs) * 10) / 10) : v;
    }
    out.ratios = same.map((r) => r.ratio).join(' / ');
    // the bytes of every run too: speculation's bound (2x the bytes read) holds for each, or not
    out.fetchedPerReadRuns = same.every((r) => r.fetchedPerRead !== '' && r.fetchedPerRead !== undefined) ? same.map((r) => r.fetchedPerRead).join(' / ') : '';
    return out;
  });
}

async function main(): Promise<void> {
  execFileSync('make', ['-s', '-C', join(PROJECT_ROOT, 'vhost-user-blk'), 'all', 'test-frontend']);
  const work = mkdtempSync(join(tmpdir(), 'slipway-storagebench-'));
  const trace = await recordTrace(work).catch((err: unknown) => {
    rmSync(work, { recursive: true, force: true });
    throw err;
  });
  const lines = readFileSync(trace, 'utf8').trim().split('\n').map((l) => l.split(' ').map(Number) as [number, number]);
  const bootBytes = lines.reduce((s, [, b]) => s + b, 0);
  const registry = await startRegistry();
  const targets = new Targets();
  const rows: Row[] = [];
  try {
    // the disk as a slipway artifact, and as one raw blob
    const ref = `${registry.host}/bench/debian:v1`;
    execFileSync('node', [join(PROJECT_ROOT, 'bin', 'slipway.js'), 'push', SYSTEMD_IMAGE, ref, '--progress=none']);
    const digest = `sha256:${execFileSync('sha256sum', [SYSTEMD_IMAGE], { encoding: 'utf8' }).split(' ')[0]}`;
    const loc = execFileSync('curl', ['-sS', '-D', '-', '-o', '/dev/null', '-X', 'POST', `http://${registry.host}/v2/bench/raw/blobs/uploads/`], { encoding: 'utf8' })
      .split('\r\n').find((l) => l.toLowerCase().startsWith('location:'))?.slice(9).trim() ?? '';
    const up = new URL(loc, `http://${registry.host}`);
    up.searchParams.set('digest', digest);
    execFileSync('curl', ['-sS', '-f', '-X', 'PUT', '-H', 'content-type: application/octet-stream', '-T', SYSTEMD_IMAGE, up.toString()]);
    // the boot profile of this disk, from the trace: chunks in first-read order
    const origin = await targets.open(parseRef(ref));
    const artifact = await openDiskArtifact(origin, 'v1');
    const cs = artifact.config.chunkSizeBytes;
    const order: number[] = [];
    for (const [off, len] of lines) for (let n = Math.floor(off / cs); n <= Math.floor((off + len - 1) / cs); n++) if (!order.includes(n)) order.push(n);
    const profiled = `${registry.host}/bench/debian-profiled:v1`;
    execFileSync('node', [join(PROJECT_ROOT, 'bin', 'slipway.js'), 'copy', ref, profiled, '--progress=none']);
    const profiledTarget = await targets.open(parseRef(profiled));
    await pushBootProfile(profiledTarget, (await openDiskArtifact(profiledTarget, 'v1')).manifestDescriptor, { formatVersion: 1, disk: artifact.manifestDescriptor.digest, chunkSizeBytes: cs, chunks: order });
    // v2, a new version of the disk: 4 KiB rewritten in 16 chunks, every 16th chunk of the boot's
    // (8) and 8 spread over the rest of the data
    const v2img = join(work, 'debian-v2.img');
    execFileSync('cp', ['--sparse=always', SYSTEMD_IMAGE, v2img]);
    const onPath = order.filter((_, i) => i % 16 === 8).slice(0, 8);
    const offPath = [...artifact.index.map.keys()].filter((n) => artifact.index.map[n] !== HOLE && !order.includes(n)).filter((_, i, all) => i % Math.floor(all.length / 8) === 0).slice(0, 8);
    const v2fd = openSync(v2img, 'r+');
    for (const n of [...onPath, ...offPath]) writeSync(v2fd, randomBytes(4096), 0, 4096, n * cs + 8192);
    closeSync(v2fd);

    /**
     * One boot on a host that has never seen the disk (an empty cache), served as `slipway serve`
     * serves it: `record` records the boot profile and stores it in the registry when the export
     * closes. Bytes fetched are counted once the replay is done and background work has settled
     * (for `all`, only what was fetched by then: the fill is stopped by the close).
     */
    const slipwayCold = async (host: string, repo: string, prefetch: PrefetchMode, record: boolean, tag = 'v1'): Promise<{ ms: number; fetched: number; requests: number; profileChunks: number; speculated: number; speculatedRead: number | string; region: string; stored: number; cpuMs: number; load: string }> => {
      const cacheDir = mkdtempSync(join(work, 'cache-'));
      const serveDir = mkdtempSync(join(work, 'serve-'));
      const cache = await ChunkCache.open({ config: loadConfig({}, { cacheDir }), logger: silentLogger });
      // the daemon and `slipway serve` start their decode threads (and make tier 1's directories)
      // when they start, not when the first disk opens
      await cache.warmUp();
      let stored = 0;
      const served = await serveDisk({
        cache, ref: `${host}/bench/${repo}:${tag}`, socket: join(work, `s-${Date.now()}.sock`), workDir: serveDir, readWrite: false, prefetch,
        ...(record ? { openOptions: { recordProfileIfMissing: true }, saveProfileWhenQuietMs: 600_000 } : { openOptions: { recordProfileIfMissing: false } }),
        onProfileSaved: (saved, err) => {
          if (err) console.error(`storing the boot profile failed: ${(err as Error).message}`);
          stored = saved?.chunks ?? 0;
        },
      });
      try {
        await quiesce();
        // CPU time of this process (its decode threads included) over the replay, and how busy
        // the machine was (the 1-minute load average as the replay starts)
        const load = loadavg()[0]?.toFixed(1) ?? '';
        const cpu0 = process.cpuUsage();
        const r = await frontend(['replay', served.socket, trace]);
        const cpu = process.cpuUsage(cpu0);
        if (prefetch !== 'all') await served.disk.settle();
        const st = served.disk.stats;
        const { bytes: fetched, requests } = cache.stats().remote;
        // storing the profile (at close) tells which guesses the boot read
        if (record) await served.close();
        return { ms: r.ms as number, fetched, requests, profileChunks: st.profileChunks, speculated: st.speculatedChunks, speculatedRead: record ? st.speculatedRead : '', region: st.regionChunks ? `${st.regionRead}/${st.regionChunks}` : '', cpuMs: (cpu.user + cpu.system) / 1000, stored, load };
      } finally {
        await served.close();
        await cache.close();
        freeRunFiles(cacheDir, serveDir);
      }
    };
    const peerCold = async (host: string): Promise<{ ms: number; load: string }> => {
      const load = loadavg()[0]?.toFixed(1) ?? '';
      const ovl = join(work, `ovl-${Date.now()}.qcow2`);
      execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', ovl, String(statSync(SYSTEMD_IMAGE).size)]);
      const sock = join(work, `p-${Date.now()}.sock`);
      const d = qsd(['--blockdev', `driver=http,node-name=web,read-only=on,url=http://${host}/v2/bench/raw/blobs/${digest}`,
        '--blockdev', `driver=file,node-name=ovlfile,filename=${ovl}`, '--blockdev', 'driver=qcow2,node-name=ovl,file=ovlfile,backing=web',
        '--blockdev', 'driver=copy-on-read,node-name=top,file=ovl'], sock);
      try {
        await waitForSocket(sock, d);
        await quiesce();
        return { ms: (await frontend(['replay', sock, trace])).ms as number, load };
      } finally {
        d.kill();
        await quiesce(d);
        freeRunFiles(ovl);
      }
    };
    // SLIPWAY_BENCH_ONLY=profile runs just the trace-profiled cold replay at 0 ms (for profiling the
    // daemon); =cold the cold rows without the warm ones; =speculation none / speculation / speculation
    // while recording, twice at each delay (what speculation and recording cost); =recording one
    // recording replay at 0 ms; =first the peer and the default first boot (host 1) alone, at each delay
    const only = process.env.SLIPWAY_BENCH_ONLY;
    const row = (name: string, r: { ms: number; fetched: number; requests: number; speculated: number; speculatedRead: number | string; region: string; cpuMs: number; load: string }, peer: number): Row => ({
      name, ms: Math.round(r.ms), ratio: (r.ms / peer).toFixed(3), fetchedBytes: r.fetched, fetchedPerRead: (r.fetched / bootBytes).toFixed(2), requests: r.requests,
      speculatedChunks: r.speculated, speculatedRead: r.speculatedRead, regionReadOfGuessed: r.region, hostCpuMs: Math.round(r.cpuMs), load: r.load,
    });
    // SLIPWAY_BENCH_RUNS=n (default 3, as the other benchmarks take medians): the cold rows n times
    // over (each run on fresh copies of the disk); each row then reports its median time and its
    // median ratio to the peer of the same run, and the ratio of every run (one replay at 0 ms
    // moves by 0.05 of the peer from run to run on this shared machine; a loaded one moves whole
    // runs by 1.5x)
    const runs = only === undefined || only === 'cold' || only === 'first' ? Math.max(1, Number(process.env.SLIPWAY_BENCH_RUNS ?? 3)) : 1;
    const perRun: Row[][] = [];
    for (let run = 0; run < runs; run++) for (const delayMs of only === 'profile' || only === 'recording' ? [0] : [0, 20]) {
      let proxy: Awaited<ReturnType<typeof startDelayProxy>> | undefined;
      // every replay gets a proxy of its own: one that has just carried another replay's requests
      // made the next replay 0.08 of the peer faster at 0 ms (docs/benchmarks.md, 15:30 UTC), so
      // which run came before would otherwise decide a row's figure
      const net = async (): Promise<string> => {
        await proxy?.stop();
        proxy = await startDelayProxy(registry.host, delayMs);
        return proxy.host;
      };
      try {
        if (only === 'profile') {
          const prof = await slipwayCold(await net(), 'debian-profiled', 'profile', false);
          rows.push({ name: 'slipway-blk, empty cache, boot profile', ms: Math.round(prof.ms), ratio: '', fetchedBytes: prof.fetched });
          continue;
        }
        // each delay (and run) has its own copy of the disk: host 1's first boot finds no profile there
        const repo = `debian-${delayMs}-r${run}`;
        for (const r of [repo, `${repo}-all`]) execFileSync('node', [join(PROJECT_ROOT, 'bin', 'slipway.js'), 'copy', ref, `${registry.host}/bench/${r}:v1`, '--progress=none']);
        if (only === 'recording') {
          const recording = await slipwayCold(await net(), repo, 'profile', true);
          rows.push(row(`${delayMs} ms: speculation, recording`, recording, recording.ms));
          continue;
        }
        if (only === 'speculation') {
          // what speculation costs with and without staging (recording a profile), against none
          for (let i = 0; i < 2; i++) {
            const none = await slipwayCold(await net(), repo, 'none', false);
            const bare = await slipwayCold(await net(), repo, 'profile', false);
            const fresh = `${repo}-r${i}`;
            execFileSync('node', [join(PROJECT_ROOT, 'bin', 'slipway.js'), 'copy', ref, `${registry.host}/bench/${fresh}:v1`, '--progress=none']);
            const recording = await slipwayCold(await net(), fresh, 'profile', true);
            rows.push(row(`${delayMs} ms: none`, none, none.ms), row(`${delayMs} ms: speculation, not recording`, bare, none.ms), row(`${delayMs} ms: speculation, recording`, recording, none.ms));
          }
          continue;
        }
        const { ms: peer, load: peerLoad } = await peerCold(await net());
        const peerRow: Row = { name: `${delayMs} ms: qemu-storage-daemon http + copy-on-read qcow2 (peer)`, ms: Math.round(peer), ratio: '1.00', fetchedBytes: '', fetchedPerRead: '', requests: '', speculatedChunks: '', speculatedRead: '', regionReadOfGuessed: '', hostCpuMs: '', load: peerLoad };
        const defaultName = `${delayMs} ms: slipway-blk, no profile, --prefetch profile (default; host 1, records the profile)`;
        if (only === 'first') {
          (perRun[run] ??= []).push(peerRow, row(defaultName, await slipwayCold(await net(), repo, 'profile', true), peer));
          continue;
        }
        const none = await slipwayCold(await net(), repo, 'none', false);
        const first = await slipwayCold(await net(), repo, 'profile', true);
        if (first.stored === 0) throw new Error('host 1 stored no boot profile');
        const second = await slipwayCold(await net(), repo, 'profile', false);
        if (second.profileChunks !== first.stored) throw new Error(`host 2 opened with ${second.profileChunks} profile chunks, host 1 stored ${first.stored}`);
        const bound = await slipwayCold(await net(), 'debian-profiled', 'profile', false);
        // v2 pushed as a user would, after host 1's boot stored v1's profile: it inherits that
        const pushedV2 = JSON.parse(execFileSync('node', [join(PROJECT_ROOT, 'bin', 'slipway.js'), 'push', v2img, `${registry.host}/bench/${repo}:v2`, '--progress=none'], { encoding: 'utf8' })) as { bootProfile?: { chunks: number } };
        if (!pushedV2.bootProfile) throw new Error('v2 inherited no boot profile from v1');
        const third = await slipwayCold(await net(), repo, 'profile', true, 'v2');
        if (third.profileChunks !== pushedV2.bootProfile.chunks) throw new Error(`host 3 opened v2 with ${third.profileChunks} profile chunks, v2 inherited ${pushedV2.bootProfile.chunks}`);
        // last: the whole-disk fill leaves 100+ MB of chunk files being written back, which slows
        // whatever runs next (it ran second once and slowed host 1 by 1.5x)
        const all = await slipwayCold(await net(), `${repo}-all`, 'all', false);
        (perRun[run] ??= []).push(
          peerRow,
          row(`${delayMs} ms: slipway-blk, no profile, --prefetch none (demand only)`, none, peer),
          row(defaultName, first, peer),
          row(`${delayMs} ms: slipway-blk, no profile, --prefetch all`, all, peer),
          row(`${delayMs} ms: slipway-blk, profile recorded by host 1 (${first.stored} chunks), host 2`, second, peer),
          row(`${delayMs} ms: upper bound: slipway-blk, profile built from the trace (${order.length} chunks)`, bound, peer),
          row(`${delayMs} ms: slipway-blk, new version v2 never booted (16 chunks changed, 8 on the boot's path), profile inherited from v1 at push, host 3`, third, peer),
        );
      } finally {
        await proxy?.stop();
      }
    }
    rows.push(...mergeRuns(perRun));
    if (only === 'profile') return report('profiled cold replay only', rows, 'storage-path-profile');
    if (only === 'speculation' || only === 'recording') return report('speculation alone', rows, 'storage-path-speculation');
    if (only === 'first') return report(`first boots without a profile only (${lines.length} reads, ${bootBytes} bytes)`, rows, 'storage-path-first');
    if (only === 'cold') return report(`cold replays only (${lines.length} reads, ${bootBytes} bytes)`, rows, 'storage-path-cold');
    // warm: every chunk local, against a local file
    const cache = await ChunkCache.open({ config: loadConfig({}, { cacheDir: mkdtempSync(join(work, 'warm-')) }), logger: silentLogger });
    const pre = await cache.openDisk(ref, { useProfile: false });
    await pre.prefetch();
    await pre.close();
    const served = await serveDisk({ cache, ref, socket: join(work, 'warm.sock'), workDir: mkdtempSync(join(work, 'serve-')), readWrite: false });
    const local = join(work, 'local.img');
    copyFileSync(SYSTEMD_IMAGE, local);
    const lsock = join(work, 'local.sock');
    const ld = qsd(['--blockdev', `driver=file,node-name=top,filename=${local},cache.direct=off`], lsock);
    try {
      await waitForSocket(lsock, ld);
      await frontend(['replay', lsock, trace]);
      const localMs = (await frontend(['replay', lsock, trace])).ms as number;
      const warmMs = (await frontend(['replay', served.socket, trace])).ms as number;
      rows.push(
        { name: 'warm: qemu-storage-daemon on a local file', ms: Math.round(localMs), ratio: '1.00', fetchedBytes: '' },
        { name: 'warm: slipway-blk, every chunk in tier 1', ms: Math.round(warmMs), ratio: (warmMs / localMs).toFixed(2), fetchedBytes: 0 },
      );
    } finally {
      ld.kill();
      await served.close();
      await cache.close();
    }
  } finally {
    await targets.close();
    await registry.stop();
    rmSync(work, { recursive: true, force: true });
  }
  report(`replay of a Debian 12 systemd boot's root-disk reads (${lines.length} reads, ${bootBytes} bytes) at queue depth 1`, rows, 'storage-path');
}

// it serves disks in this process: as the `slipway` executable would
await asSlipwayProcess();
await main();
