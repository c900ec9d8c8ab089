/**
 * Registry authentication against real servers: docker-registry 2.8 with htpasswd (HTTP basic),
 * and docker-registry 2.8 with bearer tokens from a real token service (test/helpers/token-server.ts,
 * ES256 JWTs with an x5c chain the registry trusts). Credentials come from where users put them:
 * SLIPWAY_REGISTRY_USERNAME/PASSWORD in the environment, or a docker config.json.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFile } from 'node:child_process';
import { existsSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { startRegistry, type TestRegistry } from './helpers/registry.js';
import { makeSparse, sha256File, tempDir } from './helpers/images.js';
import { isolatedCredentialEnv, jsonOut, runCli, type CliResult } from './helpers/run-cli.js';
import { basic, manifestDigest } from './helpers/oci-http.js';
import { startTokenServer, type TokenServer, type TokenServerControl } from './helpers/token-server.js';
import { startTokenRegistry, type TokenRegistry } from './helpers/token-registry.js';

const execFileAsync = promisify(execFile);
const USER = 'slipway-user';
const PASS = 'correct horse battery staple';

const work = tempDir('slipway-auth-');
/** a DOCKER_CONFIG with no config.json: no credentials from files */
const noDockerConfig = tempDir('slipway-auth-nodocker-');

afterAll(() => {
  rmSync(work, { recursive: true, force: true });
  rmSync(noDockerConfig, { recursive: true, force: true });
});

function diskImage(name: string): string {
  return makeSparse(join(work, name), 4 << 20, [
    { offset: 0, length: 256 << 10 },
    { offset: (2 << 20) + 4096, length: 600 << 10 },
  ]);
}

function expectFailure(r: CliResult, code: string): void {
  expect(r.code, `expected failure, got stdout ${r.stdout}`).toBe(1);
  expect(r.stdout).toBe('');
  expect(r.stderr).toMatch(new RegExp(`error ${code}:`));
}

