/**
 * Interop with an independent OCI client: skopeo reads the manifest slipway pushed, copies the
 * artifact from the registry into an oci: layout, and slipway pulls identical bytes from there.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { main } from '../src/cli/main.js';
import { ARTIFACT_TYPE_DISK, MEDIA_TYPE_DISK_CONFIG, MEDIA_TYPE_DISK_INDEX, MEDIA_TYPE_DISK_PACK } from '../src/disk/format.js';
import { startRegistry, type TestRegistry } from './helpers/registry.js';
import { makeExt4, sha256File, tempDir } from './helpers/images.js';
import { captureIO } from './helpers/cli.js';

const SKOPEO = '/usr/bin/skopeo';
let registry: TestRegistry;
const work = tempDir();

beforeAll(async () => {
  if (!existsSync(SKOPEO)) throw new Error('skopeo not found: install Debian\'s skopeo package (the README\'s test command does)');
  registry = await startRegistry();
});
afterAll(async () => registry?.stop());

describe('skopeo interop', () => {
  it('skopeo inspects, copies to a layout, and slipway pulls identical bytes from it', async () => {
    const img = makeExt4(join(work, 'disk.img'), 24, join(process.cwd(), 'src'));
    const ref = `${registry.host}/interop/disk:v1`;
    const io = captureIO();
    expect(await main(['push', img, ref, '--progress=none'], io)).toBe(0);

    const raw = JSON.parse(execFileSync(SKOPEO, ['inspect', '--raw', '--tls-verify=false', `docker://${ref}`], { encoding: 'utf8' })) as {
      artifactType: string; config: { mediaType: string }; layers: { mediaType: string; annotations: Record<string, string> }[];
    };
    expect(raw.artifactType).toBe(ARTIFACT_TYPE_DISK);
    expect(raw.config.mediaType).toBe(MEDIA_TYPE_DISK_CONFIG);
    expect(raw.layers[0]?.mediaType).toBe(MEDIA_TYPE_DISK_INDEX);
    expect(raw.layers.slice(1).every((l) => l.mediaType === MEDIA_TYPE_DISK_PACK)).toBe(true);
    expect(raw.layers.every((l) => typeof l.annotations['org.opencontainers.image.title'] === 'string')).toBe(true);

    const layout = join(work, 'skopeo-layout');
    execFileSync(SKOPEO, ['copy', '--src-tls-verify=false', `docker://${ref}`, `oci:${layout}:copied`], { stdio: 'pipe' });
    const out = join(work, 'from-skopeo.img');
    const io2 = captureIO();
    expect(await main(['pull', `oci:${layout}:copied`, out, '--progress=none'], io2)).toBe(0);
    expect(sha256File(out)).toBe(sha256File(img));
  });

  it('slipway copy to a layout is readable by skopeo and back', async () => {
    const img = makeExt4(join(work, 'disk2.img'), 16, join(process.cwd(), 'test'));
    const layout = join(work, 'slipway-layout');
    expect(await main(['push', img, `oci:${layout}:src`, '--progress=none'], captureIO())).toBe(0);
    const ref = `${registry.host}/interop/copied:v2`;
    expect(await main(['copy', `oci:${layout}:src`, ref, '--progress=none'], captureIO())).toBe(0);
    const raw = JSON.parse(execFileSync(SKOPEO, ['inspect', '--raw', '--tls-verify=false', `docker://${ref}`], { encoding: 'utf8' })) as { artifactType: string };
    expect(raw.artifactType).toBe(ARTIFACT_TYPE_DISK);
    const out = join(work, 'copied.img');
    expect(await main(['pull', ref, out, '--progress=none'], captureIO())).toBe(0);
    expect(sha256File(out)).toBe(sha256File(img));
  });
});
