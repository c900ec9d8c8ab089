import { describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { ERROR_CODES, ERROR_TABLE, RegistryError, SlipwayError, httpStatusOf, isErrorCode, isSpecErrorCode, isTransient, type ErrorInfo } from '../src/errors.js';

describe('error codes', () => {
  const doc = readFileSync(new URL('../docs/errors.md', import.meta.url), 'utf8');
  const rows = [...doc.matchAll(/^\| `([A-Z_]+)` \| (.+) \| (\d{3}) \| (yes|no) \| (yes|no) \|$/gm)];
  const documented = new Map(rows.map((m) => [m[1] as string, m[2] as string]));

  it.each(Object.entries(ERROR_CODES))('%s is documented with its meaning', (code, meaning) => {
    expect(documented.get(code)).toBe(meaning);
  });

  it.each(Object.entries(ERROR_TABLE))('%s is documented with its HTTP status, whether it is transient and whether the spec has it', (code, info: ErrorInfo) => {
    const row = rows.find((m) => m[1] === code);
    expect(row?.slice(3)).toEqual([String(info.httpStatus), info.transient ? 'yes' : 'no', info.spec ? 'yes' : 'no']);
  });

  it('takes only own codes as codes, and only the spec\'s from a registry', () => {
    expect(isErrorCode('BLOB_UNKNOWN')).toBe(true);
    expect(isErrorCode('toString')).toBe(false);
    expect(isErrorCode('__proto__')).toBe(false);
    expect(isSpecErrorCode('MANIFEST_UNKNOWN')).toBe(true);
    expect(isSpecErrorCode('VM_NOT_FOUND')).toBe(false);
    expect(isSpecErrorCode('toString')).toBe(false);
  });

  it('says which errors are transient, and the daemon\'s status for each code', () => {
    expect(isTransient(new SlipwayError('REGISTRY_UNREACHABLE'))).toBe(true);
    expect(isTransient(new SlipwayError('SIZE_INVALID'))).toBe(true);
    expect(isTransient(new SlipwayError('DIGEST_MISMATCH'))).toBe(false);
    expect(isTransient(Object.assign(new Error('reset'), { code: 'ECONNRESET' }))).toBe(true);
    expect(isTransient(new Error('plain'))).toBe(false);
    expect(httpStatusOf('VM_NOT_FOUND')).toBe(404);
    expect(httpStatusOf('IO_ERROR')).toBe(500);
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
