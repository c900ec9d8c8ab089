import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { credentialHelperTimeoutMs, registryCredentialsFromEnv } from '../../config.js';
import { SlipwayError } from '../../errors.js';

export interface Credentials {
  username?: string;
  password?: string;
  /**
   * An OAuth2 refresh token (docker's `identitytoken`, or a credential helper's Secret under the
   * user name `<token>`): sent to the token service as `grant_type=refresh_token`
   * (distribution's docs/spec/auth/oauth.md), never as a password.
   */
  identityToken?: string;
}

interface DockerConfigFile {
  auths?: Record<string, { auth?: string; username?: string; password?: string; identitytoken?: string }>;
  /** registry host → helper name: run `docker-credential-<name>` for that registry */
  credHelpers?: Record<string, string>;
  /** helper for every registry without its own entry */
  credsStore?: string;
}

/** How long a credential helper may take before slipway gives up on it (ECR's helper can take seconds). */
export const DEFAULT_HELPER_TIMEOUT_MS = 10_000;
/** The user name docker-credential-helpers use to mean "the Secret is an identity token". */
const IDENTITY_TOKEN_USER = '<token>';

/** The auth files slipway reads, in the order they are tried (first one naming the registry wins). */
export function authFilePaths(env: NodeJS.ProcessEnv = process.env): string[] {
  const paths: string[] = [];
  if (env.REGISTRY_AUTH_FILE) paths.push(env.REGISTRY_AUTH_FILE);
  if (env.XDG_RUNTIME_DIR) paths.push(join(env.XDG_RUNTIME_DIR, 'containers', 'auth.json'));
  paths.push(join(env.DOCKER_CONFIG ?? join(homedir(), '.docker'), 'config.json'));
  return paths;
}

/** Docker Hub is stored under its v1 index URL in docker's config file. */
function keysFor(registry: string): string[] {
  if (registry === 'docker.io') return ['https://index.docker.io/v1/', 'docker.io', 'index.docker.io', 'registry-1.docker.io'];
  return [registry, `https://${registry}`, `http://${registry}`, `https://${registry}/v1/`, `https://${registry}/v2/`];
}

/** The server URL a helper is asked about: what `docker login` stored under (Docker Hub's v1 URL, else the host). */
function helperServerUrl(registry: string): string {
  return registry === 'docker.io' ? 'https://index.docker.io/v1/' : registry;
}

export interface FindCredentialsOptions {
  /** ms a credential helper may run (default DEFAULT_HELPER_TIMEOUT_MS, or SLIPWAY_CREDENTIAL_HELPER_TIMEOUT_MS) */
  helperTimeoutMs?: number;
}

/**
 * Credentials for a registry host (`host[:port]`, `docker.io` for Docker Hub), looked up where
 * users keep them, first match wins:
 *
 * 1. `SLIPWAY_REGISTRY_USERNAME` / `SLIPWAY_REGISTRY_PASSWORD` (optionally limited to one host by
 *    `SLIPWAY_REGISTRY_HOST`);
 * 2. each auth file of `authFilePaths` in turn: its `credHelpers[<host>]` helper, then its
 *    `auths[<host>]` entry (`auth` = base64 `user:password`, `username`/`password`, or
 *    `identitytoken`), then its `credsStore` helper.
 *
 * A helper is `docker-credential-<name>` on `PATH`, run as `get` with the server URL on stdin; it
 * prints `{"ServerURL","Username","Secret"}` (docker/docker-credential-helpers' protocol), and a
 * `Username` of `<token>` makes `Secret` an identity token. A helper that answers "credentials not
 * found" means none (the lookup goes on). Resolves to undefined when nothing names the registry.
 *
 * Errors: CREDENTIAL_HELPER_FAILED when a named helper is not on PATH, exits with any other
 * error, prints something that is not its JSON answer, or runs past the timeout.
 */
