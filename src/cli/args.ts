/**
 * The CLI's shared plumbing: what a command is (`CommandSpec`, run by main.ts, which also makes
 * `--help` from the specs), its I/O, and the parsers every command uses (flags, sizes, counts,
 * `--env K=V`, `--net`, `--progress`).
 */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { VM_SHAPE_BOUNDS } from '../api/schemas.js';
import { SlipwayError } from '../errors.js';
import type { ProgressMode } from '../util/progress.js';
import type { NetSpec } from '../vmm/driver.js';

export interface CommandIO {
  stdout: NodeJS.WriteStream;
  stderr: NodeJS.WriteStream;
}

/**
 * A command as main.ts dispatches it. `help` has one entry per form of the command: its usage
 * (the very string its own usage errors print, so `slipway --help` cannot drift from it) and
 * what it does.
 */
export interface CommandSpec {
  name: string;
  help: readonly { usage: string; summary: string }[];
  run(argv: string[], io: CommandIO): Promise<number>;
}

/** Parse `4096`, `512K`, `512KiB`, `1M`, `2G` into bytes (binary units); `examples` for the error. */
export function parseSize(text: string, what: string, examples = '4096, 512K, 1M'): number {
  const m = /^(\d+)\s*([KMGT]?)(i?B)?$/i.exec(text.trim());
  if (!m) throw new SlipwayError('INVALID_ARGUMENT', `${what}: ${JSON.stringify(text)} is not a size (e.g. ${examples})`);
  const unit = (m[2] ?? '').toUpperCase();
  const mult = unit === '' ? 1 : 1024 ** ('KMGT'.indexOf(unit) + 1);
  const value = Number(m[1]) * mult;
  if (!Number.isSafeInteger(value)) throw new SlipwayError('INVALID_ARGUMENT', `${what}: ${text} is too large`);
  return value;
}

export function parseNonNegativeInt(text: string, what: string): number {
  if (!/^\d+$/.test(text)) throw new SlipwayError('INVALID_ARGUMENT', `${what}: ${JSON.stringify(text)} is not a non-negative integer`);
  const v = Number(text);
  if (!Number.isSafeInteger(v)) throw new SlipwayError('INVALID_ARGUMENT', `${what}: ${text} is too large`);
  return v;
}

type Options = NonNullable<ParseArgsConfig['options']>;

/** Edit distance (insertions, deletions, substitutions) between two short strings. */
function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const row = [i];
    for (let j = 1; j <= b.length; j++) row[j] = Math.min((prev[j] as number) + 1, (row[j - 1] as number) + 1, (prev[j - 1] as number) + (a[i - 1] === b[j - 1] ? 0 : 1));
    prev = row;
  }
  return prev[b.length] as number;
}

/** The option of `names` an unknown `--given` most likely meant (at most 2 edits away, or a prefix of it), if any. */
export function closestOption(given: string, names: string[]): string | undefined {
  const bare = given.replace(/^-+/, '').split('=')[0] as string;
  if (bare.length < 2) return undefined;
  const prefixed = names.filter((n) => n.startsWith(bare));
  if (prefixed.length === 1) return prefixed[0];
  let best: { name: string; d: number } | undefined;
  for (const name of names) {
    const d = editDistance(bare, name);
    if (d <= 2 && (!best || d < best.d)) best = { name, d };
  }
  return best?.name;
}

/**
 * node:util parseArgs with errors turned into USAGE errors that name the command; an unknown
 * option is named, with the option it most likely meant.
 */
