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

  /** Forget the scheme and every token (credentials changed). */
  reset(): void {
    this.scheme = 'none';
    this.bearerParams = {};
    this.tokens.clear();
  }
}

/** The client id slipway names itself by in OAuth2 token requests. */
export const OAUTH_CLIENT_ID = 'slipway';

export interface TokenRequest {
  method: 'GET' | 'POST';
  url: URL;
  headers: Record<string, string>;
  body?: string;
}

/**
 * The request for a bearer token from a challenge's `realm`, `service` and the scopes wanted:
 *
 * - with an identity token: `POST realm` with form body `grant_type=refresh_token`,
 *   `refresh_token`, `service`, `scope` (space-separated), `client_id` — distribution's
 *   docs/spec/auth/oauth.md, as `docker login` against ACR, Harbor OIDC and others expects;
 * - otherwise `GET realm?service=&scope=...` (docs/spec/auth/token.md), with HTTP basic auth when
 *   there is a user name, anonymous without.
 */
export function tokenRequest(params: Record<string, string>, scopes: readonly string[], creds: Credentials | undefined, userAgent: string): TokenRequest {
  const url = new URL(params.realm ?? '');
  const headers: Record<string, string> = { 'user-agent': userAgent };
  if (creds?.identityToken) {
    const form = new URLSearchParams({ grant_type: 'refresh_token', refresh_token: creds.identityToken, client_id: OAUTH_CLIENT_ID });
    if (params.service) form.set('service', params.service);
    if (scopes.length > 0) form.set('scope', scopes.join(' '));
    headers['content-type'] = 'application/x-www-form-urlencoded';
    return { method: 'POST', url, headers, body: form.toString() };
  }
  if (params.service) url.searchParams.set('service', params.service);
  for (const scope of scopes) url.searchParams.append('scope', scope);
  if (creds?.username !== undefined) headers.authorization = basicAuthHeader(creds);
  return { method: 'GET', url, headers };
}
