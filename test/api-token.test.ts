/**
 * The daemon's TCP token (src/api/app.ts requireBearerToken, hono's bearer-auth): every refusal is
 * a 401 with the API's error body and a Bearer challenge; the right token passes the request on.
 * test/daemon.test.ts checks the same against a running daemon.
 */
import { Hono } from 'hono';
import { describe, expect, it } from 'vitest';
import { requireBearerToken } from '../src/api/app.js';

const token = 'test-token-0123456789abcdef';
const app = new Hono();
app.get('/v1/vms', (c) => c.json({ vms: [] }));
const guarded = requireBearerToken(app, token);

describe('the bearer token in front of the API', () => {
  it.each([
    ['no Authorization', {}],
    ['a wrong token', { authorization: 'Bearer wrong-token-wrong-token' }],
    ['another scheme', { authorization: `Basic ${Buffer.from(`x:${token}`).toString('base64')}` }],
    ['the token with more after it', { authorization: `Bearer ${token}x` }],
    ['a token that is not a b64token', { authorization: 'Bearer two words' }],
  ])('refuses %s with 401, UNAUTHORIZED and a challenge', async (_what, headers: Record<string, string>) => {
    const r = await guarded.request('/v1/vms', { headers });
    expect(r.status).toBe(401);
    expect(r.headers.get('www-authenticate')).toBe('Bearer realm="slipway"');
    expect(((await r.json()) as { error: { code: string } }).error.code).toBe('UNAUTHORIZED');
  });

  it('passes a request with the token on to the API', async () => {
    const r = await guarded.request('/v1/vms', { headers: { authorization: `Bearer ${token}` } });
    expect(r.status).toBe(200);
    expect(await r.json()).toEqual({ vms: [] });
  });

  it('refuses, when built, a token a client could not send', () => {
    expect(() => requireBearerToken(app, 'has spaces in it, sixteen+')).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
  });
});
