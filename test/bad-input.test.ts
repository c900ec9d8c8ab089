/**
 * Bad input through the real CLI (`main()` with captured output): every failure exits non-zero
 * with `error <CODE>:` and a message naming what was wrong, leaves no half-written output file,
 * and a push that fails part-way leaves the tag where it was.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, openSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync, writeSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import { MEDIA_TYPE_DISK_PACK } from '../src/disk/format.js';
import { freePort, startRegistry, type TestRegistry } from './helpers/registry.js';
import { makeSparse, sha256File, tempDir } from './helpers/images.js';
import { jsonOut, runCli, type CliResult } from './helpers/run-cli.js';
import { manifestDigest, pushPlainImage } from './helpers/oci-http.js';
import { startFaultProxy, type FaultMode } from './helpers/fault-proxy.js';

const work = tempDir('slipway-bad-input-');
let registry: TestRegistry;

beforeAll(async () => {
  registry = await startRegistry();
});
afterAll(async () => {
  await registry?.stop();
  rmSync(work, { recursive: true, force: true });
});

function expectError(r: CliResult, code: string, exitCode = 1): void {
  expect(r.code, `expected exit ${exitCode}; stderr: ${r.stderr}`).toBe(exitCode);
  expect(r.stdout).toBe('');
  expect(r.stderr).toMatch(new RegExp(`^slipway \\w+: error ${code}: `));
}

/** A 4 MiB disk with random data in a few places (incompressible, so packs are as big as the data). */
function disk(name: string, regions = [{ offset: 0, length: 300 << 10 }, { offset: 1 << 20, length: 700 << 10 }, { offset: 3 << 20, length: 512 << 10 }]): string {
  return makeSparse(join(work, name), 4 << 20, regions);
}

/** Nothing named after `out` in its directory: neither the file nor a temporary beside it. */
function expectNoOutput(out: string): void {
  expect(existsSync(out)).toBe(false);
  const dir = join(out, '..');
  const base = out.slice(dir.length + 1);
  expect(readdirSync(dir).filter((f) => f.includes(base))).toEqual([]);
}

interface LayoutManifest {
  layers: { mediaType: string; digest: string; size: number }[];
}

function layoutManifest(layout: string, tag: string): LayoutManifest {
  const index = JSON.parse(readFileSync(join(layout, 'index.json'), 'utf8')) as { manifests: { digest: string; annotations?: Record<string, string> }[] };
  const entry = index.manifests.find((m) => m.annotations?.['org.opencontainers.image.ref.name'] === tag);
  if (!entry) throw new Error(`tag ${tag} not in ${layout}`);
  return JSON.parse(readFileSync(join(layout, 'blobs', 'sha256', entry.digest.slice(7)), 'utf8')) as LayoutManifest;
}

/** Overwrite `length` bytes at `offset` of a file with different bytes (the size stays the same). */
function corrupt(path: string, offset: number, length: number): void {
  const before = readFileSync(path).subarray(offset, offset + length);
  const after = Buffer.from(before.map((b) => b ^ 0x5a));
  const fd = openSync(path, 'r+');
  try {
    writeSync(fd, after, 0, after.length, offset);
  } finally {
    closeSync(fd);
  }
}

