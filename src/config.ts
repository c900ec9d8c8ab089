/**
 * slipway's configuration, in one place: defaults, then a JSON file (checked by a strict zod
 * schema), then the environment, then command-line flags (applied by the CLI). The file is
 * `$SLIPWAY_CONFIG`, else `$XDG_CONFIG_HOME/slipway/config.json`, else `/etc/slipway/config.json`,
 * when present. Every `SLIPWAY_*` variable is listed in `ENV_VARS` and read through this module
 * (`envVar` and the accessors below), never at import time.
 */
import { readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';
import { z } from 'zod';
import { SlipwayError } from './errors.js';

/** Every environment variable slipway reads of its own, with what it sets. */
export const ENV_VARS = {
  SLIPWAY_CONFIG: 'the configuration file',
  SLIPWAY_CACHE_DIR: 'the chunk cache directory (cacheDir; --cache-dir)',
  SLIPWAY_STORE: 'the embedded default store, an OCI layout per name (storeDir)',
  SLIPWAY_MEMORY_BUDGET: 'bytes of decompressed chunks kept in memory (memoryBudgetBytes)',
  SLIPWAY_DISK_BUDGET: 'bytes of chunk files on local disk before eviction (diskBudgetBytes)',
  SLIPWAY_METADATA_BUDGET: 'bytes of cached manifests, indexes and device state before eviction (metadataBudgetBytes)',
  SLIPWAY_MIRRORS: 'pull-through mirrors per origin, origin=mirror[,mirror][;origin=...] (mirrors)',
  SLIPWAY_PLAIN_HTTP_REGISTRIES: 'registry hosts spoken to over plain HTTP, comma-separated (plainHttpRegistries)',
  SLIPWAY_FETCH_DEADLINE_MS: 'how long a chunk read retries a failing registry (fetchDeadlineMs)',
  SLIPWAY_LOG_LEVEL: 'the lowest log level written: debug, info, warn or error',
  SLIPWAY_REGISTRY_USERNAME: 'a registry user name, before any auth file',
  SLIPWAY_REGISTRY_PASSWORD: 'its password',
  SLIPWAY_REGISTRY_HOST: 'the one registry host those credentials are for (default: every host)',
  SLIPWAY_CREDENTIAL_HELPER_TIMEOUT_MS: 'how long a docker credential helper may run',
  SLIPWAY_DAEMON: 'the daemon the CLI talks to: a socket path or http(s)://host:port',
  SLIPWAY_DAEMON_SOCKET: 'the daemon\'s default socket',
  SLIPWAY_STATE_DIR: 'the daemon\'s state directory',
  SLIPWAY_API_TOKEN: 'the bearer token for the daemon over TCP',
  SLIPWAY_BUILD_CACHE: 'where built guests (initramfs) are cached',
  SLIPWAY_KERNEL_CACHE: 'where built guest kernels are cached (kernel/build.sh)',
  SLIPWAY_QEMU: 'the QEMU binary',
  SLIPWAY_CLOUD_HYPERVISOR: 'the Cloud Hypervisor binary',
  SLIPWAY_ACCEL: 'the accelerator: kvm, tcg or auto',
  SLIPWAY_AGENT_TRANSPORT: 'the guest agent\'s transport: vsock or virtio-serial',
  SLIPWAY_BLK: 'the slipway-blk (vhost-user-blk backend) binary',
  SLIPWAY_NO_HUGEPAGE_FILE: 'not for users: set by the daemon for QEMU on a lazy memory restore, the RAM file libslipway-nohugepage.so keeps MADV_HUGEPAGE off (docs/snapshots.md)',
  SLIPWAY_WAIT_FILE: 'not for users: set by the daemon for a QEMU started before its RAM file is served, the file libslipway-restore-wait.so waits for (docs/snapshots.md)',
  SLIPWAY_WAIT_SOCKET: 'not for users: set by the daemon for a QEMU started before slipway-blk listens, the vhost-user socket libslipway-restore-wait.so waits for (docs/snapshots.md)',
  SLIPWAY_WAIT_MS: 'not for users: how long libslipway-restore-wait.so waits, in ms (default 600000)',
} as const;

export type EnvVar = keyof typeof ENV_VARS;

/** One of slipway's variables as set (undefined when unset). */
export function envVar(name: EnvVar, env: NodeJS.ProcessEnv = process.env): string | undefined {
  return env[name];
}

export interface SlipwayConfig {
  /** The chunk cache's directory (SLIPWAY_CACHE_DIR, --cache-dir). */
  cacheDir: string;
  /** The embedded default store (SLIPWAY_STORE). */
  storeDir: string;
  /** Tier 0: decompressed chunks kept in memory. */
  memoryBudgetBytes: number;
  /** Tier 1: eviction starts above this many bytes of chunk files... */
  diskBudgetBytes: number;
  /** ...and stops below this share of the budget (the metadata cache's too). */
  diskLowWatermark: number;
  /** The metadata cache (manifests, configs, indexes, device state: `<cacheDir>/meta`): eviction starts above this many bytes. */
  metadataBudgetBytes: number;
  /** Per origin registry host, mirrors (pull-through caches) tried in order before it. */
  mirrors: Record<string, string[]>;
  /** Registry hosts spoken to over plain HTTP besides loopback ones (SLIPWAY_PLAIN_HTTP_REGISTRIES=a,b). */
  plainHttpRegistries: string[];
  /** Concurrent requests per registry host. */
  connectionsPerHost: number;
  /** How long a chunk read keeps retrying a failing registry before it fails. */
  fetchDeadlineMs: number;
}

const MiB = 1 << 20;

/** The config file: every setting optional, nothing else allowed. */
const ConfigFile = z.strictObject({
  cacheDir: z.string().min(1),
  storeDir: z.string().min(1),
  memoryBudgetBytes: z.number().positive(),
  diskBudgetBytes: z.number().positive(),
  diskLowWatermark: z.number().positive().lt(1),
  metadataBudgetBytes: z.number().positive(),
  mirrors: z.record(z.string(), z.array(z.string())),
  plainHttpRegistries: z.array(z.string()),
  connectionsPerHost: z.number().positive(),
  fetchDeadlineMs: z.number().positive(),
}).partial() satisfies z.ZodType<Partial<SlipwayConfig>>;

export function defaultCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  return join(env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'slipway');
}

