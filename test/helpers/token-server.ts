/**
 * A real token service for the distribution token spec
 * (https://distribution.github.io/distribution/spec/auth/token/): `GET /token?service=&scope=`
 * with HTTP basic auth checked against one user, answering `{"token": <JWT>, "expires_in": 300}`.
 *
 * The JWT is signed ES256 with a P-256 key whose self-signed certificate (made by `openssl`) the
 * registry trusts as `auth.token.rootcertbundle`; the JWT header carries that certificate in
 * `x5c`. Every scope asked for is granted in full (the test is about the protocol, not policy).
 * Every request is recorded so tests can check what the client asked for.
 */
import { execFileSync } from 'node:child_process';
import { createPrivateKey, randomBytes, sign, X509Certificate, type KeyObject } from 'node:crypto';
import { readFileSync, rmSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { listenOnLoopback } from './listen.js';
import { join } from 'node:path';
import { tempDir } from './temp-dirs.js';

export interface TokenAccess {
  type: string;
  name: string;
  actions: string[];
}

export interface TokenRequestRecord {
  service: string | null;
  scopes: string[];
  /** user name from basic auth, or null when anonymous */
  username: string | null;
  status: number;
  /** the access granted in the issued token (empty when refused) */
  granted: TokenAccess[];
  /** `refresh_token` for an OAuth2 POST (docs/spec/auth/oauth.md), `basic` for the GET of token.md */
  grant?: 'refresh_token' | 'basic';
}

export interface TokenServer {
  /** realm URL to configure in the registry */
  realm: string;
  service: string;
  issuer: string;
  /** PEM file of the signing certificate: the registry's rootcertbundle */
  certPath: string;
  requests: TokenRequestRecord[];
  stop(): Promise<void>;
}

export interface TokenServerOptions {
  username: string;
  password: string;
  service?: string;
  issuer?: string;
  /** lifetime of issued tokens in seconds (expires_in) */
  expiresInS?: number;
  /** refresh tokens accepted by `POST /token` with `grant_type=refresh_token` (identity tokens) */
  refreshTokens?: string[];
}

export interface TokenServerControl {
  /** answer the next `count` token requests with `status` (a token service having a bad moment) */
  failNext(count: number, status: number): void;
  /** rotate the user's password: the old one is refused from now on */
  setPassword(password: string): void;
}

function b64url(data: Buffer | string): string {
  return Buffer.from(data).toString('base64url');
}

/** Parse `repository:name:actions` (the name may not contain ':', the actions are comma-separated). */
export function parseScope(scope: string): TokenAccess | undefined {
  const first = scope.indexOf(':');
  const last = scope.lastIndexOf(':');
  if (first < 0 || last === first) return undefined;
  const actions = scope.slice(last + 1).split(',').filter((a) => a.length > 0);
  return { type: scope.slice(0, first), name: scope.slice(first + 1, last), actions };
}

function makeJwt(key: KeyObject, certDerB64: string, claims: Record<string, unknown>): string {
  const header = { typ: 'JWT', alg: 'ES256', x5c: [certDerB64] };
  const signingInput = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(claims))}`;
  // JWS ES256 wants r||s (IEEE P1363), not DER.
  const signature = sign('sha256', Buffer.from(signingInput), { key, dsaEncoding: 'ieee-p1363' });
  return `${signingInput}.${b64url(signature)}`;
}

function parseBasic(header: string | undefined): { username: string; password: string } | undefined {
  if (!header || !/^basic /i.test(header)) return undefined;
  const decoded = Buffer.from(header.slice(6).trim(), 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  if (colon < 0) return undefined;
  return { username: decoded.slice(0, colon), password: decoded.slice(colon + 1) };
}

export async function startTokenServer(opts: TokenServerOptions): Promise<TokenServer & TokenServerControl> {
  const dir = tempDir('slipway-token-');
  const keyPath = join(dir, 'key.pem');
  const certPath = join(dir, 'cert.pem');
  execFileSync('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-keyout', keyPath, '-out', certPath, '-days', '2', '-subj', '/CN=slipway-test-token-issuer',
  ], { stdio: 'pipe' });
  const key = createPrivateKey(readFileSync(keyPath));
  const certDerB64 = new X509Certificate(readFileSync(certPath)).raw.toString('base64');
  const service = opts.service ?? 'slipway-test-registry';
  const issuer = opts.issuer ?? 'slipway-test-issuer';
  const expiresIn = opts.expiresInS ?? 300;
  const requests: TokenRequestRecord[] = [];
  let failures = { count: 0, status: 503 };
  let password = opts.password;

  const handle = (req: IncomingMessage, res: ServerResponse): void => {
    if (req.method === 'POST') {
      let form = '';
      req.setEncoding('utf8').on('data', (d: string) => {
        form += d;
      }).on('end', () => handleRequest(req, res, new URLSearchParams(form)));
      return;
    }
    handleRequest(req, res, undefined);
  };

  const handleRequest = (req: IncomingMessage, res: ServerResponse, form: URLSearchParams | undefined): void => {
    const url = new URL(req.url ?? '/', 'http://token.invalid');
    const reply = (status: number, body: unknown, record: Omit<TokenRequestRecord, 'status'>): void => {
      requests.push({ ...record, status });
      const text = JSON.stringify(body);
      res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
      res.end(text);
    };
    const params = form ?? url.searchParams;
    const scopes = params.getAll('scope').flatMap((s) => s.split(' ')).filter((s) => s.length > 0);
    const serviceParam = params.get('service');
    const creds = parseBasic(req.headers.authorization);
    const refresh = form?.get('grant_type') === 'refresh_token' ? (form.get('refresh_token') ?? '') : undefined;
    const base = { service: serviceParam, scopes, username: creds?.username ?? null, grant: refresh !== undefined ? 'refresh_token' as const : 'basic' as const };
    if (failures.count > 0) {
      failures.count--;
      res.setHeader('retry-after', '0');
      reply(failures.status, { errors: [{ code: 'UNAVAILABLE', message: 'injected fault: token service unavailable' }] }, { ...base, granted: [] });
      return;
    }
    if ((req.method !== 'GET' && refresh === undefined) || url.pathname !== '/token') {
      reply(404, { errors: [{ code: 'NOT_FOUND', message: 'no such endpoint' }] }, { ...base, granted: [] });
      return;
    }
    if (refresh !== undefined ? !(opts.refreshTokens ?? []).includes(refresh) : (!creds || creds.username !== opts.username || creds.password !== password)) {
      res.setHeader('www-authenticate', 'Basic realm="slipway-test-token"');
      reply(401, { errors: [{ code: 'UNAUTHORIZED', message: creds ? 'wrong user name or password' : 'authentication required' }] }, { ...base, granted: [] });
      return;
    }
    if (serviceParam !== service) {
      reply(400, { errors: [{ code: 'INVALID_SERVICE', message: `unknown service ${serviceParam}` }] }, { ...base, granted: [] });
      return;
    }
    const granted: TokenAccess[] = [];
    for (const s of scopes) {
      const access = parseScope(s);
      if (!access) continue;
      const same = granted.find((g) => g.type === access.type && g.name === access.name);
      if (same) same.actions = [...new Set([...same.actions, ...access.actions])];
      else granted.push(access);
    }
    const now = Math.floor(Date.now() / 1000);
    const token = makeJwt(key, certDerB64, {
      iss: issuer,
      sub: creds?.username ?? opts.username,
      aud: service,
      exp: now + expiresIn,
      nbf: now - 10,
      iat: now,
      jti: randomBytes(16).toString('hex'),
      access: granted,
    });
    reply(200, { token, access_token: token, expires_in: expiresIn, issued_at: new Date(now * 1000).toISOString() }, { ...base, granted });
  };

  const server: Server = createServer(handle);
  const port = await listenOnLoopback(server);
  return {
    realm: `http://127.0.0.1:${port}/token`,
    service,
    issuer,
    certPath,
    requests,
    failNext(count: number, status: number) {
      failures = { count, status };
    },
    setPassword(next: string) {
      password = next;
    },
    async stop() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
