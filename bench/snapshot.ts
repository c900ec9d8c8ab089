/**
 * Disk snapshots through the daemon (in-process, over its Unix socket with the typed client),
 * QEMU guests (TCG here), a 1 GiB busybox ext4 root in a local docker-registry:
 *  - snapshot time and bytes uploaded after the guest wrote incompressible data (/dev/urandom)
 *    covering 1% and then 10% of the disk. A snapshot is always a delta of the disk the VM booted,
 *    so the 10% one (snap:p10) holds the 1% one's chunks again; the guest's file-system metadata
 *    (inode tables, bitmaps, the journal) dirties chunks besides the data's;
 *  - cold boots (a fresh daemon with an empty cache directory each time) of the snapshot against
 *    its base: the first boot of each disk (no boot profile in the registry yet: that boot records
 *    one), then medians of SLIPWAY_BENCH_RUNS (default 3), interleaved, with the profile, and the
 *    bytes each boot fetched from the registry (GET /v1/cache: remote.bytes, at agent-ready).
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startDaemon, type RunningDaemon } from '../src/api/daemon.js';
import { SlipwayClient, type Snapshot, type Vm } from '../src/client/index.js';
import { loadConfig } from '../src/config.js';
import { profileTag } from '../src/cache/boot-profile.js';
import { DEFAULT_CHUNK_BYTES } from '../src/disk/format.js';
import { buildRootfs } from '../src/guest/rootfs.js';
import { createLogger } from '../src/util/log.js';
import { startRegistry, type TestRegistry } from '../test/helpers/registry.js';
import { asSlipwayProcess, BENCH_DIR, median, report, type Row, timed } from './lib.js';

const RUNS = Number(process.env.SLIPWAY_BENCH_RUNS ?? 3);
const MiB = 1 << 20;
const DISK_BYTES = 1024 * MiB;
/** data written per exec: each exec is one HTTP request, kept well inside undici's 300 s idle timeouts */
const WRITE_PIECE_MiB = 16;
const EXEC_TIMEOUT_MS = 280_000;

const logger = createLogger({ level: 'warn', base: { component: 'bench-daemon' } });

interface Daemon {
  daemon: RunningDaemon;
  client: SlipwayClient;
  dir: string;
}

/** A daemon with its own socket, state and (empty) cache directory under `work`. */
async function newDaemon(work: string, n: number): Promise<Daemon> {
  const dir = mkdtempSync(join(work, `d${n}-`));
  const socketPath = join(dir, 'api.sock');
  const daemon = await startDaemon({ config: loadConfig(process.env, { cacheDir: join(dir, 'cache') }), logger, socketPath, stateDir: join(dir, 'state') });
  return { daemon, client: new SlipwayClient({ socketPath }), dir };
}

async function closeDaemon(d: Daemon): Promise<void> {
  await d.client.close().catch(() => undefined);
  await d.daemon.close({ stopVms: true }).catch((err: unknown) => console.error(`closing a daemon: ${(err as Error).message}`));
  rmSync(d.dir, { recursive: true, force: true });
}

/** Run a command in the guest; fail with its output unless it exits 0. */
async function guest(client: SlipwayClient, id: string, argv: string[]): Promise<string> {
  const r = await client.exec(id, { argv, timeoutMs: EXEC_TIMEOUT_MS });
  if (r.exitCode !== 0 || r.timedOut) {
    throw new Error(`guest: ${argv.join(' ')}: exit ${r.exitCode} signal ${r.signal}${r.timedOut ? ' (timed out)' : ''}\n${r.stdout.toString()}${r.stderr.toString()}`);
  }
  return r.stdout.toString();
}