export async function findCredentials(registry: string, env: NodeJS.ProcessEnv = process.env, opts: FindCredentialsOptions = {}): Promise<Credentials | undefined> {
  const fromEnv = registryCredentialsFromEnv(registry, env);
  if (fromEnv) return fromEnv;
  const timeoutMs = opts.helperTimeoutMs ?? credentialHelperTimeoutMs(env) ?? DEFAULT_HELPER_TIMEOUT_MS;
  for (const path of authFilePaths(env)) {
    let config: DockerConfigFile;
    try {
      config = JSON.parse(readFileSync(path, 'utf8')) as DockerConfigFile;
    } catch {
      continue;
    }
    const keys = keysFor(registry);
    const helper = keys.map((k) => config.credHelpers?.[k]).find((h) => typeof h === 'string' && h !== '');
    if (helper) {
      const found = await runCredentialHelper(helper, helperServerUrl(registry), env, timeoutMs);
      if (found) return found;
    }
    for (const key of keys) {
      const entry = config.auths?.[key];
      if (!entry) continue;
      if (entry.identitytoken) return { identityToken: entry.identitytoken, ...(entry.username ? { username: entry.username } : {}) };
      if (entry.auth) {
        const decoded = Buffer.from(entry.auth, 'base64').toString('utf8');
        const colon = decoded.indexOf(':');
        if (colon > 0) return { username: decoded.slice(0, colon), password: decoded.slice(colon + 1) };
      }
      if (entry.username !== undefined) return { username: entry.username, password: entry.password ?? '' };
    }
    if (typeof config.credsStore === 'string' && config.credsStore !== '') {
      const found = await runCredentialHelper(config.credsStore, helperServerUrl(registry), env, timeoutMs);
      if (found) return found;
    }
  }
  return undefined;
}

/**
 * `docker-credential-<name> get` with `serverUrl` on stdin (docker-credential-helpers' protocol):
 * resolves to the credentials it prints, or undefined when it says it has none ("credentials not
 * found", exit status 1). Errors: CREDENTIAL_HELPER_FAILED (missing, failed, timed out, bad output).
 */
export function runCredentialHelper(name: string, serverUrl: string, env: NodeJS.ProcessEnv, timeoutMs: number): Promise<Credentials | undefined> {
  const program = `docker-credential-${name}`;
  const fail = (why: string, cause?: unknown): SlipwayError => new SlipwayError('CREDENTIAL_HELPER_FAILED', `credential helper ${program} for ${serverUrl}: ${why}`, {
    context: { helper: program, serverUrl },
    ...(cause !== undefined ? { cause } : {}),
  });
  return new Promise((resolve, reject) => {
    let stdout = '';
    let stderr = '';
    let settled = false;
    const child = spawn(program, ['get'], { env, stdio: ['pipe', 'pipe', 'pipe'] });
    const timer = setTimeout(() => {
      finish(fail(`no answer within ${timeoutMs} ms`));
      child.kill('SIGKILL');
    }, timeoutMs);
    const finish = (result: Error | Credentials | undefined): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (result instanceof Error) reject(result);
      else resolve(result);
    };
    child.stdout.setEncoding('utf8').on('data', (d: string) => {
      if (stdout.length < 1 << 20) stdout += d;
    });
    child.stderr.setEncoding('utf8').on('data', (d: string) => {
      if (stderr.length < 4096) stderr += d;
    });
    child.on('error', (err: NodeJS.ErrnoException) => {
      finish(err.code === 'ENOENT' ? fail(`${program} is not on PATH (install it, or remove it from credHelpers/credsStore in the docker config)`, err) : fail(err.message, err));
    });
    child.stdin.on('error', () => undefined); // a helper that exits without reading its stdin
    child.stdin.end(`${serverUrl}\n`);
    child.on('close', (status, signal) => {
      const out = stdout.trim();
      if (status !== 0) {
        if (/credentials not found/i.test(out) || /credentials not found/i.test(stderr)) {
          finish(undefined);
          return;
        }
        finish(fail(`exited with ${signal ?? `status ${status}`}: ${(out || stderr).trim().slice(0, 200)}`));
        return;
      }
      let answer: { Username?: unknown; Secret?: unknown };
      try {
        answer = JSON.parse(out) as { Username?: unknown; Secret?: unknown };
      } catch {
        finish(fail(`printed something other than {"ServerURL","Username","Secret"}: ${out.slice(0, 100)}`));
        return;
      }
      if (typeof answer.Secret !== 'string' || (answer.Username !== undefined && typeof answer.Username !== 'string')) {
        finish(fail('answered without a string Secret'));
        return;
      }
      const username = typeof answer.Username === 'string' ? answer.Username : '';
      finish(username === IDENTITY_TOKEN_USER ? { identityToken: answer.Secret } : { username, password: answer.Secret });
    });
  });
}

/** Whether two lookups found the same credentials. */
export function sameCredentials(a: Credentials | undefined, b: Credentials | undefined): boolean {
  return a?.username === b?.username && a?.password === b?.password && a?.identityToken === b?.identityToken;
}