describe('HTTP basic auth (htpasswd)', () => {
  let registry: TestRegistry;
  let image: string;
  const creds = (user = USER, pass = PASS) => isolatedCredentialEnv(noDockerConfig, { SLIPWAY_REGISTRY_USERNAME: user, SLIPWAY_REGISTRY_PASSWORD: pass });

  beforeAll(async () => {
    registry = await startRegistry({ htpasswd: { username: USER, password: PASS } });
    image = diskImage('basic.img');
  });
  afterAll(async () => registry?.stop());

  it('refuses a push without credentials: UNAUTHORIZED, saying credentials are required', async () => {
    const ref = `${registry.host}/auth/none:v1`;
    const r = await runCli(['push', image, ref], isolatedCredentialEnv(noDockerConfig));
    expectFailure(r, 'UNAUTHORIZED');
    expect(r.stderr).toMatch(/requires credentials/);
    expect(r.stderr).toContain(registry.host);
    expect(r.stderr).toMatch(/SLIPWAY_REGISTRY_USERNAME/);
    expect(await manifestDigest(registry.host, 'auth/none', 'v1', basic(USER, PASS))).toBeUndefined();
  });

  it('refuses a push with a wrong password: UNAUTHORIZED, saying the credentials were refused', async () => {
    const ref = `${registry.host}/auth/wrong:v1`;
    const r = await runCli(['push', image, ref], creds(USER, 'not the password'));
    expectFailure(r, 'UNAUTHORIZED');
    expect(r.stderr).toMatch(new RegExp(`credentials for ${registry.host.replace(/\./g, '\\.')} were refused`));
    expect(r.stderr).not.toContain('not the password');
    expect(await manifestDigest(registry.host, 'auth/wrong', 'v1', basic(USER, PASS))).toBeUndefined();
  });

  it('pushes and pulls back identical bytes with SLIPWAY_REGISTRY_USERNAME/PASSWORD', async () => {
    const ref = `${registry.host}/auth/env:v1`;
    const pushed = jsonOut<{ digest: string }>(await runCli(['push', image, ref], creds()));
    expect(await manifestDigest(registry.host, 'auth/env', 'v1', basic(USER, PASS))).toBe(pushed.digest);

    const out = join(work, 'env-pulled.img');
    jsonOut(await runCli(['pull', ref, out], creds()));
    expect(sha256File(out)).toBe(sha256File(image));

    // the same pull without credentials is refused: the credentials above were what let it in
    const anon = await runCli(['pull', ref, join(work, 'anon.img')], isolatedCredentialEnv(noDockerConfig));
    expectFailure(anon, 'UNAUTHORIZED');
    expect(existsSync(join(work, 'anon.img'))).toBe(false);
  });

  it('uses credentials from a docker config.json named by DOCKER_CONFIG', async () => {
    const dockerDir = join(work, 'docker-good');
    mkdirSync(dockerDir);
    writeFileSync(join(dockerDir, 'config.json'), JSON.stringify({
      auths: {
        'other.example:5000': { auth: Buffer.from('someone:else').toString('base64') },
        [registry.host]: { auth: Buffer.from(`${USER}:${PASS}`).toString('base64') },
      },
    }));
    const ref = `${registry.host}/auth/docker-config:v1`;
    const pushed = jsonOut<{ digest: string }>(await runCli(['push', image, ref], isolatedCredentialEnv(dockerDir)));
    expect(await manifestDigest(registry.host, 'auth/docker-config', 'v1', basic(USER, PASS))).toBe(pushed.digest);
    const out = join(work, 'docker-config-pulled.img');
    jsonOut(await runCli(['pull', ref, out], isolatedCredentialEnv(dockerDir)));
    expect(sha256File(out)).toBe(sha256File(image));
  });

  it('reports wrong credentials in a docker config.json as refused', async () => {
    const dockerDir = join(work, 'docker-bad');
    mkdirSync(dockerDir);
    writeFileSync(join(dockerDir, 'config.json'), JSON.stringify({ auths: { [registry.host]: { auth: Buffer.from(`${USER}:nope`).toString('base64') } } }));
    const r = await runCli(['push', image, `${registry.host}/auth/docker-bad:v1`], isolatedCredentialEnv(dockerDir));
    expectFailure(r, 'UNAUTHORIZED');
    expect(r.stderr).toMatch(/were refused/);
  });

  it('does not send environment credentials limited by SLIPWAY_REGISTRY_HOST to another registry', async () => {
    const r = await runCli(['push', image, `${registry.host}/auth/other-host:v1`], { ...creds(), SLIPWAY_REGISTRY_HOST: 'registry.example.com' });
    expectFailure(r, 'UNAUTHORIZED');
    expect(r.stderr).toMatch(/requires credentials/);
  });

  it('reads the credentials from the environment of a real slipway process (bin/slipway.js)', async () => {
    const bin = join(process.cwd(), 'bin', 'slipway.js');
    const env: NodeJS.ProcessEnv = { ...process.env };
    for (const [k, v] of Object.entries(creds())) {
      if (v === undefined) delete env[k];
      else env[k] = v;
    }
    const ref = `${registry.host}/auth/process:v1`;
    const push = await execFileAsync(process.execPath, [bin, 'push', image, ref, '--progress=none'], { env });
    const { digest } = JSON.parse(push.stdout) as { digest: string };
    expect(await manifestDigest(registry.host, 'auth/process', 'v1', basic(USER, PASS))).toBe(digest);
    const out = join(work, 'process-pulled.img');
    await execFileAsync(process.execPath, [bin, 'pull', ref, out, '--progress=none'], { env });
    expect(sha256File(out)).toBe(sha256File(image));

    const noCreds: NodeJS.ProcessEnv = { ...env, DOCKER_CONFIG: noDockerConfig };
    delete noCreds.SLIPWAY_REGISTRY_USERNAME;
    delete noCreds.SLIPWAY_REGISTRY_PASSWORD;
    const failed = await execFileAsync(process.execPath, [bin, 'inspect', ref], { env: noCreds }).then(
      () => undefined,
      (err: { code: number; stderr: string }) => err,
    );
    expect(failed?.code).toBe(1);
    expect(failed?.stderr).toMatch(/error UNAUTHORIZED:/);
  });
});

