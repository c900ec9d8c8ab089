import { describe, expect, it } from 'vitest';
import { formatRef, isLoopbackRegistry, parseRef } from '../src/oci/ref.js';

const env = { SLIPWAY_STORE: '/srv/store' } as NodeJS.ProcessEnv;

describe('image references', () => {
  it.each([
    ['oci:/tmp/layout', { kind: 'layout', dir: '/tmp/layout' }],
    ['oci:/tmp/layout:v1', { kind: 'layout', dir: '/tmp/layout', tag: 'v1' }],
    [`oci:/tmp/layout@sha256:${'a'.repeat(64)}`, { kind: 'layout', dir: '/tmp/layout', digest: `sha256:${'a'.repeat(64)}` }],
    ['127.0.0.1:5000/disks/ci:v2', { kind: 'registry', registry: '127.0.0.1:5000', repository: 'disks/ci', tag: 'v2' }],
    ['localhost/a', { kind: 'registry', registry: 'localhost', repository: 'a' }],
    ['docker://ghcr.io/org/disk:1.0', { kind: 'registry', registry: 'ghcr.io', repository: 'org/disk', tag: '1.0' }],
    [`reg.example.com/r@sha256:${'b'.repeat(64)}`, { kind: 'registry', registry: 'reg.example.com', repository: 'r', digest: `sha256:${'b'.repeat(64)}` }],
    ['docker://debian:12', { kind: 'registry', registry: 'docker.io', repository: 'library/debian', tag: '12' }],
    ['demo:v1', { kind: 'layout', dir: '/srv/store/demo', tag: 'v1' }],
    ['ci/runner', { kind: 'layout', dir: '/srv/store/ci/runner' }],
  ])('parses %s', (input, expected) => {
    expect(parseRef(input, env)).toEqual(expected);
  });

  it.each(['', 'oci:', 'UPPER/case:v1', 'host.io/repo:bad tag', 'host.io/repo@sha256:short', 'host.io/re..po'])('rejects %j with INVALID_REFERENCE', (input) => {
    expect(() => parseRef(input, env)).toThrowError(expect.objectContaining({ code: 'INVALID_REFERENCE' }) as Error);
  });

  it('formats back', () => {
    expect(formatRef(parseRef('127.0.0.1:5000/disks/ci:v2', env))).toBe('127.0.0.1:5000/disks/ci:v2');
  });

  it('speaks plain HTTP only to loopback hosts by default', () => {
    expect(isLoopbackRegistry('127.0.0.1:5000')).toBe(true);
    expect(isLoopbackRegistry('localhost:5000')).toBe(true);
    expect(isLoopbackRegistry('[::1]:5000')).toBe(true);
    expect(isLoopbackRegistry('ghcr.io')).toBe(false);
  });
});
