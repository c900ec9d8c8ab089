import { parseArgs, type ParseArgsConfig } from 'node:util';
import { SlipwayError } from '../errors.js';

/** Parse `4096`, `512K`, `512KiB`, `1M`, `2G` into bytes (binary units). */
export function parseSize(text: string, what: string): number {
  const m = /^(\d+)\s*([KMGT]?)(i?B)?$/i.exec(text.trim());
  if (!m) throw new SlipwayError('INVALID_ARGUMENT', `${what}: ${JSON.stringify(text)} is not a size (e.g. 4096, 512K, 1M)`);
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

/** node:util parseArgs with errors turned into USAGE errors that name the command. */
export function parseCommand<O extends Options>(command: string, argv: string[], options: O, positionals: { min: number; max: number; usage: string }) {
  let parsed;
  try {
    parsed = parseArgs({ args: argv, options, allowPositionals: true, strict: true });
  } catch (err) {
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