/** The embedded default store's directory. */
export function defaultStoreDir(env: NodeJS.ProcessEnv = process.env): string {
  const store = envVar('SLIPWAY_STORE', env);
  if (store) return resolve(store);
  return join(env.XDG_DATA_HOME ?? join(homedir(), '.local', 'share'), 'slipway', 'store');
}

/** Where the daemon listens by default: $SLIPWAY_DAEMON_SOCKET, else in $XDG_RUNTIME_DIR, else /run/slipway (root) or the state directory. */
export function defaultSocketPath(env: NodeJS.ProcessEnv = process.env): string {
  const socket = envVar('SLIPWAY_DAEMON_SOCKET', env);
  if (socket) return socket;
  if (env.XDG_RUNTIME_DIR) return join(env.XDG_RUNTIME_DIR, 'slipway', 'slipway.sock');
  if (process.getuid?.() === 0) return '/run/slipway/slipway.sock';
  return join(defaultStateDir(env), 'slipway.sock');
}

/** The daemon's state directory: $SLIPWAY_STATE_DIR, else /var/lib/slipway (root) or $XDG_STATE_HOME/slipway. */
export function defaultStateDir(env: NodeJS.ProcessEnv = process.env): string {
  const dir = envVar('SLIPWAY_STATE_DIR', env);
  if (dir) return dir;
  if (process.getuid?.() === 0) return '/var/lib/slipway';
  return join(env.XDG_STATE_HOME ?? join(env.HOME ?? '/tmp', '.local', 'state'), 'slipway');
}

/** Where built guests are cached: $SLIPWAY_BUILD_CACHE, else $XDG_CACHE_HOME/slipway/build. */
export function buildCacheRoot(env: NodeJS.ProcessEnv = process.env): string {
  return envVar('SLIPWAY_BUILD_CACHE', env) ?? join(env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'slipway', 'build');
}

/** Where kernel/build.sh caches guest kernels: $SLIPWAY_KERNEL_CACHE, else $XDG_CACHE_HOME/slipway/kernel. */
export function kernelCacheRoot(env: NodeJS.ProcessEnv = process.env): string {
  return envVar('SLIPWAY_KERNEL_CACHE', env) ?? join(env.XDG_CACHE_HOME ?? join(env.HOME ?? '/root', '.cache'), 'slipway', 'kernel');
}

/** SLIPWAY_LOG_LEVEL when it names a level. */
export function logLevelFromEnv(env: NodeJS.ProcessEnv = process.env): 'debug' | 'info' | 'warn' | 'error' | undefined {
  const level = envVar('SLIPWAY_LOG_LEVEL', env);
  return level === 'debug' || level === 'info' || level === 'warn' || level === 'error' ? level : undefined;
}

/** Credentials from SLIPWAY_REGISTRY_USERNAME/PASSWORD when they are set for `registry` (SLIPWAY_REGISTRY_HOST unset or that host). */
export function registryCredentialsFromEnv(registry: string, env: NodeJS.ProcessEnv = process.env): { username: string; password: string } | undefined {
  const username = envVar('SLIPWAY_REGISTRY_USERNAME', env);
  const host = envVar('SLIPWAY_REGISTRY_HOST', env);
  if (username === undefined || (host && host !== registry)) return undefined;
  return { username, password: envVar('SLIPWAY_REGISTRY_PASSWORD', env) ?? '' };
}

