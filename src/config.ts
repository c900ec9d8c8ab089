/**
 * slipway's configuration, in one place: defaults, then a JSON file, then the environment, then
 * command-line flags (applied by the CLI). The file is `$SLIPWAY_CONFIG`, else
 * `$XDG_CONFIG_HOME/slipway/config.json`, else `/etc/slipway/config.json`, when present.
 */
import { readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';
import { SlipwayError } from './errors.js';
import { defaultStoreDir } from './oci/ref.js';

export interface SlipwayConfig {
  /** The chunk cache's directory (SLIPWAY_CACHE_DIR, --cache-dir). */
  cacheDir: string;
  /** The embedded default store (SLIPWAY_STORE). */
  storeDir: string;
  /** Tier 0: decompressed chunks kept in memory. */
  memoryBudgetBytes: number;
  /** Tier 1: eviction starts above this many bytes of chunk files... */
  diskBudgetBytes: number;
  /** ...and stops below this share of the budget. */
  diskLowWatermark: number;
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

export function defaultCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  return join(env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'slipway');
}

function configFilePath(env: NodeJS.ProcessEnv): string | undefined {
  if (env.SLIPWAY_CONFIG) return env.SLIPWAY_CONFIG;
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

function positiveNumber(v: unknown, name: string, source: string): number {
  const n = typeof v === 'string' ? Number(v) : v;
  if (typeof n !== 'number' || !Number.isFinite(n) || n <= 0) throw new SlipwayError('INVALID_ARGUMENT', `${source}: ${name} must be a positive number (got ${JSON.stringify(v)})`);
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
    mirrors: {},
    plainHttpRegistries: [],
    connectionsPerHost: 8,
    fetchDeadlineMs: 30_000,
  };
  const file = configFilePath(env);
  if (file) {
    let parsed: Partial<SlipwayConfig>;
    try {
      parsed = JSON.parse(readFileSync(file, 'utf8')) as Partial<SlipwayConfig>;
    } catch (err) {
      throw new SlipwayError('INVALID_ARGUMENT', `config file ${file}: ${(err as Error).message}`, { cause: err });
    }
    const known = new Set(Object.keys(config));
    for (const key of Object.keys(parsed)) if (!known.has(key)) throw new SlipwayError('INVALID_ARGUMENT', `config file ${file}: unknown setting ${JSON.stringify(key)}`);
    Object.assign(config, parsed);
    for (const k of ['memoryBudgetBytes', 'diskBudgetBytes', 'diskLowWatermark', 'connectionsPerHost', 'fetchDeadlineMs'] as const) positiveNumber(config[k], k, file);
  }
  if (env.SLIPWAY_CACHE_DIR) config.cacheDir = env.SLIPWAY_CACHE_DIR;
  if (env.SLIPWAY_MEMORY_BUDGET) config.memoryBudgetBytes = positiveNumber(env.SLIPWAY_MEMORY_BUDGET, 'SLIPWAY_MEMORY_BUDGET', 'environment');
  if (env.SLIPWAY_DISK_BUDGET) config.diskBudgetBytes = positiveNumber(env.SLIPWAY_DISK_BUDGET, 'SLIPWAY_DISK_BUDGET', 'environment');
  if (env.SLIPWAY_MIRRORS) config.mirrors = parseMirrors(env.SLIPWAY_MIRRORS);
  if (env.SLIPWAY_PLAIN_HTTP_REGISTRIES) config.plainHttpRegistries = env.SLIPWAY_PLAIN_HTTP_REGISTRIES.split(',').map((h) => h.trim()).filter(Boolean);
  if (env.SLIPWAY_FETCH_DEADLINE_MS) config.fetchDeadlineMs = positiveNumber(env.SLIPWAY_FETCH_DEADLINE_MS, 'SLIPWAY_FETCH_DEADLINE_MS', 'environment');
  Object.assign(config, Object.fromEntries(Object.entries(overrides).filter(([, v]) => v !== undefined)));
  if (config.diskLowWatermark >= 1) throw new SlipwayError('INVALID_ARGUMENT', 'diskLowWatermark must be below 1');
  config.cacheDir = resolve(config.cacheDir);
  return config;
}