describe('bad local input', () => {
  it('a missing image file: FILE_NOT_FOUND naming the file', async () => {
    const missing = join(work, 'no-such-disk.img');
    const r = await runCli(['push', missing, `oci:${join(work, 'missing-file-layout')}:v1`]);
    expectError(r, 'FILE_NOT_FOUND');
    expect(r.stderr).toContain(missing);
    expect(r.stderr).toMatch(/does not exist/);
  });

  it('a push refused for bad input leaves nothing at an oci: destination', async () => {
    const missing = join(work, 'no-such-disk-2.img');
    const layout1 = join(work, 'untouched-layout-1');
    expectError(await runCli(['push', missing, `oci:${layout1}:v1`]), 'FILE_NOT_FOUND');
    const layout2 = join(work, 'untouched-layout-2');
    expectError(await runCli(['push', disk('untouched.img'), `oci:${layout2}:v1`, '--chunk-size', '1000']), 'INVALID_ARGUMENT');
    expect(existsSync(layout1)).toBe(false);
    expect(existsSync(layout2)).toBe(false);
  });

  it('a mistyped name in the embedded store, or a missing oci: directory: NAME_UNKNOWN naming the directory and the names the store holds', async () => {
    const store = join(work, 'named-store');
    const env = { SLIPWAY_STORE: store };
    jsonOut(await runCli(['push', disk('named.img'), 'ci-runner:v1', '--progress=none'], env));
    const r = await runCli(['inspect', 'ci-runer:v1'], env);
    expectError(r, 'NAME_UNKNOWN');
    expect(r.stderr).toContain(join(store, 'ci-runer'));
    expect(r.stderr).toContain(`${store} holds: ci-runner`);
    const missing = join(work, 'no-such-layout');
    const o = await runCli(['inspect', `oci:${missing}:v1`]);
    expectError(o, 'NAME_UNKNOWN');
    expect(o.stderr).toContain(`no image layout at ${missing}`);
  });

  it('run --disk with a missing file: FILE_NOT_FOUND before any VMM starts', async () => {
    const missing = join(work, 'no-such-root.img');
    const r = await runCli(['run', '--disk', missing, '--', 'true']);
    expectError(r, 'FILE_NOT_FOUND');
    expect(r.stderr).toContain(missing);
  });

  it('an image whose size is not a multiple of 512: INVALID_DISK_IMAGE with the size', async () => {
    const odd = join(work, 'odd.img');
    writeFileSync(odd, randomBytes(512 * 8 + 100));
    const r = await runCli(['push', odd, `oci:${join(work, 'odd-layout')}:v1`]);
    expectError(r, 'INVALID_DISK_IMAGE');
    expect(r.stderr).toContain(odd);
    expect(r.stderr).toContain(String(512 * 8 + 100));
    expect(r.stderr).toMatch(/multiple of 512/);
  });

  it('an empty image and a directory: INVALID_DISK_IMAGE', async () => {
    const empty = join(work, 'empty.img');
    writeFileSync(empty, '');
    const r1 = await runCli(['push', empty, `oci:${join(work, 'empty-layout')}:v1`]);
    expectError(r1, 'INVALID_DISK_IMAGE');
    expect(r1.stderr).toMatch(/empty/);
    const dir = join(work, 'a-directory');
    mkdirSync(dir);
    const r2 = await runCli(['push', dir, `oci:${join(work, 'dir-layout')}:v1`]);
    expectError(r2, 'INVALID_DISK_IMAGE');
    expect(r2.stderr).toContain(dir);
  });

  it.each([
    ['abc', /"abc" is not a size \(e\.g\. 4096, 512K, 1M\)/],
    ['1000', /chunk size 1000 must be a power of two/],
    ['128M', /chunk size 134217728 must be a power of two between 4096 and 67108864/],
    ['2K', /chunk size 2048/],
  ])('--chunk-size %s: INVALID_ARGUMENT', async (value, message) => {
    const img = disk('chunk-size.img');
    const r = await runCli(['push', img, `oci:${join(work, 'chunk-layout')}:v1`, '--chunk-size', value]);
    expectError(r, 'INVALID_ARGUMENT');
    expect(r.stderr).toMatch(message);
    expect(r.stderr).toMatch(/chunk.size/);
  });

  it.each([
    ['pull', ['127.0.0.1:5000/Upper/Case:v1', 'out.img'], /invalid repository name/, '127.0.0.1:5000/Upper/Case:v1'],
    ['inspect', ['127.0.0.1:5000/repo:bad!tag'], /invalid tag "bad!tag"/, 'bad!tag'],
    ['pull', ['127.0.0.1:5000/repo@sha256:abc', 'out.img'], /invalid digest "sha256:abc"/, 'sha256:abc'],
    ['inspect', ['oci:'], /no directory in layout reference/, 'oci:'],
    ['inspect', [''], /empty image reference/, ''],
  ])('%s %j: INVALID_REFERENCE', async (command, args, message, named) => {
    const r = await runCli([command, ...args]);
    expectError(r, 'INVALID_REFERENCE');
    expect(r.stderr).toMatch(message);
    expect(r.stderr).toContain(named);
  });

  it('push to a digest instead of a tag: INVALID_REFERENCE', async () => {
    const ref = `${registry.host}/bad/digest@sha256:${'a'.repeat(64)}`;
    const r = await runCli(['push', disk('digest.img'), ref]);
    expectError(r, 'INVALID_REFERENCE');
    expect(r.stderr).toMatch(/needs a tag/);
  });

  it('an unknown command exits 2 with the usage', async () => {
    const r = await runCli(['frobnicate', 'x']);
    expect(r.code).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr).toMatch(/unknown command "frobnicate"/);
    expect(r.stderr).toMatch(/usage: slipway <command>/);
  });

  it('no command, an unknown option, or a missing argument exit 2', async () => {
    const none = await runCli([]);
    expect(none.code).toBe(2);
    expect(none.stdout).toMatch(/usage: slipway/);
    const opt = await runCli(['push', disk('opt.img'), `oci:${join(work, 'opt-layout')}:v1`, '--no-such-option']);
    expectError(opt, 'USAGE', 2);
    expect(opt.stderr).toMatch(/no-such-option/);
    const missing = await runCli(['pull', `${registry.host}/bad/x:v1`]);
    expectError(missing, 'USAGE', 2);
    expect(missing.stderr).toMatch(/expected 2 argument\(s\), got 1/);
    for (const group of ['vm', 'cache']) {
      const bare = await runCli([group]);
      expectError(bare, 'USAGE', 2);
      expect(bare.stderr).toContain(`${group}: give a subcommand\nusage: slipway ${group} `);
    }
  });

  it('run: a bad --prefetch, --timings or SLIPWAY_ACCEL names the value and what it may be', async () => {
    const prefetch = await runCli(['run', `${registry.host}/bad/x:v1`, '--local', '--prefetch', 'most', '--', 'true']);
    expectError(prefetch, 'INVALID_ARGUMENT', 1);
    expect(prefetch.stderr).toMatch(/--prefetch must be all, profile or none \(got most\)/);
    const timings = await runCli(['run', `${registry.host}/bad/x:v1`, '--timings=xml', '--', 'true']);
    expectError(timings, 'INVALID_ARGUMENT', 1);
    expect(timings.stderr).toMatch(/--timings takes json or waterfall \(got xml\)/);
    const accel = await runCli(['doctor', '--json'], { SLIPWAY_ACCEL: 'hvf', SLIPWAY_CACHE_DIR: tempDir('slipway-bad-accel-') });
    expectError(accel, 'INVALID_ARGUMENT', 1);
    expect(accel.stderr).toMatch(/SLIPWAY_ACCEL must be kvm, tcg or auto \(got "hvf"\)/);
    // a VM's shape: run and vm create check it the same way, before any VM or daemon is asked
    for (const cmd of [['run', `${registry.host}/bad/x:v1`, '--local'], ['vm', 'create', `${registry.host}/bad/x:v1`, '--daemon', join(work, 'no-daemon.sock')]]) {
      const small = await runCli([...cmd, '--memory', '16M', ...(cmd[0] === 'run' ? ['--', 'true'] : [])]);
      expectError(small, 'INVALID_ARGUMENT', 1);
      expect(small.stderr).toContain('--memory must be 64M to 1024G (got 16M)');
      const none = await runCli([...cmd, '--cpus', '0', ...(cmd[0] === 'run' ? ['--', 'true'] : [])]);
      expectError(none, 'INVALID_ARGUMENT', 1);
      expect(none.stderr).toContain('--cpus must be 1 to 64 (got 0)');
    }
    // a VM's memory: the examples are sizes a VM takes, and a bare number is MiB
    const memory = await runCli(['run', `${registry.host}/bad/x:v1`, '--local', '--memory', 'lots', '--', 'true']);
    expectError(memory, 'INVALID_ARGUMENT', 1);
    expect(memory.stderr).toContain('--memory: "lots" is not a size (e.g. 512M, 2G; a bare number is MiB)');
  });
});

