import { readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';

export interface Credentials {
  username?: string;
  password?: string;
  /** OAuth2 refresh token docker login stores for some registries; sent as the password grant's secret. */
  identityToken?: string;
}

interface DockerConfigFile {
  auths?: Record<string, { auth?: string; username?: string; password?: string; identitytoken?: string }>;
}

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

/**
 * Credentials for a registry host: `SLIPWAY_REGISTRY_USERNAME` / `SLIPWAY_REGISTRY_PASSWORD` from
 * the environment first (optionally limited to one host by `SLIPWAY_REGISTRY_HOST`), then the
 * auth files of docker and podman/skopeo. Credential helpers (`credsStore`) are not run.
 */
export function findCredentials(registry: string, env: NodeJS.ProcessEnv = process.env): Credentials | undefined {
  if (env.SLIPWAY_REGISTRY_USERNAME !== undefined && (!env.SLIPWAY_REGISTRY_HOST || env.SLIPWAY_REGISTRY_HOST === registry)) {
    return { username: env.SLIPWAY_REGISTRY_USERNAME, password: env.SLIPWAY_REGISTRY_PASSWORD ?? '' };
  }
  for (const path of authFilePaths(env)) {
    let config: DockerConfigFile;
    try {
      config = JSON.parse(readFileSync(path, 'utf8')) as DockerConfigFile;
    } catch {
      continue;
    }
    for (const key of keysFor(registry)) {
      const entry = config.auths?.[key];
      if (!entry) continue;
      if (entry.identitytoken) return { identityToken: entry.identitytoken };
      if (entry.auth) {
        const decoded = Buffer.from(entry.auth, 'base64').toString('utf8');
        const colon = decoded.indexOf(':');
        if (colon > 0) return { username: decoded.slice(0, colon), password: decoded.slice(colon + 1) };
      }
      if (entry.username !== undefined) return { username: entry.username, password: entry.password ?? '' };
    }
  }
  return undefined;
}
