/**
 * Boot profiles through `slipway run` and the daemon: QEMU TCG guests, a real docker-registry
 * behind a recording proxy, slipway-blk. The first boot of a disk (an empty cache, no profile)
 * stores the profile beside the disk when the agent answers; a boot on another host (a fresh
 * cache) asks the registry for the profile's chunks before any other chunk.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fetchBootProfile, type BootProfile } from '../src/cache/boot-profile.js';
import { planProfileRuns } from '../src/cache/fetch-ahead.js';
import { main } from '../src/cli/main.js';
import { openDiskArtifact, type DiskArtifact } from '../src/disk/artifact.js';
import { Targets } from '../src/oci/open.js';
import { parseRef } from '../src/oci/ref.js';
import { startChaosProxy, type ChaosProxy } from './helpers/chaos-proxy.js';
import { captureIO } from './helpers/cli.js';
import { startTestDaemon, type TestDaemon } from './helpers/daemon.js';
import { busyboxGuest } from './helpers/guest-root.js';
import { tempDir } from './helpers/images.js';
import { runCli } from './helpers/run-cli.js';
import { startRegistry, type TestRegistry } from './helpers/registry.js';

const work = tempDir('slipway-profpaths-');
const runTmp = tempDir('slipway-profpaths-tmp-');
let registry: TestRegistry;
let proxy: ChaosProxy;
let disk: string;
const targets = new Targets();
const daemons: TestDaemon[] = [];

async function run(args: string[]): Promise<{ code: number; out: string; err: string }> {
  const r = await runCli(['run', ...args], { SLIPWAY_CACHE_DIR: tempDir('slipway-profpaths-cache-'), TMPDIR: runTmp });
  return { code: r.code, out: r.stdout, err: r.stderr };
}

/** Push the busybox root under a repository of its own (each test starts with no profile). */
async function pushFresh(repo: string): Promise<{ direct: string; proxied: string; artifact: DiskArtifact }> {
  const direct = `${registry.host}/${repo}:v1`;
  expect(await main(['push', disk, direct, '--progress=none'], captureIO())).toBe(0);
  const artifact = await openDiskArtifact(await targets.open(parseRef(direct)), 'v1');
  return { direct, proxied: `${proxy.host}/${repo}:v1`, artifact };
}

async function profileOf(direct: string, artifact: DiskArtifact): Promise<BootProfile | undefined> {
  return (await fetchBootProfile(await targets.open(parseRef(direct)), artifact.manifestDescriptor.digest)) as BootProfile | undefined;
}

/** The Range headers of the requests that fetch a profile's chunks, as LazyDisk plans them (planProfileRuns). */
function profileRanges(artifact: DiskArtifact, profile: BootProfile): string[] {
  const { index } = artifact;
  const firstOfEntry = new Map<number, number>();
  for (const n of profile.chunks) if (!firstOfEntry.has(index.map[n] as number)) firstOfEntry.set(index.map[n] as number, n);
  return planProfileRuns(index, [...firstOfEntry].map(([entry, chunk]) => ({ entry, chunk }))).map((r) => `bytes=${r.start}-${r.start + r.length - 1}`);
}

/** The ranged chunk requests the proxy saw for this disk's packs, in arrival order. */
function chunkRequests(artifact: DiskArtifact): string[] {
  const packs = new Set(artifact.index.packs.map((p) => p.digest));
  return proxy.requests.filter((r) => r.kind === 'blob' && r.method === 'GET' && r.range !== undefined && packs.has(r.path.split('/').at(-1) as string)).map((r) => r.range as string);
}

beforeAll(async () => {
  disk = await busyboxGuest(work);
  registry = await startRegistry();
  proxy = await startChaosProxy({ target: registry.host });
}, 1_800_000);

afterAll(async () => {
  for (const d of daemons) await d.dispose();
  await targets.close();
  await proxy?.stop();
  await registry?.stop();
});

describe('boot profiles through slipway run and the daemon', () => {
  it('slipway run: the first boot stores the profile beside the disk; a run on a fresh cache asks for its chunks first', async () => {
    const { direct, proxied, artifact } = await pushFresh('paths/run');
    expect(await profileOf(direct, artifact)).toBeUndefined();
    const first = await run([proxied, '--', 'true']);
    expect(first.code, first.err).toBe(0);
    const profile = await profileOf(direct, artifact);
    expect(profile?.chunks.length).toBeGreaterThan(0);
    const ranges = profileRanges(artifact, profile as BootProfile);

    proxy.clearLog();
    const second = await run([proxied, '--', 'true']);
    expect(second.code, second.err).toBe(0);
    // the profile's requests are the first chunk requests of the boot, all of them
    const seen = chunkRequests(artifact);
    expect(seen.slice(0, ranges.length).sort(), JSON.stringify(seen)).toEqual([...ranges].sort());
  }, 600_000);

  it('the daemon: the first boot stores the profile beside the disk; a daemon on a fresh cache asks for its chunks first', async () => {
    const { direct, proxied, artifact } = await pushFresh('paths/daemon');
    const d1 = await startTestDaemon({ dir: tempDir('slipway-profpaths-d1-') });
    daemons.push(d1);
    const vm = await d1.client.createVm({ image: proxied });
    expect(vm.status).toBe('running');
    // deleting the VM closes its disk, which waits for the profile being stored
    await d1.client.deleteVm(vm.id);
    const profile = await profileOf(direct, artifact);
    expect(profile?.chunks.length, d1.log()).toBeGreaterThan(0);
    const ranges = profileRanges(artifact, profile as BootProfile);

    proxy.clearLog();
    const d2 = await startTestDaemon({ dir: tempDir('slipway-profpaths-d2-') });
    daemons.push(d2);
    const vm2 = await d2.client.createVm({ image: proxied });
    expect(vm2.status).toBe('running');
    const seen = chunkRequests(artifact);
    expect(seen.slice(0, ranges.length).sort(), JSON.stringify(seen)).toEqual([...ranges].sort());
    // every chunk the profile names was fetched for this boot
    const stats = (await d2.client.cache()) as { remote: { chunks: number } };
    const entries = new Set((profile as BootProfile).chunks.map((n) => artifact.index.map[n]));
    expect(stats.remote.chunks).toBeGreaterThanOrEqual(entries.size);
    await d2.client.deleteVm(vm2.id);
  }, 600_000);
});
