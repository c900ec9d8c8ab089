import type { Credentials } from './credentials.js';

export interface Challenge {
  scheme: 'basic' | 'bearer';
  params: Record<string, string>;
}

/** Parse a WWW-Authenticate header: `Bearer realm="...",service="...",scope="..."` or `Basic realm="..."`. */
export function parseChallenge(header: string | undefined): Challenge | undefined {
  if (!header) return undefined;
  const space = header.indexOf(' ');
  const scheme = (space < 0 ? header : header.slice(0, space)).toLowerCase();
  if (scheme !== 'basic' && scheme !== 'bearer') return undefined;
  const params: Record<string, string> = {};
  const re = /([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))/g;
  const rest = space < 0 ? '' : header.slice(space + 1);
  for (let m = re.exec(rest); m; m = re.exec(rest)) {
    const key = m[1];
    if (key) params[key.toLowerCase()] = m[2] !== undefined ? m[2].replace(/\\(.)/g, '$1') : (m[3] ?? '');
  }
  return { scheme, params };
}

export function basicAuthHeader(creds: Credentials): string {
  return `Basic ${Buffer.from(`${creds.username ?? ''}:${creds.password ?? ''}`).toString('base64')}`;
}

/** Scopes for an operation on a repository, as the distribution token spec writes them. */
export function repositoryScope(repository: string, actions: 'pull' | 'pull,push'): string {
  return `repository:${repository}:${actions}`;
}

interface CachedToken {
  token: string;
  expiresAtMs: number;
}

/**
 * Per-registry auth state: which scheme the registry asked for, and bearer tokens by scope.
 * Tokens are refreshed a little before they expire.
 */
export class AuthState {
  scheme: 'none' | 'basic' | 'bearer' = 'none';
  bearerParams: Record<string, string> = {};
  private readonly tokens = new Map<string, CachedToken>();

  cachedToken(scopeKey: string): string | undefined {
    const entry = this.tokens.get(scopeKey);
    if (!entry || entry.expiresAtMs < Date.now() + 10_000) return undefined;
    return entry.token;
  }

  storeToken(scopeKey: string, token: string, expiresInS: number | undefined): void {
    this.tokens.set(scopeKey, { token, expiresAtMs: Date.now() + (expiresInS ?? 60) * 1000 });
  }

  forgetToken(scopeKey: string): void {
    this.tokens.delete(scopeKey);
  }
}