/** Write `mib` MiB of /dev/urandom into new files /bench-<tag>-<i>, then sync. */
async function dirty(client: SlipwayClient, id: string, tag: string, mib: number): Promise<number> {
  const t = await timed(async () => {
    for (let i = 0, left = mib; left > 0; i++, left -= WRITE_PIECE_MiB) {
      await guest(client, id, ['dd', 'if=/dev/urandom', `of=/bench-${tag}-${i}`, 'bs=1M', `count=${Math.min(WRITE_PIECE_MiB, left)}`]);
    }
    await guest(client, id, ['sync']);
  });
  return t.ms;
}

async function hasProfile(registry: TestRegistry, repo: string, digest: string): Promise<boolean> {
  const res = await fetch(`http://${registry.host}/v2/${repo}/manifests/${profileTag(digest)}`, { method: 'HEAD', headers: { accept: 'application/vnd.oci.image.manifest.v1+json' } });
  return res.status === 200;
}

/** A whole cold boot: a fresh daemon (empty cache), createVm timed, remote bytes read at agent-ready. */
async function coldBoot(work: string, n: number, image: string, live: Set<Daemon>): Promise<{ ms: number; fetched: number; vm: Vm }> {
  const d = await newDaemon(work, n);
  live.add(d);
  try {
    const { ms, value: vm } = await timed(() => d.client.createVm({ image }));
    const stats = (await d.client.cache()) as { remote: { bytes: number } };
    await d.client.deleteVm(vm.id);
    return { ms, fetched: stats.remote.bytes, vm };
  } finally {
    live.delete(d);
    await closeDaemon(d);
  }
}

