/**
 * The host daemon end to end: a real `slipway daemon` process, a real docker-registry, QEMU TCG
 * guests. Boot, exec, write a file, snapshot it into the registry, boot the snapshot on a second
 * daemon with a fresh cache and find the file; a snapshot of that snapshot; three VMs at once; the
 * daemon killed and restarted while a VM runs; a snapshot whose push fails; malformed and
 * oversized requests; TCP without the token.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { existsSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { request } from 'undici';
import { connect } from 'node:net';
import type { Duplex } from 'node:stream';
import { waitForAgent } from '../src/guest/agent-client.js';
import { SlipwayClient } from '../src/client/index.js';
import { openDiskArtifact } from '../src/disk/artifact.js';
import { main } from '../src/cli/main.js';
import { ramFileOf } from '../src/api/memory-snapshots.js';
import { PROJECT_ROOT } from '../src/guest/build.js';
import { Targets } from '../src/oci/open.js';
import { parseRef } from '../src/oci/ref.js';
import { captureIO } from './helpers/cli.js';
import { startTestDaemon, processesWith, type TestDaemon } from './helpers/daemon.js';
import { startChaosProxy } from './helpers/chaos-proxy.js';
import { startFaultProxy } from './helpers/fault-proxy.js';
import { busyboxGuest } from './helpers/guest-root.js';
import { tempDir } from './helpers/images.js';
import { manifestDigest } from './helpers/oci-http.js';
import { startRegistry, type TestRegistry } from './helpers/registry.js';

const work = tempDir('slipway-daemontest-');
let registry: TestRegistry;
let image: string;
let d1: TestDaemon;
const daemons: TestDaemon[] = [];
const targets = new Targets();

async function daemon(name: string, opts: Parameters<typeof startTestDaemon>[0] extends infer O ? Partial<O> : never = {}): Promise<TestDaemon> {
  const d = await startTestDaemon({ dir: tempDir(`slipway-daemon-${name}-`), ...opts });
  daemons.push(d);
  return d;
}

async function sh(client: SlipwayClient, id: string, script: string): Promise<{ code: number; out: string; err: string }> {
  const r = await client.exec(id, { argv: ['sh', '-c', script] });
  return { code: r.exitCode, out: r.stdout.toString(), err: r.stderr.toString() };
}

/** Raw HTTP over the daemon's Unix socket, for requests the typed client would never send. */
async function raw(d: TestDaemon, method: 'GET' | 'POST' | 'DELETE', path: string, body?: string, headers: Record<string, string> = {}): Promise<{ status: number; json: { error?: { code: string; message: string; field?: string } } & Record<string, unknown> }> {
  const { Agent } = await import('undici');
  const agent = new Agent({ connect: { socketPath: d.socket } });
  try {
    const res = await request(`http://localhost${path}`, { method, dispatcher: agent, headers: { 'content-type': 'application/json', ...headers }, ...(body !== undefined ? { body } : {}) });
    const text = await res.body.text();
    return { status: res.statusCode, json: text ? (JSON.parse(text) as never) : ({} as never) };
  } finally {
    await agent.close();
  }
}

beforeAll(async () => {
  const disk = await busyboxGuest(work);
  registry = await startRegistry();
  image = `${registry.host}/daemon/root:v1`;
  expect(await main(['push', disk, image, '--progress=none'], captureIO())).toBe(0);
  d1 = await daemon('one', { tcp: true });
}, 1_800_000);

afterAll(async () => {
  for (const d of daemons) await d.dispose();
  await targets.close();
  await registry?.stop();
});

