/**
 * Credentials the way registries issue them (issue 13), against real servers: docker-registry
 * 2.8 with htpasswd, and with bearer tokens from the token service helper (which also speaks
 * OAuth2's refresh-token grant). Credential helpers are a real `docker-credential-test` program
 * speaking docker-credential-helpers' protocol (test/helpers/credential-helper.ts).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pushDisk } from '../src/disk/push.js';
import { Targets } from '../src/oci/open.js';
import { parseRef } from '../src/oci/ref.js';
import { findCredentials } from '../src/oci/registry/credentials.js';
import { WorkerPool } from '../src/workers/pool.js';
import { makeCredentialHelper, type CredentialHelper } from './helpers/credential-helper.js';
import { makeSparse, sha256File, tempDir } from './helpers/images.js';
import { startRegistry, type TestRegistry } from './helpers/registry.js';
import { isolatedCredentialEnv, jsonOut, runCli, withEnv, type CliResult } from './helpers/run-cli.js';
import { startTokenRegistry, type TokenRegistry } from './helpers/token-registry.js';
import { startTokenServer, type TokenServer, type TokenServerControl } from './helpers/token-server.js';

const USER = 'slipway-user';
const PASS = 'correct horse battery staple';
const work = tempDir('slipway-creds-');
let helper: CredentialHelper;
let image: string;

beforeAll(() => {
  helper = makeCredentialHelper('test');
  image = makeSparse(join(work, 'disk.img'), 2 << 20, [{ offset: 0, length: 300 << 10 }]);
});
afterAll(() => {
  helper?.remove();
  rmSync(work, { recursive: true, force: true });
});

let configs = 0;
/** a DOCKER_CONFIG directory holding `config`, and the environment that uses it with the helper on PATH */
function dockerEnv(config: unknown, extra: Record<string, string> = {}): Record<string, string | undefined> {
  const dir = join(work, `docker-${configs++}`);
  mkdirSync(dir);
  writeFileSync(join(dir, 'config.json'), JSON.stringify(config));
  return isolatedCredentialEnv(dir, { PATH: `${helper.binDir}:${process.env.PATH ?? ''}`, ...extra });
}

function expectFailure(r: CliResult, code: string): void {
  expect(r.code, `expected failure, got stdout ${r.stdout}`).toBe(1);
  expect(r.stderr).toMatch(new RegExp(`error ${code}:`));
}

describe('docker credential helpers (htpasswd registry)', () => {
  let registry: TestRegistry;
  beforeAll(async () => {
    registry = await startRegistry({ htpasswd: { username: USER, password: PASS } });
  });
  afterAll(async () => {
    await registry?.stop();
  });

  it('credHelpers: runs docker-credential-test get with the registry on stdin, pushes and pulls with its answer', async () => {
    helper.misbehave(undefined);
    helper.answer({ Username: USER, Secret: PASS });
    const env = dockerEnv({ credHelpers: { [registry.host]: 'test', 'other.example': 'nope' } });
    const before = helper.asked().length;
    const ref = `${registry.host}/creds/helper:v1`;
    jsonOut(await runCli(['push', image, ref], env));
    const out = join(work, 'helper-out.img');
    jsonOut(await runCli(['pull', ref, out], env));
    expect(sha256File(out)).toBe(sha256File(image));
    expect(helper.asked().slice(before)).toEqual([registry.host, registry.host]); // once per process run
  });

  it('credsStore: the default helper for a registry without an inline entry', async () => {
    helper.misbehave(undefined);
    helper.answer({ Username: USER, Secret: PASS });
    const env = dockerEnv({ auths: { [registry.host]: {} }, credsStore: 'test' });
    jsonOut(await runCli(['push', image, `${registry.host}/creds/store:v1`], env));
  });

  it('a helper that has no credentials for the registry means none: UNAUTHORIZED, credentials required', async () => {
    helper.misbehave(undefined);
    helper.answer(undefined);
    const r = await runCli(['push', image, `${registry.host}/creds/none:v1`], dockerEnv({ credsStore: 'test' }));
    expectFailure(r, 'UNAUTHORIZED');
    expect(r.stderr).toMatch(/requires credentials/);
  });

  it('a missing helper is CREDENTIAL_HELPER_FAILED naming the program', async () => {
    const r = await runCli(['push', image, `${registry.host}/creds/missing:v1`], dockerEnv({ credHelpers: { [registry.host]: 'nope' } }));
    expectFailure(r, 'CREDENTIAL_HELPER_FAILED');
    expect(r.stderr).toMatch(/docker-credential-nope is not on PATH/);
  });

  it('a helper that fails is CREDENTIAL_HELPER_FAILED with its message', async () => {
    helper.misbehave('fail');
    const r = await runCli(['push', image, `${registry.host}/creds/fails:v1`], dockerEnv({ credHelpers: { [registry.host]: 'test' } }));
    helper.misbehave(undefined);
    expectFailure(r, 'CREDENTIAL_HELPER_FAILED');
    expect(r.stderr).toMatch(/keychain locked/);
  });

  it('a helper that never answers is CREDENTIAL_HELPER_FAILED after the timeout', async () => {
    helper.misbehave('hang');
    const r = await runCli(['push', image, `${registry.host}/creds/hangs:v1`], dockerEnv({ credHelpers: { [registry.host]: 'test' } }, { SLIPWAY_CREDENTIAL_HELPER_TIMEOUT_MS: '300' }));
    helper.misbehave(undefined);
    expectFailure(r, 'CREDENTIAL_HELPER_FAILED');
    expect(r.stderr).toMatch(/no answer within 300 ms/);
  });

  it('a helper answering <token> as the user name gives an identity token, not a password', async () => {
    helper.misbehave(undefined);
    helper.answer({ Username: '<token>', Secret: 'refresh-me' });
    const env = dockerEnv({ credsStore: 'test' });
    expect(await withEnv(env, () => findCredentials(registry.host))).toEqual({ identityToken: 'refresh-me' });
  });
});