async function main(): Promise<void> {
  mkdirSync(BENCH_DIR, { recursive: true });
  const img = join(BENCH_DIR, 'busybox-root-1g.img');
  if (!existsSync(img)) await buildRootfs({ from: 'busybox', output: img, sizeBytes: DISK_BYTES });
  const work = mkdtempSync(join(tmpdir(), 'slipway-snapbench-'));
  const live = new Set<Daemon>();
  let registry: TestRegistry | undefined;
  try {
    registry = await startRegistry();
    const repo = 'bench/snap';
    const base = `${registry.host}/${repo}:base`;
    execFileSync('node', [join(process.cwd(), 'bin', 'slipway.js'), 'push', img, base, '--progress=none'], { stdio: ['ignore', 'ignore', 'inherit'] });

    // --- snapshots: one VM from the base, 1% then 10% of the disk written
    const snapRows: Row[] = [];
    let baseFirstBoot = { ms: 0, fetched: 0 };
    let accel = '';
    {
      const d = await newDaemon(work, 0);
      live.add(d);
      try {
        const { ms: bootMs, value: vm } = await timed(() => d.client.createVm({ image: base }));
        baseFirstBoot = { ms: bootMs, fetched: ((await d.client.cache()) as { remote: { bytes: number } }).remote.bytes };
        accel = vm.accel ?? '?';
        console.error(`booted ${vm.id} from ${base} in ${Math.round(bootMs)} ms (accel ${accel})`);
        const steps: { pct: number; tag: string; totalMiB: number }[] = [
          { pct: 1, tag: 'p1', totalMiB: Math.round((DISK_BYTES / MiB) * 0.01) },
          { pct: 10, tag: 'p10', totalMiB: Math.round((DISK_BYTES / MiB) * 0.1) },
        ];
        let written = 0;
        for (const s of steps) {
          const writeMs = await dirty(d.client, vm.id, s.tag, s.totalMiB - written);
          written = s.totalMiB;
          const ref = `${registry.host}/${repo}:${s.tag}`;
          const { ms, value: snap } = await timed<Snapshot>(() => d.client.snapshot(vm.id, ref));
          console.error(`${s.tag}: wrote ${written} MiB in total (${Math.round(writeMs)} ms), snapshot ${JSON.stringify(snap)}`);
          const dataChunks = Math.ceil((written * MiB) / DEFAULT_CHUNK_BYTES);
          const dirtyBytes = snap.dirtyChunks * DEFAULT_CHUNK_BYTES;
          snapRows.push({
            name: `snap:${s.tag}: ${s.pct}% of the disk written (${written} MiB urandom${s.pct > 1 ? ', includes snap:p1\'s' : ''})`,
            guestWriteMs: Math.round(writeMs),
            snapshotMs: Math.round(ms),
            quiesceMs: snap.timings.quiesceMs,
            stageMs: snap.timings.stageMs,
            pushMs: snap.timings.pushMs,
            dataChunks,
            dirtyChunks: snap.dirtyChunks,
            newChunks: snap.newChunks,
            dirtyMiB: (dirtyBytes / MiB).toFixed(1),
            uploadedMiB: (snap.uploadedBytes / MiB).toFixed(1),
            uploadedBytes: snap.uploadedBytes,
            'uploaded/dirty': (snap.uploadedBytes / dirtyBytes).toFixed(3),
          });
        }
        await d.client.deleteVm(vm.id);
      } finally {
        live.delete(d);
        await closeDaemon(d);
      }
    }

    // --- cold boots: every boot a fresh daemon with an empty cache directory
    const p10 = `${registry.host}/${repo}:p10`;
    let n = 1;
    const p10First = await coldBoot(work, n++, p10, live);
    const digests = { base: '', p10: p10First.vm.digest ?? '' };
    const times = { base: [] as number[], p10: [] as number[] };
    const fetched = { base: [] as number[], p10: [] as number[] };
    for (let i = 0; i < RUNS; i++) {
      for (const which of ['base', 'p10'] as const) {
        const r = await coldBoot(work, n++, which === 'base' ? base : p10, live);
        times[which].push(r.ms);
        fetched[which].push(r.fetched);
        digests[which] = r.vm.digest ?? '';
        console.error(`cold boot ${which} #${i + 1}: ${Math.round(r.ms)} ms, ${r.fetched} bytes fetched, ${JSON.stringify(r.vm.timings)}`);
      }
    }
    const profiles = { base: await hasProfile(registry, repo, digests.base), p10: await hasProfile(registry, repo, digests.p10) };
    const mb = median(times.base);
    const mp = median(times.p10);
    const bootRows: Row[] = [
      { name: 'snap:base, first cold boot (no boot profile yet; records it)', ms: Math.round(baseFirstBoot.ms), ratio: '', fetchedBytes: baseFirstBoot.fetched, runs: 1 },
      { name: 'snap:p10, first cold boot (no boot profile yet; records it)', ms: Math.round(p10First.ms), ratio: (p10First.ms / baseFirstBoot.ms).toFixed(2), fetchedBytes: p10First.fetched, runs: 1 },
      { name: `snap:base, cold boot (boot profile: ${profiles.base ? 'yes' : 'no'})`, ms: Math.round(mb), ratio: '1.00', fetchedBytes: median(fetched.base), runs: `${RUNS}: ${times.base.map(Math.round).join(', ')}` },
      { name: `snap:p10, cold boot (boot profile: ${profiles.p10 ? 'yes' : 'no'})`, ms: Math.round(mp), ratio: (mp / mb).toFixed(2), fetchedBytes: median(fetched.p10), runs: `${RUNS}: ${times.p10.map(Math.round).join(', ')}` },
    ];
    report(`VM disk snapshots through the daemon, QEMU (${accel}) guest, 1 GiB busybox ext4 root, ${DEFAULT_CHUNK_BYTES >> 10} KiB chunks, local registry; snapshotMs = client wall time of POST /v1/vms/:id/snapshot`, snapRows, 'snapshot');
    report(`cold boots (fresh daemon, empty cache; createVm until the agent answers) of snapshot snap:p10 against its base, medians of ${RUNS} interleaved; ratio = p10 / base`, bootRows, 'snapshot-boot');
  } finally {
    for (const d of [...live]) await closeDaemon(d);
    await registry?.stop();
    rmSync(work, { recursive: true, force: true });
  }
}

// it serves disks in this process: as the `slipway` executable would
await asSlipwayProcess();
await main();
