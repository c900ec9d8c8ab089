/**
 * Debian's docker-registry (distribution 2.8) on 127.0.0.1 behind bearer-token auth: the
 * registry answers `401 WWW-Authenticate: Bearer realm=...,service=...,scope=...` and accepts
 * JWTs signed by a key whose certificate is its `rootcertbundle` (see token-server.ts).
 */
import { startRegistry, type TestRegistry, type TokenAuthConfig } from './registry.js';

export type { TokenAuthConfig } from './registry.js';
export type TokenRegistry = TestRegistry;

export function startTokenRegistry(auth: TokenAuthConfig, opts: { logLevel?: 'debug' | 'info' | 'error' } = {}): Promise<TokenRegistry> {
  return startRegistry({ token: auth, logLevel: opts.logLevel ?? 'info' });
}