describe('bad remote state', () => {
  it('an unreachable registry: REGISTRY_UNREACHABLE naming it, within a few seconds', async () => {
    const port = await freePort();
    const r = await runCli(['push', disk('unreachable.img'), `127.0.0.1:${port}/bad/unreachable:v1`]);
    expectError(r, 'REGISTRY_UNREACHABLE');
    expect(r.stderr).toContain(`127.0.0.1:${port}`);
    expect(r.stderr).toMatch(/ECONNREFUSED/);
    expect(r.ms).toBeLessThan(8000);

    const out = join(work, 'unreachable-pulled.img');
    const p = await runCli(['pull', `127.0.0.1:${port}/bad/unreachable:v1`, out]);
    expectError(p, 'REGISTRY_UNREACHABLE');
    expect(p.ms).toBeLessThan(8000);
    expectNoOutput(out);
  });

  it('pulling into a directory that does not exist: FILE_NOT_FOUND naming the directory', async () => {
    const ref = `${registry.host}/bad/outdir:v1`;
    jsonOut(await runCli(['push', disk('outdir.img'), ref]));
    const dir = join(work, 'no-such-dir');
    const r = await runCli(['pull', ref, join(dir, 'out.img')]);
    expectError(r, 'FILE_NOT_FOUND');
    expect(r.stderr).toContain(dir);
    expect(existsSync(dir)).toBe(false);
  });

  it('an ordinary container image in a registry: NOT_A_SLIPWAY_DISK for pull and inspect', async () => {
    await pushPlainImage(registry.host, 'bad/plain', 'v1');
    const ref = `${registry.host}/bad/plain:v1`;
    const out = join(work, 'plain.img');
    const p = await runCli(['pull', ref, out]);
    expectError(p, 'NOT_A_SLIPWAY_DISK');
    expect(p.stderr).toContain(`${registry.host}/bad/plain`);
    expect(p.stderr).toMatch(/config media type "application\/vnd\.oci\.image\.config\.v1\+json"/);
    expectNoOutput(out);
    const i = await runCli(['inspect', ref]);
    expectError(i, 'NOT_A_SLIPWAY_DISK');
  });

  it('an ordinary container image copied by skopeo into a layout: NOT_A_SLIPWAY_DISK', async () => {
    await pushPlainImage(registry.host, 'bad/plain-for-skopeo', 'v1');
    const layout = join(work, 'skopeo-plain');
    execFileSync('skopeo', ['copy', '--src-tls-verify=false', `docker://${registry.host}/bad/plain-for-skopeo:v1`, `oci:${layout}:plain`], { stdio: 'pipe' });
    const r = await runCli(['inspect', `oci:${layout}:plain`]);
    expectError(r, 'NOT_A_SLIPWAY_DISK');
    expect(r.stderr).toContain(layout);
  });

  it('a tag that does not exist: TAG_UNKNOWN naming the tag and the tags there are (registry repo, unknown repo, layout)', async () => {
    const img = disk('tag.img');
    // a referrers-fallback tag (as a boot profile's, on a registry without the referrers API) is not listed
    const fallback = `sha256-${'ab'.repeat(32)}`;
    for (const tag of ['exists', 'v2', fallback]) jsonOut(await runCli(['push', img, `${registry.host}/bad/tags:${tag}`]));
    const layout = join(work, 'tags-layout');
    jsonOut(await runCli(['push', img, `oci:${layout}:exists`]));
    for (const [ref, tags] of [[`${registry.host}/bad/tags:nope`, 'v2, exists'], [`${registry.host}/bad/never-pushed:nope`, undefined], [`oci:${layout}:nope`, 'exists']] as const) {
      const out = join(work, 'tag-unknown.img');
      const r = await runCli(['pull', ref, out]);
      expectError(r, 'TAG_UNKNOWN');
      expect(r.stderr).toMatch(/tag nope does not exist/);
      if (tags) expect(r.stderr).toContain(`; its tags: ${tags}\n`);
      else expect(r.stderr).not.toContain('its tags');
      expect(r.stderr).not.toContain(fallback);
      expectNoOutput(out);
      const inspected = await runCli(['inspect', ref]);
      expectError(inspected, 'TAG_UNKNOWN');
      if (tags) expect(inspected.stderr).toContain(`; its tags: ${tags}\n`);
    }
  });

  it('a pack blob with the wrong bytes in a layout: DIGEST_MISMATCH, no output file', async () => {
    const img = disk('mismatch.img');
    const layout = join(work, 'mismatch-layout');
    jsonOut(await runCli(['push', img, `oci:${layout}:v1`]));
    const pack = layoutManifest(layout, 'v1').layers.find((l) => l.mediaType === MEDIA_TYPE_DISK_PACK);
    if (!pack) throw new Error('no pack layer');
    const packFile = join(layout, 'blobs', 'sha256', pack.digest.slice(7));
    const size = statSync(packFile).size;
    writeFileSync(packFile, randomBytes(size));
    expect(statSync(packFile).size).toBe(pack.size);

    const out = join(work, 'mismatch-pulled.img');
    const r = await runCli(['pull', `oci:${layout}:v1`, out]);
    expectError(r, 'DIGEST_MISMATCH');
    expect(r.stderr).toContain(pack.digest);
    expectNoOutput(out);

    // a file already at the output path is left exactly as it was
    const existing = join(work, 'mismatch-existing.img');
    const before = randomBytes(10_000);
    writeFileSync(existing, before);
    expectError(await runCli(['pull', `oci:${layout}:v1`, existing]), 'DIGEST_MISMATCH');
    expect(readFileSync(existing).equals(before)).toBe(true);
    expect(readdirSync(work).filter((f) => f.includes('mismatch-existing.img'))).toEqual(['mismatch-existing.img']);
  });

  it('a pack read by Range with a corrupted chunk: DIGEST_MISMATCH from the chunk check, no output file', async () => {
    // disk A: eight random chunks in one pack; disk B shares only A's first chunk, so pulling B
    // reads that chunk from A's pack with a ranged read rather than fetching the pack whole
    const a = disk('range-a.img', [{ offset: 0, length: 4 << 20 }]);
    const b = join(work, 'range-b.img');
    makeSparse(b, 4 << 20, []);
    const fd = openSync(b, 'r+');
    writeSync(fd, readFileSync(a).subarray(0, 512 << 10), 0, 512 << 10, 0);
    closeSync(fd);
    const layout = join(work, 'range-layout');
    jsonOut(await runCli(['push', a, `oci:${layout}:a`, '--compression', 'none']));
    const pushedB = jsonOut<{ reusedChunks: number; uploadedPacks: number }>(await runCli(['push', b, `oci:${layout}:b`, '--dedup-from', `oci:${layout}:a`]));
    expect(pushedB.reusedChunks).toBe(1);
    expect(pushedB.uploadedPacks).toBe(0);

    const packs = layoutManifest(layout, 'b').layers.filter((l) => l.mediaType === MEDIA_TYPE_DISK_PACK);
    expect(packs).toHaveLength(1);
    corrupt(join(layout, 'blobs', 'sha256', (packs[0] as { digest: string }).digest.slice(7)), 1000, 16);

    const out = join(work, 'range-pulled.img');
    const r = await runCli(['pull', `oci:${layout}:b`, out]);
    expectError(r, 'DIGEST_MISMATCH');
    expect(r.stderr).toMatch(/chunk 0/);
    expectNoOutput(out);
  });

  it('a blob the registry serves with the wrong bytes: DIGEST_MISMATCH, no output file', async () => {
    const img = disk('registry-mismatch.img');
    const ref = `${registry.host}/bad/corrupt:v1`;
    jsonOut(await runCli(['push', img, ref]));
    const layout = join(work, 'registry-mismatch-copy');
    jsonOut(await runCli(['copy', ref, `oci:${layout}:v1`]));
    const pack = layoutManifest(layout, 'v1').layers.find((l) => l.mediaType === MEDIA_TYPE_DISK_PACK);
    if (!pack) throw new Error('no pack layer');
    const hex = pack.digest.slice(7);
    const stored = join(registry.storageDir, 'docker', 'registry', 'v2', 'blobs', 'sha256', hex.slice(0, 2), hex, 'data');
    corrupt(stored, 0, pack.size);

    const out = join(work, 'registry-mismatch-pulled.img');
    const r = await runCli(['pull', ref, out]);
    expectError(r, 'DIGEST_MISMATCH');
    expect(r.stderr).toContain(pack.digest);
    expectNoOutput(out);
  });
});