describe('the daemon', () => {
  it('listens on a Unix socket only its owner may open (mode 0600)', () => {
    expect(statSync(d1.socket).mode & 0o777).toBe(0o600);
  });

  it('refuses to start a second daemon on the same state directory', async () => {
    await expect(startTestDaemon({ dir: tempDir('slipway-daemon-second-'), stateDir: d1.stateDir })).rejects.toThrow(/error CONFLICT: another slipway daemon \(pid \d+\) uses the state directory/);
    expect((await d1.client.health()).ok).toBe(true);
  });

  it('boots, runs commands, snapshots a written file into the registry, and a second daemon with a fresh cache boots the snapshot and finds the file', async () => {
    const vm = await d1.client.createVm({ image });
    expect(vm.status).toBe('running');
    expect(vm.digest).toMatch(/^sha256:[0-9a-f]{64}$/);
    expect(Object.keys(vm.timings)).toEqual(['backend_up', 'vmm_started', 'agent_ready']);
    expect((await d1.client.getVm(vm.id)).id).toBe(vm.id);
    // output streams back, the exit status passes through
    const r = await sh(d1.client, vm.id, 'echo out; echo err >&2; exit 7');
    expect(r).toEqual({ code: 7, out: 'out\n', err: 'err\n' });
    const secret = `payload-${Date.now()}`;
    expect((await sh(d1.client, vm.id, `echo ${secret} > /root/file.txt && sync && cat /root/file.txt`)).out).toBe(`${secret}\n`);

    const s1 = `${registry.host}/daemon/root:s1`;
    const snap = await d1.client.snapshot(vm.id, s1);
    expect(snap.base).toBe(vm.digest);
    expect(snap.dirtyChunks).toBeGreaterThan(0);
    expect(snap.newChunks).toBeLessThanOrEqual(snap.dirtyChunks);
    // the delta refers to its base: subject and config.base name the base manifest
    const art = await openDiskArtifact(await targets.open(parseRef(s1)), 's1');
    expect(art.manifest.subject?.digest).toBe(vm.digest);
    expect(art.config.base?.digest).toBe(vm.digest);
    expect(art.manifestDescriptor.digest).toBe(snap.digest);
    // the VM goes on after the snapshot (thawed): it can still write
    expect((await sh(d1.client, vm.id, 'echo more > /root/more.txt && cat /root/more.txt')).out).toBe('more\n');
    await d1.client.deleteVm(vm.id);
    await expect(d1.client.getVm(vm.id)).rejects.toMatchObject({ code: 'VM_NOT_FOUND' });
    expect(processesWith(join('vms', vm.id))).toEqual([]);
    // the snapshot's own chunks were kept in this host's cache: booting it here fetches no chunk
    for (let i = 0; i < 200 && !d1.log().includes('"msg":"snapshot chunks kept in the host cache"'); i++) await new Promise((r) => setTimeout(r, 50));
    expect(d1.log()).toMatch(/"msg":"snapshot chunks kept in the host cache".*"chunks":[1-9]/);
    const chunksBefore = ((await d1.client.cache()) as { remote: { chunks: number } }).remote.chunks;
    const here = await d1.client.createVm({ image: s1 });
    expect((await sh(d1.client, here.id, 'cat /root/file.txt')).out).toBe(`${secret}\n`);
    expect(((await d1.client.cache()) as { remote: { chunks: number } }).remote.chunks).toBe(chunksBefore);
    await d1.client.deleteVm(here.id);

    // another host: its own daemon, an empty cache
    const d2 = await daemon('two');
    const vm2 = await d2.client.createVm({ image: s1 });
    expect((await sh(d2.client, vm2.id, 'cat /root/file.txt')).out).toBe(`${secret}\n`);
    const stats = (await d2.client.cache()) as { remote: { bytes: number; chunks: number } };
    expect(stats.remote.bytes).toBeGreaterThan(0);
    const freshBootChunks = stats.remote.chunks;

    // a snapshot of that snapshot chains: its base is s1
    await sh(d2.client, vm2.id, 'echo second > /root/second.txt && sync');
    const s2 = `${registry.host}/daemon/root:s2`;
    const snap2 = await d2.client.snapshot(vm2.id, s2);
    expect(snap2.base).toBe(snap.digest);
    const art2 = await openDiskArtifact(await targets.open(parseRef(s2)), 's2');
    expect(art2.manifest.subject?.digest).toBe(snap.digest);
    await d2.client.deleteVm(vm2.id);
    // this host has the base's chunks cached: booting s2 fetches only chunks the snapshots added
    const before = ((await d1.client.cache()) as { remote: { chunks: number } }).remote.chunks;
    const vm3 = await d1.client.createVm({ image: s2 });
    const fetchedForS2 = ((await d1.client.cache()) as { remote: { chunks: number } }).remote.chunks - before;
    expect(fetchedForS2).toBeLessThanOrEqual(snap.newChunks + snap2.newChunks);
    // ...fewer than the same kind of boot on an empty cache (host two's boot of s1)
    expect(fetchedForS2).toBeLessThan(freshBootChunks);
    expect((await sh(d1.client, vm3.id, 'cat /root/file.txt /root/second.txt')).out).toBe(`${secret}\nsecond\n`);
    await d1.client.deleteVm(vm3.id);
  });

  it('boots three VMs at once, each its own machine', async () => {
    const vms = await Promise.all([0, 1, 2].map(() => d1.client.createVm({ image, env: { ROLE: 'worker' } })));
    expect(new Set(vms.map((v) => v.id)).size).toBe(3);
    const listed = (await d1.client.listVms()).map((v) => v.id);
    for (const v of vms) expect(listed).toContain(v.id);
    const names = await Promise.all(vms.map(async (v) => (await sh(d1.client, v.id, 'echo $(hostname) $ROLE')).out.trim()));
    expect(names).toEqual(vms.map((v) => `vm-${v.id} worker`));
    await Promise.all(vms.map((v) => d1.client.deleteVm(v.id)));
    expect(await d1.client.listVms()).toEqual([]);
  });

  it('killed (SIGKILL) while a VM runs: the VM and its backend run on, and the restarted daemon adopts them', async () => {
    const d = await daemon('restart');
    const vm = await d.client.createVm({ image });
    await sh(d.client, vm.id, 'echo before > /root/before.txt && sync');
    const procs = processesWith(join('vms', vm.id));
    expect(procs.length).toBe(2); // QEMU and slipway-blk
    await d.kill();
    await new Promise((r) => setTimeout(r, 500));
    expect(processesWith(join('vms', vm.id)).sort()).toEqual([...procs].sort());
    // while no daemon runs, the backend's pins hold: evicting everything evictable from the cache
    // directory (another slipway process) leaves the running VM's chunks in place
    const gc = captureIO();
    expect(await main(['cache', 'gc', '--max-size', '0', '--cache-dir', d.cacheDir], gc), gc.err).toBe(0);
    const stats = captureIO();
    expect(await main(['cache', 'stats', '--cache-dir', d.cacheDir], stats)).toBe(0);
    const disk = (JSON.parse(stats.out) as { disk: { chunks: number; pinnedChunks: number; holders: number } }).disk;
    expect(disk.holders).toBe(1);
    expect(disk.pinnedChunks).toBeGreaterThan(0);
    expect(disk.chunks).toBeGreaterThan(0);
    // while no daemon runs, the guest and its disk go on: reach its agent directly and read files
    const direct = await waitForAgent(() => new Promise<Duplex>((resolve, reject) => {
      const sock = connect(join(d.stateDir, 'vms', vm.id, 'agent.sock'));
      sock.once('connect', () => resolve(sock));
      sock.once('error', reject);
    }), 30_000);
    try {
      const r = await direct.exec(['sh', '-c', 'cat /root/before.txt && ls /bin | wc -l']);
      expect(r.exitCode).toBe(0);
      expect(r.stdout.toString()).toMatch(/^before\n\s*[1-9]\d*\n$/);
    } finally {
      await direct.close();
    }
    const again = await daemon('restart2', { stateDir: d.stateDir, cacheDir: d.cacheDir, args: [] });
    // same socket directory layout is not needed: state and cache are what carry over
    const got = await again.client.getVm(vm.id);
    expect(got.status).toBe('running');
    expect((await sh(again.client, vm.id, 'cat /root/before.txt; echo after > /root/after.txt; cat /root/after.txt')).out).toBe('before\nafter\n');
    await again.client.deleteVm(vm.id);
    expect(processesWith(join('vms', vm.id))).toEqual([]);
  });

  it('killed (SIGKILL) with its VM\'s processes: the restarted daemon removes the VM and what it held on tmpfs', async () => {
    const d = await daemon('lost');
    const vm = await d.client.createVm({ image });
    const ramFile = ramFileOf(vm.id);
    expect(existsSync(ramFile)).toBe(true);
    const procs = processesWith(join('vms', vm.id));
    expect(procs.length).toBe(2); // QEMU and slipway-blk
    await d.kill();
    // as if the host's OOM killer had taken the VM too, and the daemon had died staging a memory snapshot's RAM
    for (const pid of procs) process.kill(pid, 'SIGKILL');
    for (let i = 0; i < 200 && processesWith(join('vms', vm.id)).length > 0; i++) await new Promise((r) => setTimeout(r, 25));
    expect(processesWith(join('vms', vm.id))).toEqual([]);
    const staged = `/dev/shm/slipway-staging-${vm.id}-0badc0de.ram`;
    writeFileSync(staged, Buffer.alloc(4096, 1));
    const again = await daemon('lost2', { stateDir: d.stateDir, cacheDir: d.cacheDir, args: [] });
    await expect(again.client.getVm(vm.id)).rejects.toMatchObject({ code: 'VM_NOT_FOUND' });
    expect([existsSync(ramFile), existsSync(staged), existsSync(join(d.stateDir, 'vms', vm.id))]).toEqual([false, false, false]);
  });

  it('killed in the middle of a snapshot (or with the guest frozen): the tag stays as it was, and after a restart the VM runs and writes', async () => {
    const d = await daemon('midsnap');
    const vm = await d.client.createVm({ image });
    await sh(d.client, vm.id, 'dd if=/dev/urandom of=/root/noise bs=64k count=32 2>/dev/null && sync');
    const before = await manifestDigest(registry.host, 'daemon/root', 's1');
    // a slow registry: every blob and manifest request held for a second, so the push is under way when the daemon dies
    const proxy = await startChaosProxy({ target: registry.host });
    proxy.delay(1000, 'any');
    try {
      const pending = d.client.snapshot(vm.id, `${proxy.host}/daemon/root:s1`).catch((err: unknown) => err);
      for (let i = 0; i < 300 && !d.log().includes('"msg":"snapshot staged"'); i++) await new Promise((r) => setTimeout(r, 50));
      expect(d.log()).toContain('"msg":"snapshot staged"');
      await d.kill();
      expect(await pending).toMatchObject({ code: 'DAEMON_UNREACHABLE' });
    } finally {
      await proxy.stop();
    }
    expect(await manifestDigest(registry.host, 'daemon/root', 's1')).toBe(before);
    // as if the daemon had died between freezing the guest's file system and thawing it
    const direct = await waitForAgent(() => new Promise<Duplex>((resolve, reject) => {
      const sock = connect(join(d.stateDir, 'vms', vm.id, 'agent.sock'));
      sock.once('connect', () => resolve(sock));
      sock.once('error', reject);
    }), 30_000);
    await direct.fsfreeze('/');
    await direct.close();
    const again = await daemon('midsnap2', { stateDir: d.stateDir, cacheDir: d.cacheDir });
    const r = await again.client.exec(vm.id, { argv: ['sh', '-c', 'echo written > /root/after-crash && cat /root/after-crash'], timeoutMs: 30_000 });
    expect({ code: r.exitCode, out: r.stdout.toString(), timedOut: r.timedOut }).toEqual({ code: 0, out: 'written\n', timedOut: false });
    expect(existsSync(join(d.stateDir, 'staging')) ? readdirSync(join(d.stateDir, 'staging')) : []).toEqual([]);
    await again.client.deleteVm(vm.id);
  });

  it('stopped right after a snapshot, lets the snapshot\'s chunks into its cache before it closes the cache', async () => {
    const d = await daemon('stop-after-snapshot');
    const vm = await d.client.createVm({ image });
    // enough dirty chunks that keeping them in the cache outlasts the stop, were it not waited for
    const wrote = await sh(d.client, vm.id, 'dd if=/dev/urandom of=/root/noise bs=1M count=20 && sync');
    expect(wrote.code, wrote.err).toBe(0);
    const snap = await d.client.snapshot(vm.id, `${registry.host}/daemon/root:stop-after`);
    expect(snap.dirtyChunks).toBeGreaterThanOrEqual(40);
    await d.stop();
    expect(d.log()).not.toContain('could not keep the snapshot chunks in the host cache');
    expect(d.log()).toMatch(/"msg":"snapshot chunks kept in the host cache".*"chunks":\d{2}/);
  });

  it('a snapshot whose push fails leaves the target tag as it was and the VM running', async () => {
    const vm = await d1.client.createVm({ image });
    await sh(d1.client, vm.id, 'dd if=/dev/urandom of=/root/noise bs=64k count=16 2>/dev/null && sync');
    const before = await manifestDigest(registry.host, 'daemon/root', 's1');
    expect(before).toBeDefined();
    // the same registry behind a proxy that fails every blob upload
    const proxy = await startFaultProxy({ target: registry.host, mode: '500', passBlobPuts: 0 });
    try {
      await expect(d1.client.snapshot(vm.id, `${proxy.host}/daemon/root:s1`)).rejects.toMatchObject({ code: expect.stringMatching(/REGISTRY_ERROR|REGISTRY_UNREACHABLE/) });
    } finally {
      await proxy.stop();
    }
    expect(await manifestDigest(registry.host, 'daemon/root', 's1')).toBe(before);
    expect((await sh(d1.client, vm.id, 'echo alive')).out).toBe('alive\n');
    // and a snapshot goes through again afterwards
    const ok = await d1.client.snapshot(vm.id, `${registry.host}/daemon/root:after-failure`);
    expect(ok.dirtyChunks).toBeGreaterThan(0);
    await d1.client.deleteVm(vm.id);
  });

  it('survives exec clients that go away mid-stream, and one that stops reading has its command killed', async () => {
    const vm = await d1.client.createVm({ image });
    const request = (argv: string[]): string => {
      const body = JSON.stringify({ argv });
      return `POST /v1/vms/${vm.id}/exec HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`;
    };
    // 1. a client that hangs up once the output has started
    await new Promise<void>((resolve, reject) => {
      const sock = connect(d1.socket, () => sock.write(request(['sh', '-c', 'echo started; exec sleep 30'])));
      sock.on('data', (d: Buffer) => {
        if (d.toString().includes('started')) {
          sock.destroy();
          resolve();
        }
      });
      sock.on('error', reject);
    });
    await new Promise((r) => setTimeout(r, 1000));
    expect(d1.proc.exitCode).toBeNull();
    expect((await d1.client.health()).ok).toBe(true);
    // its command was killed with the stream
    expect((await sh(d1.client, vm.id, 'ps | grep -c "[s]leep 30" || true')).out.trim()).toBe('0');

    // 2. a client that stops reading while the guest writes without end: the daemon holds at most
    // MAX_QUEUED_OUTPUT_BYTES for it, then kills the command and ends the stream with an error line
    const text = await new Promise<string>((resolve, reject) => {
      const chunks: Buffer[] = [];
      const sock = connect(d1.socket, () => {
        sock.write(request(['sh', '-c', 'yes 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef']));
        sock.pause();
        setTimeout(() => sock.resume(), 15_000);
      });
      sock.on('data', (d: Buffer) => chunks.push(d));
      sock.on('end', () => resolve(Buffer.concat(chunks).toString()));
      sock.on('error', reject);
    });
    // (the body is chunked: the error line is the last line of NDJSON before the final chunk)
    expect(text).toMatch(/"code":"LIMIT_EXCEEDED"[^\n]*the command was killed[^\n]*\n(\r\n)?0\r\n\r\n$/);
    expect((await sh(d1.client, vm.id, 'ps | grep -c "[y]es 0123" || true')).out.trim()).toBe('0');
    await d1.client.deleteVm(vm.id);
  });

  it('rejects malformed and oversized requests with a 4xx naming what was wrong, and stays up', async () => {
    const cases: [string, 'GET' | 'POST' | 'DELETE', string, string | undefined, number, string, RegExp][] = [
      ['not JSON', 'POST', '/v1/vms', '{"image":', 400, 'INVALID_ARGUMENT', /not JSON/],
      ['no image', 'POST', '/v1/vms', '{}', 400, 'INVALID_ARGUMENT', /^image:/],
      ['an unknown field', 'POST', '/v1/vms', JSON.stringify({ image, kernel: '/boot/vmlinuz' }), 400, 'INVALID_ARGUMENT', /^kernel: unknown field/],
      ['cpus 0', 'POST', '/v1/vms', JSON.stringify({ image, cpus: 0 }), 400, 'INVALID_ARGUMENT', /^cpus:/],
      ['cpus as text', 'POST', '/v1/vms', JSON.stringify({ image, cpus: 'two' }), 400, 'INVALID_ARGUMENT', /^cpus:/],
      ['a host path as image', 'POST', '/v1/vms', JSON.stringify({ image: 'oci:/etc' }), 400, 'INVALID_ARGUMENT', /host directory/],
      ['a bad reference', 'POST', '/v1/vms', JSON.stringify({ image: 'UPPER/Case::x' }), 400, 'INVALID_ARGUMENT', /^image:/],
      ['a bad env name', 'POST', '/v1/vms', JSON.stringify({ image, env: { 'A-B': '1' } }), 400, 'INVALID_ARGUMENT', /^env\.A-B:/],
      ['a bad VM id', 'GET', '/v1/vms/..%2F..%2Fetc', undefined, 400, 'INVALID_ARGUMENT', /^id:/],
      ['an unknown VM', 'GET', '/v1/vms/0123456789ab', undefined, 404, 'VM_NOT_FOUND', /0123456789ab/],
      ['delete of an unknown VM', 'DELETE', '/v1/vms/0123456789ab', undefined, 404, 'VM_NOT_FOUND', /0123456789ab/],
      ['exec with an empty argv', 'POST', '/v1/vms/0123456789ab/exec', JSON.stringify({ argv: [] }), 400, 'INVALID_ARGUMENT', /^argv:/],
      ['exec with a relative cwd', 'POST', '/v1/vms/0123456789ab/exec', JSON.stringify({ argv: ['ls'], cwd: 'tmp' }), 400, 'INVALID_ARGUMENT', /^cwd:/],
      ['exec in an unknown VM', 'POST', '/v1/vms/0123456789ab/exec', JSON.stringify({ argv: ['ls'] }), 404, 'VM_NOT_FOUND', /0123456789ab/],
      ['snapshot to a host path', 'POST', '/v1/vms/0123456789ab/snapshot', JSON.stringify({ ref: 'oci:/tmp/x:1' }), 400, 'INVALID_ARGUMENT', /host directory/],
      ['a body over 64 KiB', 'POST', '/v1/vms', JSON.stringify({ image, pad: 'x'.repeat(70_000) }), 413, 'LIMIT_EXCEEDED', /over 65536 bytes/],
      ['an unknown route', 'GET', '/v1/nothing', undefined, 404, 'UNSUPPORTED', /no route/],
    ];
    for (const [what, method, path, body, status, code, message] of cases) {
      const r = await raw(d1, method, path, body);
      expect(r.status, what).toBe(status);
      expect(r.json.error?.code, what).toBe(code);
      expect(r.json.error?.message, what).toMatch(message);
    }
    // a snapshot without a tag, for a VM that exists
    const vm = await d1.client.createVm({ image });
    await expect(d1.client.snapshot(vm.id, `${registry.host}/daemon/root@sha256:${'0'.repeat(64)}`)).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    await d1.client.deleteVm(vm.id);
    expect((await d1.client.health()).ok).toBe(true);
  });

  it('on TCP, answers 401 without the right bearer token and serves the API, metrics and OpenAPI with it', async () => {
    const tcp = d1.tcp as { host: string; port: number };
    expect(tcp.port).toBeGreaterThan(0);
    const base = `http://${tcp.host}:${tcp.port}`;
    for (const headers of [{}, { authorization: 'Bearer wrong-token-wrong-token' }, { authorization: `Basic ${Buffer.from(`x:${d1.token}`).toString('base64')}` }, { authorization: `Bearer ${d1.token}x` }]) {
      for (const path of ['/v1/vms', '/metrics', '/openapi.json']) {
        const r = await request(`${base}${path}`, { headers });
        expect(r.statusCode, `${path} ${JSON.stringify(headers)}`).toBe(401);
        expect(((await r.body.json()) as { error: { code: string } }).error.code).toBe('UNAUTHORIZED');
      }
    }
    const post = await request(`${base}/v1/vms`, { method: 'POST', body: JSON.stringify({ image }), headers: { 'content-type': 'application/json' } });
    expect(post.statusCode).toBe(401);
    await post.body.dump();
    expect(await d1.client.listVms()).toEqual([]); // nothing was booted by that request

    const client = new SlipwayClient({ url: base, token: d1.token as string });
    try {
      expect((await client.health()).ok).toBe(true);
      const metrics = await client.metrics();
      expect(metrics).toMatch(/^# TYPE slipway_vm_boots_total counter$/m);
      expect(metrics).toMatch(/^slipway_vm_boots_total\{result="ok"\} [1-9]\d*$/m);
      expect(metrics).toMatch(/^slipway_vm_boot_phase_seconds_bucket\{phase="agent_ready",le="\+Inf"\} [1-9]\d*$/m);
      expect(metrics).toMatch(/^slipway_cache_hits_total\{tier="remote"\} \d+$/m);
      expect(metrics).toMatch(/^slipway_snapshots_total\{result="failed"\} [1-9]\d*$/m);
      const doc = (await (await request(`${base}/openapi.json`, { headers: { authorization: `Bearer ${d1.token}` } })).body.json()) as { openapi: string; paths: Record<string, unknown>; components: { schemas: Record<string, { additionalProperties?: boolean }> } };
      expect(doc.openapi).toBe('3.1.0');
      expect(Object.keys(doc.paths)).toEqual(expect.arrayContaining(['/v1/vms', '/v1/vms/{id}', '/v1/vms/{id}/exec', '/v1/vms/{id}/snapshot', '/v1/images/prefetch', '/v1/cache', '/metrics']));
      for (const s of ['CreateVm', 'Exec', 'Snapshot', 'Prefetch']) expect(doc.components.schemas[s]?.additionalProperties, s).toBe(false);
      // prefetch fills the cache with the whole disk
      const pf = await client.prefetch(image);
      expect(pf.chunks).toBeGreaterThan(0);
      // the daemon has opened the disk: its manifest is in the metadata cache, counted
      expect(await client.metrics()).toMatch(/^slipway_cache_metadata_bytes [1-9]\d*$/m);
    } finally {
      await client.close();
    }
  });

  it('refuses boots over its VM limit with 429 LIMIT_EXCEEDED, counting boots still in flight', async () => {
    const d = await daemon('limited', { args: ['--max-vms', '1'] });
    // two creates at once: the second is refused even though the first has no row yet
    const [first, second] = await Promise.allSettled([d.client.createVm({ image }), d.client.createVm({ image })]);
    const results = [first, second];
    const ok = results.filter((r) => r.status === 'fulfilled');
    const refused = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
    expect(ok.length).toBe(1);
    expect(refused.length).toBe(1);
    expect(refused[0]?.reason).toMatchObject({ code: 'LIMIT_EXCEEDED', context: { status: 429 } });
    expect((await d.client.listVms()).length).toBe(1);
    await d.client.deleteVm((ok[0] as PromiseFulfilledResult<{ id: string }>).value.id);
    // room again
    const again = await d.client.createVm({ image });
    await d.client.deleteVm(again.id);
  });

  it('runs the example scheduler of docs/api.md: ten VMs, a command in each, a snapshot, all deleted', async () => {
    const out = await new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
      execFile('npx', ['tsx', join(PROJECT_ROOT, 'docs', 'examples', 'scheduler.ts')], {
        env: { ...process.env, SLIPWAY_DAEMON: d1.socket, IMAGE: image, SNAPSHOT_REF: `${registry.host}/daemon/root:worker-0` }, timeout: 600_000,
      }, (err, stdout, stderr) => resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr }));
    });
    expect(out.code, out.stderr).toBe(0);
    expect(out.stderr).toBe('');
    const workers = out.stdout.split('\n').filter((l) => /^[0-9a-f]{12}: exit 0: worker \d+ on vm-[0-9a-f]{12}$/.test(l));
    expect(workers.length).toBe(10);
    expect(out.stdout).toMatch(/^snapshot \S+:worker-0@sha256:[0-9a-f]{64} \(base sha256:[0-9a-f]{64}\): [1-9]\d* dirty chunks/m);
    expect(out.stdout).toMatch(/^0 VM\(s\) left on this host$/m);
    expect(await manifestDigest(registry.host, 'daemon/root', 'worker-0')).toMatch(/^sha256:/);
  });

  it('slipway run <image> goes through the daemon when one is named, and leaves no VM behind', async () => {
    const io = captureIO();
    expect(await main(['run', image, '--daemon', d1.socket, '--', 'sh', '-c', 'hostname; exit 4'], io)).toBe(4);
    // the daemon names its VMs vm-<12 hex digits> (a local run: vm-<8>)
    expect(io.out).toMatch(/^vm-[0-9a-f]{12}\n$/);
    expect(await d1.client.listVms()).toEqual([]);
    // a program the guest lacks: 127, as a shell exits (the code travels in the exec stream's error line)
    const missing = captureIO();
    expect(await main(['run', image, '--daemon', d1.socket, '--', '/no/such/program'], missing)).toBe(127);
    expect(missing.err).toMatch(/error COMMAND_NOT_FOUND: .*execve \/no\/such\/program/);
    expect(await d1.client.listVms()).toEqual([]);
  });

  it('a tag that does not exist, through the daemon: run and vm create name the tags the repository has', async () => {
    expect(await main(['copy', image, `${registry.host}/daemon/tags:exists`, '--progress=none'], captureIO())).toBe(0);
    const missing = `${registry.host}/daemon/tags:nope`;
    const ran = captureIO();
    expect(await main(['run', missing, '--daemon', d1.socket, '--', 'true'], ran)).not.toBe(0);
    expect(ran.err).toMatch(/error TAG_UNKNOWN: tag nope does not exist in \S*daemon\/tags\b.*; its tags: exists\n/);
    const saved = process.env.SLIPWAY_DAEMON;
    process.env.SLIPWAY_DAEMON = d1.socket;
    try {
      const created = captureIO();
      expect(await main(['vm', 'create', missing], created)).not.toBe(0);
      expect(created.err).toMatch(/error TAG_UNKNOWN: tag nope does not exist in \S*daemon\/tags\b.*; its tags: exists\n/);
      // a repository that does not exist has no tags to name
      const none = captureIO();
      expect(await main(['vm', 'create', `${registry.host}/daemon/never-pushed:nope`], none)).not.toBe(0);
      expect(none.err).toContain('error TAG_UNKNOWN');
      expect(none.err).not.toContain('its tags');
    } finally {
      if (saved === undefined) delete process.env.SLIPWAY_DAEMON;
      else process.env.SLIPWAY_DAEMON = saved;
    }
    expect(await d1.client.listVms()).toEqual([]);
  });

  it('the slipway vm commands drive it through the client', async () => {
    const io = captureIO();
    const saved = process.env.SLIPWAY_DAEMON;
    process.env.SLIPWAY_DAEMON = d1.socket;
    try {
      expect(await main(['vm', 'create', image, '--cpus', '1', '--memory', '256M'], io)).toBe(0);
      const vm = JSON.parse(io.out) as { id: string; memoryMiB: number };
      expect(vm.memoryMiB).toBe(256);
      const io2 = captureIO();
      expect(await main(['vm', 'exec', vm.id, '--', 'sh', '-c', 'echo hi; exit 3'], io2)).toBe(3);
      expect(io2.out).toBe('hi\n');
      // a command killed at --timeout says so (its status alone looks like any SIGKILL)
      const slow = captureIO();
      expect(await main(['vm', 'exec', vm.id, '--timeout', '1', '--', 'sleep', '30'], slow)).toBe(137);
      expect(slow.err).toBe('slipway vm exec: the command ran past --timeout 1 s and was killed (SIGKILL)\n');
      // ...also when its first process exited 0 and a background job kept its output open
      const held = captureIO();
      expect(await main(['vm', 'exec', vm.id, '--timeout', '1', '--', 'sh', '-c', 'sleep 30 & echo started'], held)).toBe(137);
      expect(held.out).toBe('started\n');
      expect(held.err).toContain('ran past --timeout 1 s');
      // and one the guest does not have exits 127, as a shell does
      const missing = captureIO();
      expect(await main(['vm', 'exec', vm.id, '--', 'no-such-command'], missing)).toBe(127);
      expect(missing.err).toMatch(/^slipway vm: error COMMAND_NOT_FOUND: /);
      expect(await main(['vm', 'rm', vm.id], captureIO())).toBe(0);
      const io3 = captureIO();
      expect(await main(['vm', 'show', vm.id], io3)).toBe(1);
      expect(io3.err).toMatch(/error VM_NOT_FOUND: /);
    } finally {
      if (saved === undefined) delete process.env.SLIPWAY_DAEMON;
      else process.env.SLIPWAY_DAEMON = saved;
    }
  });
});