describe('bearer token auth (distribution token spec)', () => {
  const TOKEN_USER = 'token-user';
  const TOKEN_PASS = 'token-pass-42';
  let tokens: TokenServer & TokenServerControl;
  let registry: TokenRegistry;
  let image: string;
  const creds = (user = TOKEN_USER, pass = TOKEN_PASS) => isolatedCredentialEnv(noDockerConfig, { SLIPWAY_REGISTRY_USERNAME: user, SLIPWAY_REGISTRY_PASSWORD: pass });

  beforeAll(async () => {
    tokens = await startTokenServer({ username: TOKEN_USER, password: TOKEN_PASS });
    registry = await startTokenRegistry({ realm: tokens.realm, service: tokens.service, issuer: tokens.issuer, rootCertBundle: tokens.certPath }, { logLevel: 'debug' });
    image = diskImage('bearer.img');
  });
  afterAll(async () => {
    await registry?.stop();
    await tokens?.stop();
  });

  /** A token fetched independently of slipway, to look at the registry directly. */
  async function bearerFor(scope: string): Promise<string> {
    const url = new URL(tokens.realm);
    url.searchParams.set('service', tokens.service);
    url.searchParams.set('scope', scope);
    const res = await fetch(url, { headers: { authorization: basic(TOKEN_USER, TOKEN_PASS) } });
    expect(res.status).toBe(200);
    return `Bearer ${((await res.json()) as { token: string }).token}`;
  }

  it('the registry really demands a token, and accepts the token service\'s tokens', async () => {
    const challenge = await fetch(`http://${registry.host}/v2/`);
    expect(challenge.status).toBe(401);
    expect(challenge.headers.get('www-authenticate')).toMatch(/^Bearer realm="[^"]+\/token",service="slipway-test-registry"/);
    const ok = await fetch(`http://${registry.host}/v2/`, { headers: { authorization: await bearerFor('registry:catalog:*') } });
    expect(ok.status, registry.log()).toBe(200);
  });

  it('pushes and pulls back identical bytes with bearer tokens', async () => {
    const before = tokens.requests.length;
    const ref = `${registry.host}/bearer/disk:v1`;
    const push = await runCli(['push', image, ref], creds());
    expect(push.code, `${push.stderr}\n--- registry log ---\n${registry.log().slice(-4000)}`).toBe(0);
    const { digest } = jsonOut<{ digest: string }>(push);

    const issued = tokens.requests.slice(before);
    expect(issued.length).toBeGreaterThan(0);
    expect(issued.every((r) => r.status === 200 && r.username === TOKEN_USER && r.service === tokens.service)).toBe(true);
    expect(issued.some((r) => r.granted.some((g) => g.type === 'repository' && g.name === 'bearer/disk' && g.actions.includes('push')))).toBe(true);

    expect(await manifestDigest(registry.host, 'bearer/disk', 'v1', await bearerFor('repository:bearer/disk:pull'))).toBe(digest);

    const out = join(work, 'bearer-pulled.img');
    const pull = await runCli(['pull', ref, out], creds());
    expect(pull.code, pull.stderr).toBe(0);
    expect(sha256File(out)).toBe(sha256File(image));
  });

  it('reports credentials the token service refuses as UNAUTHORIZED', async () => {
    const before = tokens.requests.length;
    const r = await runCli(['push', image, `${registry.host}/bearer/wrong:v1`], creds(TOKEN_USER, 'wrong'));
    expectFailure(r, 'UNAUTHORIZED');
    expect(r.stderr).toMatch(/refused by its token service/);
    expect(tokens.requests.slice(before).some((q) => q.status === 401 && q.username === TOKEN_USER)).toBe(true);
    expect(await manifestDigest(registry.host, 'bearer/wrong', 'v1', await bearerFor('repository:bearer/wrong:pull'))).toBeUndefined();
  });

  it('rides out a token service that is briefly unavailable (503), like any other 5xx', async () => {
    tokens.failNext(2, 503);
    const ref = `${registry.host}/bearer/flaky:v1`;
    const r = await runCli(['push', image, ref], creds());
    expect(r.code, r.stderr).toBe(0);
    expect(tokens.requests.filter((q) => q.status === 503)).toHaveLength(2);
    const { digest } = jsonOut<{ digest: string }>(r);
    expect(await manifestDigest(registry.host, 'bearer/flaky', 'v1', await bearerFor('repository:bearer/flaky:pull'))).toBe(digest);
  });

  it('does not call a token service that keeps failing (503) a refusal of the credentials', async () => {
    tokens.failNext(1000, 503);
    try {
      const r = await runCli(['push', image, `${registry.host}/bearer/down:v1`], creds());
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(/503/);
      expect(r.stderr).not.toMatch(/refused/);
      expect(r.stderr).not.toMatch(/error UNAUTHORIZED/);
    } finally {
      tokens.failNext(0, 503);
    }
  });

  it('reports a token service that refuses anonymous access as UNAUTHORIZED', async () => {
    const r = await runCli(['inspect', `${registry.host}/bearer/disk:v1`], isolatedCredentialEnv(noDockerConfig));
    expectFailure(r, 'UNAUTHORIZED');
    expect(r.stderr).toMatch(/anonymous/);
  });
});