export function parseCommand<O extends Options>(command: string, argv: string[], options: O, positionals: { min: number; max: number; usage: string }) {
  let parsed;
  try {
    parsed = parseArgs({ args: argv, options, allowPositionals: true, strict: true });
  } catch (err) {
    const unknown = (err as NodeJS.ErrnoException).code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION' ? /'(-[^']*)'/.exec((err as Error).message)?.[1] : undefined;
    if (unknown !== undefined) {
      const meant = closestOption(unknown, Object.keys(options));
      throw new SlipwayError('USAGE', `${command}: unknown option ${unknown}${meant ? ` (did you mean --${meant}?)` : ''}\nusage: ${positionals.usage}`);
    }
    throw new SlipwayError('USAGE', `${command}: ${(err as Error).message}\nusage: ${positionals.usage}`);
  }
  if (parsed.positionals.length < positionals.min || parsed.positionals.length > positionals.max) {
    throw new SlipwayError('USAGE', `${command}: expected ${positionals.min === positionals.max ? positionals.min : `${positionals.min}-${positionals.max}`} argument(s), got ${parsed.positionals.length}\nusage: ${positionals.usage}`);
  }
  return parsed;
}

/** Options every command that talks to a store takes. */
export const STORE_OPTIONS = {
  'plain-http': { type: 'boolean' },
  progress: { type: 'string' },
} as const;

/** `--memory`: a size, plain numbers in MiB (`512` is 512 MiB); the result in MiB. */
export function parseMemoryMiB(text: string, what = '--memory'): number {
  return Math.floor(parseSize(/^\d+$/.test(text) ? `${text}M` : text, what, '512M, 2G; a bare number is MiB') / (1 << 20));
}

/** `--cpus`: 1 to 64 (VM_SHAPE_BOUNDS, as the API takes it). Errors: INVALID_ARGUMENT naming the flag. */
export function parseCpus(text: string): number {
  const { min, max } = VM_SHAPE_BOUNDS.cpus;
  const cpus = parseNonNegativeInt(text, '--cpus');
  if (cpus < min || cpus > max) throw new SlipwayError('INVALID_ARGUMENT', `--cpus must be ${min} to ${max} (got ${cpus})`);
  return cpus;
}

/** `--memory` of a VM: a size (parseMemoryMiB) from 64M to 1024G (VM_SHAPE_BOUNDS); the result in MiB. */
export function parseVmMemoryMiB(text: string): number {
  const { min, max } = VM_SHAPE_BOUNDS.memoryMiB;
  const mib = parseMemoryMiB(text);
  if (mib < min || mib > max) throw new SlipwayError('INVALID_ARGUMENT', `--memory must be ${min}M to ${max / 1024}G (got ${text})`);
  return mib;
}

/** `--env K=V`, repeated; undefined when none is given. */
export function parseEnv(list: string[] | undefined): Record<string, string> | undefined {
  if (!list || list.length === 0) return undefined;
  const env: Record<string, string> = {};
  for (const kv of list) {
    const eq = kv.indexOf('=');
    if (eq <= 0) throw new SlipwayError('INVALID_ARGUMENT', `--env ${JSON.stringify(kv)} is not K=V`);
    env[kv.slice(0, eq)] = kv.slice(eq + 1);
  }
  return env;
}

/** `--net none|user|tap:<ifname>` (none when not given). */
export function parseNet(text: string | undefined): NetSpec {
  if (text === undefined || text === 'none') return { mode: 'none' };
  if (text === 'user') return { mode: 'user' };
  if (text.startsWith('tap:') && /^tap:[A-Za-z0-9._-]{1,15}$/.test(text)) return { mode: 'tap', ifname: text.slice(4) };
  throw new SlipwayError('INVALID_ARGUMENT', `--net must be none, user or tap:<ifname> (got ${text})`);
}

/** `--progress auto|json|tty|none` (auto when not given). */
export function progressMode(value: string | undefined): ProgressMode {
  const mode = value ?? 'auto';
  if (!['auto', 'json', 'tty', 'none'].includes(mode)) throw new SlipwayError('USAGE', `--progress must be auto, json, tty or none (got ${mode})`);
  return mode as ProgressMode;
}

/** `--listen HOST:PORT` (an IPv6 host in brackets). */
export function parseListen(text: string): { host: string; port: number } {
  const m = /^(.*):(\d{1,5})$/.exec(text);
  const port = m ? Number(m[2]) : NaN;
  if (!m || !m[1] || port > 65535) throw new SlipwayError('INVALID_ARGUMENT', `--listen must be HOST:PORT (got ${text})`);
  return { host: (m[1] as string).replace(/^\[(.*)\]$/, '$1'), port };
}