describe('identity tokens and rotated credentials (token registry)', () => {
  let tokens: TokenServer & TokenServerControl;
  let registry: TokenRegistry;
  let pool: WorkerPool;
  beforeAll(async () => {
    tokens = await startTokenServer({ username: USER, password: PASS, refreshTokens: ['identity-token-1'] });
    registry = await startTokenRegistry({ realm: tokens.realm, service: tokens.service, issuer: tokens.issuer, rootCertBundle: tokens.certPath }, { logLevel: 'error' });
    pool = new WorkerPool(1);
  });
  afterAll(async () => {
    await pool?.close();
    await registry?.stop();
    await tokens?.stop();
  });

  it('an identitytoken from docker login is sent as the OAuth2 refresh token (POST grant_type=refresh_token)', async () => {
    const env = dockerEnv({ auths: { [registry.host]: { auth: Buffer.from('<token>:').toString('base64'), identitytoken: 'identity-token-1' } } });
    const seen = tokens.requests.length;
    const ref = `${registry.host}/creds/identity:v1`;
    jsonOut(await runCli(['push', image, ref], env));
    const out = join(work, 'identity-out.img');
    jsonOut(await runCli(['pull', ref, out], env));
    expect(sha256File(out)).toBe(sha256File(image));
    const asked = tokens.requests.slice(seen);
    expect(asked.length).toBeGreaterThan(0);
    expect(asked.every((r) => r.grant === 'refresh_token' && r.status === 200 && r.username === null)).toBe(true);
    expect(asked.some((r) => r.scopes.includes('repository:creds/identity:pull,push'))).toBe(true);
  });

  it('a refresh token the token service refuses is UNAUTHORIZED', async () => {
    const env = dockerEnv({ auths: { [registry.host]: { identitytoken: 'revoked' } } });
    expectFailure(await runCli(['push', image, `${registry.host}/creds/revoked:v1`], env), 'UNAUTHORIZED');
  });

  it('a long-running client notices rotated credentials: on a refusal it asks its helper again and goes on', async () => {
    helper.misbehave(undefined);
    helper.answer({ Username: USER, Secret: PASS });
    const env = dockerEnv({ credHelpers: { [registry.host]: 'test' } });
    await withEnv(env, async () => {
      const targets = new Targets();
      try {
        const a = await targets.open(parseRef(`${registry.host}/creds/rotate-a:v1`));
        await pushDisk({ file: image, target: a, tag: 'v1', pool });
        const asked = helper.asked().length;
        // the password is rotated: the token service refuses the old one, the helper hands out the new one
        tokens.setPassword('rotated password');
        helper.answer({ Username: USER, Secret: 'rotated password' });
        const b = await targets.open(parseRef(`${registry.host}/creds/rotate-b:v1`));
        await pushDisk({ file: image, target: b, tag: 'v1', pool });
        expect(helper.asked().length).toBe(asked + 1);
        expect(tokens.requests.at(-1)?.status).toBe(200);
      } finally {
        tokens.setPassword(PASS);
        await targets.close();
      }
    });
  });
});
