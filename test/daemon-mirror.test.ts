/**
 * Beyond one host, for real (docs/scaling.md): one origin registry, a docker-registry pull-through
 * mirror in front of it, and two daemons ("hosts") with their own cache directories, both told to
 * try the mirror first. The first host's cold boot warms the mirror; the second host's cold boot
 * is then served by the mirror: none of the disk's packs is fetched from the origin again.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { main } from '../src/cli/main.js';
import { openDiskArtifact } from '../src/disk/artifact.js';
import { Targets } from '../src/oci/open.js';
import { parseRef } from '../src/oci/ref.js';
import { startChaosProxy, type ChaosProxy } from './helpers/chaos-proxy.js';
import { captureIO } from './helpers/cli.js';
import { startTestDaemon, type TestDaemon } from './helpers/daemon.js';
import { busyboxGuest } from './helpers/guest-root.js';
import { tempDir } from './helpers/images.js';
import { startRegistry, type TestRegistry } from './helpers/registry.js';

const work = tempDir('slipway-mirrortest-');
let origin: TestRegistry;
let originFront: ChaosProxy;
let mirror: TestRegistry;
const daemons: TestDaemon[] = [];
let image: string;
let packs: string[];

beforeAll(async () => {
  const disk = await busyboxGuest(work);
  origin = await startRegistry();
  // the origin as every host and the mirror see it, with each request recorded
  originFront = await startChaosProxy({ target: origin.host });
  mirror = await startRegistry({ proxyRemoteUrl: `http://${originFront.host}` });
  image = `${originFront.host}/fleet/root:v1`;
  expect(await main(['push', disk, image, '--progress=none'], captureIO())).toBe(0);
  const targets = new Targets();
  try {
    packs = (await openDiskArtifact(await targets.open(parseRef(image)), 'v1')).index.packs.map((p) => p.digest);
  } finally {
    await targets.close();
  }
  expect(packs.length).toBeGreaterThan(0);
}, 1_800_000);

afterAll(async () => {
  for (const d of daemons) await d.dispose();
  await mirror?.stop();
  await originFront?.stop();
  await origin?.stop();
});

/** GETs of the disk's packs that reached the origin. */
function packGetsAtOrigin(): number {
  return originFront.requests.filter((r) => r.method === 'GET' && packs.some((p) => r.path.endsWith(`/blobs/${p}`))).length;
}

describe('two hosts behind a pull-through mirror', () => {
  it('the second host\'s cold boot is served by the mirror, not the origin', async () => {
    const env = { SLIPWAY_MIRRORS: `${originFront.host}=${mirror.host}` };
    const hostA = await startTestDaemon({ dir: tempDir('slipway-mirror-a-'), env });
    daemons.push(hostA);
    const hostB = await startTestDaemon({ dir: tempDir('slipway-mirror-b-'), env });
    daemons.push(hostB);

    originFront.clearLog();
    const a = await hostA.client.createVm({ image });
    expect((await hostA.client.exec(a.id, { argv: ['cat', '/etc/os-release'] })).stdout.toString()).toContain('slipway busybox');
    // the mirror had nothing: it fetched the packs the boot needed from the origin
    expect(packGetsAtOrigin()).toBeGreaterThan(0);
    const statsA = (await hostA.client.cache()) as { remote: { bytes: number } };
    expect(statsA.remote.bytes).toBeGreaterThan(0);

    originFront.clearLog();
    const b = await hostB.client.createVm({ image });
    expect((await hostB.client.exec(b.id, { argv: ['cat', '/etc/os-release'] })).stdout.toString()).toContain('slipway busybox');
    const statsB = (await hostB.client.cache()) as { remote: { bytes: number; chunks: number } };
    // host B fetched the chunks it booted from (its cache was empty)...
    expect(statsB.remote.chunks).toBeGreaterThan(0);
    // ...and not one pack GET reached the origin: the mirror served them
    expect(packGetsAtOrigin()).toBe(0);
    await hostA.client.deleteVm(a.id);
    await hostB.client.deleteVm(b.id);
  });
});