describe('a push that fails part-way leaves the tag as it was', () => {
  const cases: [FaultMode, 'all' | 'one-blob', string][] = [
    ['500', 'all', 'REGISTRY_ERROR'],
    ['drop', 'all', 'REGISTRY_UNREACHABLE'],
    ['500', 'one-blob', 'REGISTRY_ERROR'],
  ];

  it.each(cases)('blob uploads failing with %s (%s)', async (mode, only, code) => {
    const repo = `faults/disk-${mode}-${only}`;
    const imageA = disk(`fault-a-${mode}-${only}.img`);
    const imageB = disk(`fault-b-${mode}-${only}.img`, [{ offset: 0, length: 1 << 20 }, { offset: 2 << 20, length: 2 << 20 }]);
    const pushedA = jsonOut<{ digest: string }>(await runCli(['push', imageA, `${registry.host}/${repo}:t`]));
    expect(await manifestDigest(registry.host, repo, 't')).toBe(pushedA.digest);

    const proxy = await startFaultProxy({ target: registry.host, mode, passBlobPuts: 2, only });
    try {
      // 3 MiB of random data in 1 MiB packs: at least three pack uploads; the third one fails
      const r = await runCli(['push', imageB, `${proxy.host}/${repo}:t`, '--pack-size', '1M']);
      expectError(r, code);
      expect(r.stderr).toContain(`uploading blob ${proxy.doomedDigest()}`);
      expect(proxy.passedBlobPuts()).toBeGreaterThanOrEqual(2);
      // the failed upload was retried (five attempts in all) before giving up
      expect(proxy.requests.filter((q) => q.outcome !== 'forwarded' && q.digest === proxy.doomedDigest()).length).toBeGreaterThanOrEqual(5);
      // the tag is written last: a push with a blob missing never gets to its manifest
      expect(proxy.requests.filter((q) => q.path.includes('/manifests/') && q.method === 'PUT')).toEqual([]);
    } finally {
      await proxy.stop();
    }

    expect(await manifestDigest(registry.host, repo, 't')).toBe(pushedA.digest);
    const out = join(work, `fault-pulled-${mode}-${only}.img`);
    jsonOut(await runCli(['pull', `${registry.host}/${repo}:t`, out]));
    expect(sha256File(out)).toBe(sha256File(imageA));
    expect(sha256File(out)).not.toBe(sha256File(imageB));
  });
});