/** SLIPWAY_CREDENTIAL_HELPER_TIMEOUT_MS when it is a positive number. */
export function credentialHelperTimeoutMs(env: NodeJS.ProcessEnv = process.env): number | undefined {
  const ms = Number(envVar('SLIPWAY_CREDENTIAL_HELPER_TIMEOUT_MS', env));
  return Number.isFinite(ms) && ms > 0 ? ms : undefined;
}

function configFilePath(env: NodeJS.ProcessEnv): string | undefined {
  const named = envVar('SLIPWAY_CONFIG', env);
  if (named) return named;
  const candidates = [join(env.XDG_CONFIG_HOME ?? join(homedir(), '.config'), 'slipway', 'config.json'), '/etc/slipway/config.json'];
  for (const c of candidates) {
    try {
      readFileSync(c);
      return c;
    } catch {
      // not there
    }
  }
  return undefined;
}

/** A config file's settings, checked: INVALID_ARGUMENT naming the file and the setting otherwise. */
function readConfigFile(file: string): Partial<SlipwayConfig> {
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(file, 'utf8'));
  } catch (err) {
    throw new SlipwayError('INVALID_ARGUMENT', `config file ${file}: ${(err as Error).message}`, { cause: err });
  }
  const parsed = ConfigFile.safeParse(raw);
  if (parsed.success) return parsed.data as Partial<SlipwayConfig>;
  const issue = parsed.error.issues[0];
  if (issue?.code === 'unrecognized_keys') throw new SlipwayError('INVALID_ARGUMENT', `config file ${file}: unknown setting ${JSON.stringify(issue.keys[0])}`);
  throw new SlipwayError('INVALID_ARGUMENT', `config file ${file}: ${issue?.path.join('.') || 'the file'}: ${issue?.message ?? 'invalid'}`);
}

function positiveNumber(v: string, name: EnvVar): number {
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0) throw new SlipwayError('INVALID_ARGUMENT', `environment: ${name} must be a positive number (got ${JSON.stringify(v)})`);
  return n;
}

/** Parse `a=m1,m2;b=m3` (SLIPWAY_MIRRORS) into a mirror map. */
export function parseMirrors(text: string): Record<string, string[]> {
  const out: Record<string, string[]> = {};
  for (const part of text.split(';').map((s) => s.trim()).filter(Boolean)) {
    const eq = part.indexOf('=');
    if (eq <= 0) throw new SlipwayError('INVALID_ARGUMENT', `SLIPWAY_MIRRORS: ${JSON.stringify(part)} is not origin=mirror[,mirror]`);
    out[part.slice(0, eq).trim()] = part.slice(eq + 1).split(',').map((s) => s.trim()).filter(Boolean);
  }
  return out;
}

export function loadConfig(env: NodeJS.ProcessEnv = process.env, overrides: Partial<SlipwayConfig> = {}): SlipwayConfig {
  const config: SlipwayConfig = {
    cacheDir: defaultCacheDir(env),
    storeDir: defaultStoreDir(env),
    memoryBudgetBytes: 256 * MiB,
    diskBudgetBytes: 20 * 1024 * MiB,
    diskLowWatermark: 0.8,
    metadataBudgetBytes: 256 * MiB,
    mirrors: {},
    plainHttpRegistries: [],
    connectionsPerHost: 8,
    fetchDeadlineMs: 30_000,
  };
  const file = configFilePath(env);
  if (file) Object.assign(config, readConfigFile(file));
  const cacheDir = envVar('SLIPWAY_CACHE_DIR', env);
  if (cacheDir) config.cacheDir = cacheDir;
  const memory = envVar('SLIPWAY_MEMORY_BUDGET', env);
  if (memory) config.memoryBudgetBytes = positiveNumber(memory, 'SLIPWAY_MEMORY_BUDGET');
  const disk = envVar('SLIPWAY_DISK_BUDGET', env);
  if (disk) config.diskBudgetBytes = positiveNumber(disk, 'SLIPWAY_DISK_BUDGET');
  const metadata = envVar('SLIPWAY_METADATA_BUDGET', env);
  if (metadata) config.metadataBudgetBytes = positiveNumber(metadata, 'SLIPWAY_METADATA_BUDGET');
  const mirrors = envVar('SLIPWAY_MIRRORS', env);
  if (mirrors) config.mirrors = parseMirrors(mirrors);
  const plain = envVar('SLIPWAY_PLAIN_HTTP_REGISTRIES', env);
  if (plain) config.plainHttpRegistries = plain.split(',').map((h) => h.trim()).filter(Boolean);
  const deadline = envVar('SLIPWAY_FETCH_DEADLINE_MS', env);
  if (deadline) config.fetchDeadlineMs = positiveNumber(deadline, 'SLIPWAY_FETCH_DEADLINE_MS');
  Object.assign(config, Object.fromEntries(Object.entries(overrides).filter(([, v]) => v !== undefined)));
  if (config.diskLowWatermark >= 1) throw new SlipwayError('INVALID_ARGUMENT', 'diskLowWatermark must be below 1');
  config.cacheDir = resolve(config.cacheDir);
  return config;
}
