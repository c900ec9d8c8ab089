/**
 * Configuration in one place: the config file is checked by a strict schema, the environment
 * overrides it, and every SLIPWAY_* variable is named in config.ts's ENV_VARS and read through it.
 */
import { readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ENV_VARS, loadConfig } from '../src/config.js';
import { isSlipwayError } from '../src/errors.js';
import { tempDir } from './helpers/temp-dirs.js';

const work = tempDir('slipway-config-');

let files = 0;
function withFile(settings: unknown): NodeJS.ProcessEnv {
  const file = join(work, `config-${files++}.json`);
  writeFileSync(file, JSON.stringify(settings));
  return { SLIPWAY_CONFIG: file, XDG_CACHE_HOME: work, XDG_DATA_HOME: work };
}

function refusal(env: NodeJS.ProcessEnv): string {
  try {
    loadConfig(env);
  } catch (err) {
    expect(isSlipwayError(err, 'INVALID_ARGUMENT')).toBe(true);
    return (err as Error).message;
  }
  throw new Error('loadConfig accepted it');
}

describe('the config file', () => {
  it('sets what it names, and the environment overrides it', () => {
    const env = withFile({ memoryBudgetBytes: 1024, mirrors: { 'r.example': ['m.example'] }, fetchDeadlineMs: 5000 });
    expect(loadConfig(env)).toMatchObject({ memoryBudgetBytes: 1024, mirrors: { 'r.example': ['m.example'] }, fetchDeadlineMs: 5000, connectionsPerHost: 8 });
    expect(loadConfig({ ...env, SLIPWAY_FETCH_DEADLINE_MS: '700', SLIPWAY_PLAIN_HTTP_REGISTRIES: 'a:5000, b' })).toMatchObject({ fetchDeadlineMs: 700, plainHttpRegistries: ['a:5000', 'b'] });
    expect(loadConfig(withFile({})).metadataBudgetBytes).toBe(256 << 20);
    expect(loadConfig({ ...withFile({ metadataBudgetBytes: 4096 }) }).metadataBudgetBytes).toBe(4096);
    expect(loadConfig({ ...withFile({ metadataBudgetBytes: 4096 }), SLIPWAY_METADATA_BUDGET: '8192' }).metadataBudgetBytes).toBe(8192);
  });

  it('refuses an unknown setting, a wrong type and a number out of range, naming the setting', () => {
    expect(refusal(withFile({ memoryBudget: 1 }))).toMatch(/unknown setting "memoryBudget"/);
    expect(refusal(withFile({ mirrors: { r: 'm' } }))).toMatch(/mirrors\.r/);
    expect(refusal(withFile({ diskBudgetBytes: -1 }))).toMatch(/diskBudgetBytes/);
    expect(refusal(withFile({ diskLowWatermark: 1.5 }))).toMatch(/diskLowWatermark/);
    expect(refusal(withFile({ connectionsPerHost: '8' }))).toMatch(/connectionsPerHost/);
    expect(refusal({ ...withFile({}), SLIPWAY_DISK_BUDGET: 'lots' })).toMatch(/SLIPWAY_DISK_BUDGET must be a positive number/);
    expect(refusal(withFile({ metadataBudgetBytes: 0 }))).toMatch(/metadataBudgetBytes/);
    expect(refusal({ ...withFile({}), SLIPWAY_METADATA_BUDGET: '-1' })).toMatch(/SLIPWAY_METADATA_BUDGET must be a positive number/);
  });
});

describe('SLIPWAY_* variables', () => {
  const root = new URL('../src/', import.meta.url).pathname;
  const sources = (dir: string): string[] => readdirSync(dir).flatMap((f) => (statSync(join(dir, f)).isDirectory() ? sources(join(dir, f)) : f.endsWith('.ts') ? [join(dir, f)] : []));
  const files = sources(root).map((path) => ({ path: path.slice(root.length), text: readFileSync(path, 'utf8') }));
  /** Reads of SLIPWAY_* variables outside config.ts: none (everything goes through envVar and the accessors). */
  const LEFT_TO_OWNERS: string[] = [];

  it('are all listed in ENV_VARS', () => {
    const named = new Set(files.flatMap((f) => [...f.text.matchAll(/\bSLIPWAY_[A-Z_]+\b/g)].map((m) => m[0])));
    expect([...named].filter((n) => !(n in ENV_VARS))).toEqual([]);
  });

  it('are read only through config.ts', () => {
    const reads = files.filter((f) => f.path !== 'config.ts').flatMap((f) => [...f.text.matchAll(/(?:env\)?\.|env\[['"])(SLIPWAY_[A-Z_]+)/g)].map((m) => `${f.path} ${m[1]}`));
    expect([...new Set(reads)].sort()).toEqual(LEFT_TO_OWNERS);
  });
});