describe('a push to an OCI layout on a full file system (a 1 MiB tmpfs)', () => {
  const mnt = join(work, 'full-tmpfs');
  let mountError = '';
  beforeAll(() => {
    mkdirSync(mnt, { recursive: true });
    try {
      execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', mnt], { stdio: 'pipe' });
    } catch (err) {
      mountError = String((err as { stderr?: Buffer }).stderr ?? err);
    }
  });
  afterAll(() => {
    if (mountError === '') execFileSync('umount', ['-l', mnt], { stdio: 'pipe' });
  });

  it('IO_ERROR naming ENOSPC and the blob it was writing, no stack trace, and the tag as it was', async (ctx) => {
    if (mountError !== '') {
      ctx.skip(`cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN): ${mountError}`);
      return;
    }
    const layout = `oci:${join(mnt, 'layout')}:t`;
    const small = makeSparse(join(work, 'enospc-small.img'), 1 << 20, [{ offset: 0, length: 64 << 10 }]);
    jsonOut(await runCli(['push', small, layout]));
    const index = readFileSync(join(mnt, 'layout', 'index.json'), 'utf8');
    // 1.5 MiB of random data cannot fit in what is left of 1 MiB
    const r = await runCli(['push', disk('enospc-big.img'), layout]);
    expectError(r, 'IO_ERROR');
    expect(r.stderr).toMatch(/writing blob: .*\/blobs\/sha256\/[0-9a-f]{64}: ENOSPC: no space left on device/);
    expect(r.stderr).not.toMatch(/\n\s+at /);
    expect(readFileSync(join(mnt, 'layout', 'index.json'), 'utf8')).toBe(index);
    const out = join(work, 'enospc-pulled.img');
    jsonOut(await runCli(['pull', layout, out]));
    expect(sha256File(out)).toBe(sha256File(small));
  });
});
