import { describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { ERROR_CODES, RegistryError, SlipwayError } from '../src/errors.js';

describe('error codes', () => {
  const doc = readFileSync(new URL('../docs/errors.md', import.meta.url), 'utf8');
  const documented = new Map([...doc.matchAll(/^\| `([A-Z_]+)` \| (.+) \|$/gm)].map((m) => [m[1] as string, m[2] as string]));

  it.each(Object.entries(ERROR_CODES))('%s is documented with its meaning', (code, meaning) => {
    expect(documented.get(code)).toBe(meaning);
  });

  it('documents no code that does not exist', () => {
    expect([...documented.keys()].filter((c) => !(c in ERROR_CODES))).toEqual([]);
  });

  it('carries code, default message, context and cause', () => {
    const cause = new Error('low level');
    const err = new SlipwayError('BLOB_UNKNOWN', undefined, { context: { digest: 'sha256:x' }, cause });
    expect(err.message).toBe(ERROR_CODES.BLOB_UNKNOWN);
    expect(err.cause).toBe(cause);
    expect(err.toJSON()).toEqual({ code: 'BLOB_UNKNOWN', message: ERROR_CODES.BLOB_UNKNOWN, context: { digest: 'sha256:x' } });
    const reg = new RegistryError('MANIFEST_UNKNOWN', 'fetching manifest', { method: 'GET', url: 'http://r/v2/x/manifests/y', status: 404 });
    expect(reg.message).toContain('GET http://r/v2/x/manifests/y -> 404');
    expect(reg).toBeInstanceOf(SlipwayError);
  });
});
