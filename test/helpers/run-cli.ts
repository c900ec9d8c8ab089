/**
 * Run the real CLI in-process through `main()` with captured stdout and stderr, optionally with
 * environment variables set for the duration of the call (registry credentials are read from
 * process.env when a RegistryClient is constructed, so they must be in place before `main()`).
 */
import { Capture } from './cli.js';
import { main } from '../../src/cli/main.js';

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
  ms: number;
}


/** Environment variables that point slipway at credentials; cleared by `isolatedCredentialEnv`. */
export const CREDENTIAL_ENV = ['SLIPWAY_REGISTRY_USERNAME', 'SLIPWAY_REGISTRY_PASSWORD', 'SLIPWAY_REGISTRY_HOST', 'REGISTRY_AUTH_FILE', 'XDG_RUNTIME_DIR', 'DOCKER_CONFIG'] as const;

/**
 * Set (or, with `undefined`, delete) environment variables while `fn` runs, then put back exactly
 * what was there before.
 */
export async function withEnv<T>(env: Record<string, string | undefined>, fn: () => Promise<T>): Promise<T> {
  const saved = new Map<string, string | undefined>();
  for (const [k, v] of Object.entries(env)) {
    saved.set(k, process.env[k]);
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
  try {
    return await fn();
  } finally {
    for (const [k, v] of saved) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
}

/**
 * An environment in which slipway finds no credentials except those given: every credential
 * variable cleared and DOCKER_CONFIG pointed at `emptyDockerConfigDir` (a directory without
 * config.json unless the caller wrote one), so the developer's ~/.docker/config.json never leaks in.
 */
export function isolatedCredentialEnv(dockerConfigDir: string, extra: Record<string, string | undefined> = {}): Record<string, string | undefined> {
  const env: Record<string, string | undefined> = {};
  for (const k of CREDENTIAL_ENV) env[k] = undefined;
  env.DOCKER_CONFIG = dockerConfigDir;
  return { ...env, ...extra };
}

export async function runCli(argv: string[], env: Record<string, string | undefined> = {}): Promise<CliResult> {
  const stdout = new Capture();
  const stderr = new Capture();
  const started = Date.now();
  const code = await withEnv(env, () => main(argv, {
    stdout: stdout as unknown as NodeJS.WriteStream,
    stderr: stderr as unknown as NodeJS.WriteStream,
  }));
  return { code, stdout: stdout.text, stderr: stderr.text, ms: Date.now() - started };
}

/** The JSON object a successful push/pull/copy prints on stdout. */
export function jsonOut<T = Record<string, unknown>>(r: CliResult): T {
  if (r.code !== 0) throw new Error(`slipway exited ${r.code}: ${r.stderr}`);
  return JSON.parse(r.stdout) as T;
}
